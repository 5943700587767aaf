"""One collection run ("job"): its settings, its inputs, and the plan / run a share / finish steps that one process,
`--devices` workers and a torchrun / accelerate launch all go through (one process is the job with one share).

1. `CollectionJob.plan` (the main process): expands the inputs, takes the output's lock, opens its progress store
   (refusing progress or an output of other settings) and leaves the tracks not finished yet.
2. `run_share` (every process): runs its share of those tracks into its own part files of the store.
3. `CollectionJob.finish` (the main process): merges the parts into the output, writes the failure list, releases
   the lock.

How the shares are spread over processes, and how the main process waits for them, is `maest.inference.distributed`.
"""

import contextlib
import math
import os
import signal
import threading
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from maest.feature_extraction.audio import DEFAULT_STREAM_THRESHOLD_SECONDS, find_audio_files
from maest.modeling import parse_embedding_tokens
from maest.utils.constants import __version__
from maest.utils.errors import MAESTError

from .backends import BACKEND_CHOICES, load_backend
from .engine import CollectionRunner, TrackFailure, TrackInput
from .loading import load_model
from .model import DEFAULT_BACKEND, DEFAULT_MODEL, InferenceModel
from .store import (
    OutputLock,
    ProgressStore,
    TrackResult,
    display_path,
    finalize_output,
    load_existing_output,
    output_format,
    rows_to_table,
    table_paths,
)


LAST_SEGMENT_CHOICES = ("auto", "pad", "drop")


class CollectionError(MAESTError, ValueError):
    """A collection run was asked for with settings or inputs that cannot work (the message says which)."""


# ------------------------------------------------------------------------------------------------------ settings
@dataclass
class CollectionSettings:
    """Everything that describes one collection run (`maest tag` / `maest embed`, `tag()` / `embed()`).

    Attributes:
        model: a Hub id, directory or checkpoint; or a loaded `InferenceModel` (one process only).
        out: `None` for results in memory, or the `.parquet` / `.npz` output (resumable).
        scores / embedding: the outputs to compute; `block`, `tokens`: the embedding's block and token pooling.
        per_segment: also keep each segment's vector.
        inference_patchout_time_stride: keep every K-th patch column (None: the model's).
        last_segment: `"auto"`, `"pad"` or `"drop"` (see `tag`); min_duration: shorter tracks fail (seconds).
        batch_size: segments per model call; num_workers: decoding/front-end processes (None: by device).
        device: `cpu`, `cuda` or `cuda:N` (None: CUDA when available); dtype: `auto` (bfloat16 on a CUDA GPU that
            supports it, else float32; the resolved dtype is recorded), `float32`, `bfloat16` or `int8`.
        compile: compile the torch model (`torch.compile(fullgraph=True)`); pays on GPUs for long runs.
        backend: what runs the model: `torch`, `onnxruntime`, `openvino` (exported graphs, CPU) or `auto` (see
            `maest.inference.load_model`); None: `DEFAULT_BACKEND` for a model name, a loaded model's own.
        progress: a progress bar on stderr; overwrite: discard an output or progress made with other settings.
        flush_every_tracks / flush_every_seconds: how often finished tracks are saved to the progress store.
        stream_threshold_seconds: longer tracks are decoded segment by segment.
    """

    model: object = DEFAULT_MODEL
    out: str | None = None
    scores: bool = True
    embedding: bool = False
    block: int | None = None
    tokens: object = "cls,dist,mean"
    per_segment: bool = False
    inference_patchout_time_stride: int | None = None
    last_segment: str = "auto"
    min_duration: float = 1.0
    batch_size: int = 8
    num_workers: int | None = None
    device: str | None = None
    dtype: str = "auto"
    compile: bool = False
    backend: str | None = None
    progress: bool = False
    overwrite: bool = False
    flush_every_tracks: int = 32
    flush_every_seconds: float = 30.0
    stream_threshold_seconds: float = DEFAULT_STREAM_THRESHOLD_SECONDS

    def __post_init__(self):
        if self.out is not None:
            self.out = os.fspath(self.out)
            output_format(self.out)
        if isinstance(self.model, os.PathLike):
            self.model = os.fspath(self.model)
        if not (self.scores or self.embedding):
            raise CollectionError("nothing to compute: ask for scores and/or an embedding")
        _check_integer("batch_size", self.batch_size, minimum=1)
        _check_integer("flush_every_tracks", self.flush_every_tracks, minimum=1)
        if self.num_workers is not None:
            _check_integer("num_workers", self.num_workers, minimum=0)
        if self.inference_patchout_time_stride is not None:
            _check_integer("inference_patchout_time_stride", self.inference_patchout_time_stride, minimum=1)
        if self.last_segment not in LAST_SEGMENT_CHOICES:
            raise CollectionError(f"last_segment must be one of {', '.join(LAST_SEGMENT_CHOICES)}, got {self.last_segment!r}")
        if not (isinstance(self.min_duration, (int, float)) and math.isfinite(self.min_duration) and self.min_duration >= 0):
            raise CollectionError(f"min_duration must be a number of seconds >= 0, got {self.min_duration!r}")
        if self.device is not None:
            self.device = validate_device(self.device)
        if self.backend is not None and self.backend not in BACKEND_CHOICES:
            raise CollectionError(f"unknown backend {self.backend!r}: choose one of {', '.join(BACKEND_CHOICES)}")
        if self.embedding:
            try:
                self.tokens = list(parse_embedding_tokens(self.tokens))
            except ValueError as error:
                raise CollectionError(str(error)) from error

    @classmethod
    def from_options(cls, **options) -> "CollectionSettings":
        """Like the constructor, with a clear error for an unknown option."""
        known = {item.name for item in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise CollectionError(f"unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**options)


def _check_integer(name: str, value, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise CollectionError(f"{name} must be an integer >= {minimum}, got {value!r}")


def validate_device(name) -> str:
    """The one check of a device name (`--device`, each of `--devices`): `cpu`, `cuda` or `cuda:N` that exists."""
    text = str(name).strip()
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError) as error:
        raise CollectionError(f"unknown device {text!r} (use cpu, cuda or cuda:N)") from error
    if device.type not in ("cpu", "cuda"):
        raise CollectionError(f"unsupported device {text!r} (use cpu, cuda or cuda:N)")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise CollectionError(f"device {text!r} was asked for, but no CUDA GPU is available")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise CollectionError(f"device {text!r} does not exist (this machine has {torch.cuda.device_count()} GPU(s))")
    return text


def default_num_workers(device: str) -> int:
    """Loader processes for decoding and features: on CPU the model needs the cores (the front-end costs a few
    percent of the model's time); on a GPU decoding is the bottleneck (the front-end runs on the GPU, the model
    embeds about 1000 segments/s on an H200 against about 30 per decoding core), so every core but one decodes."""
    cpus = os.cpu_count() or 2
    if str(device).startswith("cuda"):
        return max(1, cpus - 1)
    return max(1, min(2, cpus // 4))


# ------------------------------------------------------------------------------------------------------ inputs
@dataclass
class CollectionInputs:
    """The tracks of a run, in input order, and the folders that could not be read (reported as failures)."""

    tracks: list[TrackInput]
    unreadable: list[tuple[str, str]] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        return [track.name for track in self.tracks]


def expand_inputs(inputs, sampling_rate: int | None = None) -> CollectionInputs:
    """Files, directories (walked recursively) and arrays (with `sampling_rate`) as tracks, in the order given.

    Raises:
        FileNotFoundError: a path that does not exist, or paths without any audio file.
        CollectionError: arrays without `sampling_rate`, or no inputs.
    """
    if isinstance(inputs, (str, bytes, os.PathLike, np.ndarray, torch.Tensor)):
        inputs = [inputs]
    tracks, unreadable, seen, paths = [], [], set(), []
    for position, item in enumerate(inputs):
        if isinstance(item, (str, bytes, os.PathLike)):
            paths.append(item)
            for file in find_audio_files([os.fsdecode(item)], unreadable=unreadable):
                name = os.path.abspath(file)
                if name not in seen:
                    seen.add(name)
                    tracks.append(TrackInput(name=name))
            continue
        if sampling_rate is None:
            raise CollectionError("audio arrays need sampling_rate= (the rate of the arrays, e.g. 44100)")
        tracks.append(TrackInput(name=f"array {position}", audio=item, sampling_rate=sampling_rate))
    if paths and not any(track.audio is None for track in tracks) and not unreadable:
        raise FileNotFoundError(f"no audio files found in {', '.join(display_path(os.fsdecode(p)) for p in paths)}")
    if not tracks and not unreadable:
        raise CollectionError("no inputs given")
    return CollectionInputs(tracks, unreadable)


# ------------------------------------------------------------------------------------------------------ model
def load_run_model(settings: CollectionSettings, device: str | None = None) -> InferenceModel:
    """The settings' model, loaded on `device` (or the settings' device; CUDA when available) and run by the
    settings' back-end, ready for the run's outputs (an exported back-end's graph is built here, before any worker
    process starts and before the first batch)."""
    if isinstance(settings.model, InferenceModel):
        model = settings.model
        if settings.inference_patchout_time_stride is not None:
            model.inference_patchout_time_stride = settings.inference_patchout_time_stride
        if settings.backend is not None:
            model = load_backend(model, settings.backend)
    else:
        device = device or settings.device or ("cuda" if torch.cuda.is_available() else "cpu")
        model = load_model(
            settings.model, device=device, dtype=settings.dtype, compile=settings.compile,
            inference_patchout_time_stride=settings.inference_patchout_time_stride,
            backend=settings.backend or DEFAULT_BACKEND,
        )  # fmt: skip
    model.prepare(scores=settings.scores, embedding=settings.embedding, block=settings.block, tokens=settings.tokens)
    return model


def model_settings(inference_model: InferenceModel, settings: CollectionSettings) -> dict:
    """Everything that changes the numbers of a run: a store or an output made with other settings is not mixed
    with this run's rows."""
    name = inference_model.name
    if Path(name).expanduser().exists():
        name = os.path.abspath(Path(name).expanduser())
    recorded = {
        "model": name,
        # The model's identity by content (its weights and config): a directory whose weights changed in place is
        # another model, and its rows are not mixed with the old ones.
        "weights": inference_model.weights_digest,
        "outputs": [name_ for name_, wanted in (("scores", settings.scores), ("embedding", settings.embedding)) if wanted],
        "dtype": inference_model.dtype,
        "inference_patchout_time_stride": inference_model.inference_patchout_time_stride,
        "segment_frames": inference_model.segment_frames,
        "last_segment": settings.last_segment,
        "min_duration": float(settings.min_duration),
        "per_segment": bool(settings.per_segment),
    }
    if settings.embedding:
        recorded["block"] = inference_model.resolve_block(settings.block)
        recorded["tokens"] = list(settings.tokens)
    # float32 graphs compute torch float32's numbers (logits within 1e-4, embedding cosine >= 0.99999: tested), so
    # their rows and torch's may share an output; int8 and bfloat16 are each runtime's own arithmetic (ONNX Runtime's
    # int8 quantizes activations unlike torch's), so those record the back-end and are not mixed. torch is not
    # recorded: outputs written before the back-ends existed still resume.
    if inference_model.backend != "torch" and inference_model.dtype != "float32":
        recorded["backend"] = inference_model.backend
    return recorded


def output_dims(inference_model: InferenceModel, settings: CollectionSettings) -> dict[str, int]:
    """The vector size of each output column (so that even an empty output has the right schema)."""
    dims = {}
    if settings.scores:
        dims["scores"] = int(inference_model.config.num_labels)
    if settings.embedding:
        dims["embedding"] = len(settings.tokens) * int(inference_model.config.hidden_size)
    return dims


def run_metadata(inference_model: InferenceModel, recorded: dict) -> dict:
    """What an output says about how it was made: the settings, segment length, labels, maest version."""
    metadata = {
        "settings": recorded,
        "backend": inference_model.backend,  # what ran this run (recorded in the settings where it changes numbers)
        "segment_seconds": inference_model.segment_seconds,
        "sampling_rate": inference_model.feature_extractor.sampling_rate,
        "maest_version": __version__,
    }
    graphs = getattr(inference_model, "graph_digests", None)
    if graphs:  # the exported graphs that ran, by cache key: their SHA-256
        metadata["graphs"] = graphs
    if "scores" in recorded["outputs"]:
        metadata["labels"] = inference_model.labels
    return metadata


def make_runner(inference_model: InferenceModel, settings: CollectionSettings, num_workers: int, progress: bool) -> CollectionRunner:
    return CollectionRunner(
        inference_model, scores=settings.scores, embedding=settings.embedding, block=settings.block,
        tokens=settings.tokens, batch_size=settings.batch_size, num_workers=num_workers,
        last_segment=settings.last_segment, min_duration=settings.min_duration,
        stream_threshold_seconds=settings.stream_threshold_seconds, progress=progress,
    )


# ------------------------------------------------------------------------------------------------------ results
@dataclass
class InferenceResults:
    """Per-track results of `tag` / `embed`.

    Attributes:
        table: a `pyarrow.Table` with one row per finished track: `path` (and `path_bytes`, the exact bytes of a
            file name that is not UTF-8), `duration` (s), `num_segments`, `embedding` and/or `scores` (and
            `segment_embeddings` / `segment_scores` per segment).
        metadata: the model and settings used (`metadata["settings"]`), label names, segment length.
        failed: `[{"path": ..., "reason": ...}]` for the tracks (and folders) that could not be analyzed.
        skipped: tracks that were already finished in the output file or its progress store.
        num_ok: tracks of this call's inputs in the results (an output file may also hold other tracks).
        processed: tracks this run analyzed (ok or failed), over all its processes.
        num_processes: the processes that shared the run.
    """

    table: pa.Table
    metadata: dict
    failed: list = field(default_factory=list)
    skipped: int = 0
    num_ok: int | None = None
    processed: int = 0
    num_processes: int = 1

    def __post_init__(self):
        if self.num_ok is None:
            self.num_ok = self.table.num_rows

    def __len__(self) -> int:
        return self.table.num_rows

    @property
    def paths(self) -> list[str]:
        """The tracks' names, exactly (a non-UTF-8 file name as `os.fsdecode` gives it)."""
        return table_paths(self.table)

    @property
    def durations(self) -> np.ndarray:
        return self.table["duration"].to_numpy()

    @property
    def num_segments(self) -> np.ndarray:
        return self.table["num_segments"].to_numpy()

    @property
    def labels(self) -> list[str]:
        return list(self.metadata.get("labels", []))

    def only(self, names) -> "InferenceResults":
        """These results restricted to the tracks in `names` (an output file may hold other tracks too)."""
        wanted = set(names)
        self.table = self.table.filter(pa.array([path in wanted for path in self.paths], pa.bool_()))
        return self

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

    def top(self, k: int | None = 5) -> list[list[tuple[str, float]]]:
        """Per track, the `k` best labels with their scores, best first (`k=None`: all labels, ranked)."""
        if k is not None and (isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1):
            raise CollectionError(f"top(k): k must be an integer >= 1 (or None for all labels), got {k!r}")
        labels = self.labels
        return [[(labels[i], float(row[i])) for i in np.argsort(-row, kind="stable")[:k]] for row in self.scores]

    def to_pandas(self):
        return self.table.to_pandas()


# ------------------------------------------------------------------------------------------------------ signals
_INTERRUPTED = threading.Event()
_ACTIVE = []  # the open `interrupt_once` blocks: only the outermost installs and restores the handlers
_DEFERRING = []  # the open `interrupts_deferred` blocks


class interrupt_once:
    """Turns the first SIGINT / SIGTERM into `KeyboardInterrupt` and ignores the ones after it until the outermost
    block ends: the finished tracks that the first interrupt promised to keep are being saved, and a second Ctrl-C
    must not cut that short. The first signal is also remembered (`check_interrupted` raises it again at the next
    track or poll), as an exception raised by a signal handler is lost when it lands in a `__del__`."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __enter__(self):
        self.previous = {}
        if not _ACTIVE and threading.current_thread() is threading.main_thread():
            _INTERRUPTED.clear()
            self.previous = {signum: signal.signal(signum, _interrupt) for signum in self.SIGNALS}
        _ACTIVE.append(self)
        return self

    def __exit__(self, *exc):
        _ACTIVE.remove(self)
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
        return False


def _interrupt(signum, frame):
    if _INTERRUPTED.is_set():
        return  # saving what the first one promised to keep
    _INTERRUPTED.set()
    if not _DEFERRING:
        raise KeyboardInterrupt


@contextlib.contextmanager
def interrupts_deferred():
    """Inside an `interrupt_once` block: an interrupt that arrives here is only recorded (`check_interrupted` raises
    it afterwards), so saving finished tracks is never cut short, not even by the first Ctrl-C."""
    _DEFERRING.append(True)
    try:
        yield
    finally:
        _DEFERRING.pop()


def check_interrupted() -> None:
    if _INTERRUPTED.is_set() and threading.current_thread() is threading.main_thread():
        raise KeyboardInterrupt


# ------------------------------------------------------------------------------------------------------ the job
@dataclass
class JobPlan:
    """What the main process decides and every process follows (picklable, for workers)."""

    settings: dict  # `model_settings`
    output_dims: dict
    todo: list  # track names not finished yet, in input order
    num_tracks: int
    skipped: int
    shards: list = field(default_factory=list)  # per process, indices into `todo`
    run_directory: str | None = None


class CollectionJob:
    """One collection run into `settings.out`, as the main process sees it: the inputs, the lock on the output,
    the progress store, the finished output it adds to, and the plan the processes follow."""

    def __init__(self, settings: CollectionSettings, inputs: CollectionInputs, inference_model: InferenceModel):
        self.settings = settings
        self.inputs = inputs
        recorded = model_settings(inference_model, settings)
        self.metadata = run_metadata(inference_model, recorded)
        dims = output_dims(inference_model, settings)
        self.store = store_for(settings, recorded, dims, rank=0)
        self.lock = OutputLock(settings.out)
        self.existing = None
        self.plan = JobPlan(recorded, dims, [], len(inputs.tracks), 0)

    @classmethod
    def open(cls, settings: CollectionSettings, inputs: CollectionInputs, inference_model: InferenceModel) -> "CollectionJob":
        """Takes the output's lock, checks and opens the store, and plans the tracks left to do."""
        if any(track.audio is not None for track in inputs.tracks):
            raise CollectionError("out= stores rows by file path; pass files (not arrays), or out=None for results in memory")
        job = cls(settings, inputs, inference_model)
        job.lock.acquire()
        try:
            job.existing = load_existing_output(settings.out, job.plan.settings, overwrite=settings.overwrite)
            job.store.open(overwrite=settings.overwrite)
            done = job.store.finished_paths() | (set(table_paths(job.existing)) if job.existing is not None else set())
            job.plan.todo = [name for name in inputs.names if name not in done]
            job.plan.skipped = len(inputs.tracks) - len(job.plan.todo)
            for folder, reason in inputs.unreadable:
                job.store.add_failure(folder, f"{display_path(folder)}: {reason}")
            job.store.flush()
        except BaseException:
            job.lock.release()
            raise
        return job

    def finish(self, processed: int, num_processes: int = 1, keep_store: bool = False) -> InferenceResults:
        """Merges the parts into the output, writes the failure list, removes the store and releases the lock. With
        `keep_store`, the store and the lock stay: the caller removes the store once its other processes are done
        with it, then calls `close` (a new run on the same output must not start while the old store is there)."""
        try:
            table, failures = finalize_output(
                self.settings.out, self.store, self.metadata, existing=self.existing, order=self.inputs.names,
                remove_store=not keep_store,
            )
        except BaseException:
            self.lock.release()
            raise
        if not keep_store:
            self.lock.release()
        wanted = set(self.inputs.names) | {folder for folder, _ in self.inputs.unreadable}
        return InferenceResults(
            table,
            dict(self.metadata, failed=failures),
            failed=[item for item in failures if item["path"] in wanted],
            skipped=self.plan.skipped,
            num_ok=sum(path in wanted for path in table_paths(table)),
            processed=processed,
            num_processes=num_processes,
        )

    def close(self) -> None:
        """Releases the lock without finishing (the progress store stays for the next run)."""
        self.lock.release()


def store_for(settings: CollectionSettings, recorded: dict, dims: dict, rank: int) -> ProgressStore:
    return ProgressStore(
        settings.out, recorded, dims, per_segment=settings.per_segment, rank=rank,
        flush_every_tracks=settings.flush_every_tracks, flush_every_seconds=settings.flush_every_seconds,
    )


def run_share(
    settings: CollectionSettings,
    plan: JobPlan,
    names: list[str],
    inference_model: InferenceModel,
    rank: int = 0,
    num_workers: int | None = None,
    progress: bool = False,
    on_failure=None,
    on_stored=None,
) -> int:
    """Runs the tracks `names` (this process's share) into this rank's part files of the store. Buffered rows are
    saved even when the run is interrupted (a second interrupt waits for that), so the next run skips them.

    Args:
        on_failure: called with each `TrackFailure`; on_stored: called with `(store, seconds, failed)` per stored
            track.

    Returns:
        The number of tracks analyzed (ok or failed).
    """
    store = store_for(settings, plan.settings, plan.output_dims, rank)
    runner = make_runner(inference_model, settings, _workers(settings, num_workers, inference_model), progress)
    count = 0

    def stored(result: TrackResult) -> None:
        nonlocal count
        store.add(result)
        count += 1
        if on_stored is not None:
            on_stored(store, result.duration, False)
        check_interrupted()

    def failed(failure: TrackFailure) -> None:
        nonlocal count
        store.add_failure(failure.name, failure.reason)
        count += 1
        if on_failure is not None:
            on_failure(failure)
        if on_stored is not None:
            on_stored(store, 0.0, True)
        check_interrupted()

    with interrupt_once():
        try:
            runner.run([TrackInput(name=name) for name in names], on_result=stored, on_failure=failed)
        finally:
            with interrupts_deferred():
                store.flush()
        check_interrupted()  # a Ctrl-C during that last save: the share stops as interrupted, its tracks saved
    return count


def _workers(settings: CollectionSettings, num_workers: int | None, inference_model: InferenceModel) -> int:
    if num_workers is not None:
        return num_workers
    if settings.num_workers is not None:
        return settings.num_workers
    return default_num_workers(str(inference_model.device))


def run_in_memory(settings: CollectionSettings, inputs: CollectionInputs, inference_model: InferenceModel, on_failure=None) -> InferenceResults:
    """A run without an output file: the results in input order, in memory."""
    results: dict[int, TrackResult] = {}
    failures = [{"path": folder, "reason": f"{display_path(folder)}: {reason}"} for folder, reason in inputs.unreadable]

    def failed(failure: TrackFailure) -> None:
        failures.append({"path": failure.name, "reason": failure.reason})
        if on_failure is not None:
            on_failure(failure)

    # Arrays are already in memory (sending them to worker processes costs more than their features).
    in_memory = all(track.audio is not None for track in inputs.tracks)
    num_workers = 0 if in_memory and settings.num_workers is None else _workers(settings, None, inference_model)
    runner = make_runner(inference_model, settings, num_workers, settings.progress)
    with interrupt_once():
        runner.run(inputs.tracks, on_result=lambda result: results.__setitem__(result.index, result), on_failure=failed)
    rows = [results[index] for index in sorted(results)]
    table = rows_to_table(rows, output_dims(inference_model, settings), settings.per_segment)
    metadata = run_metadata(inference_model, model_settings(inference_model, settings))
    return InferenceResults(table, dict(metadata, failed=failures), failures, processed=len(inputs.tracks))


def run_one_process(settings: CollectionSettings, inputs: CollectionInputs, inference_model: InferenceModel, on_failure=None) -> InferenceResults:
    """The job with one share: plan, run every track left, finish."""
    job = CollectionJob.open(settings, inputs, inference_model)
    try:
        processed = run_share(settings, job.plan, job.plan.todo, inference_model, progress=settings.progress, on_failure=on_failure)
    except BaseException:
        job.close()
        raise
    return job.finish(processed)


__all__ = [
    "CollectionError",
    "CollectionInputs",
    "CollectionJob",
    "CollectionSettings",
    "InferenceResults",
    "JobPlan",
    "check_interrupted",
    "default_num_workers",
    "expand_inputs",
    "interrupt_once",
    "interrupts_deferred",
    "make_runner",
    "model_settings",
    "output_dims",
    "load_run_model",
    "run_in_memory",
    "run_metadata",
    "run_one_process",
    "run_share",
    "store_for",
    "validate_device",
]
