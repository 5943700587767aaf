"""Python API for whole-track tagging and embeddings of music collections.

```python
from maest.inference import load_model, tag, embed

model = load_model("path/to/maest-dir")                # or the default Hub model, cached
results = tag(["song.mp3", "album/"], model=model)     # files and directories (recursive)
results.top(5)                                         # per track: [(label, score), ...]
results = embed(["album/"], model=model, block=6)      # in memory: results.embeddings (tracks, dim)
embed(["album/"], out="album.parquet", model=model)    # to a file; resumable, skips finished tracks
tag([waveform], sampling_rate=44100, model=model)      # arrays too
```
"""

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from maest.feature_extraction.audio import DEFAULT_STREAM_THRESHOLD_SECONDS, find_audio_files
from maest.modeling import parse_embedding_tokens

from .engine import CollectionRunner, TrackFailure, TrackInput, TrackResult
from .model import DEFAULT_MODEL, InferenceModel, load_model
from .store import ProgressStore, Row, finalize_output, load_existing_output, output_format, rows_to_table


LAST_SEGMENT_DEFAULT = "auto"


@dataclass
class InferenceResults:
    """Per-track results of `tag` / `embed`.

    Attributes:
        table: a `pyarrow.Table` with one row per finished track: `path`, `duration` (s), `num_segments`,
            `embedding` and/or `scores` (and `segment_embeddings` / `segment_scores` per segment).
        metadata: the model and settings used (`metadata["settings"]`), label names, segment length.
        failed: `[{"path": ..., "reason": ...}]` for the tracks that could not be analyzed.
        skipped: tracks that were already finished in the output file or its progress store.
        num_ok: tracks of this call's inputs in the results (an output file may also hold other tracks).
    """

    table: pa.Table
    metadata: dict
    failed: list = field(default_factory=list)
    skipped: int = 0
    num_ok: int | None = None

    def __post_init__(self):
        if self.num_ok is None:
            self.num_ok = self.table.num_rows

    def __len__(self) -> int:
        return self.table.num_rows

    @property
    def paths(self) -> list[str]:
        return self.table["path"].to_pylist()

    @property
    def durations(self) -> np.ndarray:
        return self.table["duration"].to_numpy()

    @property
    def num_segments(self) -> np.ndarray:
        return self.table["num_segments"].to_numpy()

    @property
    def labels(self) -> list[str]:
        return list(self.metadata.get("labels", []))

    def _matrix(self, column: str) -> np.ndarray:
        if column not in self.table.column_names:
            raise KeyError(f"these results have no {column!r} (columns: {self.table.column_names})")
        values = self.table[column].combine_chunks()
        return values.flatten().to_numpy(zero_copy_only=False).reshape(len(values), values.type.list_size)

    def _per_track(self, column: str) -> list[np.ndarray]:
        if column not in self.table.column_names:
            raise KeyError(f"these results have no {column!r}; ask for per_segment=True")
        lists = self.table[column].combine_chunks()
        dim = lists.type.value_type.list_size
        return [np.asarray(row.values.flatten(), dtype=np.float32).reshape(-1, dim) for row in lists]

    @property
    def embeddings(self) -> np.ndarray:
        """`(num_tracks, dim)` track embeddings (mean over segments)."""
        return self._matrix("embedding")

    @property
    def scores(self) -> np.ndarray:
        """`(num_tracks, num_labels)` track scores (mean of the per-segment sigmoid activations)."""
        return self._matrix("scores")

    @property
    def segment_embeddings(self) -> list[np.ndarray]:
        """Per track, its `(num_segments, dim)` segment embeddings."""
        return self._per_track("segment_embeddings")

    @property
    def segment_scores(self) -> list[np.ndarray]:
        """Per track, its `(num_segments, num_labels)` segment activations."""
        return self._per_track("segment_scores")

    def top(self, k: int = 5) -> list[list[tuple[str, float]]]:
        """Per track, the `k` best labels with their scores, best first."""
        labels = self.labels
        return [[(labels[i], float(row[i])) for i in np.argsort(-row, kind="stable")[:k]] for row in self.scores]

    def to_pandas(self):
        return self.table.to_pandas()


def default_num_workers(device: str) -> int:
    """Loader processes for decoding and features: on CPU the model needs the cores (the front-end costs a few
    percent of the model's time), on a GPU the front-end is the bottleneck."""
    cpus = os.cpu_count() or 2
    if str(device).startswith("cuda"):
        return max(1, min(8, cpus - 1))
    return max(1, min(2, cpus // 4))


def _tracks(inputs, sampling_rate: int | None) -> list[TrackInput]:
    if isinstance(inputs, (str, os.PathLike, np.ndarray, torch.Tensor)):
        inputs = [inputs]
    tracks, paths = [], []
    for position, item in enumerate(inputs):
        if isinstance(item, (str, os.PathLike)):
            paths.append(item)
            continue
        if sampling_rate is None:
            raise ValueError("audio arrays need sampling_rate= (the rate of the arrays, e.g. 44100)")
        tracks.append(TrackInput(name=f"array {position}", audio=item, sampling_rate=sampling_rate))
    if paths:
        files = find_audio_files(paths)
        if not files:
            raise FileNotFoundError(f"no audio files found in {', '.join(str(path) for path in paths)}")
        tracks.extend(TrackInput(name=os.path.abspath(file)) for file in files)
    if not tracks:
        raise ValueError("no inputs given")
    return tracks


def settings_for(
    inference_model: InferenceModel,
    scores: bool,
    embedding: bool,
    block: int | None,
    tokens,
    per_segment: bool,
    last_segment: str,
    min_duration: float,
) -> dict:
    """Everything that changes the numbers of a run: a store or an output made with other settings is not mixed
    with this run's rows."""
    name = inference_model.name
    if Path(name).expanduser().exists():
        name = os.path.abspath(Path(name).expanduser())
    settings = {
        "model": name,
        "outputs": [name_ for name_, wanted in (("scores", scores), ("embedding", embedding)) if wanted],
        "dtype": inference_model.dtype,
        "inference_patchout_time_stride": inference_model.inference_patchout_time_stride,
        "segment_frames": inference_model.segment_frames,
        "last_segment": last_segment,
        "min_duration": float(min_duration),
        "per_segment": bool(per_segment),
    }
    if embedding:
        settings["block"] = inference_model.resolve_block(block)
        settings["tokens"] = list(parse_embedding_tokens(tokens))
    return settings


def _metadata(inference_model: InferenceModel, settings: dict) -> dict:
    import maest

    metadata = {
        "settings": settings,
        "segment_seconds": inference_model.segment_seconds,
        "sampling_rate": inference_model.feature_extractor.sampling_rate,
        "maest_version": maest.__version__,
    }
    if "scores" in settings["outputs"]:
        metadata["labels"] = inference_model.labels
    return metadata


def _row(result: TrackResult) -> Row:
    return Row(result.name, result.duration, result.num_segments, result.outputs, result.segment_outputs)


def analyze(
    inputs,
    model: str | InferenceModel = DEFAULT_MODEL,
    *,
    scores: bool = True,
    embedding: bool = False,
    out=None,
    sampling_rate: int | None = None,
    block: int | None = None,
    tokens="cls,dist,mean",
    per_segment: bool = False,
    inference_patchout_time_stride: int | None = None,
    last_segment: str = LAST_SEGMENT_DEFAULT,
    min_duration: float = 1.0,
    batch_size: int = 8,
    num_workers: int | None = None,
    device: str | None = None,
    dtype: str = "float32",
    progress: bool = False,
    overwrite: bool = False,
    flush_every_tracks: int = 32,
    flush_every_seconds: float = 30.0,
    stream_threshold_seconds: float = DEFAULT_STREAM_THRESHOLD_SECONDS,
    on_failure=None,
) -> InferenceResults:
    """Whole-track scores and/or embeddings of files, directories (recursive) or arrays; the engine behind `tag` and
    `embed` (see those for the arguments).

    With `out`, rows go to a Parquet/NPZ file through a resumable progress store: tracks finished in `out` or in its
    progress store are skipped, and the final file is written atomically.
    """
    if out is not None:
        output_format(out)  # before any work
    if isinstance(model, InferenceModel):
        inference_model = model
        if inference_patchout_time_stride is not None:
            inference_model.inference_patchout_time_stride = inference_patchout_time_stride
    else:
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        inference_model = load_model(model, device=device, dtype=dtype, inference_patchout_time_stride=inference_patchout_time_stride)
    tracks = _tracks(inputs, sampling_rate)
    settings = settings_for(inference_model, scores, embedding, block, tokens, per_segment, last_segment, min_duration)
    metadata = _metadata(inference_model, settings)
    output_names = settings["outputs"]
    if num_workers is None:
        # Arrays are already in memory (sending them to worker processes costs more than their features).
        in_memory = all(track.audio is not None for track in tracks)
        num_workers = 0 if in_memory else default_num_workers(str(inference_model.device))
    runner = CollectionRunner(
        inference_model,
        scores=scores,
        embedding=embedding,
        block=block,
        tokens=tokens,
        batch_size=batch_size,
        num_workers=num_workers,
        last_segment=last_segment,
        min_duration=min_duration,
        stream_threshold_seconds=stream_threshold_seconds,
        progress=progress,
    )
    failures = []

    def failed(failure: TrackFailure) -> None:
        failures.append({"path": failure.name, "reason": failure.reason})
        if on_failure is not None:
            on_failure(failure)

    if out is None:
        results: dict[int, Row] = {}
        runner.run(tracks, on_result=lambda result: results.__setitem__(result.index, _row(result)), on_failure=failed)
        rows = [results[index] for index in sorted(results)]
        table = rows_to_table(rows, output_names, per_segment) if rows else rows_to_table([], output_names, per_segment)
        return InferenceResults(table, dict(metadata, failed=failures), failures)

    if any(track.audio is not None for track in tracks):
        raise ValueError("out= stores rows by file path; pass files (not arrays), or out=None for results in memory")
    store = ProgressStore(
        out,
        settings,
        output_names,
        per_segment=per_segment,
        flush_every_tracks=flush_every_tracks,
        flush_every_seconds=flush_every_seconds,
    )
    existing = load_existing_output(out, settings, overwrite=overwrite)
    store.open(overwrite=overwrite)
    done = store.finished_paths() | (set(existing["path"].to_pylist()) if existing is not None else set())
    todo = [track for track in tracks if track.name not in done]
    process_tracks(runner, todo, store, on_failure=failed)
    table, all_failures = finalize_output(out, store, metadata, existing=existing, order=[track.name for track in tracks])
    wanted = {track.name for track in tracks}
    return InferenceResults(
        table,
        dict(metadata, failed=all_failures),
        failed=[item for item in all_failures if item["path"] in wanted],
        skipped=len(tracks) - len(todo),
        num_ok=sum(path in wanted for path in table["path"].to_pylist()),
    )


def process_tracks(runner: CollectionRunner, tracks: list[TrackInput], store: ProgressStore, on_failure=None) -> None:
    """Runs `tracks` into `store`'s part files (this process's share of a collection). Buffered rows are written
    even when the run is interrupted, so the next run skips them; `finalize_output` merges the parts."""

    def failed(failure: TrackFailure) -> None:
        store.add_failure(failure.name, failure.reason)
        if on_failure is not None:
            on_failure(failure)

    try:
        runner.run(tracks, on_result=lambda result: store.add(_row(result)), on_failure=failed)
    finally:
        store.flush()


def tag(
    inputs,
    model: str | InferenceModel = DEFAULT_MODEL,
    *,
    sampling_rate: int | None = None,
    out=None,
    per_segment: bool = True,
    last_segment: str = LAST_SEGMENT_DEFAULT,
    **kwargs,
) -> InferenceResults:
    """Style scores of whole tracks: the mean over the track's consecutive segments of the sigmoid activations.

    Args:
        inputs: file paths, directories (walked recursively for audio files), or arrays (with `sampling_rate`).
        model: a Hub id / directory / checkpoint, or a model from `load_model`.
        sampling_rate: the rate of array inputs.
        out: optional `.parquet` / `.npz` file for the rows (resumable).
        per_segment: keep the per-segment activations (`results.segment_scores`).
        last_segment: `"auto"` (default: keep a partial last segment with at least half a segment of audio,
            padded), `"pad"` (always keep it) or `"drop"`; a track shorter than one segment is always one padded
            segment.
        **kwargs: `batch_size` (segments per model call, 8), `num_workers` (decoding/feature processes; by
            default 1-2 on CPU, up to 8 with CUDA, 0 for arrays), `device`, `dtype`, `inference_patchout_time_stride`,
            `min_duration` (seconds, 1.0: shorter tracks fail), `progress`, `overwrite` (see `analyze`).

    Returns:
        `InferenceResults`: `.scores`, `.top(k)`, `.segment_scores`, `.failed`.
    """
    return analyze(
        inputs, model, scores=True, embedding=False, out=out, sampling_rate=sampling_rate, per_segment=per_segment,
        last_segment=last_segment, **kwargs
    )


def embed(
    inputs,
    out=None,
    model: str | InferenceModel = DEFAULT_MODEL,
    *,
    sampling_rate: int | None = None,
    block: int | None = None,
    tokens="cls,dist,mean",
    per_segment: bool = False,
    last_segment: str = LAST_SEGMENT_DEFAULT,
    **kwargs,
) -> InferenceResults:
    """Track embeddings: the mean over the track's segments of the paper's block embedding.

    Args:
        inputs: file paths, directories (recursive) or arrays (with `sampling_rate`).
        out: `None` for results in memory, or a `.parquet` / `.npz` file (atomic, resumable: tracks already
            finished in it or in its `OUT.partial/` store are skipped; other settings are refused unless
            `overwrite=True`).
        block: 0-based block (`config.embedding_block`, the paper's 7th block of 12, by default).
        tokens: `"cls,dist,mean"` (default; 3 x hidden size), any subset, or letters like `"cd"`.
        per_segment: also keep each segment's embedding (`segment_embeddings`).
        **kwargs: see `tag`.

    Returns:
        `InferenceResults`: `.embeddings` `(tracks, dim)`, `.paths`, `.durations`, `.segment_embeddings`, `.failed`.
    """
    return analyze(
        inputs, model, scores=False, embedding=True, out=out, sampling_rate=sampling_rate, block=block, tokens=tokens,
        per_segment=per_segment, last_segment=last_segment, **kwargs
    )


__all__ = ["InferenceResults", "analyze", "default_num_workers", "embed", "process_tracks", "settings_for", "tag"]
