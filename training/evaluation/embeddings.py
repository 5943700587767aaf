"""Per-track MAEST embeddings of a dataset, for probing, with an on-disk cache.

A track's embedding is the mean over its consecutive segments (`MAESTFeatureExtractor(..., return_segments=True)`,
segments of the model's length) of the paper's pooled block outputs. One forward pass with `output_hidden_states`
gives every block at once, and each block's output is pooled into the three token vectors of the poster
(`pool_embedding_tokens`: c = cls token, d = distillation token, a = average of the patch tokens); any token set
(`c`, `d`, `a`, `cd`, `ca`, `da`, `cda`) is a concatenation of those, so a whole blocks x token-sets sweep costs one
pass over the audio.

Blocks are numbered 1..num_hidden_layers as on the poster: block `b` is `hidden_states[b]`, the output of the b-th
transformer block (no final norm), i.e. `model.maest.embed(block=b - 1)`; the paper's embedding is block 7 `cda`.

The cache
---------
`cache_dir/<model key>/<cache name>.safetensors`, one file per (model, split), holding for every track and every
block the three token vectors (`block_<b>`: `(num_tracks, 3, hidden_size)` float32; 3 x 12 x 768 floats, about 110 KB
per track for a base-size model), the number of segments per track, and in its metadata the tracks' keys.

- The model key is a hash of the encoder's weights, its configuration (less the label names), the feature extractor's
  settings and the segmenting mode: anything that changes the embeddings changes the key.
- A track's key is its file (absolute path, size and modification time) when the audio is a local file, otherwise a
  hash of its encoded bytes (or of its decoded samples). A changed file has a new key, so its old entry is not used;
  it is replaced on the next write.
- A call reads the split's file, computes only the tracks it lacks, and rewrites the file atomically (a temporary
  file renamed over it) with the new entries added; entries of other tracks stay. Deleting the folder is always safe.
"""

import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import numpy as np
import torch
from datasets.utils.file_utils import xopen
from safetensors import safe_open
from safetensors.numpy import save_file
from tqdm.auto import tqdm
from transformers import PreTrainedConfig

from maest.feature_extraction import MAESTFeatureExtractor
from maest.feature_extraction.audio import AudioDecodingError, load_audio, track_segment_features
from maest.feature_extraction.feature_extraction_maest import AudioInputError, audio_to_mono
from maest.utils.constants import POSTER_TOKEN_SETS
from maest.utils.files import atomic_write
from maest.modeling import (
    MAESTForAudioClassification,
    MAESTModel,
    load_maest,
    parse_embedding_tokens,
    pool_embedding_tokens,
)

from . import EvaluationError


logger = logging.getLogger(__name__)

CACHE_FORMAT = "maest-track-embeddings-v2"  # v2: decoded by maest.feature_extraction.audio, as `maest embed`
# Stored token order; `pool_embedding_tokens(hidden, STORED_TOKENS)` gives these three vectors concatenated.
STORED_TOKENS = ("cls", "dist", "mean")
TOKEN_LETTERS = {"cls": "c", "dist": "d", "mean": "a"}



def token_set_name(tokens) -> str:
    """The poster's name of a token set: `("cls", "mean")`, `"cls,mean"` or `"ca"` -> `"ca"`."""
    try:
        return "".join(TOKEN_LETTERS[name] for name in parse_embedding_tokens(tokens))
    except ValueError as error:
        raise EvaluationError(f"token set {tokens!r}: {error}") from None


def parse_blocks(blocks, num_blocks: int) -> list[int]:
    """1-based block numbers from `None` or `"all"` (all), an int, an iterable of ints, or a string such as `"1-12"`,
    `"6"`, `"1,4,7-9"`."""
    if blocks is None or (isinstance(blocks, str) and blocks.strip().lower() == "all"):
        numbers = list(range(1, num_blocks + 1))
    elif isinstance(blocks, (int, np.integer)):
        numbers = [int(blocks)]
    elif isinstance(blocks, str):
        numbers = []
        for part in blocks.replace(" ", "").split(","):
            match = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
            if match is None:
                raise EvaluationError(
                    f"cannot read blocks {blocks!r}: use numbers and ranges such as '1-12', '6' or '1,4,7-9'"
                )
            first, last = int(match.group(1)), int(match.group(2) or match.group(1))
            if last < first:
                raise EvaluationError(f"block range {part!r} is empty")
            numbers.extend(range(first, last + 1))
    else:
        numbers = [int(block) for block in blocks]
    if not numbers:
        raise EvaluationError("no blocks given")
    bad = [block for block in numbers if not 1 <= block <= num_blocks]
    if bad:
        raise EvaluationError(f"blocks are numbered 1..{num_blocks} for this model (block b = hidden_states[b]); got {bad}")
    return sorted(set(numbers))


# ----------------------------------------------------------------------------------------------- model
def load_encoder(model_or_path, device=None):
    """The MAEST encoder (`MAESTModel`) in eval mode, from a model object (`MAESTModel` or
    `MAESTForAudioClassification`, switched to eval mode: embeddings are taken without training patchout; used on its
    device unless `device` is given) or anything `from_pretrained` loads (a MAEST directory, an AST-format MAEST
    repo, an original checkpoint file)."""
    if isinstance(model_or_path, (str, os.PathLike)):
        encoder = _from_pretrained_encoder(str(model_or_path))
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    else:
        encoder = getattr(model_or_path, "maest", model_or_path)
        if not isinstance(encoder, MAESTModel):
            raise EvaluationError(f"expected a MAEST model or a path, got {type(model_or_path).__name__}")
    if device is not None:
        encoder = encoder.to(device)
    return encoder.eval()


def _from_pretrained_encoder(path: str):
    """Loads the encoder through the class the checkpoint was saved as, so that a tagging model's head weights are
    not reported as unexpected; original checkpoint files and AST-format repos are converted (`load_maest`)."""
    if not Path(path).is_file():
        try:
            config_dict, _ = PreTrainedConfig.get_config_dict(path)
        except (OSError, ValueError):
            config_dict = {}
        architectures = config_dict.get("architectures") or []
        if config_dict.get("model_type") == "maest" and any(
            name.endswith("ForAudioClassification") for name in architectures
        ):
            return load_maest(path, MAESTForAudioClassification).maest
    return load_maest(path, MAESTModel)


def model_cache_key(encoder, feature_extractor, last_segment: str) -> str:
    """A hash of everything that determines the embeddings: weights, configuration (less label names), front-end
    settings and segmenting."""
    digest = hashlib.sha256(CACHE_FORMAT.encode())
    for name, tensor in sorted(encoder.state_dict().items()):
        tensor = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    ignored = {"id2label", "label2id", "architectures", "auto_map", "transformers_version", "dtype", "torch_dtype"}
    config = {
        key: value for key, value in encoder.config.to_dict().items() if key not in ignored and not key.startswith("_")
    }
    front_end = {
        key: value for key, value in feature_extractor.to_dict().items() if key not in ("processor_class", "auto_map")
    }
    settings = {"config": config, "feature_extractor": front_end, "last_segment": last_segment}
    digest.update(json.dumps(settings, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:20]


# ----------------------------------------------------------------------------------------------- audio
def _content_key(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _file_key(path: Path) -> str:
    stat = path.stat()
    return f"file:{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"


def _identity(key: str) -> str:
    """What a key is about (a file, whatever its version), to replace outdated entries of the same file."""
    return key.split("|", 1)[0]


@dataclass
class TrackSource:
    """Where one track's audio is (a file, encoded bytes or decoded samples) and its cache key."""

    key: str
    description: str
    path: Path | None = None
    data: bytes | None = None
    samples: np.ndarray | None = None
    sampling_rate: int | None = None

    def segments(self, feature_extractor, last_segment: str) -> torch.Tensor:
        """The track's consecutive segments `(num_segments, max_length, num_mel_bins)`, cut as `maest embed` cuts
        them (`track_segment_features`: files decoded by `maest.feature_extraction.audio`, long ones streamed)."""
        if self.path is not None:
            return self._file_segments(self.path, feature_extractor, last_segment)
        rate = feature_extractor.sampling_rate
        if self.samples is not None:
            # The array adapter of training and inference (`audio_to_mono`): integer PCM scaled, 2-D arrays are
            # (channels, samples) as `datasets` decodes them.
            channel_axis = 0 if self.samples.ndim == 2 else None
            try:
                audio = audio_to_mono(self.samples, self.sampling_rate, rate, channel_axis, self.description)
            except AudioInputError as error:  # empty, NaN samples, a dtype that is not audio...
                raise AudioDecodingError(str(error)) from error
        else:  # encoded bytes (a dataset's embedded audio), decoded from memory by the one decoder
            audio = load_audio(self.description, rate, data=self.data)
        return feature_extractor(audio, sampling_rate=rate, return_segments=True, last_segment=last_segment)["input_values"]

    @staticmethod
    def _file_segments(path, feature_extractor, last_segment: str) -> torch.Tensor:
        chunks = [chunk for chunk, _ in track_segment_features(path, feature_extractor, last_segment=last_segment)]
        return torch.cat(chunks)

def track_source(value, index: int) -> TrackSource:
    """Where a track's audio is and its cache key, from a dataset's audio value (an undecoded `Audio` dict with
    `path`/`bytes`, a decoded dict with `array`/`sampling_rate`, or a file path)."""
    if isinstance(value, (str, os.PathLike)):
        value = {"path": str(value), "bytes": None}
    if not isinstance(value, dict):
        raise EvaluationError(
            f"track {index}: unsupported audio value of type {type(value).__name__}; pass file paths, or a dataset "
            f"whose audio column is an `Audio` feature (decoded audio objects are read again from their files)"
        )
    if value.get("array") is not None:
        samples = np.asarray(value["array"])
        if np.issubdtype(samples.dtype, np.floating):  # integer PCM stays integer: `audio_to_mono` scales it
            samples = samples.astype(np.float32)
        if value.get("sampling_rate") is None:
            raise EvaluationError(f"track {index}: decoded audio needs its 'sampling_rate'")
        key = _content_key(samples.tobytes() + str(int(value["sampling_rate"])).encode())
        return TrackSource(
            key, value.get("path") or f"track {index}", samples=samples, sampling_rate=value["sampling_rate"]
        )
    path, data = value.get("path"), value.get("bytes")
    description = str(path) if path else f"track {index}"
    if data is not None:
        return TrackSource(_content_key(data), description, data=data)
    if not path:
        raise EvaluationError(f"track {index}: the audio value has neither a path nor bytes")
    if Path(path).is_file():
        return TrackSource(_file_key(Path(path)), description, path=Path(path).resolve())
    if "://" in str(path):  # remote file of a streamed dataset: read it once through datasets' file system layer
        with xopen(path, "rb") as handle:
            data = handle.read()
        return TrackSource(_content_key(data), description, data=data)
    raise AudioDecodingError(f"{description}: file not found")


def _rows(dataset, audio_column: str, keep_columns):
    """Rows of a `datasets` (Iterable)Dataset with the audio left undecoded, or of a list of paths/dicts."""
    if isinstance(dataset, (datasets.Dataset, datasets.IterableDataset)):
        columns = dataset.column_names
        if columns is not None:
            for name in (audio_column, *keep_columns):
                if name not in columns:
                    raise EvaluationError(f"the dataset has no column {name!r}; its columns are {columns}")
            dataset = dataset.select_columns([audio_column, *keep_columns])
        features = dataset.features
        if features is not None and isinstance(features.get(audio_column), datasets.Audio):
            dataset = dataset.cast_column(audio_column, datasets.Audio(decode=False))
        for row in dataset:
            if columns is None:  # a streamed dataset whose columns are known only from its rows (CSV, JSON lines)
                missing = [name for name in (audio_column, *keep_columns) if name not in row]
                if missing:
                    raise EvaluationError(f"the dataset has no column {missing[0]!r}; its columns are {list(row)}")
            yield row
        return
    for item in dataset:
        if isinstance(item, dict) and audio_column in item:
            missing = [name for name in keep_columns if name not in item]
            if missing:
                raise EvaluationError(f"an example has no column(s) {missing}")
            yield item
        else:
            if keep_columns:
                raise EvaluationError(f"plain audio values have no columns {list(keep_columns)}; pass dicts")
            yield {audio_column: item}


# ----------------------------------------------------------------------------------------------- cache files
def _cache_file(cache_dir, model_key: str, cache_name: str) -> Path:
    safe_name = re.sub(r"[^A-Za-z0-9._-]+", "_", cache_name).strip("._") or "embeddings"
    return Path(cache_dir).expanduser() / model_key / f"{safe_name}.safetensors"


def _read_cache(path: Path, num_blocks: int) -> dict[str, tuple[np.ndarray, int]]:
    """`{track key: ((num_blocks, 3, hidden) array, num_segments)}` from a cache file; an unreadable or foreign file
    is ignored (and later replaced) with a warning."""
    if not path.is_file():
        return {}

    try:
        with safe_open(str(path), framework="np") as handle:
            metadata = handle.metadata() or {}
            if metadata.get("format") != CACHE_FORMAT:
                raise EvaluationError(f"format {metadata.get('format')!r}")
            keys = json.loads(metadata["keys"])
            blocks = np.stack([handle.get_tensor(f"block_{b}") for b in range(1, num_blocks + 1)], axis=1)
            num_segments = handle.get_tensor("num_segments")
        if len(keys) != len(blocks) or len(keys) != len(num_segments):
            raise EvaluationError("keys and tensors differ in length")
    except Exception as error:
        logger.warning(f"ignoring the unreadable embedding cache file {path} ({error}); it will be rewritten")
        return {}
    return {key: (blocks[i], int(num_segments[i])) for i, key in enumerate(keys)}


def _write_cache(path: Path, entries: dict[str, tuple[np.ndarray, int]], description: dict) -> None:
    keys = list(entries)
    stacked = np.stack([entries[key][0] for key in keys]).astype(np.float32)  # (tracks, blocks, 3, hidden)
    tensors = {f"block_{b + 1}": np.ascontiguousarray(stacked[:, b]) for b in range(stacked.shape[1])}
    tensors["num_segments"] = np.array([entries[key][1] for key in keys], dtype=np.int64)
    metadata = {"format": CACHE_FORMAT, "keys": json.dumps(keys), "model": json.dumps(description, default=str)}
    atomic_write(path, lambda temporary: save_file(tensors, temporary, metadata=metadata))


# ----------------------------------------------------------------------------------------------- extraction
@dataclass
class TrackEmbeddings:
    """Per-track embeddings of every block of a dataset split.

    Attributes:
        tokens (`dict[int, np.ndarray]`): block number (1-based) -> `(num_tracks, 3, hidden_size)` float32, the mean
            over the track's segments of its cls, dist and patch-average vectors.
        keys (`list[str]`): each track's cache key.
        indices (`list[int]`): each track's position in the dataset (tracks that could not be read are missing).
        num_segments (`np.ndarray`): segments per track.
        columns (`dict[str, list]`): the `keep_columns` values of the tracks.
        problems (`list[dict]`): tracks skipped (`index`, `source`, `error`).
        num_cached, num_computed (`int`): tracks read from the cache and computed.
    """

    tokens: dict
    keys: list
    indices: list
    num_segments: np.ndarray
    columns: dict = field(default_factory=dict)
    problems: list = field(default_factory=list)
    num_cached: int = 0
    num_computed: int = 0

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def blocks(self) -> list[int]:
        return sorted(self.tokens)

    def features(self, block: int, tokens="cda") -> np.ndarray:
        """`(num_tracks, len(tokens) * hidden_size)` embeddings of one block and token set, concatenated in the order
        given (as `pool_embedding_tokens`)."""
        if block not in self.tokens:
            raise EvaluationError(f"block {block} is not available; blocks are {self.blocks}")
        order = [STORED_TOKENS.index(name) for name in parse_embedding_tokens(tokens)]
        vectors = self.tokens[block][:, order]
        return vectors.reshape(len(vectors), -1)

    def subset(self, rows) -> "TrackEmbeddings":
        """The tracks at positions `rows` (of this object, not of the dataset)."""
        rows = np.asarray(rows, dtype=np.int64)
        return TrackEmbeddings(
            tokens={block: vectors[rows] for block, vectors in self.tokens.items()},
            keys=[self.keys[i] for i in rows],
            indices=[self.indices[i] for i in rows],
            num_segments=self.num_segments[rows],
            columns={name: [values[i] for i in rows] for name, values in self.columns.items()},
            problems=self.problems,
            num_cached=self.num_cached,
            num_computed=self.num_computed,
        )

    def as_dict(self, blocks=None, token_sets=POSTER_TOKEN_SETS) -> dict:
        """`{(block, token set name): (num_tracks, dims) array}` for the given blocks (all by default) and token
        sets."""
        blocks = self.blocks if blocks is None else parse_blocks(blocks, max(self.blocks))
        names = [token_set_name(tokens) for tokens in ([token_sets] if isinstance(token_sets, str) else token_sets)]
        return {(block, name): self.features(block, name) for block in blocks for name in names}


class SegmentEmbedder:
    """Runs the encoder over the segments of queued tracks in batches of `batch_size` segments, and averages each
    track's pooled block outputs: `(num_blocks, 3, hidden_size)` per track (cls, dist, patch average)."""

    def __init__(self, encoder, batch_size: int):
        self.encoder = encoder
        self.batch_size = batch_size
        parameter = next(encoder.parameters())
        self.device, self.dtype = parameter.device, parameter.dtype
        self.queue: list[tuple[str, torch.Tensor]] = []  # (track key, (segments, frames, mel))

    def add(self, key: str, segments: torch.Tensor) -> dict:
        """Queues a track; returns the entries of the tracks finished meanwhile (`{key: (tokens, num_segments)}`)."""
        self.queue.append((key, segments))
        return self.flush() if sum(len(s) for _, s in self.queue) >= self.batch_size else {}

    def flush(self) -> dict:
        if not self.queue:
            return {}
        pooled = torch.cat([self._pooled_blocks(batch) for batch in torch.cat([s for _, s in self.queue]).split(
            self.batch_size)]).numpy()
        finished, offset = {}, 0
        for key, segments in self.queue:
            finished[key] = (pooled[offset : offset + len(segments)].mean(axis=0), len(segments))
            offset += len(segments)
        self.queue.clear()
        return finished

    @torch.inference_mode()
    def _pooled_blocks(self, batch: torch.Tensor) -> torch.Tensor:
        """`(segments, frames, mel)` -> `(segments, num_blocks, 3, hidden_size)` float32 on the CPU."""
        hidden_states = self.encoder(batch.to(self.device, self.dtype), output_hidden_states=True).hidden_states
        per_block = [
            pool_embedding_tokens(hidden, STORED_TOKENS).view(len(batch), len(STORED_TOKENS), -1)
            for hidden in hidden_states[1:]
        ]
        return torch.stack(per_block, dim=1).float().cpu()


def extract_track_embeddings(
    model_or_path,
    dataset,
    *,
    feature_extractor=None,
    cache_dir=None,
    cache_name: str | None = None,
    audio_column: str = "audio",
    keep_columns=(),
    batch_size: int = 8,
    last_segment: str = "auto",
    device=None,
    skip_bad_audio: bool = False,
    progress: bool = True,
) -> TrackEmbeddings:
    """Embeddings of every block for every track of `dataset` (see the module docstring).

    Args:
        model_or_path: a MAEST model object or anything `MAESTModel.from_pretrained` loads.
        dataset: a `datasets.Dataset` / `IterableDataset` (streaming works) with an audio column, or a list of file
            paths or of dicts holding the audio column.
        feature_extractor (`MAESTFeatureExtractor`, *optional*): the front-end; by default the spec-exact one with
            segments of the model's length (`config.max_length`).
        cache_dir (*optional*): the cache folder; no caching without it.
        cache_name (`str`, *optional*): the cache file's name within the model's folder, one per split; the
            dataset's `split` by default.
        keep_columns: other columns to return per kept track (e.g. the labels), read in the same pass.
        batch_size (`int`): segments per forward pass.
        last_segment: what to do with a partial last segment (see `MAESTFeatureExtractor.segment`).
        skip_bad_audio (`bool`): skip (and list in `problems`) tracks whose audio cannot be read, instead of raising
            `AudioDecodingError` naming the file.
        progress (`bool`): show a progress bar.
    """
    encoder = load_encoder(model_or_path, device)
    feature_extractor = feature_extractor or MAESTFeatureExtractor(max_length=encoder.config.max_length)
    cache_name = cache_name or str(getattr(dataset, "split", None) or "embeddings")
    cache_file = None
    if cache_dir is not None:
        cache_file = _cache_file(cache_dir, model_cache_key(encoder, feature_extractor, last_segment), cache_name)
    cached = _read_cache(cache_file, encoder.config.num_hidden_layers) if cache_file is not None else {}
    embedder = SegmentEmbedder(encoder, batch_size)

    tracks = {"keys": [], "indices": [], "problems": [], "columns": {name: [] for name in keep_columns}}
    entries, computed, num_cached = {}, {}, 0
    total = len(dataset) if hasattr(dataset, "__len__") else None
    rows = _rows(dataset, audio_column, tuple(keep_columns))
    for index, row in enumerate(tqdm(rows, total=total, desc=f"embeddings ({cache_name})", disable=not progress)):
        try:
            source = track_source(row[audio_column], index)
            if source.key in cached and source.key not in entries:
                entries[source.key] = cached[source.key]
                num_cached += 1
            elif source.key not in entries:
                entries[source.key] = None  # filled when its batch has run
                computed.update(embedder.add(source.key, source.segments(feature_extractor, last_segment)))
        except AudioDecodingError as error:
            if not skip_bad_audio:
                raise
            description = row[audio_column] if isinstance(row[audio_column], (str, os.PathLike)) else None
            tracks["problems"].append({"index": index, "source": _problem_source(error, description), "error": str(error)})
            logger.warning(f"skipping a track: {error}")
            continue
        tracks["keys"].append(source.key)
        tracks["indices"].append(index)
        for name in keep_columns:
            tracks["columns"][name].append(row[name])
    computed.update(embedder.flush())
    entries.update(computed)
    if not tracks["keys"]:
        raise EvaluationError(f"no track of {cache_name!r} could be embedded ({len(tracks['problems'])} unreadable)")
    if cache_file is not None and computed:
        _update_cache(cache_file, cached, computed, encoder.config)
    return _track_embeddings(tracks, entries, encoder.config.num_hidden_layers, num_cached, len(computed))


def _problem_source(error: AudioDecodingError, description) -> str:
    """The track an `AudioDecodingError` names: the text before its first `: ` (the file), or `description`."""
    return str(description) if description is not None else str(error).split(": ", 1)[0]


def _update_cache(cache_file: Path, cached: dict, computed: dict, config) -> None:
    """Rewrites the split's cache file with the new entries (replacing older versions of the same files)."""
    new_identities = {_identity(key) for key in computed}
    kept = {key: value for key, value in cached.items() if _identity(key) not in new_identities}
    description = {
        "name_or_path": getattr(config, "_name_or_path", None) or getattr(config, "name_or_path", None),
        "model_type": config.model_type,
        "hidden_size": config.hidden_size,
        "blocks": config.num_hidden_layers,
    }
    _write_cache(cache_file, {**kept, **computed}, description)


def _track_embeddings(tracks: dict, entries: dict, num_blocks: int, num_cached: int, num_computed: int):
    stacked = np.stack([entries[key][0] for key in tracks["keys"]])  # (tracks, blocks, 3, hidden)
    return TrackEmbeddings(
        tokens={block: np.ascontiguousarray(stacked[:, block - 1]) for block in range(1, num_blocks + 1)},
        keys=tracks["keys"],
        indices=tracks["indices"],
        num_segments=np.array([entries[key][1] for key in tracks["keys"]]),
        columns=tracks["columns"],
        problems=tracks["problems"],
        num_cached=num_cached,
        num_computed=num_computed,
    )


def extract_embeddings(
    model_or_path,
    dataset_split,
    blocks=None,
    tokens=POSTER_TOKEN_SETS,
    cache_dir=None,
    audio_column: str = "audio",
    batch_size: int = 8,
    **kwargs,
) -> dict:
    """Per-track embeddings of a dataset split for each (block, token set).

    Args:
        model_or_path: a MAEST model object or anything `MAESTModel.from_pretrained` loads.
        dataset_split: a `datasets.Dataset` / `IterableDataset` with an audio column, or a list of audio file paths.
        blocks: 1-based block numbers (`hidden_states[b]`): `None` for all, an int, a list, or `"1-12"`.
        tokens: one token set (`"cda"`, `("cls", "mean")`...) or a list of them; the poster's seven by default.
        cache_dir: on-disk cache folder (see the module docstring); a second call with the same model and files does
            not run the model.
        audio_column, batch_size, **kwargs: see [`extract_track_embeddings`].

    Returns:
        `{(block, token set name): np.ndarray of shape (num_tracks, len(tokens) * hidden_size)}`, tracks in dataset
        order, e.g. `{(7, "cda"): (N, 2304)}`. A track whose audio cannot be read raises `AudioDecodingError`.
    """
    if kwargs.get("skip_bad_audio"):
        raise EvaluationError(
            "extract_embeddings keeps every track aligned with the dataset; use extract_track_embeddings to skip"
        )
    embeddings = extract_track_embeddings(
        model_or_path, dataset_split, cache_dir=cache_dir, audio_column=audio_column, batch_size=batch_size, **kwargs
    )
    return embeddings.as_dict(blocks, tokens)


__all__ = [
    "POSTER_TOKEN_SETS",
    "SegmentEmbedder",
    "TrackEmbeddings",
    "TrackSource",
    "extract_embeddings",
    "extract_track_embeddings",
    "load_encoder",
    "model_cache_key",
    "parse_blocks",
    "token_set_name",
    "track_source",
]
