"""Label names: reading them from a file, the `id2label` / `label2id` maps of a config, and the Discogs style names
of the published models (shipped with the package in `modeling/labels/`, in output order)."""

import json
import logging
from importlib import resources

from maest.utils.errors import MAESTError


logger = logging.getLogger(__name__)

# The label sets of the published models: 400 Discogs styles for every `discogs-maest-*` model but `-519l`.
DISCOGS_LABEL_SETS = {"discogs400": 400, "discogs519": 519}


class LabelError(MAESTError, ValueError):
    """Label names that cannot be used: an unreadable or empty file, repeats, or the wrong count for a model."""


def check_label_names(names, source: str = "labels") -> list[str]:
    """`names` as a list of non-empty strings without repeats; raises `LabelError` naming `source` otherwise."""
    names = [str(name).strip() for name in names]
    if not names:
        raise LabelError(f"{source}: no label names")
    if "" in names:
        raise LabelError(f"{source}: label {names.index('')} is empty")
    seen: dict[str, int] = {}
    for index, name in enumerate(names):
        if name in seen:
            raise LabelError(f"{source}: label {name!r} appears twice (entries {seen[name]} and {index})")
        seen[name] = index
    return names


def read_label_file(path) -> list[str]:
    """Label names in output order from a text file (one per line; blank lines are skipped), a JSON list, or a JSON
    `{index: name}` object.

    Raises:
        `LabelError` for a missing, unreadable or empty file, a malformed JSON file, or repeated names.
    """
    try:
        with open(path, encoding="utf-8") as file:
            text = file.read()
    except UnicodeDecodeError as error:
        raise LabelError(f"label file {path} is not UTF-8 text ({error.reason} at byte {error.start})") from error
    except OSError as error:
        raise LabelError(f"cannot read the label file {path}: {error.strerror or error}") from error
    if str(path).endswith(".json"):
        return check_label_names(_json_label_names(text, path), source=str(path))
    return check_label_names([line for line in text.splitlines() if line.strip()], source=str(path))


def _json_label_names(text: str, path) -> list:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise LabelError(f"label file {path} is not valid JSON ({error.msg}, line {error.lineno})") from error
    if isinstance(data, dict):
        try:
            indices = sorted(data, key=int)
        except ValueError as error:
            raise LabelError(f"label file {path}: a JSON object must map indices 0..n-1 to names") from error
        if [int(index) for index in indices] != list(range(len(indices))):
            raise LabelError(f"label file {path}: a JSON object must map indices 0..n-1 to names")
        return [data[index] for index in indices]
    if not isinstance(data, list) or not all(isinstance(name, str) for name in data):
        raise LabelError(f"label file {path}: expected a JSON list of names or an {{index: name}} object")
    return data


def label_maps(names) -> tuple[dict[int, str], dict[str, int]]:
    """`(id2label, label2id)` of label names in output order."""
    names = check_label_names(names)
    return dict(enumerate(names)), {name: index for index, name in enumerate(names)}


def set_label_names(config, names, source: str = "labels") -> None:
    """Gives `config` (a `MAESTConfig`) these label names; their count must be the model's output count."""
    names = check_label_names(names, source=source)
    if len(names) != config.num_labels:
        raise LabelError(f"{source}: {len(names)} label names for a model with {config.num_labels} outputs")
    config.id2label, config.label2id = label_maps(names)


def discogs_label_names(label_set: str) -> list[str]:
    """The Discogs style names of a published label set (`discogs400` or `discogs519`), in output order."""
    if label_set not in DISCOGS_LABEL_SETS:
        raise LabelError(f"unknown label set {label_set!r}; known: {', '.join(DISCOGS_LABEL_SETS)}")
    text = resources.files(__package__).joinpath("labels", f"{label_set}.txt").read_text(encoding="utf-8")
    return check_label_names(text.splitlines(), source=label_set)


def discogs_label_set_for(num_labels: int) -> str | None:
    """The published label set with `num_labels` names (`discogs400` for 400, `discogs519` for 519), or None."""
    return next((name for name, size in DISCOGS_LABEL_SETS.items() if size == num_labels), None)


def has_label_names(config) -> bool:
    """Whether `config` names its labels (rather than transformers' placeholders `LABEL_0`, `LABEL_1`, ...)."""
    id2label = config.id2label or {}
    return any(str(name) != f"LABEL_{index}" for index, name in id2label.items())


def apply_discogs_names(config, source: str) -> bool:
    """Names the labels of a config that has none (a converted original checkpoint stores none) with the published
    Discogs styles when its output count is 400 or 519; logs it. Returns whether it did."""
    label_set = discogs_label_set_for(config.num_labels)
    if label_set is None or has_label_names(config):
        return False
    set_label_names(config, discogs_label_names(label_set), source=label_set)
    logger.info("%s stores no label names: using the %d Discogs styles of %s", source, config.num_labels, label_set)
    return True


__all__ = [
    "DISCOGS_LABEL_SETS",
    "LabelError",
    "check_label_names",
    "discogs_label_names",
    "discogs_label_set_for",
    "apply_discogs_names",
    "has_label_names",
    "label_maps",
    "read_label_file",
    "set_label_names",
]
