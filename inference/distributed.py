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

from maest.utils.errors import MAESTError

from maest.utils.files import write_text_atomically

from .job import (
    CollectionError,
    CollectionJob,
    CollectionSettings,
    InferenceResults,
    JobPlan,
    check_interrupted,
    default_num_workers,
    expand_inputs,
    interrupt_once,
    model_settings,
    load_run_model,
    run_share,
    validate_device,
)
from .model import DEFAULT_MODEL
from .sharding import probe_durations, shard_by_duration, shard_durations


logger = logging.get_logger(__name__)

# Test hook: "RANK:K" makes process RANK flush its part files and exit abruptly (as if killed) after K finished tracks.
EXIT_AFTER_ENVIRONMENT_VARIABLE = "MAEST_TEST_EXIT_AFTER_TRACKS"
# How often a process rewrites its progress file, and how often the others read the job's files: small files on a
# shared filesystem, so a job of a thousand processes must not turn them into a metadata-server load.
REPORT_SECONDS = 2.0
POLL_SECONDS = 0.5
RUN_DIRECTORY_PREFIX = "run-"


class DistributedJobError(MAESTError):
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
    (`"cuda:0,cuda:1"`, `"cpu,cpu"`); returns one device per worker process (each checked by `validate_device`)."""
    if isinstance(devices, (list, tuple)):
        names = [str(device).strip() for device in devices]
    else:
        text = str(devices).strip()
        if text.isdigit():
            count = int(text)
            if count < 1:
                raise CollectionError(f"--devices must be at least 1, got {count}")
            if torch.cuda.is_available():
                if count > torch.cuda.device_count():
                    raise CollectionError(f"--devices {count}: this machine has {torch.cuda.device_count()} GPU(s)")
                return [f"cuda:{index}" for index in range(count)]
            return ["cpu"] * count
        names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise CollectionError(f"--devices: no device in {devices!r}")
    try:
        return [validate_device(name) for name in names]
    except CollectionError as error:
        raise CollectionError(f"--devices: {error}") from None


# ----------------------------------------------------------------------------------------------- files of one run
def write_json(path: Path, payload) -> None:
    # Small files that another process polls, rewritten every few seconds: atomic, not flushed to disk each time.
    write_text_atomically(path, json.dumps(payload), fsync=False)


def read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def progress_file(run_directory: Path, rank: int) -> Path:
    return Path(run_directory) / f"rank{rank:05d}.progress.json"


class RankReporter:
    """Counts this process's finished tracks and publishes them in its progress file (at most every
    `REPORT_SECONDS`, and at the end with `done`)."""

    def __init__(self, run_directory: Path, rank: int, exit_after: int | None = None):
        self.path = progress_file(run_directory, rank)
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
            write_json(self.path, self.counts)
            self._last_write = now

    def finish(self) -> None:
        self.counts["done"] = True
        self.publish(force=True)


def _exit_after(rank: int) -> int | None:
    value = os.environ.get(EXIT_AFTER_ENVIRONMENT_VARIABLE, "")
    if ":" in value:
        target, count = value.split(":", 1)
        if target.strip() == str(rank):
            return int(count)
    return None


class GlobalProgress:
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
        self.reports = [read_json(progress_file(self.run_directory, rank)) or self.reports[rank] for rank in range(self.num_processes)]
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
            check_interrupted()
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
def _new_run_directory(job: CollectionJob) -> str:
    # Progress files of an earlier (killed) run are stale; its part files stay, they are the finished work.
    for stale in job.store.directory.glob(f"{RUN_DIRECTORY_PREFIX}*"):
        shutil.rmtree(stale, ignore_errors=True)
    run_directory = job.store.directory / f"{RUN_DIRECTORY_PREFIX}{uuid.uuid4().hex[:12]}"
    run_directory.mkdir(parents=True)
    return str(run_directory)


def _run_rank_share(settings: CollectionSettings, plan: JobPlan, rank: int, inference_model, num_local_processes: int) -> None:
    """Runs this process's share of the job into its part files and reports its end in its progress file."""
    reporter = RankReporter(Path(plan.run_directory), rank, exit_after=_exit_after(rank))

    def stored(store, seconds: float, failed: bool) -> None:
        reporter.track(seconds, failed)
        # The test hook counts finished tracks only: a file that fails to decode can be reported before the tracks
        # still waiting in the model's batch, depending on the machine's speed.
        counts = reporter.counts
        if reporter.exit_after is not None and not failed and counts["tracks"] - counts["failed"] >= reporter.exit_after:
            store.flush()
            os._exit(75)  # die like a killed process, with what was flushed on disk

    num_workers = settings.num_workers
    if num_workers is None:
        # The machine's cores are shared by the processes on it.
        cores = max(1, (os.cpu_count() or 2) // num_local_processes - 1)
        num_workers = min(default_num_workers(str(inference_model.device)), cores)
    names = [plan.todo[index] for index in plan.shards[rank]]
    run_share(settings, plan, names, inference_model, rank=rank, num_workers=num_workers, on_stored=stored)
    reporter.finish()


def _finish(job: CollectionJob, progress: GlobalProgress, num_processes: int, alive=None, keep_store: bool = False) -> InferenceResults:
    """Main process: waits for every process to report its end, then finishes the job."""
    try:
        progress.wait(alive)
    finally:
        progress.close()
    return job.finish(progress.totals["tracks"], num_processes, keep_store=keep_store)


def _status(results: InferenceResults) -> dict:
    return {"failed": results.failed, "skipped": results.skipped, "processed": results.processed}


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


def _set_up_launched(settings: CollectionSettings, inputs, state, device: str):
    """Every process loads the model (in parallel); the main process opens the job. A failure anywhere stops all."""
    from accelerate.utils import broadcast_object_list, gather_object

    job, error, inference_model = None, None, None
    try:
        inference_model = load_run_model(settings, device)
        if state.is_main_process:
            job = CollectionJob.open(settings, inputs(), inference_model)
            job.plan.run_directory = _new_run_directory(job)
    except Exception as exception:  # reported by every process below, raised where it happened
        error = exception
    errors = gather_object([None if error is None else f"process {state.process_index}: {type(error).__name__}: {error}"])
    if any(errors):
        if job is not None:
            job.close()
        if error is not None:
            raise error
        raise PeerSetupError("; ".join(item for item in errors if item))
    plan: JobPlan = broadcast_object_list([None if job is None else job.plan])[0]
    return job, plan, inference_model


def _shard_launched(settings: CollectionSettings, plan: JobPlan, state, inference_model) -> None:
    """Durations, probed by all processes (a share each), then the split. Every process also checks that it sees
    the main process's files and made the same settings, and all stop together if one does not."""
    from accelerate.utils import gather_object

    rank, num_processes = state.process_index, state.num_processes
    sees_store = os.path.isdir(plan.run_directory)
    same_settings = model_settings(inference_model, settings) == plan.settings
    mine = plan.todo[rank::num_processes] if sees_store else []
    gathered = gather_object([(sees_store, same_settings, probe_durations(mine))])
    blind = [index for index, (seen, _, _) in enumerate(gathered) if not seen]
    if blind:
        raise DistributedJobError(
            f"process(es) {blind} cannot see {plan.run_directory}: under a launcher the output ({settings.out}) "
            f"must be on a filesystem that every node sees (a shared or network filesystem)"
        )
    different = [index for index, (_, same, _) in enumerate(gathered) if not same]
    if different:
        raise DistributedJobError(f"process(es) {different} loaded the model with other settings than process 0's: {plan.settings}")
    durations = [None] * len(plan.todo)
    for source, (_, _, values) in enumerate(gathered):
        durations[source::num_processes] = values
    plan.shards = shard_by_duration(plan.todo, durations, num_processes)
    if state.is_main_process:
        loads = shard_durations(plan.shards, durations)
        logger.info(
            f"{plan.num_tracks} tracks, {plan.skipped} finished before; {len(plan.todo)} to do on {num_processes} "
            f"processes, {min(loads) / 60:.1f}-{max(loads) / 60:.1f} audio minutes each"
        )


def _run_launched(settings: CollectionSettings, inputs) -> DistributedResults:
    state = _process_state(settings.device)
    rank, num_processes = state.process_index, state.num_processes
    if not state.is_main_process:
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()  # one bar: the main process's
    device = "cpu" if str(settings.device).startswith("cpu") else str(state.device)
    if settings.device not in (None, "cpu", "cuda") and str(settings.device) != device:
        logger.warning(f"--device {settings.device} ignored under a launcher: process {rank} uses {device}")
    job, plan, inference_model = _set_up_launched(settings, inputs, state, device)
    finished = False
    try:
        _shard_launched(settings, plan, state, inference_model)
        # Every process runs its share; the main process shows the job's progress meanwhile.
        progress = None
        if state.is_main_process:
            progress = GlobalProgress(plan.run_directory, num_processes, len(plan.todo), plan.skipped, settings.progress)
        try:
            _run_rank_share(settings, plan, rank, inference_model, int(os.environ.get("LOCAL_WORLD_SIZE", num_processes)))
        except BaseException:
            if progress is not None:
                progress.close()
            raise
        # The main process merges; the others wait for its status by polling (no collective timeout).
        status_file = Path(plan.run_directory) / "status.json"
        results = None
        if state.is_main_process:
            # The store's folder holds the status file that the others read: it is removed once they all have.
            results = _finish(job, progress, num_processes, keep_store=True)
            finished = True
            write_json(status_file, _status(results))
            status = _status(results)
        else:
            while (status := read_json(status_file)) is None:
                check_interrupted()
                time.sleep(POLL_SECONDS)
    finally:
        if job is not None and not finished:
            job.close()
    if finished:  # the main process: it holds the output's lock until the store is gone
        try:
            state.wait_for_everyone()  # everyone has read the status: the store's folder can go
            shutil.rmtree(job.store.directory, ignore_errors=True)
        finally:
            job.close()
    else:
        state.wait_for_everyone()
    return DistributedResults(results, status["failed"], plan.num_tracks, status["skipped"], status["processed"], rank, num_processes)


# -------------------------------------------------------------------------------------------------------- --devices
def _cpu_threads(devices: list[str]) -> int:
    return max(1, (os.cpu_count() or 2) // sum(1 for name in devices if name == "cpu"))


def _device_worker(worker_index: int, settings: CollectionSettings, plan: JobPlan, devices: list) -> None:
    """A spawned process of `--devices`: process `worker_index + 1`, on `devices[worker_index + 1]`."""
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # one bar: the main process's
    rank = worker_index + 1
    device = devices[rank]
    if device == "cpu":
        torch.set_num_threads(_cpu_threads(devices))
    elif device.startswith("cuda"):
        torch.cuda.set_device(torch.device(device))
    inference_model = load_run_model(settings, device)
    if model_settings(inference_model, settings) != plan.settings:
        raise DistributedJobError(f"the worker on {device} loaded the model with other settings")
    with interrupt_once():
        _run_rank_share(settings, plan, rank, inference_model, len(devices))


def _run_devices(settings: CollectionSettings, inputs, devices: list[str]) -> DistributedResults:
    # CPU workers share the cores; this process's own thread count is restored afterwards.
    threads = torch.get_num_threads()
    try:
        if devices[0] == "cpu":
            torch.set_num_threads(_cpu_threads(devices))
        inference_model = load_run_model(settings, devices[0])
        job = CollectionJob.open(settings, inputs(), inference_model)
        try:
            results = _run_devices_job(settings, job, inference_model, devices)
        finally:
            job.close()
    finally:
        torch.set_num_threads(threads)
    return DistributedResults(results, results.failed, job.plan.num_tracks, results.skipped, results.processed, 0, len(devices))


def _run_devices_job(settings: CollectionSettings, job: CollectionJob, inference_model, devices: list[str]) -> InferenceResults:
    import torch.multiprocessing as multiprocessing

    plan = job.plan
    plan.run_directory = _new_run_directory(job)
    plan.shards = shard_by_duration(plan.todo, probe_durations(plan.todo), len(devices))
    context = multiprocessing.start_processes(
        _device_worker, args=(settings, plan, devices), nprocs=len(devices) - 1, join=False, start_method="spawn"
    )
    progress = GlobalProgress(plan.run_directory, len(devices), len(plan.todo), plan.skipped, settings.progress)

    def alive() -> None:
        for index, process in enumerate(context.processes):
            # A worker that ended without reporting its end died (an error, a signal, an interrupt).
            if process.exitcode is not None and not (read_json(progress_file(Path(plan.run_directory), index + 1)) or {}).get("done"):
                try:
                    context.join(timeout=0)  # raises the worker's own error (traceback included) where it had one
                    reason = f"exit code {process.exitcode}"
                except Exception as error:
                    reason = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
                raise DistributedJobError(
                    f"the worker process on {devices[index + 1]} died ({reason}); the finished tracks are kept in "
                    f"{job.store.directory}, rerun the command to continue"
                )

    try:
        _run_rank_share(settings, plan, 0, inference_model, len(devices))
        return _finish(job, progress, len(devices), alive)
    except BaseException:
        progress.close()
        for process in context.processes:
            if process.is_alive():
                process.terminate()
        raise
    finally:
        for process in context.processes:
            process.join()


# --------------------------------------------------------------------------------------------------------- public
def exit_together(status: int) -> None:
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


def analyze_distributed(inputs, out, model=DEFAULT_MODEL, *, devices=None, **options) -> DistributedResults:
    """`maest.inference.analyze` of files into `out`, by several processes: the processes of a launcher
    (`torchrun`, `accelerate launch`; every process calls this function) or, with `devices`, one spawned process per
    device on this machine. The output equals a one-process run's (same rows, order and schema).

    Args:
        inputs: files and directories (recursive).
        out: the `.parquet` / `.npz` output; its folder must be shared by all nodes of a multi-node job.
        model: a Hub id / directory / checkpoint name (every process loads it; a path, not a loaded model).
        devices: `"cuda:0,cuda:1"`, `"cpu,cpu"`, a count (`"2"`) or a list; None under a launcher.
        **options: the `CollectionSettings` (`embedding=True` unless given; `num_workers` defaults to the machine's
            cores divided between its processes; `device` is the device type under a launcher, each process takes
            its local GPU).

    Returns:
        `DistributedResults`: the merged results on the main process, and the failed tracks on every process.
    """
    if not isinstance(model, (str, os.PathLike)):
        raise CollectionError("analyze_distributed loads the model in every process: pass its name or path, not a loaded model")
    if out is None:
        raise CollectionError("a multi-process run writes its rows to a file: pass out= (.parquet or .npz)")
    options.setdefault("scores", False)
    options.setdefault("embedding", True)
    settings = CollectionSettings.from_options(model=model, out=out, **options)
    if devices is not None:
        if is_launched():
            raise CollectionError("--devices starts its own processes; under torchrun / accelerate launch leave it out")
        devices = parse_devices(devices)
    with interrupt_once():
        if devices is None:
            # Only the main process walks the catalogue (a thousand processes must not all list a network folder).
            return _run_launched(settings, lambda: expand_inputs(inputs))
        return _run_devices(settings, lambda: expand_inputs(inputs), devices)


__all__ = [
    "DistributedJobError",
    "DistributedResults",
    "GlobalProgress",
    "PeerSetupError",
    "analyze_distributed",
    "exit_together",
    "is_launched",
    "launched_world_size",
    "parse_devices",
    "progress_file",
    "read_json",
    "write_json",
]
