"""Streaming training data for MAEST pre-training.

Tracks come from any `datasets` source with `streaming=True` (a Hub dataset id, a local `audiofolder`, WebDataset tar
shards or Parquet files): an audio column and a multi-label tag column (a list of tag names, or a multi-hot vector).
Audio is read with `Audio(decode=False)` and decoded inside the DataLoader workers by the project's one decoder
(`maest.feature_extraction.audio`, as `maest tag` and `maest embed`), so that a corrupt file is counted and skipped
instead of ending the stream.
The front-end (`MAESTFeatureExtractor`) also runs in the workers; short tracks are padded in the log-mel domain.

Exact resumption: each worker reads its shards of the stream in a fixed order (`datasets`' seeded shuffle buffer, one
shuffle per pass over the data) and every random choice about an example (crop offset, class-balancing acceptance)
comes from a generator seeded by (seed, rank, worker, pass, index in the pass), not from a running state. A worker's
position is therefore the pair (pass, index), which travels with every batch; the trainer records the positions of
the batches it consumed and a resumed run skips the examples before them without decoding.
"""

import glob
import json
import logging
from collections import Counter
from pathlib import Path

import datasets
import numpy as np
import torch

from maest.feature_extraction.audio import AudioDecodingError, load_audio
from maest.feature_extraction.feature_extraction_maest import AudioInputError, audio_to_mono
from maest.utils.errors import MAESTError

logger = logging.getLogger(__name__)

DATA_FORMATS = ("auto", "hub", "audiofolder", "webdataset", "parquet")
# The kinds of bad examples that are skipped and counted (never trained on).
PROBLEMS = ("missing_labels", "unknown_tags", "bad_labels", "undecodable_audio", "empty_audio", "bad_teacher_logits")


def from_worker(error: MAESTError) -> MAESTError:
    """The error a DataLoader worker raised, without the worker's traceback that the DataLoader puts into the message
    it re-raises (its last line is `<ErrorClass>: <message>`)."""
    last_line = str(error).strip().splitlines()[-1] if str(error).strip() else ""
    return type(error)(last_line.split(f"{type(error).__name__}: ", 1)[-1])


class DataQualityError(MAESTError, RuntimeError):
    """Too much of the data is unusable: training on the rest would be training on garbage."""


class TrainingDataError(MAESTError, ValueError):
    """Training data that cannot be used as given: a missing source, column or label vocabulary, or less data than
    one batch."""


# ----------------------------------------------------------------------------------------------- sources
def resolve_data_format(source: str, data_format: str = "auto") -> tuple[str, list[str] | None]:
    """Decides how to read `source`: a local folder of audio files (`audiofolder`), tar shards (`webdataset`),
    Parquet files, or a Hub dataset id. Returns the format and, for file formats, the data files."""
    if data_format not in DATA_FORMATS:
        raise TrainingDataError(f"data format must be one of {DATA_FORMATS}, got {data_format!r}")
    path = Path(source).expanduser()
    files = None
    if path.is_dir():
        tars = sorted(str(p) for p in path.rglob("*.tar"))
        parquets = sorted(str(p) for p in path.rglob("*.parquet"))
        if data_format == "auto":
            data_format = "webdataset" if tars else "parquet" if parquets else "audiofolder"
        files = {"webdataset": tars, "parquet": parquets}.get(data_format)
    elif any(ch in source for ch in "*?[") or path.is_file():
        files = sorted(glob.glob(str(path)))
        if not files:
            raise FileNotFoundError(f"no files match {source!r}")
        if data_format == "auto":
            data_format = {".tar": "webdataset", ".parquet": "parquet"}.get(Path(files[0]).suffix)
            if data_format is None:
                raise TrainingDataError(f"cannot tell the format of {files[0]}: use .tar (WebDataset) or .parquet files")
    elif data_format == "auto":
        if source.startswith((".", "/", "~")):
            raise FileNotFoundError(f"data source {source!r} does not exist")
        data_format = "hub"
    elif data_format != "hub":  # a local format named explicitly: the source is a path
        raise FileNotFoundError(f"data source {source!r} does not exist (data_format {data_format})")
    if files is not None and data_format in ("webdataset", "parquet") and not files:
        raise FileNotFoundError(f"no {data_format} files found in {source!r}")
    return data_format, files


def load_streaming_dataset(source: str, split: str = "train", data_format: str = "auto", config_name=None):
    """A `datasets.IterableDataset` (`streaming=True`) over `source`; see [`resolve_data_format`]."""
    data_format, files = resolve_data_format(source, data_format)
    try:
        if data_format == "hub":
            return datasets.load_dataset(source, config_name, split=split, streaming=True)
        if data_format == "audiofolder":
            folder = Path(source).expanduser()
            check_audiofolder(folder)
            return datasets.load_dataset("audiofolder", data_dir=str(folder), split=split, streaming=True)
        return datasets.load_dataset(data_format, data_files={split: files}, split=split, streaming=True)
    except (MAESTError, FileNotFoundError):
        raise
    except Exception as error:  # datasets raises many types (ConnectionError offline, IndexError, ValueError...)
        what = "a reachable Hub dataset (nor a local folder or file)" if data_format == "hub" else f"{data_format} data"
        reason = " ".join(str(error).split())[:200] or type(error).__name__
        raise TrainingDataError(f"{source!r} cannot be read as {what}: {type(error).__name__}: {reason}") from None


def check_audiofolder(folder: Path) -> None:
    """Refuses an `audiofolder` without files or with an empty metadata file (with a message that says so)."""
    if not any(path.is_file() for path in folder.rglob("*")):
        raise TrainingDataError(f"the data folder {folder} is empty: it needs audio files and a metadata.jsonl")
    for metadata in sorted(folder.rglob("metadata.*")):
        if metadata.suffix in (".jsonl", ".csv") and not metadata.read_text(errors="replace").strip():
            raise TrainingDataError(
                f"{metadata} is empty: it needs one line per audio file, e.g. "
                f'{{"file_name": "a.wav", "tags": ["rock", "guitar"]}}'
            )


def prepare_columns(dataset, audio_column: str, label_column: str, extra_columns=()):
    """Keeps only the needed columns and switches audio decoding off (the workers decode with
    `maest.feature_extraction.audio`, which lets them count and skip corrupt files)."""
    columns = dataset.column_names
    if columns is not None:
        for name, role in [(audio_column, "audio"), (label_column, "label")] + [(c, "extra") for c in extra_columns]:
            if name not in columns:
                raise TrainingDataError(f"the dataset has no {role} column {name!r}; its columns are {columns}")
        dataset = dataset.select_columns([audio_column, label_column, *extra_columns])
    features = dataset.features
    if features is not None and isinstance(features.get(audio_column), datasets.Audio):
        dataset = dataset.cast_column(audio_column, datasets.Audio(decode=False))
    return dataset


# ----------------------------------------------------------------------------------------------- labels
class TagVocabulary:
    """The label vocabulary: tag names in model order, with counts when known. Encodes a label value (a list of tag
    names, a comma-separated string, or a multi-hot vector) into a multi-hot float32 vector."""

    def __init__(self, names, counts=None, label_format: str = "auto", unknown_tags: str = "skip"):
        names = [str(n) for n in names]
        if not names:
            raise TrainingDataError("the label vocabulary is empty")
        if len(set(names)) != len(names):
            duplicates = sorted(n for n, c in Counter(names).items() if c > 1)
            raise TrainingDataError(f"the label vocabulary has duplicate tags: {duplicates[:10]}")
        if label_format not in ("auto", "names", "multi_hot"):
            raise TrainingDataError(f"label_format must be auto, names or multi_hot, got {label_format!r}")
        if unknown_tags not in ("skip", "drop"):
            raise TrainingDataError(f"unknown_tags must be 'skip' (skip the example) or 'drop' (ignore the tag), got {unknown_tags!r}")
        self.names = names
        self.index = {name: i for i, name in enumerate(names)}
        self.counts = None if counts is None else np.asarray([counts.get(n, 0) for n in names], dtype=np.float64)
        self.label_format = label_format
        self.unknown_tags = unknown_tags

    def __len__(self):
        return len(self.names)

    @staticmethod
    def _is_multi_hot(value) -> bool:
        return isinstance(value, (list, tuple, np.ndarray)) and len(value) > 0 and all(
            isinstance(v, (int, float, bool, np.integer, np.floating)) and not isinstance(v, str) for v in value
        )

    @staticmethod
    def split_names(value) -> list[str]:
        if isinstance(value, str):
            return [t.strip() for t in value.split(",") if t.strip()]
        return [str(t).strip() for t in value if str(t).strip()]

    def encode(self, value):
        """Returns `(multi_hot, problem, unknown)`: the `(num_labels,)` float32 target or `None`, the problem name
        (one of `PROBLEMS`) or `None`, and the unknown tag names."""
        if value is None:
            return None, "missing_labels", []
        if self.label_format == "multi_hot" or (self.label_format == "auto" and self._is_multi_hot(value)):
            vector = np.asarray(value, dtype=np.float32)
            if vector.shape != (len(self),) or not np.isin(vector, (0.0, 1.0)).all():
                return None, "bad_labels", []
            if vector.sum() == 0:
                return None, "missing_labels", []
            return vector, None, []
        if not isinstance(value, (str, list, tuple, np.ndarray)):
            return None, "bad_labels", []
        tags = self.split_names(value)
        if not tags:
            return None, "missing_labels", []
        unknown = [t for t in tags if t not in self.index]
        if unknown and self.unknown_tags == "skip":
            return None, "unknown_tags", unknown
        known = [self.index[t] for t in tags if t in self.index]
        if not known:
            return None, "unknown_tags", unknown
        vector = np.zeros(len(self), dtype=np.float32)
        vector[known] = 1.0
        return vector, None, unknown

    def class_weights(self, power: float) -> np.ndarray:
        """Sampling weight of each class, `count ** -power` (rarer classes are drawn more often)."""
        if self.counts is None:
            raise TrainingDataError("class-balanced sampling needs tag counts; build the vocabulary from the data")
        return np.where(self.counts > 0, np.maximum(self.counts, 1.0) ** -power, 0.0)

    def save(self, directory):
        directory = Path(directory)
        (directory / "labels.txt").write_text("\n".join(self.names) + "\n")
        if self.counts is not None:
            (directory / "label_counts.json").write_text(json.dumps(dict(zip(self.names, self.counts.tolist())), indent=1))

    @classmethod
    def load(cls, path, **kwargs):
        """Reads `labels.txt` (one tag per line) or a JSON list / `{tag: count}` object; counts from a
        `label_counts.json` beside a `labels.txt` when present."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"label vocabulary file {path} does not exist")
        text = path.read_text()
        counts = None
        if path.suffix == ".json":
            data = json.loads(text)
            if isinstance(data, dict):
                names, counts = list(data), {k: float(v) for k, v in data.items()}
            elif isinstance(data, list):
                names = data
            else:
                raise TrainingDataError(f"{path}: expected a JSON list of tags or an object of tag counts")
        else:
            names = [line.strip() for line in text.splitlines() if line.strip()]
            counts_file = path.with_name("label_counts.json")
            if counts_file.is_file():
                counts = {k: float(v) for k, v in json.loads(counts_file.read_text()).items()}
        return cls(names, counts=counts, **kwargs)

    @classmethod
    def from_dataset(cls, dataset, label_column: str, names=None, **kwargs):
        """Counts the tags of a dataset's label column in one pass (audio is not read). With `names`, only counts
        (for class-balanced sampling); a multi-hot column needs `names` or gets `tag_0`, `tag_1`, ..."""
        counts = Counter()
        multi_hot_sum = None
        for example in dataset.select_columns([label_column]):
            value = example[label_column]
            if value is None:
                continue
            if kwargs.get("label_format") == "multi_hot" or (
                kwargs.get("label_format", "auto") == "auto" and cls._is_multi_hot(value)
            ):
                vector = np.asarray(value, dtype=np.float64)
                if multi_hot_sum is None:
                    multi_hot_sum = np.zeros_like(vector)
                if vector.shape == multi_hot_sum.shape:
                    multi_hot_sum += vector
            else:
                counts.update(cls.split_names(value))
        if multi_hot_sum is not None:
            names = names or [f"tag_{i}" for i in range(len(multi_hot_sum))]
            counts = Counter(dict(zip(names, multi_hot_sum.tolist())))
        if not counts:
            raise TrainingDataError(f"no tags found in the label column {label_column!r}")
        return cls(names or sorted(counts), counts=counts, **kwargs)


# ----------------------------------------------------------------------------------------------- audio
def decode_audio(value, sampling_rate: int, crop_seconds: float | None, crop: str, rng: np.random.Generator):
    """Decodes one track to mono float32 at `sampling_rate` with the project's decoder
    (`maest.feature_extraction.audio.load_audio`, as `maest tag`/`maest embed`) and crops it.

    Args:
        value: a `datasets` audio value with decoding off (`{"path", "bytes"}`), raw bytes, a path, or an already
            decoded `{"array", "sampling_rate"}` (float, or int16/int32/uint8 PCM; 2-D arrays are `(channels,
            samples)` as `datasets` decodes them), brought to mono 16 kHz by `audio_to_mono` as inference does.
        crop_seconds: crop length; `None` keeps everything.
        crop: `"random"` (uniform offset drawn from `rng`) or `"center"`.

    Returns:
        `torch.Tensor` of shape `(samples,)`, at most `crop_seconds` long.

    Raises:
        AudioDecodingError: unreadable, empty or corrupt audio (the message names the file when known).
    """
    if isinstance(value, dict) and value.get("array") is not None:
        description = str(value.get("path") or "decoded audio")
        if value.get("sampling_rate") is None:
            raise AudioDecodingError(f"{description}: decoded audio needs its 'sampling_rate'")
        array = value["array"]
        channel_axis = 0 if np.ndim(array) == 2 else None  # `datasets` decodes to (channels, samples)
        try:
            audio = audio_to_mono(array, value["sampling_rate"], sampling_rate, channel_axis, description)
        except AudioInputError as error:
            raise AudioDecodingError(str(error)) from None
        return _crop_samples(audio, sampling_rate, crop_seconds, crop, rng)
    if hasattr(value, "get_all_samples"):
        # Already a decoder: a `datasets` Audio column whose decoding was left on (e.g. after a `map`, when the
        # features are unknown and cannot be switched off); its samples are at the file's own rate.
        decoded = value.get_all_samples()
        return decode_audio({"array": decoded.data.numpy(), "sampling_rate": decoded.sample_rate}, sampling_rate,
                            crop_seconds, crop, rng)
    path, data = (value.get("path"), value.get("bytes")) if isinstance(value, dict) else (None, value)
    if isinstance(data, (str, Path)):
        path, data = data, None
    if data is not None:
        audio = load_audio(str(path or "embedded audio"), sampling_rate, data=bytes(data))
    elif path is not None:
        audio = load_audio(path, sampling_rate)
    else:
        raise AudioDecodingError("the audio value has neither bytes nor a path")
    return _crop_samples(audio, sampling_rate, crop_seconds, crop, rng)


def _crop_samples(audio, sampling_rate, crop_seconds, crop, rng):
    if crop_seconds is None:
        return audio
    length = int(round(crop_seconds * sampling_rate))
    if audio.shape[0] <= length:
        return audio
    span = audio.shape[0] - length
    start = int(rng.integers(0, span + 1)) if crop == "random" else span // 2
    return audio[start : start + length]


# ----------------------------------------------------------------------------------------------- the stream
def example_rng(*key: int) -> np.random.Generator:
    """A generator that depends only on the example's identity, so that resuming reproduces every random choice."""
    return np.random.default_rng([int(k) for k in key])


class TaggedAudioStream(torch.utils.data.IterableDataset):
    """Batches of `(input_values, labels)` from a streaming tagged-audio dataset, built inside DataLoader workers.

    Each worker yields whole batches (use `DataLoader(batch_size=None)`): a dict with `input_values`
    `(batch, max_length, 96)`, `labels` `(batch, num_labels)`, optionally `teacher_logits`, and bookkeeping: the
    worker id, its position (pass, index) after the batch, and its cumulative counts of examples seen, used,
    rejected by class balancing and skipped for each problem.

    Args:
        dataset: a `datasets.IterableDataset` (already split by node when running on several processes).
        vocabulary (`TagVocabulary`): encodes the label column.
        feature_extractor (`MAESTFeatureExtractor`): its `max_length` is the crop length in frames.
        batch_size (`int`): examples per batch (per process).
        crop (`"random"` or `"center"`): training uses random crops; validation the center.
        repeat (`bool`): loop over the data forever (training; one pass = one reshuffle), or one pass (validation,
            where the last batch may be smaller).
        class_balance_power (`float`, *optional*): class-balanced sampling; an example is kept with probability
            `max(w[tag]) / max(w)` with `w = count ** -power`, decided before decoding.
        start_positions (`dict`): `{worker: (pass, index)}` to resume from.
        max_bad_fraction (`float`): raise [`DataQualityError`] when more than this fraction of the examples seen
            (after at least 50) are unusable.
    """

    def __init__(
        self,
        dataset,
        vocabulary: TagVocabulary,
        feature_extractor,
        batch_size: int,
        audio_column: str = "audio",
        label_column: str = "tags",
        teacher_logits_column: str | None = None,
        crop: str = "random",
        repeat: bool = True,
        class_balance_power: float | None = None,
        seed: int = 0,
        rank: int = 0,
        start_positions: dict | None = None,
        max_bad_fraction: float = 0.5,
        max_examples: int | None = None,
        max_logged_problems: int = 5,
    ):
        super().__init__()
        self.dataset = dataset
        self.vocabulary = vocabulary
        self.feature_extractor = feature_extractor
        self.batch_size = batch_size
        self.audio_column = audio_column
        self.label_column = label_column
        self.teacher_logits_column = teacher_logits_column
        self.crop = crop
        self.repeat = repeat
        self.seed = seed
        self.rank = rank
        self.start_positions = {int(k): tuple(v) for k, v in (start_positions or {}).items()}
        self.max_bad_fraction = max_bad_fraction
        self.max_examples = max_examples
        self.max_logged_problems = max_logged_problems
        self.acceptance = None
        if class_balance_power:
            weights = vocabulary.class_weights(class_balance_power)
            self.acceptance = weights / weights.max()
        # Frames -> samples: `1 + ceil(n / hop)` frames need n = (frames - 1) * hop samples.
        self.crop_seconds = (feature_extractor.max_length - 1) * feature_extractor.hop_size / feature_extractor.sampling_rate

    def _describe(self, example) -> str:
        value = example.get(self.audio_column)
        if isinstance(value, dict) and value.get("path"):
            return str(value["path"])
        return f"example with labels {str(example.get(self.label_column))[:80]}"

    def _prepare(self, example, rng, counts: Counter, pass_index: int):
        """One example -> (features, target, teacher logits) or None (counted under its problem)."""

        def skip(problem, detail=""):
            counts[problem] += 1
            if counts[problem] <= self.max_logged_problems:
                logger.warning(f"skipping {self._describe(example)}: {problem.replace('_', ' ')}{detail}")
            return None

        target, problem, unknown = self.vocabulary.encode(example.get(self.label_column))
        if unknown:
            counts["unknown_tag_occurrences"] += len(unknown)
        if problem is not None:
            return skip(problem, f" ({', '.join(map(str, unknown[:5]))})" if unknown else "")
        if self.acceptance is not None:
            # Class balancing, decided before decoding: keep with probability of the example's rarest tag.
            if rng.random() >= self.acceptance[target > 0].max():
                counts["balance_rejected"] += 1
                return None
        teacher = None
        if self.teacher_logits_column is not None:
            teacher = np.asarray(example.get(self.teacher_logits_column) or [], dtype=np.float32)
            if teacher.shape != (len(self.vocabulary),) or not np.isfinite(teacher).all():
                return skip("bad_teacher_logits", f" (shape {teacher.shape})")
        try:
            audio = decode_audio(example.get(self.audio_column), self.feature_extractor.sampling_rate,
                                 self.crop_seconds, self.crop, rng)
        except Exception as error:  # AudioDecodingError, and whatever a damaged file makes FFmpeg raise
            return skip("undecodable_audio", f" ({type(error).__name__}: {str(error).splitlines()[0][:120]})")
        if audio.numel() == 0 or not torch.isfinite(audio).all() or audio.abs().max() == 0:
            return skip("empty_audio", " (no samples, silence or non-finite samples)")
        features = self.feature_extractor(audio, sampling_rate=self.feature_extractor.sampling_rate)["input_values"][0]
        return features, target, teacher, f"{pass_index}:{self._describe(example)}"

    def _batch(self, items, worker, pass_index, position, counts):
        batch = {
            "input_values": torch.stack([item[0] for item in items]),
            "labels": torch.from_numpy(np.stack([item[1] for item in items])),
            "ids": [item[3] for item in items],  # "<pass>:<file>", for tests and audits
            "worker": worker,
            "position": (pass_index, position),
            "counts": dict(counts),
        }
        if self.teacher_logits_column is not None:
            batch["teacher_logits"] = torch.from_numpy(np.stack([item[2] for item in items]))
        return batch

    def _check_quality(self, counts):
        bad = sum(counts[p] for p in PROBLEMS)
        if counts["seen"] >= 50 and bad > self.max_bad_fraction * counts["seen"]:
            details = ", ".join(f"{p}: {counts[p]}" for p in PROBLEMS if counts[p])
            raise DataQualityError(
                f"{bad} of the {counts['seen']} examples read so far are unusable ({details}); refusing to train on "
                f"the rest. Fix the data or raise max_bad_fraction (now {self.max_bad_fraction})."
            )

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker = info.id if info is not None else 0
        if info is not None:
            torch.set_num_threads(1)
        pass_index, start = self.start_positions.get(worker, (0, 0))
        counts = Counter()
        items = []
        while True:
            self.dataset.set_epoch(pass_index)
            used_before, index = counts["used"], -1
            for index, example in enumerate(self.dataset):
                if index < start:
                    continue  # resuming: these were consumed before (nothing is decoded)
                if self.max_examples is not None and index >= self.max_examples:
                    index -= 1
                    break
                counts["seen"] += 1
                rng = example_rng(self.seed, self.rank, worker, pass_index, index)
                item = self._prepare(example, rng, counts, pass_index)
                if item is None:
                    self._check_quality(counts)
                    continue
                counts["used"] += 1
                items.append(item)
                if len(items) == self.batch_size:
                    yield self._batch(items, worker, pass_index, index + 1, counts)
                    items = []
            if not self.repeat:
                if items:
                    yield self._batch(items, worker, pass_index, index + 1, counts)
                return
            if index == -1:
                return  # this worker was given no shards
            if start == 0 and index + 1 < self.batch_size:
                # Every batch would repeat the same few examples, and a huge batch_size would decode and hold in
                # memory until the machine gives out: refused at the end of the first pass.
                share = ""
                if info is not None and info.num_workers > 1:
                    share = f" (data worker {worker}'s share: each of the {info.num_workers} workers reads its own files)"
                raise TrainingDataError(
                    f"batch_size {self.batch_size} is larger than the data: a whole pass over the training data{share} "
                    f"has {index + 1} examples; set batch_size to at most {index + 1}"
                )
            if start == 0 and counts["used"] == used_before:
                raise DataQualityError(f"a whole pass over the data gave no usable example ({format_data_report(counts)})")
            pass_index, start = pass_index + 1, 0


def stream_num_workers(dataset, requested: int) -> int:
    """`datasets` gives each DataLoader worker whole shards; more workers than shards would idle."""
    shards = getattr(dataset, "num_shards", None) or 1
    if requested > shards:
        logger.warning(
            f"the data has {shards} shard(s), so only {shards} DataLoader worker(s) can read it (asked for {requested}); "
            f"split the data into more files (or tar/parquet shards) for more decoding parallelism"
        )
    return min(requested, shards)


def merge_counts(per_worker: dict) -> Counter:
    """Sums the cumulative counts that each worker reported with its latest batch."""
    total = Counter()
    for counts in per_worker.values():
        total.update(counts)
    return total


def format_data_report(counts) -> str:
    seen = counts.get("seen", 0)
    parts = [f"{seen} examples read", f"{counts.get('used', 0)} used"]
    if counts.get("balance_rejected"):
        parts.append(f"{counts['balance_rejected']} passed over by class balancing")
    for problem in PROBLEMS:
        if counts.get(problem):
            parts.append(f"{counts[problem]} skipped ({problem.replace('_', ' ')})")
    if counts.get("unknown_tag_occurrences"):
        parts.append(f"{counts['unknown_tag_occurrences']} unknown tag occurrences")
    return ", ".join(parts)


__all__ = [
    "DataQualityError",
    "TrainingDataError",
    "from_worker",
    "check_audiofolder",
    "TagVocabulary",
    "TaggedAudioStream",
    "decode_audio",
    "format_data_report",
    "load_streaming_dataset",
    "merge_counts",
    "prepare_columns",
    "resolve_data_format",
    "stream_num_workers",
]
