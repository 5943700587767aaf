"""Labeled datasets for `maest probe`: loading the splits of any `datasets` source and turning a label column into
probe targets.

Label columns (per track):
- a list of tag names (`["piano", "fast"]`), or a comma-separated string of them when any value of the column
  contains a comma -> multi-label;
- a multi-hot list of 0/1 values of one length -> multi-label (names from `label_names`, or "0".."C-1");
- a list of class ids of a `Sequence(ClassLabel)` feature -> multi-label with the feature's names;
- one class per track (a string, or a `ClassLabel` id) -> single-label (multiclass), scored one-vs-rest.
The vocabulary is the union of the tags of all splits, sorted (or the `ClassLabel` names, or `label_names`); a tag
absent from a split's references has a single class there and is skipped by that split's macro averages. A track
without a label value (`None`) is left out and counted.
"""

import logging
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np

from maest.utils.constants import PROBE_TASKS

from . import EvaluationError


logger = logging.getLogger(__name__)

SPLIT_ALIASES = {
    "train": ("train", "training"),
    "validation": ("validation", "valid", "val", "dev", "development"),
    "test": ("test", "testing", "eval", "evaluation"),
}
TASKS = PROBE_TASKS  # the CLI offers the same (`maest.utils.constants`)


def load_labeled_splits(data: str, config_name: str | None = None, streaming: bool = True) -> dict:
    """The train/validation/test splits of a dataset: a Hub dataset id, a local folder that `datasets.load_dataset`
    reads (an `audiofolder` with `train/` and `test/` subfolders or split-named files, Parquet files...), a
    `save_to_disk` folder, or a Parquet file or glob (one `train` split).

    Returns `{"train": ..., "validation": ..., "test": ...}` with the splits that exist, under these canonical names
    (aliases such as `valid`, `dev` are recognized); raises if there is no training split.
    """
    try:
        loaded = _load_dataset(data, config_name, streaming)
    except (EvaluationError, FileNotFoundError):
        raise
    except Exception as error:  # datasets raises many types (ConnectionError offline, DatasetNotFoundError...)
        reason = " ".join(str(error).split())[:300] or type(error).__name__
        path = Path(data).expanduser()
        what = "a dataset" if path.exists() else "a local dataset (no such file or folder) nor a reachable Hub dataset"
        offline = "; offline (HF_HUB_OFFLINE), only datasets in the local cache can be read" if (
            not path.exists() and datasets.config.HF_HUB_OFFLINE
        ) else ""
        raise EvaluationError(f"{data!r} cannot be read as {what}: {type(error).__name__}: {reason}{offline}") from None

    splits = {}
    for canonical, aliases in SPLIT_ALIASES.items():
        found = [name for name in loaded if name.lower() in aliases]
        if len(found) > 1:
            raise EvaluationError(f"the dataset has several {canonical} splits: {found}")
        if found:
            splits[canonical] = loaded[found[0]]
    known_names = {alias for aliases in SPLIT_ALIASES.values() for alias in aliases}
    ignored = sorted(name for name in loaded if name.lower() not in known_names)
    if ignored:
        logger.warning(f"ignoring the splits {ignored} (not train, validation or test)")
    if "train" not in splits:
        raise EvaluationError(f"the dataset has no training split; its splits are {sorted(loaded)}")
    return splits


def _load_dataset(data: str, config_name: str | None, streaming: bool):
    path = Path(data).expanduser()
    if (path / "dataset_dict.json").is_file() or (path / "dataset_info.json").is_file():
        loaded = datasets.load_from_disk(str(path))
        return datasets.DatasetDict({"train": loaded}) if isinstance(loaded, datasets.Dataset) else loaded
    if path.is_dir():
        return datasets.load_dataset(str(path), streaming=streaming)
    if path.is_file() or any(character in data for character in "*?["):
        suffix = path.suffix.lstrip(".")
        builder = {"parquet": "parquet", "csv": "csv", "json": "json", "jsonl": "json", "arrow": "arrow"}.get(suffix)
        if builder is None:
            raise EvaluationError(f"cannot read {data!r}: give a dataset folder, a Hub id, or .parquet/.csv/.jsonl files")
        return datasets.load_dataset(builder, data_files={"train": data}, streaming=streaming)
    if data.startswith((".", "/", "~")):
        raise FileNotFoundError(f"dataset {data!r} does not exist")
    return datasets.load_dataset(data, config_name, streaming=streaming)


def carve_split(num_examples: int, fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A deterministic random split of `range(num_examples)` into `(kept, carved)` index arrays (both sorted), the
    carved part having `round(fraction * num_examples)` examples (at least 1, leaving at least 1)."""
    if not 0 < fraction < 1:
        raise EvaluationError(f"the fraction to carve must be in (0, 1), got {fraction}")
    if num_examples < 2:
        raise EvaluationError(f"cannot split {num_examples} example(s)")
    num_carved = min(max(1, round(fraction * num_examples)), num_examples - 1)
    permutation = np.random.default_rng(seed).permutation(num_examples)
    return np.sort(permutation[num_carved:]), np.sort(permutation[:num_carved])


@dataclass
class LabelEncoding:
    """How a label column becomes probe targets: `names` (label order) and `task` (`multilabel` or `multiclass`),
    with `value_kind` the form of the values (`tags`, `comma_tags`, `multi_hot`, `tag_ids`, `class`, `class_id`)."""

    names: list
    task: str
    value_kind: str

    def encode(self, values) -> tuple[np.ndarray, np.ndarray]:
        """`(targets, kept)`: multi-hot `(N, C)` float32 targets (multilabel) or class indices `(N,)` (multiclass) of
        the values that are not `None`, and the positions of those values."""
        index = {name: i for i, name in enumerate(self.names)}
        kept = np.array([i for i, value in enumerate(values) if value is not None], dtype=np.int64)
        values = [values[i] for i in kept]
        if self.task == "multiclass":
            if self.value_kind == "class_id":
                targets = np.array([int(value) for value in values], dtype=np.int64)
                if len(targets) and (targets.min() < 0 or targets.max() >= len(self.names)):
                    raise EvaluationError(f"class ids must be in [0, {len(self.names)})")
            else:
                targets = np.array([index[str(value)] for value in values], dtype=np.int64)
            return targets, kept
        targets = np.zeros((len(values), len(self.names)), dtype=np.float32)
        for row, value in enumerate(values):
            if self.value_kind == "multi_hot":
                vector = np.asarray(value, dtype=np.float32)
                if vector.shape != (len(self.names),) or not np.isin(vector, (0, 1)).all():
                    raise EvaluationError(f"multi-hot label of track {kept[row]} has shape {vector.shape} or non-0/1 values")
                targets[row] = vector
            elif self.value_kind == "tag_ids":
                targets[row, [int(v) for v in value]] = 1.0
            else:
                targets[row, [index[tag] for tag in _tags(value, self.value_kind)]] = 1.0
        return targets, kept


def _tags(value, value_kind: str) -> list:
    if value_kind == "comma_tags":
        return [tag.strip() for tag in str(value).split(",") if tag.strip()]
    return [str(tag).strip() for tag in value if str(tag).strip()]


def _is_number(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def build_label_encoding(values_by_split: dict, feature=None, task: str = "auto", label_names=None) -> LabelEncoding:
    """Decides the task and the label vocabulary from a label column's values in every split (see the module
    docstring). `feature` is the column's `datasets` feature when known; `label_names` fixes the names (required
    order for multi-hot values)."""
    if task not in TASKS:
        raise EvaluationError(f"task must be one of {TASKS}, got {task!r}")
    values = [value for split_values in values_by_split.values() for value in split_values if value is not None]
    if not values:
        raise EvaluationError("the label column has no values")
    inner = getattr(feature, "feature", None)
    if isinstance(feature, datasets.ClassLabel):
        kind, names = "class_id", list(feature.names)
    elif isinstance(inner, datasets.ClassLabel):
        kind, names = "tag_ids", list(inner.names)
    elif all(isinstance(value, str) for value in values):
        split_commas = task == "multilabel" or (task == "auto" and any("," in value for value in values))
        kind = "comma_tags" if split_commas else "class"
        names = sorted({tag for value in values for tag in (_tags(value, kind) if split_commas else [value])})
    elif all(isinstance(value, (list, tuple, np.ndarray)) for value in values):
        lengths = {len(value) for value in values}
        flat = [item for value in values for item in value]
        if flat and all(_is_number(item) for item in flat) and len(lengths) == 1 and set(flat) <= {0, 1}:
            kind, names = "multi_hot", [str(i) for i in range(lengths.pop())]
        elif all(isinstance(item, str) for item in flat):
            kind, names = "tags", sorted({tag for value in values for tag in _tags(value, "tags")})
        else:
            raise EvaluationError("list labels must be tag names or multi-hot 0/1 vectors of one length")
    elif all(_is_number(value) and float(value).is_integer() for value in values):
        kind = "class_id"
        names = [str(i) for i in range(int(max(values)) + 1)]
    else:
        examples = sorted({type(value).__name__ for value in values})
        raise EvaluationError(f"cannot read labels of types {examples}: use tag lists, multi-hot vectors or class names")

    if label_names is not None:
        label_names = [str(name) for name in label_names]
        if kind in ("multi_hot", "class_id", "tag_ids") and len(label_names) != len(names):
            raise EvaluationError(f"{len(label_names)} label names given for {len(names)} labels")
        if kind in ("tags", "comma_tags", "class"):
            unknown = sorted(set(names) - set(label_names))
            if unknown:
                raise EvaluationError(f"labels {unknown[:10]} are not among the given label names")
        names = label_names
    encoding_task = "multiclass" if kind in ("class", "class_id") else "multilabel"
    if task == "multiclass" and encoding_task != "multiclass":
        raise EvaluationError(f"--task multiclass needs one class per track, the labels are {kind.replace('_', ' ')}")
    return LabelEncoding(names=names, task=encoding_task, value_kind=kind)


__all__ = ["LabelEncoding", "build_label_encoding", "carve_split", "load_labeled_splits"]
