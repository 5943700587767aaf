"""Facts about the released MAEST checkpoints and the paper's downstream results (DESIGN.md sections 1, 5 and 6),
kept in one place for the model cards."""

from dataclasses import dataclass


PAPER_TITLE = "Efficient Supervised Training of Audio Transformers for Music Representation Learning"
PAPER_URL = "https://arxiv.org/abs/2309.16418"
ORIGINAL_CODE_URL = "https://github.com/palonso/MAEST"
ORIGINAL_LICENSE = "cc-by-nc-sa-4.0"
ORIGINAL_LICENSE_URL = "https://creativecommons.org/licenses/by-nc-sa/4.0/"

CITATION_BIBTEX = """@inproceedings{alonso2023efficient,
  title     = {Efficient Supervised Training of Audio Transformers for Music Representation Learning},
  author    = {Alonso-Jim{\\'e}nez, Pablo and Serra, Xavier and Bogdanov, Dmitry},
  booktitle = {Proceedings of the 24th International Society for Music Information Retrieval Conference (ISMIR)},
  year      = {2023},
  address   = {Milan, Italy},
  doi       = {10.5281/zenodo.10265414},
}"""

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


@dataclass(frozen=True)
class PublishedCheckpoint:
    """One released MAEST checkpoint and the Hub repo name this package publishes its conversion under."""

    checkpoint: str  # the original name, e.g. "discogs-maest-30s-pw-129e"
    repo_name: str  # e.g. "maest-30s"
    preset: str  # the `MAESTConfig.from_preset` shape
    seconds: int  # nominal segment length
    training_frames: int  # length of the training crops, in frames
    num_labels: int
    initialization: str
    training_data: str
    teacher_student: bool = False
    # Whether DESIGN.md section 6's downstream figures were measured with this very checkpoint.
    has_paper_results: bool = False


PUBLISHED_MODELS = {
    published.checkpoint: published
    for published in (
        PublishedCheckpoint("discogs-maest-5s-pw-129e", "maest-5s", "maest-5s", 5, 312, 400, _PASST, _DISCOGS20),
        PublishedCheckpoint("discogs-maest-10s-pw-129e", "maest-10s", "maest-10s", 10, 625, 400, _PASST, _DISCOGS20),
        PublishedCheckpoint("discogs-maest-10s-fs-129e", "maest-10s-fs", "maest-10s", 10, 625, 400, _SCRATCH, _DISCOGS20),
        PublishedCheckpoint("discogs-maest-10s-dw-75e", "maest-10s-dw", "maest-10s", 10, 625, 400, _DEIT, _DISCOGS20),
        PublishedCheckpoint("discogs-maest-20s-pw-129e", "maest-20s", "maest-20s", 20, 1250, 400, _PASST, _DISCOGS20),
        PublishedCheckpoint(
            "discogs-maest-30s-pw-129e", "maest-30s", "maest-30s", 30, 1875, 400, _PASST, _DISCOGS20,
            has_paper_results=True,
        ),
        PublishedCheckpoint(
            "discogs-maest-30s-pw-73e-ts", "maest-30s-ts", "maest-30s", 30, 1875, 400, _PASST, _DISCOGS20,
            teacher_student=True,
        ),
        PublishedCheckpoint(
            "discogs-maest-30s-pw-129e-519l", "maest-30s-519l", "maest-30s-519l", 30, 1875, 519, _PASST, _DISCOGS_519
        ),
    )
}


def find_published(name: str) -> PublishedCheckpoint:
    """A released checkpoint by its original name (`discogs-maest-30s-pw-129e`, also with a `-swa.ckpt` suffix or
    a path) or by its repo name here (`maest-30s`)."""
    base = str(name).replace("\\", "/").rsplit("/", 1)[-1]
    for published in PUBLISHED_MODELS.values():
        if base in (published.checkpoint, published.repo_name):
            return published
    # A file name such as `discogs-maest-30s-pw-129e-swa.ckpt`: the longest matching checkpoint name wins, so that
    # `...-129e-519l-swa.ckpt` is not taken for `...-129e`.
    matches = [published for published in PUBLISHED_MODELS.values() if base.startswith(published.checkpoint + "-")
               or base.startswith(published.checkpoint + ".")]
    if matches:
        return max(matches, key=lambda published: len(published.checkpoint))
    known = ", ".join(f"{p.checkpoint} ({p.repo_name})" for p in PUBLISHED_MODELS.values())
    raise ValueError(f"{name!r} is not a released MAEST checkpoint; known: {known}")


@dataclass(frozen=True)
class DownstreamResult:
    """A paper figure: macro ROC-AUC and macro average precision, as fractions."""

    dataset_type: str
    dataset_name: str
    dataset_config: str | None
    roc_auc: float
    average_precision: float
    baseline_roc_auc: float  # EfficientNet-B0 trained on the same data (the paper's CNN baseline)
    baseline_average_precision: float


# DESIGN.md section 6: the 30 s model's embeddings (block 7, cls + dist + mean tokens) with an MLP probe.
PAPER_DOWNSTREAM_RESULTS = (
    DownstreamResult("mtg-jamendo", "MTG-Jamendo (genre)", "genre", 0.882, 0.216, 0.877, 0.199),
    DownstreamResult("mtg-jamendo", "MTG-Jamendo (instrument)", "instrument", 0.800, 0.229, 0.776, 0.198),
    DownstreamResult("mtg-jamendo", "MTG-Jamendo (mood/theme)", "moodtheme", 0.781, 0.154, 0.756, 0.136),
    DownstreamResult("mtg-jamendo", "MTG-Jamendo (top-50 tags)", "top50tags", 0.840, 0.315, 0.831, 0.297),
    DownstreamResult("magnatagatune", "MagnaTagATune", None, 0.920, 0.419, 0.902, 0.374),
    DownstreamResult("msd", "Million Song Dataset (paper's first split)", "split-1", 0.924, 0.407, 0.904, 0.328),
    DownstreamResult("msd", "Million Song Dataset (paper's second split)", "split-2", 0.898, 0.354, 0.889, 0.328),
)
PAPER_PROBE_DESCRIPTION = (
    "frozen embeddings of a middle transformer block (cls, distillation and mean patch tokens concatenated) per "
    "segment, averaged per track, with a shallow probe (one hidden layer of 512 units, or linear) selected on "
    "validation ROC-AUC; macro ROC-AUC and macro average precision on the test set"
)
