"""A collection run on Ray Data (`maest embed --engine ray`, `maest tag --engine ray`, `analyze_with_ray`): decoding on
CPU tasks anywhere in a Ray cluster, the model in a pool of actors sized by the resources asked for (GPU actors, or
CPU actors where there is no GPU), and the same job as a one-process run everywhere else.

The pipeline, for the tracks not finished yet:

    track names -> [decoding tasks]  decode + resample + segment (TrackSegmentDataset.track_chunks, the one front-end)
                -> [model actors]    CollectionRunner's batching, per-track failure rules and whole-track averaging
                -> driver            rows into the output's progress store (one part file per batch received)
                -> finalize_output   the output file, in input order, and OUT.failed.tsv

What is shared with the one-process job (`maest.inference.job`) is shared by calling it: `CollectionSettings` (every
setting keeps its meaning), `CollectionJob` (the output's lock, the progress store that refuses other settings, the
plan that skips finished tracks, the final merge and failure list), `model_settings` / `run_metadata` (what an output
records), and the engine's decoding and batching. So the output is the same file, same schema and same rows as
`maest embed --out OUT` with the same settings; either engine resumes the other's interrupted run.

The driver (the process that calls `analyze_with_ray`) writes the output: only the audio has to be reachable from the
cluster's machines (local paths on a shared filesystem, or URIs of any fsspec filesystem: `s3://`, `gs://`, `file://`
...), and rows come back to the driver through Ray's object store. Rows are written to a part file of the progress
store as each batch arrives, so a killed run loses at most the batches in flight.

Ray is the optional extra `maest[ray]`; this module imports it only when a run starts.
"""

import contextlib
import dataclasses
import logging
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from maest.feature_extraction.audio import AUDIO_EXTENSIONS, AudioDecodingError
from maest.utils.errors import MAESTError, settings_difference

from .engine import (
    LOADER_NICENESS,
    FrontEndSettings,
    SegmentChunk,
    TrackFailure,
    TrackInput,
    TrackSegmentDataset,
    prepare_loader_process,
)
from .job import (
    CollectionError,
    CollectionInputs,
    CollectionJob,
    CollectionSettings,
    InferenceResults,
    check_interrupted,
    expand_inputs,
    interrupt_once,
    interrupts_deferred,
    load_run_model,
    make_runner,
    model_settings,
    output_dims,
    run_metadata,
)
from .model import DEFAULT_MODEL, InferenceModel
from .store import TrackResult, display_path, rows_to_table


ENGINE_CHOICES = ("local", "ray")
ALL_CORES = "all"  # a CPU actor's torch threads without --num-cpus: every core of the actor's machine


class RayEngineError(MAESTError):
    """The Ray run could not start or stopped (Ray missing, no resources for an actor, the job failed in the cluster);
    finished tracks are kept in the progress store, and rerunning the command continues the job."""


@dataclasses.dataclass
class RayResources:
    """How the run uses the cluster.

    Attributes:
        num_actors: model actors (None: one per `num_gpus` GPUs of the cluster; one without GPUs).
        num_gpus: GPUs per model actor (None: 1 where the cluster has GPUs, else 0: CPU actors).
        num_cpus: CPUs per model actor (None: 1). A CPU actor runs torch on this many threads when it is given;
            without it, on every core of its machine, as a one-process run does (decoding then runs at a lower
            priority, as the one-process run's loader workers do).
        decode_cpus: CPUs per decoding task (each decodes one batch of tracks, one track after another).
        tracks_per_batch: tracks per decoding task, per model-actor call and per part file (None: `batch_size`, at
            least 4).
        address: the Ray cluster to connect to (`auto`, `ray://host:10001`...); None: the cluster this process is
            already connected to, else a new local one (`num_local_cpus` CPUs, default all).
    """

    num_actors: int | None = None
    num_gpus: float | None = None
    num_cpus: float | None = None
    decode_cpus: float = 1.0
    tracks_per_batch: int | None = None
    address: str | None = None
    num_local_cpus: int | None = None

    def __post_init__(self):
        for name in ("num_gpus", "num_cpus", "decode_cpus"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0):
                raise CollectionError(f"{name.replace('_', '-')} must be a number >= 0, got {value!r}")
        if self.decode_cpus <= 0:
            raise CollectionError(f"decode-cpus must be > 0, got {self.decode_cpus!r}")
        for name in ("num_actors", "tracks_per_batch", "num_local_cpus"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise CollectionError(f"{name.replace('_', '-')} must be an integer >= 1, got {value!r}")


# ------------------------------------------------------------------------------------------------------ inputs
def is_uri(name: str) -> bool:
    """A name for fsspec (`s3://bucket/key`, `file:///path`), not a local path."""
    return "://" in name


def expand_ray_inputs(inputs) -> CollectionInputs:
    """The tracks of a Ray run: local files and directories as `expand_inputs` gives them (the same names as a
    one-process run), URIs as given, and URI directories walked for audio files (sorted). A Ray `Dataset` gives its
    `path` column (str or bytes) in its order."""
    if _is_ray_dataset(inputs):
        if "path" not in inputs.columns():
            raise CollectionError(f"the Ray Dataset has no 'path' column (columns: {', '.join(inputs.columns())})")
        context = sys.modules["ray.data"].DataContext.get_current()
        keep_order = context.execution_options.preserve_order
        context.execution_options.preserve_order = True  # results follow the dataset's order, as they follow a list's
        try:
            inputs = [row["path"] for row in inputs.select_columns(["path"]).iter_rows()]
        finally:
            context.execution_options.preserve_order = keep_order
    if isinstance(inputs, (str, bytes, os.PathLike)):
        inputs = [inputs]
    tracks, unreadable, seen, local = [], [], set(), []

    def add(name: str) -> None:
        if name not in seen:
            seen.add(name)
            tracks.append(TrackInput(name=name))

    def flush_local() -> None:
        if local:
            expanded = expand_inputs(list(local))
            for track in expanded.tracks:
                add(track.name)
            unreadable.extend(expanded.unreadable)
            local.clear()

    for item in inputs:
        if not isinstance(item, (str, bytes, os.PathLike)):
            raise CollectionError(f"the Ray engine takes file paths or URIs, got {type(item).__name__}")
        name = os.fsdecode(item)
        if not is_uri(name):
            local.append(name)
            continue
        flush_local()  # (keeps the input order)
        for uri in _expand_uri(name):
            add(uri)
    flush_local()
    if not tracks and not unreadable:
        raise CollectionError("no inputs given")
    return CollectionInputs(tracks, unreadable)


def _is_ray_dataset(inputs) -> bool:
    module = sys.modules.get("ray.data")
    return module is not None and isinstance(inputs, module.Dataset)


def _expand_uri(uri: str) -> list[str]:
    import fsspec

    try:
        filesystem, root = fsspec.core.url_to_fs(uri)
        if not filesystem.exists(root):
            raise FileNotFoundError(f"{uri}: no such file or directory")
        if not filesystem.isdir(root):
            return [uri]
        found = sorted(path for path in filesystem.find(root) if Path(path).suffix.lower() in AUDIO_EXTENSIONS)
    except (FileNotFoundError, MAESTError):
        raise
    except Exception as error:  # a missing fsspec back-end (s3fs...), credentials, network
        raise CollectionError(f"{uri}: cannot be listed ({type(error).__name__}: {error})") from error
    if not found:
        raise FileNotFoundError(f"no audio files found in {uri}")
    return [filesystem.unstrip_protocol(path) for path in found]


@contextlib.contextmanager
def _readable_copy(name: str):
    """A local file with the track's bytes: the path itself, or a URI's bytes in a temporary file (the decoder reads
    local files), removed afterwards."""
    if not is_uri(name):
        yield name
        return
    import fsspec

    with tempfile.TemporaryDirectory(prefix="maest-ray-") as directory:
        local = os.path.join(directory, "track" + Path(name.split("?")[0]).suffix)
        try:
            with fsspec.open(name, "rb") as source, open(local, "wb") as target:
                shutil.copyfileobj(source, target, 1 << 20)
        except Exception as error:
            raise AudioDecodingError(f"{name}: cannot be read ({type(error).__name__}: {error})") from error
        yield local


# ------------------------------------------------------------------------------------------------------ decoding tasks
_DECODING_PROCESS_READY = False


def decode_track(row: dict, feature_extractor, front_end: FrontEndSettings, low_priority: bool) -> list[dict]:
    """Decoding, per track (a Ray task runs it over its block of tracks): the track's segments (the one-process
    loader's `track_chunks`, whole track) or its failure reason. Row in: `index`, `path` (the name's bytes); the one
    row out adds `segments` `(n, frames, mels)` float32 (with the front-end on the actors' device: each segment's
    samples, and `num_frames`, its frames of audio), `duration` and `error` (empty when the track decoded)."""
    global _DECODING_PROCESS_READY
    if not _DECODING_PROCESS_READY:  # as the one-process engine's loader workers
        prepare_loader_process(LOADER_NICENESS if low_priority else 0)
        _DECODING_PROCESS_READY = True
    name = os.fsdecode(bytes(row["path"]))
    pieces, frames, duration, error = [], [], math.nan, ""
    try:
        with _readable_copy(name) as local:
            dataset = TrackSegmentDataset([TrackInput(name=local)], feature_extractor, front_end)
            for chunk in dataset.track_chunks(0):
                if chunk.error is not None:
                    error = chunk.error.replace(local, name) if local != name else chunk.error
                    break
                pieces.append(chunk.segments)
                if chunk.num_frames is not None:
                    frames.append(chunk.num_frames)
                if chunk.last:
                    duration = float(chunk.duration)
    except AudioDecodingError as failure:
        error = str(failure)
    if error or not pieces:
        # (the same number of dimensions as a decoded track's, so that Ray can put them in one tensor column)
        pieces = [torch.zeros((0, 1) if front_end.on_device else (0, front_end.segment_frames, feature_extractor.feature_size))]
        frames = []
    segments = torch.cat(pieces)
    num_frames = torch.cat(frames) if frames else torch.zeros(0, dtype=torch.int64)
    return [
        {
            "index": row["index"], "path": row["path"], "segments": segments.numpy(), "num_frames": num_frames.numpy(),
            "duration": duration, "error": error,
        }
    ]  # fmt: skip


# ------------------------------------------------------------------------------------------------------ model actors
class ModelActor:
    """A Ray Data actor: the settings' model, loaded once per actor, run over batches of decoded tracks by the
    one-process `CollectionRunner` (its batching of segments, failure rules and whole-track averaging)."""

    def __init__(self, settings: CollectionSettings, expected_settings: dict, device: str, threads, front_end_on_device: bool):
        if threads == ALL_CORES:
            threads = len(os.sched_getaffinity(0))  # of the actor's machine
        if threads is not None:
            torch.set_num_threads(threads)
        settings = dataclasses.replace(settings, device=device, progress=False, num_workers=0)
        self.model = load_run_model(settings)
        found = model_settings(self.model, settings)
        if found != expected_settings:  # e.g. backend "auto" resolving to another runtime on this actor's device
            differences = settings_difference(expected_settings, found, "on the driver")
            raise CollectionError(f"a Ray actor's model settings differ from the driver's ({differences})")
        self.runner = make_runner(self.model, settings, num_workers=0, progress=False)
        self.runner.front_end.on_device = front_end_on_device  # what the decoding tasks made: features or samples
        self.dims = output_dims(self.model, settings)
        self.per_segment = settings.per_segment

    def __call__(self, batch: dict) -> dict:
        count = len(batch["index"])
        chunks = []
        for position in range(count):
            error = str(batch["error"][position])
            if error:
                chunks.append(SegmentChunk(position, None, last=True, error=error))
            else:
                segments = torch.from_numpy(np.ascontiguousarray(batch["segments"][position], dtype=np.float32))
                num_frames = torch.from_numpy(np.asarray(batch["num_frames"][position], dtype=np.int64)) if self.runner.front_end.on_device else None
                chunks.append(SegmentChunk(position, segments, duration=float(batch["duration"][position]), last=True, num_frames=num_frames))
        results: dict[int, TrackResult] = {}
        errors = [""] * count
        # The runner's own loop, fed with the chunks the decoding tasks made instead of decoding here.
        self.runner.chunks = lambda tracks: iter(chunks)
        self.runner.run(
            [TrackInput(name=os.fsdecode(bytes(path))) for path in batch["path"]],
            on_result=lambda result: results.__setitem__(result.index, result),
            on_failure=lambda failure: errors.__setitem__(failure.index, failure.reason),
        )
        out = {
            "index": np.asarray(batch["index"], dtype=np.int64),
            "path": np.array([bytes(path) for path in batch["path"]], dtype=object),
            "duration": np.array([results[i].duration if i in results else math.nan for i in range(count)]),
            "num_segments": np.array([results[i].num_segments if i in results else 0 for i in range(count)], np.int32),
            "error": np.array(errors, dtype=object),
        }
        for name, dim in self.dims.items():
            out[name] = np.stack([results[i].outputs[name] if i in results else np.zeros(dim, np.float32) for i in range(count)])
            if self.per_segment:
                empty = np.zeros((0, dim), np.float32)
                out[f"segment_{name}"] = _object_array([results[i].segment_outputs[name] if i in results else empty for i in range(count)])
        return out


def _object_array(values: list) -> np.ndarray:
    array = np.empty(len(values), dtype=object)
    array[:] = values
    return array


def _batch_rows(batch: dict, dims: dict, per_segment: bool):
    """The `TrackResult`s and `TrackFailure`s of one batch from the model actors."""
    for position in range(len(batch["index"])):
        index = int(batch["index"][position])
        name = os.fsdecode(bytes(batch["path"][position]))
        error = str(batch["error"][position])
        if error:
            yield TrackFailure(index, name, error)
            continue
        outputs = {key: np.asarray(batch[key][position], dtype=np.float32) for key in dims}
        segment_outputs = {}
        if per_segment:
            segment_outputs = {key: np.asarray(batch[f"segment_{key}"][position], dtype=np.float32).reshape(-1, dim) for key, dim in dims.items()}
        yield TrackResult(
            path=name, duration=float(batch["duration"][position]), num_segments=int(batch["num_segments"][position]),
            outputs=outputs, segment_outputs=segment_outputs, index=index,
        )  # fmt: skip


# ------------------------------------------------------------------------------------------------------ the cluster
@contextlib.contextmanager
def ray_cluster(resources: RayResources):
    """Connects to `resources.address`, or to the cluster this process already uses, or starts a local one (shut down
    afterwards, with its processes)."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as error:
        raise RayEngineError(f"the Ray engine needs Ray Data: pip install 'maest[ray]' ({error})") from error
    if ray.is_initialized():
        yield ray
        return
    options = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING, configure_logging=True)
    if resources.address is None:
        # address="local": a new cluster on this machine only, whatever RAY_ADDRESS says.
        options.update(address="local", num_cpus=resources.num_local_cpus or len(os.sched_getaffinity(0)))
    else:
        options.update(address=resources.address)
    try:
        ray.init(**options)
    except Exception as error:
        raise RayEngineError(f"cannot start or reach the Ray cluster {resources.address or '(local)'}: {error}") from error
    try:
        yield ray
    finally:
        ray.shutdown()


def _quiet_ray_data(ray) -> None:
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # the driver shows one bar in tracks
    context.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)  # "progress bars disabled": on purpose


def _plan_actors(ray, resources: RayResources) -> tuple[int, float, float]:
    """`(actors, gpus per actor, cpus per actor)` for this cluster."""
    cluster = ray.cluster_resources()
    gpus = float(cluster.get("GPU", 0))
    num_gpus = resources.num_gpus if resources.num_gpus is not None else (1.0 if gpus > 0 else 0.0)
    num_cpus = 1.0 if resources.num_cpus is None else float(resources.num_cpus)
    if num_gpus > gpus:
        raise RayEngineError(f"--num-gpus {num_gpus:g} per actor, but the Ray cluster has {gpus:g} GPU(s)")
    if resources.num_actors is not None:
        actors = resources.num_actors
    elif num_gpus > 0:
        actors = max(1, int(gpus // num_gpus))
    else:
        actors = 1
    cpus = float(cluster.get("CPU", 0))
    if actors * num_cpus + resources.decode_cpus > cpus:  # the actors would hold every CPU and wait forever for tracks
        raise RayEngineError(
            f"{actors} actor(s) x {num_cpus:g} CPU(s) leave no {resources.decode_cpus:g} CPU(s) for decoding on the "
            f"Ray cluster's {cpus:g}: lower --num-actors, --num-cpus or --decode-cpus"
        )
    if actors * num_gpus > gpus:
        raise RayEngineError(f"{actors} actor(s) x {num_gpus:g} GPU(s) need more than the Ray cluster's {gpus:g} GPU(s)")
    return actors, num_gpus, num_cpus


def build_pipeline(
    ray,
    names: list[str],
    settings: CollectionSettings,
    driver_model: InferenceModel,
    recorded: dict,
    resources: RayResources,
    front_end_on_device: bool | None = None,
):
    """The Ray Dataset of finished rows for `names`: decoding tasks, then the model-actor pool.

    Args:
        front_end_on_device: the log-mel frames computed by the actors on their device from the samples the decoding
            tasks send (None: for GPU actors running torch, as `CollectionRunner` does on CUDA), else by the
            decoding tasks.
    """
    actors, num_gpus, num_cpus = _plan_actors(ray, resources)
    device = "cuda" if num_gpus > 0 else "cpu"
    threads = None if device == "cuda" else (max(1, int(num_cpus)) if resources.num_cpus is not None else ALL_CORES)
    if front_end_on_device is None:
        front_end_on_device = device == "cuda" and driver_model.backend == "torch"
    front_end = dataclasses.replace(make_runner(driver_model, settings, num_workers=0, progress=False).front_end, on_device=front_end_on_device)
    tracks_per_batch = resources.tracks_per_batch or max(4, settings.batch_size)
    items = [{"index": index, "path": os.fsencode(name)} for index, name in enumerate(names)]
    # One block (one decoding task) per batch of tracks: decoding spreads over the cluster's CPUs and streams ahead
    # of the actors, and each decoded block is one actor call.
    dataset = ray.data.from_items(items, override_num_blocks=max(1, min(len(items), math.ceil(len(items) / tracks_per_batch))))
    # flat_map (one row per track all the same): Ray Data does not fuse a stage that may change the number of rows
    # into a batching stage after it, so decoding stays on tasks of its own instead of running inside the model
    # actors on their few CPUs (tested).
    dataset = dataset.flat_map(
        decode_track,
        fn_kwargs=dict(feature_extractor=driver_model.feature_extractor, front_end=front_end, low_priority=device == "cpu"),
        num_cpus=resources.decode_cpus,
    )
    return dataset.map_batches(
        ModelActor,
        fn_constructor_args=(settings, recorded, device, threads, front_end_on_device),
        batch_size=tracks_per_batch,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_gpus=num_gpus,
        num_cpus=num_cpus,
    )


# ------------------------------------------------------------------------------------------------------ the run
def analyze_with_ray(
    inputs,
    out=None,
    model: str = DEFAULT_MODEL,
    *,
    num_actors: int | None = None,
    num_gpus: float | None = None,
    num_cpus: float | None = None,
    decode_cpus: float = 1.0,
    tracks_per_batch: int | None = None,
    address: str | None = None,
    num_local_cpus: int | None = None,
    on_failure=None,
    **options,
) -> InferenceResults:
    """Whole-track scores and/or embeddings of a collection on Ray Data: the same job, settings, output and failure
    rules as `maest.inference.analyze`, with decoding on Ray tasks and the model on Ray actors.

    Args:
        inputs: local files and directories, URIs of any fsspec filesystem (`s3://bucket/music/`, `file:///...`;
            directories are walked), or a Ray `Dataset` with a `path` column.
        out: a `.parquet` / `.npz` file (resumable: finished tracks are skipped, other settings refused), or None for
            results in memory.
        model: a Hub id, directory or checkpoint that every actor loads (not a loaded model).
        num_actors, num_gpus, num_cpus, decode_cpus, tracks_per_batch, address, num_local_cpus: see `RayResources`.
        on_failure: called with each failed track's `TrackFailure` as its batch comes back.
        **options: every `CollectionSettings` option (`scores`, `embedding`, `block`, `tokens`, `per_segment`,
            `batch_size`, `dtype`, `backend`, `inference_patchout_time_stride`, `last_segment`, `min_duration`,
            `progress`, `overwrite`...), with their one-process meaning. `device` and `num_workers` are Ray's here
            (`num_gpus`, `decode_cpus`).
    """
    if isinstance(model, InferenceModel):
        raise CollectionError("the Ray engine loads the model in each actor: pass a model name or directory, not a loaded model")
    for name in ("device", "num_workers"):
        if options.get(name) is not None:
            hint = "--num-gpus" if name == "device" else "--decode-cpus"
            raise CollectionError(f"{name} does not apply to the Ray engine: Ray places the work (see {hint})")
    resources = RayResources(num_actors, num_gpus, num_cpus, decode_cpus, tracks_per_batch, address, num_local_cpus)
    settings = CollectionSettings.from_options(model=model, out=out, **options)
    collection = expand_ray_inputs(inputs)  # before loading anything: a typo fails at once
    # The driver's copy of the model, on CPU: it names the run's settings (what the output records and the store
    # checks) and its front-end; the actors load their own on their devices and must agree with it.
    driver_model = load_run_model(dataclasses.replace(settings, device="cpu"))
    recorded = model_settings(driver_model, settings)
    if out is None:
        return _run_in_memory(settings, collection, driver_model, recorded, resources, on_failure)
    job = CollectionJob.open(settings, collection, driver_model)
    try:
        processed = _run_job(job, driver_model, resources, on_failure)
    except BaseException:
        job.close()  # the progress store stays for the next run
        raise
    return job.finish(processed)


def _run_job(job: CollectionJob, driver_model: InferenceModel, resources: RayResources, on_failure) -> int:
    settings = job.settings
    store = job.store
    processed = 0

    def store_batch(rows) -> None:
        nonlocal processed
        with interrupts_deferred():  # a Ctrl-C here is raised at the next check, once the batch is saved
            for row in rows:
                if isinstance(row, TrackFailure):
                    store.add_failure(row.name, row.reason)
                    if on_failure is not None:
                        on_failure(row)
                else:
                    store.add(row)
                processed += 1
            store.flush()  # one part file per batch: a killed run loses only the batches in flight

    _stream(job.plan.todo, settings, driver_model, job.plan.settings, resources, store_batch)
    return processed


def _run_in_memory(settings, collection: CollectionInputs, driver_model, recorded, resources, on_failure) -> InferenceResults:
    names = collection.names
    results: dict[int, TrackResult] = {}
    failures: dict[int, dict] = {}

    def keep(rows) -> None:
        for row in rows:
            if isinstance(row, TrackFailure):
                failures[row.index] = {"path": row.name, "reason": row.reason}
                if on_failure is not None:
                    on_failure(row)
            else:
                results[row.index] = row

    _stream(names, settings, driver_model, recorded, resources, keep)
    dims = output_dims(driver_model, settings)
    table = rows_to_table([results[index] for index in sorted(results)], dims, settings.per_segment)
    failed = [{"path": folder, "reason": f"{display_path(folder)}: {reason}"} for folder, reason in collection.unreadable]
    failed += [failures[index] for index in sorted(failures)]
    metadata = run_metadata(driver_model, recorded)
    return InferenceResults(table, dict(metadata, failed=failed), failed, processed=len(names))


def _stream(names, settings, driver_model, recorded, resources, consume) -> None:
    """Runs `names` through the pipeline and hands each batch's rows to `consume`, as batches finish."""
    if not names:
        return
    from tqdm.auto import tqdm

    dims = output_dims(driver_model, settings)
    with ray_cluster(resources) as ray, interrupt_once():
        _quiet_ray_data(ray)
        dataset = build_pipeline(ray, names, settings, driver_model, recorded, resources)
        bar = tqdm(total=len(names), unit="track", file=sys.stderr, disable=not settings.progress, dynamic_ncols=True)
        started, audio_seconds = time.monotonic(), 0.0
        try:
            for batch in dataset.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=1):
                rows = list(_batch_rows(batch, dims, settings.per_segment))
                consume(rows)
                audio_seconds += sum(row.duration for row in rows if isinstance(row, TrackResult))
                bar.set_postfix_str(f"{audio_seconds / 60 / max(time.monotonic() - started, 1e-9):.2f} audio min/s", refresh=False)
                bar.update(len(rows))
                check_interrupted()
        except ray.exceptions.RayError as error:
            raise RayEngineError(f"the Ray job stopped: {_cause(error)}; finished tracks are kept, rerun to continue") from error
        finally:
            bar.close()


def _cause(error: BaseException) -> str:
    """The user-facing reason inside a Ray error (the actor's or task's own exception where there is one)."""
    cause = getattr(error, "cause", None)
    while cause is not None and getattr(cause, "cause", None) is not None:
        cause = cause.cause
    text = str(cause if cause is not None else error).strip()
    lines = [line for line in text.splitlines() if line.strip()]
    return " ".join((lines[-1] if lines else type(error).__name__).split())[:500]


def tag_with_ray(inputs, out=None, model: str = DEFAULT_MODEL, *, per_segment: bool = True, **options) -> InferenceResults:
    """`maest.inference.tag` on Ray (see `analyze_with_ray` for the Ray options)."""
    return analyze_with_ray(inputs, out, model, scores=True, embedding=False, per_segment=per_segment, **options)


def embed_with_ray(inputs, out=None, model: str = DEFAULT_MODEL, *, block=None, tokens="cls,dist,mean", per_segment: bool = False, **options) -> InferenceResults:
    """`maest.inference.embed` on Ray (see `analyze_with_ray` for the Ray options)."""
    return analyze_with_ray(
        inputs, out, model, scores=False, embedding=True, block=block, tokens=tokens, per_segment=per_segment, **options
    )


__all__ = [
    "ENGINE_CHOICES",
    "ModelActor",
    "RayEngineError",
    "RayResources",
    "analyze_with_ray",
    "build_pipeline",
    "decode_track",
    "embed_with_ray",
    "expand_ray_inputs",
    "is_uri",
    "ray_cluster",
    "tag_with_ray",
]
