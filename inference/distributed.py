"""One collection run over several processes: `accelerate launch -m maest embed`, `torchrun -m maest embed` (one node
or several) and `maest embed --devices cuda:0,cuda:1` (one machine, no launcher).

The job, in the order it happens:

1. The main process expands the inputs into the track list, opens the output's resumable progress store
   (`OUT.partial/`, see `maest.inference.store`) and drops the tracks finished there or in an existing output, so a
   rerun continues where the last one stopped whichever process count either run had: finished work is recorded
   per track, not per process share.
2. The durations of the remaining tracks are read from their container headers (split between the processes) and
   the tracks are split by duration (`maest.inference.sharding.shard_by_duration`): every process gets a disjoint,
   deterministic share with about the same amount of audio.
3. Every process runs its share on its own device into its own part files (`ProgressStore` names them by rank and
   writes them atomically), and reports its counts in a small progress file that the main process polls for one
   global progress bar.
4. When every process has reported its end, the main process merges the parts into `OUT` (same schema and row order
   as a one-process run; `finalize_output`), and every process returns the same list of failed tracks, so all of
   them agree on the exit status.

Processes synchronize through collectives only while the job is set up (a few seconds); the long wait for the
slowest process is a poll of files on the output's filesystem, so no collective can time out while one process still
has tracks to do, and a process with an empty share simply reports its end at once. Under a launcher, the output's
folder must therefore be on a filesystem that all nodes see (checked at start-up).
"""

import json
import os
import shutil
import signal
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import torch

from transformers.utils import logging

from maest.feature_extraction.audio import DEFAULT_STREAM_THRESHOLD_SECONDS
from maest.files import write_text_atomically

from .api import _metadata, _tracks, default_num_workers, process_tracks, settings_for
from .engine import CollectionRunner, TrackInput
from .model import DEFAULT_MODEL, load_model
from .sharding import probe_durations, shard_by_duration, shard_durations
from .store import ProgressStore, finalize_output, load_existing_output


logger = logging.get_logger(__name__)

# Test hook: "RANK:K" makes process RANK flush its part files and exit abruptly (as if killed) after K finished tracks.
EXIT_AFTER_ENVIRONMENT_VARIABLE = "MAEST_TEST_EXIT_AFTER_TRACKS"
# How often a process rewrites its progress file, and how often the others read the job's files: small files on a
# shared filesystem, so a job of a thousand processes must not turn them into a metadata-server load.
REPORT_SECONDS = 2.0
POLL_SECONDS = 0.5
RUN_DIRECTORY_PREFIX = "run-"


class DistributedJobError(RuntimeError):
    """The job could not run as a whole (set-up failed on some process, a worker process died); finished tracks are
    kept in the progress store, and rerunning the command continues the job."""


class PeerSetupError(DistributedJobError):
    """Raised on the processes whose own set-up went well when another process's failed (that one reports why)."""


@dataclass
class DistributedResults:
    """What `analyze_distributed` returns on every process.

    Attributes:
        results: the merged `InferenceResults` (table of all tracks) on the main process; None on the others.
        failed: `[{"path": ..., "reason": ...}]`, the same on every process.
        num_tracks: tracks asked for; skipped: finished before this run; processed: done by this run (all processes).
        process_index / num_processes: this process among the job's.
    """

    results: object
    failed: list = field(default_factory=list)
    num_tracks: int = 0
    skipped: int = 0
    processed: int = 0
    process_index: int = 0
    num_processes: int = 1

    @property
    def is_main_process(self) -> bool:
        return self.process_index == 0


# ------------------------------------------------------------------------------------------------------------ launch
def launched_world_size() -> int:
    """The number of processes of the job this process was started in by a launcher (`torchrun`, `accelerate launch`,
    Slurm through `torchrun`); 1 when started on its own."""
    for name in ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE"):
        value = os.environ.get(name)
        if value and value.isdigit():
            return int(value)
    return 1


def is_launched() -> bool:
    return launched_world_size() > 1


def parse_devices(devices) -> list[str]:
    """`--devices`: a count (`"2"`: the first two GPUs, or two CPU processes without a GPU) or a comma-separated list
    (`"cuda:0,cuda:1"`, `"cpu,cpu"`); returns one device per worker process."""
    if isinstance(devices, (list, tuple)):
        names = [str(device).strip() for device in devices]
    else:
        text = str(devices).strip()
        if text.isdigit():
            count = int(text)
            if count < 1:
                raise ValueError(f"--devices must be at least 1, got {count}")
            if torch.cuda.is_available():
                if count > torch.cuda.device_count():
                    raise ValueError(f"--devices {count}: this machine has {torch.cuda.device_count()} GPU(s)")
                return [f"cuda:{index}" for index in range(count)]
            return ["cpu"] * count
        names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise ValueError(f"--devices: no device in {devices!r}")
    for name in names:
        try:
            device = torch.device(name)
        except RuntimeError as error:
            raise ValueError(f"--devices: unknown device {name!r} (use cpu, cuda or cuda:N)") from error
        if device.type not in ("cpu", "cuda"):
            raise ValueError(f"--devices: unsupported device {name!r} (use cpu, cuda or cuda:N)")
        if device.type == "cuda":
            if not torch.cuda.is_available():
                raise ValueError(f"--devices: {name!r} was asked for, but no CUDA GPU is available")
            if device.index is not None and device.index >= torch.cuda.device_count():
                raise ValueError(f"--devices: {name!r} does not exist (this machine has {torch.cuda.device_count()} GPU(s))")
    return names


# ----------------------------------------------------------------------------------------------- files of one run
def _write_json(path: Path, payload) -> None:
    # Small files that another process polls, rewritten every few seconds: atomic, not flushed to disk each time.
    write_text_atomically(path, json.dumps(payload), fsync=False)


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _progress_file(run_directory: Path, rank: int) -> Path:
    return Path(run_directory) / f"rank{rank:05d}.progress.json"


class _RankReporter:
    """Counts this process's finished tracks and publishes them in its progress file (at most every
    `REPORT_SECONDS`, and at the end with `done`)."""

    def __init__(self, run_directory: Path, rank: int, exit_after: int | None = None):
        self.path = _progress_file(run_directory, rank)
        self.counts = {"tracks": 0, "failed": 0, "seconds": 0.0, "done": False}
        self.exit_after = exit_after
        self._last_write = 0.0
        self.publish(force=True)

    def track(self, seconds: float = 0.0, failed: bool = False) -> None:
        self.counts["tracks"] += 1
        self.counts["failed"] += int(failed)
        self.counts["seconds"] += float(seconds or 0.0)
        self.publish()

    def publish(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._last_write >= REPORT_SECONDS:
            _write_json(self.path, self.counts)
            self._last_write = now

    def finish(self) -> None:
        self.counts["done"] = True
        self.publish(force=True)


class _JobStore(ProgressStore):
    """A `ProgressStore` that reports each stored track to the process's reporter and removes its folder only when
    told to (the main process keeps it until every process has read the job's status)."""

    reporter: _RankReporter | None = None
    keep_directory: bool = True

    def add(self, row) -> None:
        super().add(row)
        self._report(row.duration, failed=False)

    def add_failure(self, path: str, reason: str) -> None:
        super().add_failure(path, reason)
        self._report(0.0, failed=True)

    def _report(self, seconds: float, failed: bool) -> None:
        _check_interrupted()
        if self.reporter is None:
            return
        self.reporter.track(seconds, failed)
        # The test hook counts finished tracks only: a file that fails to decode can be reported before the tracks
        # still waiting in the model's batch, depending on the machine's speed.
        exit_after = self.reporter.exit_after
        if exit_after is not None and not failed and self.reporter.counts["tracks"] - self.reporter.counts["failed"] >= exit_after:
            self.flush()
            os._exit(75)  # die like a killed process, with what was flushed on disk

    def remove(self) -> None:
        if not self.keep_directory:
            super().remove()


def _exit_after(rank: int) -> int | None:
    value = os.environ.get(EXIT_AFTER_ENVIRONMENT_VARIABLE, "")
    if ":" in value:
        target, count = value.split(":", 1)
        if target.strip() == str(rank):
            return int(count)
    return None


class _GlobalProgress:
    """The main process's one bar for the whole job: a thread polls every process's progress file and shows the sum
    (tracks, audio minutes per second, ETA); `wait` returns once every process reported its end."""

    def __init__(self, run_directory: Path, num_processes: int, total: int, skipped: int, enabled: bool):
        from tqdm.auto import tqdm

        self.run_directory = Path(run_directory)
        self.num_processes = num_processes
        self.started = time.monotonic()
        description = f"{num_processes} process{'es' * (num_processes != 1)}" + (f", {skipped} done before" if skipped else "")
        self.bar = tqdm(
            total=total, unit="track", desc=description, file=sys.stderr, disable=not enabled, dynamic_ncols=True
        )
        self.reports: list = [None] * num_processes
        self.totals = {"tracks": 0, "failed": 0, "seconds": 0.0}
        self.interval = max(POLL_SECONDS, 0.002 * num_processes)  # 2 s for a thousand processes
        self._closed = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll_forever, name="maest-progress", daemon=True)
        self._thread.start()

    def poll(self) -> None:
        self.reports = [_read_json(_progress_file(self.run_directory, rank)) or self.reports[rank] for rank in range(self.num_processes)]
        self.totals = {key: sum(report[key] for report in self.reports if report) for key in ("tracks", "failed", "seconds")}
        elapsed = max(time.monotonic() - self.started, 1e-9)
        postfix = f"{self.totals['seconds'] / 60 / elapsed:.2f} audio min/s"
        if self.totals["failed"]:
            postfix += f", {self.totals['failed']} failed"
        self.bar.set_postfix_str(postfix, refresh=False)
        self.bar.update(self.totals["tracks"] - self.bar.n)

    def _poll_forever(self) -> None:
        while not self._stop.wait(self.interval):
            self.poll()

    def all_done(self) -> bool:
        return all(report is not None and report.get("done") for report in self.reports)

    def wait(self, alive=None) -> None:
        """Blocks until every process reported its end; `alive()` (optional) raises when a worker died."""
        self._stop_polling_thread()  # from here on this thread polls
        while True:
            _check_interrupted()
            self.poll()
            if self.all_done():
                return
            if alive is not None:
                alive()
            time.sleep(self.interval)

    def _stop_polling_thread(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._stop_polling_thread()
        self.poll()
        self.bar.close()


# ------------------------------------------------------------------------------------------------------ the job
@dataclass
class _Job:
    """What the main process decides and every process follows."""

    run_directory: str
    settings: dict
    todo: list  # track names not finished yet, in input order
    shards: list  # per process, indices into `todo`
    num_tracks: int
    skipped: int


def _load(options: dict, device: str):
    return load_model(
        options["model"], device=device, dtype=options["dtype"],
        inference_patchout_time_stride=options["inference_patchout_time_stride"],
    )


def _settings(options: dict, inference_model) -> dict:
    return settings_for(
        inference_model, options["scores"], options["embedding"], options["block"], options["tokens"],
        options["per_segment"], options["last_segment"], options["min_duration"],
    )


def _store(options: dict, settings: dict, rank: int) -> _JobStore:
    return _JobStore(
        options["out"], settings, settings["outputs"], per_segment=options["per_segment"], rank=rank,
        flush_every_tracks=options["flush_every_tracks"], flush_every_seconds=options["flush_every_seconds"],
    )


def _plan(options: dict, inference_model):
    """Main process: the track list, the store opened (or checked), the finished tracks dropped, a fresh run folder.

    Returns `(job_without_shards, tracks, store, existing, metadata)`."""
    tracks = _tracks(options["inputs"], None)
    settings = _settings(options, inference_model)
    metadata = _metadata(inference_model, settings)
    store = _store(options, settings, rank=0)
    existing = load_existing_output(options["out"], settings, overwrite=options["overwrite"])
    store.open(overwrite=options["overwrite"])
    done = store.finished_paths() | (set(existing["path"].to_pylist()) if existing is not None else set())
    todo = [track.name for track in tracks if track.name not in done]
    # Progress files of an earlier (killed) run are stale; its part files stay, they are the finished work.
    for stale in store.directory.glob(f"{RUN_DIRECTORY_PREFIX}*"):
        shutil.rmtree(stale, ignore_errors=True)
    run_directory = store.directory / f"{RUN_DIRECTORY_PREFIX}{uuid.uuid4().hex[:12]}"
    run_directory.mkdir(parents=True)
    job = _Job(str(run_directory), settings, todo, [], len(tracks), len(tracks) - len(todo))
    return job, tracks, store, existing, metadata


def _run_share(options: dict, job: _Job, rank: int, inference_model, num_local_processes: int) -> None:
    """Runs this process's share of the job into its part files and reports its end."""
    reporter = _RankReporter(Path(job.run_directory), rank, exit_after=_exit_after(rank))
    store = _store(options, job.settings, rank)
    store.reporter = reporter
    num_workers = options["num_workers"]
    if num_workers is None:
        # The machine's cores are shared by the processes on it.
        num_workers = min(default_num_workers(str(inference_model.device)), max(1, (os.cpu_count() or 2) // num_local_processes - 1))
    runner = CollectionRunner(
        inference_model, scores=options["scores"], embedding=options["embedding"], block=options["block"],
        tokens=options["tokens"], batch_size=options["batch_size"], num_workers=num_workers,
        last_segment=options["last_segment"], min_duration=options["min_duration"],
        stream_threshold_seconds=options["stream_threshold_seconds"], progress=False,
    )
    share = [TrackInput(name=job.todo[index]) for index in job.shards[rank]]
    process_tracks(runner, share, store)
    reporter.finish()


_INTERRUPTED = threading.Event()


class _interrupt_on_signals:
    """Turns SIGTERM (a launcher tearing the job down, Slurm's time limit, preemption) and SIGINT into
    `KeyboardInterrupt`, as `maest embed` does, so the buffered tracks are flushed to the part files before the
    process ends. The signal is also remembered and raised again at the next track or poll: an exception raised
    by a signal handler is lost when it lands in a `__del__`."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __enter__(self):
        self.previous = {}
        _INTERRUPTED.clear()
        if threading.current_thread() is threading.main_thread():
            self.previous = {signum: signal.signal(signum, self._interrupt) for signum in self.SIGNALS}
        return self

    @staticmethod
    def _interrupt(signum, frame):
        _INTERRUPTED.set()
        raise KeyboardInterrupt

    def __exit__(self, *exc):
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
        return False


def _check_interrupted() -> None:
    if _INTERRUPTED.is_set() and threading.current_thread() is threading.main_thread():
        raise KeyboardInterrupt


def _finish(options, job, tracks, store, existing, metadata, progress: _GlobalProgress, alive=None):
    """Main process: waits for every process, merges the part files into the output. Returns `(results, status)`."""
    from .api import InferenceResults

    try:
        progress.wait(alive)
    finally:
        progress.close()
    processed = progress.totals["tracks"]
    table, failures = finalize_output(options["out"], store, metadata, existing=existing, order=[track.name for track in tracks])
    wanted = {track.name for track in tracks}
    failed = [item for item in failures if item["path"] in wanted]
    results = InferenceResults(
        table, dict(metadata, failed=failures), failed, job.skipped, num_ok=sum(path in wanted for path in table["path"].to_pylist())
    )
    status = {"failed": failed, "num_tracks": job.num_tracks, "skipped": job.skipped, "processed": processed}
    return results, status


# ------------------------------------------------------------------------------------------------------- launcher
def _process_state(device: str | None):
    """accelerate's view of this launched process (rank, world size, device). Objects go through gloo (there are no
    tensor collectives here, so no NCCL set-up); CPU jobs (`--device cpu`, ACCELERATE_USE_CPU=1, no GPU) use gloo
    as accelerate's MULTI_CPU mode."""
    from datetime import timedelta

    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    cpu = (device is not None and str(device).startswith("cpu")) or parse_flag_from_env("ACCELERATE_USE_CPU") or not torch.cuda.is_available()
    # Set-up (walking the catalogue, reading the finished tracks) may take a while on the main process.
    if not is_launched():
        return PartialState(cpu=cpu)  # one process: no process group
    return PartialState(cpu=cpu, backend="gloo", timeout=timedelta(hours=6))


def _run_launched(options: dict) -> DistributedResults:
    from accelerate.utils import broadcast_object_list, gather_object

    state = _process_state(options["device"])
    rank, num_processes = state.process_index, state.num_processes
    if not state.is_main_process:
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()  # one bar: the main process's
    device = "cpu" if str(options["device"]).startswith("cpu") else str(state.device)
    if options["device"] not in (None, "cpu", "cuda") and str(options["device"]) != device:
        logger.warning(f"--device {options['device']} ignored under a launcher: process {rank} uses {device}")

    # 1. Every process loads the model (in parallel); the main process plans the job.
    plan, error = None, None
    try:
        inference_model = _load(options, device)
        if state.is_main_process:
            plan = _plan(options, inference_model)
    except Exception as exception:  # reported by every process below, raised where it happened
        error = exception
    errors = gather_object([None if error is None else f"process {rank}: {type(error).__name__}: {error}"])
    if any(errors):
        if error is not None:
            raise error
        raise PeerSetupError("; ".join(item for item in errors if item))
    job: _Job = broadcast_object_list([None if plan is None else plan[0]])[0]

    # 2. Durations, probed by all processes (a share each). Every process also checks that it sees the main
    # process's files and made the same settings, and all stop together if one does not.
    sees_store = os.path.isdir(job.run_directory)
    same_settings = _settings(options, inference_model) == job.settings
    mine = job.todo[rank::num_processes] if sees_store else []
    gathered = gather_object([(sees_store, same_settings, probe_durations(mine))])
    blind = [index for index, (seen, _, _) in enumerate(gathered) if not seen]
    if blind:
        raise DistributedJobError(
            f"process(es) {blind} cannot see {job.run_directory}: under a launcher the output ({options['out']}) "
            f"must be on a filesystem that every node sees (a shared or network filesystem)"
        )
    different = [index for index, (_, same, _) in enumerate(gathered) if not same]
    if different:
        raise DistributedJobError(f"process(es) {different} loaded the model with other settings than process 0's: {job.settings}")
    durations = [None] * len(job.todo)
    for source, (_, _, values) in enumerate(gathered):
        durations[source::num_processes] = values
    job.shards = shard_by_duration(job.todo, durations, num_processes)
    if state.is_main_process:
        loads = shard_durations(job.shards, durations)
        logger.info(
            f"{job.num_tracks} tracks, {job.skipped} finished before; {len(job.todo)} to do on {num_processes} "
            f"processes, {min(loads) / 60:.1f}-{max(loads) / 60:.1f} audio minutes each"
        )

    # 3. Every process runs its share; the main process shows the job's progress meanwhile.
    local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", num_processes))
    progress = None
    if state.is_main_process:
        progress = _GlobalProgress(job.run_directory, num_processes, len(job.todo), job.skipped, options["progress"])
    status_file = Path(job.run_directory) / "status.json"
    try:
        _run_share(options, job, rank, inference_model, local_processes)
    except BaseException:
        if progress is not None:
            progress.close()
        raise

    # 4. The main process merges; the others wait for its status by polling (no collective timeout).
    results = None
    if state.is_main_process:
        _, tracks, store, existing, metadata = plan
        results, status = _finish(options, job, tracks, store, existing, metadata, progress)
        _write_json(status_file, status)
    else:
        while (status := _read_json(status_file)) is None:
            _check_interrupted()
            time.sleep(POLL_SECONDS)
    state.wait_for_everyone()  # everyone has read the status: the store's folder can go
    if state.is_main_process:
        store.keep_directory = False
        store.remove()
    return DistributedResults(results, status["failed"], status["num_tracks"], status["skipped"], status["processed"], rank, num_processes)


# -------------------------------------------------------------------------------------------------------- --devices
def _device_worker(worker_index: int, options: dict, job: _Job, devices: list) -> None:
    """A spawned process of `--devices`: process `worker_index + 1`, on `devices[worker_index + 1]`."""
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # one bar: the main process's
    rank = worker_index + 1
    device = devices[rank]
    if device == "cpu":
        torch.set_num_threads(max(1, (os.cpu_count() or 2) // sum(1 for name in devices if name == "cpu")))
    elif device.startswith("cuda"):
        torch.cuda.set_device(torch.device(device))
    inference_model = _load(options, device)
    if _settings(options, inference_model) != job.settings:
        raise DistributedJobError(f"the worker on {device} loaded the model with other settings")
    with _interrupt_on_signals():
        _run_share(options, job, rank, inference_model, len(devices))


def _run_devices(options: dict, devices: list[str]) -> DistributedResults:
    # CPU workers share the cores; this process's own thread count is restored afterwards.
    threads = torch.get_num_threads()
    try:
        if devices[0] == "cpu":
            torch.set_num_threads(max(1, (os.cpu_count() or 2) // sum(1 for name in devices if name == "cpu")))
        return _run_devices_with_threads_set(options, devices)
    finally:
        torch.set_num_threads(threads)


def _run_devices_with_threads_set(options: dict, devices: list[str]) -> DistributedResults:
    import torch.multiprocessing as multiprocessing

    num_processes = len(devices)
    inference_model = _load(options, devices[0])
    job, tracks, store, existing, metadata = _plan(options, inference_model)
    durations = probe_durations(job.todo)
    job.shards = shard_by_duration(job.todo, durations, num_processes)
    context = multiprocessing.start_processes(
        _device_worker, args=(options, job, devices), nprocs=num_processes - 1, join=False, start_method="spawn"
    )
    progress = _GlobalProgress(job.run_directory, num_processes, len(job.todo), job.skipped, options["progress"])

    def alive() -> None:
        for index, process in enumerate(context.processes):
            # A worker that ended without reporting its end died (an error, a signal, an interrupt).
            if process.exitcode is not None and not (_read_json(_progress_file(Path(job.run_directory), index + 1)) or {}).get("done"):
                try:
                    context.join(timeout=0)  # raises the worker's own error (traceback included) where it had one
                    reason = f"exit code {process.exitcode}"
                except Exception as error:
                    reason = str(error).strip()
                raise DistributedJobError(
                    f"the worker process on {devices[index + 1]} died ({reason}); the finished tracks are kept in "
                    f"{store.directory}, rerun the command to continue"
                )

    try:
        _run_share(options, job, 0, inference_model, num_processes)
        results, status = _finish(options, job, tracks, store, existing, metadata, progress, alive)
    except BaseException:
        progress.close()
        for process in context.processes:
            if process.is_alive():
                process.terminate()
        raise
    finally:
        for process in context.processes:
            process.join()
    store.keep_directory = False
    store.remove()
    return DistributedResults(results, status["failed"], status["num_tracks"], status["skipped"], status["processed"], 0, num_processes)


# --------------------------------------------------------------------------------------------------------- public
def embed_command(args) -> int:
    """`maest embed` under a launcher or with `--devices`: the job's summary and failed tracks are printed once, by
    the main process; every process returns the same exit status (1 when a track failed anywhere)."""
    from transformers.utils import logging as transformers_logging

    from .cli import _summary

    main = not is_launched() or int(os.environ.get("RANK", "0")) == 0
    if args.quiet or not main:
        transformers_logging.disable_progress_bar()
    try:
        job = analyze_distributed(
            args.paths, args.out, args.model, devices=args.devices, scores=False, embedding=True, block=args.block,
            tokens=args.tokens, per_segment=args.per_segment,
            inference_patchout_time_stride=args.inference_patchout_time_stride, last_segment=args.last_segment,
            min_duration=args.min_duration, batch_size=args.batch_size, num_workers=args.num_workers,
            device=args.device, dtype=args.dtype, progress=not args.quiet, overwrite=args.overwrite,
            flush_every_tracks=getattr(args, "flush_every", 32),
        )
    except PeerSetupError:
        return 2  # the process whose set-up failed printed the reason
    except DistributedJobError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    status = 1 if job.failed else 0
    if job.is_main_process:
        results = job.results
        for item in job.failed:
            print(f"failed: {item['reason']}", file=sys.stderr)
        settings = results.metadata["settings"]
        print(
            f"wrote {args.out}: {len(results)} tracks x {results.table['embedding'].type.list_size} dims (block "
            f"{settings['block']}, tokens {','.join(settings['tokens'])}); {job.processed} tracks processed by "
            f"{job.num_processes} process{'es' * (job.num_processes != 1)}",
            file=sys.stderr,
        )
        status = _summary(results, args.out)
    if is_launched():
        _exit_together(status)
    return status


def _exit_together(status: int) -> None:
    """Ends a launched process once every process of the job is here. A launcher tears the whole job down as soon
    as one process exits non-zero, so no process may leave before the main process has written and printed
    everything, and all leave at once with the same status (an interpreter shutdown of a second or so would let the
    launcher kill the slower ones, and report a signal instead of the job's status)."""
    from accelerate import PartialState

    sys.stdout.flush()
    sys.stderr.flush()
    # The launcher may still tear down a process that another one's exit overtook: it ends with the same status.
    signal.signal(signal.SIGTERM, lambda signum, frame: os._exit(status))
    PartialState().wait_for_everyone()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def analyze_distributed(
    inputs,
    out,
    model=DEFAULT_MODEL,
    *,
    devices=None,
    scores: bool = False,
    embedding: bool = True,
    block: int | None = None,
    tokens="cls,dist,mean",
    per_segment: bool = False,
    inference_patchout_time_stride: int | None = None,
    last_segment: str = "auto",
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
) -> DistributedResults:
    """`maest.inference.analyze` of files into `out`, by several processes: the processes of a launcher
    (`torchrun`, `accelerate launch`; every process calls this function) or, with `devices`, one spawned process per
    device on this machine. The output equals a one-process run's (same rows, order and schema).

    Args:
        inputs: files and directories (recursive).
        out: the `.parquet` / `.npz` output; its folder must be shared by all nodes of a multi-node job.
        model: a Hub id / directory / checkpoint name (every process loads it; a path, not a loaded model).
        devices: `"cuda:0,cuda:1"`, `"cpu,cpu"`, a count (`"2"`) or a list; None under a launcher.
        num_workers: decoding/front-end loader processes per process (default: the machine's cores divided
            between its processes).
        **others: as in `maest.inference.analyze` (`device` is the device type under a launcher; each process takes
            its local GPU).

    Returns:
        `DistributedResults`: the merged results on the main process, and the failed tracks on every process.
    """
    if not isinstance(model, (str, os.PathLike)):
        raise TypeError("analyze_distributed loads the model in every process: pass its name or path, not a loaded model")
    if out is None:
        raise ValueError("a multi-process run writes its rows to a file: pass out= (.parquet or .npz)")
    # What every process needs to load the model, run its share and write its part files (picklable for spawn).
    options = dict(
        inputs=inputs, out=os.fspath(out), model=os.fspath(model), scores=scores, embedding=embedding, block=block,
        tokens=tokens, per_segment=per_segment, inference_patchout_time_stride=inference_patchout_time_stride,
        last_segment=last_segment, min_duration=min_duration, batch_size=batch_size, num_workers=num_workers,
        device=device, dtype=dtype, progress=progress, overwrite=overwrite, flush_every_tracks=flush_every_tracks,
        flush_every_seconds=flush_every_seconds, stream_threshold_seconds=stream_threshold_seconds,
    )
    if devices is not None:
        if is_launched():
            raise ValueError("--devices starts its own processes; under torchrun / accelerate launch leave it out")
        devices = parse_devices(devices)
    with _interrupt_on_signals():
        return _run_launched(options) if devices is None else _run_devices(options, devices)


__all__ = [
    "DistributedJobError",
    "DistributedResults",
    "PeerSetupError",
    "analyze_distributed",
    "embed_command",
    "is_launched",
    "launched_world_size",
    "parse_devices",
]
