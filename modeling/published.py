"""The released MAEST checkpoints (docs/design.md, sections 'What MAEST is' and 'Training recipe'): one registry, one
name matcher.

Each entry holds the model's shape (a `MAEST_PRESETS` name), its label set (`discogs400` or `discogs519`, shipped in
`modeling/labels/`) and the facts its model card states (segment length, initialization, training data).
"""

from dataclasses import dataclass
from pathlib import PurePath

from maest.utils.errors import MAESTError
from .configuration_maest import MAEST_PRESETS, MAESTConfig
from .label_names import DISCOGS_LABEL_SETS, discogs_label_names, label_maps


_DISCOGS20 = (
    "Discogs20, an in-house dataset of the Music Technology Group (UPF) with millions of tracks annotated with 400 "
    "music styles of the Discogs taxonomy (style labels derived from the public Discogs metadata)"
)
_DISCOGS_519 = (
    "a larger in-house Discogs-derived dataset of about 4M tracks annotated with 519 music styles of the Discogs "
    "taxonomy"
)
_PASST = "PaSST weights pre-trained on AudioSet (position embeddings resampled to the MAEST grid)"
_DEIT = "DeiT-B distilled weights pre-trained on ImageNet (position embeddings resampled to the MAEST grid)"
_SCRATCH = "random initialization (trained from scratch)"


class UnknownCheckpointError(MAESTError, ValueError):
    """A name that is not one of the released MAEST checkpoints."""


@dataclass(frozen=True)
class PublishedCheckpoint:
    """One released MAEST checkpoint and the Hub repo name this package publishes its conversion under."""

    checkpoint: str  # the original name, e.g. "discogs-maest-30s-pw-129e"
    repo_name: str  # e.g. "maest-30s"
    preset: str  # the `MAESTConfig.from_preset` shape
    label_set: str  # "discogs400" or "discogs519": the style names of its outputs
    seconds: int  # nominal segment length
    training_frames: int  # length of the training crops, in frames
    initialization: str
    training_data: str
    teacher_student: bool = False
    # Whether the paper's downstream figures (docs/design.md, section 'Downstream protocol') were measured with this
    # very checkpoint.
    has_paper_results: bool = False

    @property
    def num_labels(self) -> int:
        return DISCOGS_LABEL_SETS[self.label_set]

    def label_names(self) -> list[str]:
        """The Discogs style names of its outputs, in output order."""
        return discogs_label_names(self.label_set)

    def config(self, **kwargs) -> MAESTConfig:
        """The config of this checkpoint: its shape, its label names and its multi-label problem type (`kwargs`
        override fields)."""
        id2label, label2id = label_maps(self.label_names())
        settings = {**MAEST_PRESETS[self.preset], "id2label": id2label, "label2id": label2id}
        settings["problem_type"] = "multi_label_classification"
        settings.pop("num_labels", None)
        return MAESTConfig(**{**settings, **kwargs})


PUBLISHED_CHECKPOINTS = {
    published.checkpoint: published
    for published in (
        PublishedCheckpoint("discogs-maest-5s-pw-129e", "maest-5s", "maest-5s", "discogs400", 5, 312, _PASST, _DISCOGS20),
        PublishedCheckpoint(
            "discogs-maest-10s-pw-129e", "maest-10s", "maest-10s", "discogs400", 10, 625, _PASST, _DISCOGS20
        ),
        PublishedCheckpoint(
            "discogs-maest-10s-fs-129e", "maest-10s-fs", "maest-10s", "discogs400", 10, 625, _SCRATCH, _DISCOGS20
        ),
        PublishedCheckpoint(
            "discogs-maest-10s-dw-75e", "maest-10s-dw", "maest-10s", "discogs400", 10, 625, _DEIT, _DISCOGS20
        ),
        PublishedCheckpoint(
            "discogs-maest-20s-pw-129e", "maest-20s", "maest-20s", "discogs400", 20, 1250, _PASST, _DISCOGS20
        ),
        PublishedCheckpoint(
            "discogs-maest-30s-pw-129e", "maest-30s", "maest-30s", "discogs400", 30, 1875, _PASST, _DISCOGS20,
            has_paper_results=True,
        ),
        PublishedCheckpoint(
            "discogs-maest-30s-pw-73e-ts", "maest-30s-ts", "maest-30s", "discogs400", 30, 1875, _PASST, _DISCOGS20,
            teacher_student=True,
        ),
        PublishedCheckpoint(
            "discogs-maest-30s-pw-129e-519l", "maest-30s-519l", "maest-30s-519l", "discogs519", 30, 1875, _PASST,
            _DISCOGS_519,
        ),
    )
}


def match_published(name) -> PublishedCheckpoint | None:
    """The released checkpoint that `name` names, or None.

    `name` may be the original name (`discogs-maest-30s-pw-129e`), this package's repo name (`maest-30s`), a Hub id
    (`mtg-upf/discogs-maest-30s-pw-129e`) or a file path (`ckpts/discogs-maest-30s-pw-129e-swa.ckpt`). A file name
    that extends a checkpoint name matches the longest such name, so `...-129e-519l-swa.ckpt` is the 519-label
    model, not `...-129e`.
    """
    base = PurePath(str(name).replace("\\", "/")).name
    for published in PUBLISHED_CHECKPOINTS.values():
        if base in (published.checkpoint, published.repo_name):
            return published
    matches = [
        published
        for published in PUBLISHED_CHECKPOINTS.values()
        if base.startswith((published.checkpoint + "-", published.checkpoint + "."))
    ]
    return max(matches, key=lambda published: len(published.checkpoint), default=None)


def find_published(name) -> PublishedCheckpoint:
    """Like `match_published`, but raises `UnknownCheckpointError` listing the released names when none matches."""
    published = match_published(name)
    if published is None:
        known = ", ".join(f"{p.checkpoint} ({p.repo_name})" for p in PUBLISHED_CHECKPOINTS.values())
        raise UnknownCheckpointError(f"{name!r} is not a released MAEST checkpoint; known: {known}")
    return published


__all__ = ["PUBLISHED_CHECKPOINTS", "PublishedCheckpoint", "UnknownCheckpointError", "find_published", "match_published"]
