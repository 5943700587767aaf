"""Output files of collection runs (Parquet or NPZ), written atomically, and the resumable progress store beside them.

While a run writes `OUT`, it holds `OUT.lock` (an `flock` on a file naming the run's process and host; the kernel
releases it when the process ends however it ends, so a killed run never leaves it stuck) and finished tracks go to
`OUT.partial/`: a `manifest.json` with the run's settings and part files written atomically (temporary file +
`os.replace`) every few tracks or seconds, so an interrupted run (Ctrl-C, kill, crash) loses at most the last few
tracks and never leaves a corrupt file. Every part file carries the settings it was computed with in its own
metadata, so a deleted or damaged manifest can never mix rows of other settings into an output. The next call with
the same settings skips the finished tracks; different settings are refused (or the old progress is discarded with
`overwrite=True`). `finalize_output` merges the existing output (if any) and all part files into `OUT` (again
atomically), writes `OUT.failed.tsv` when tracks failed, and removes `OUT.partial/`.

Part files are named per process (`part-r<rank>-<seq>-<id>`), so several processes (ranks) can fill one store with
disjoint shares of a collection and one of them finalizes it.

File names that are not valid UTF-8 (Linux allows any bytes) are kept losslessly: in Python they are `str` with
surrogate escapes (`os.fsdecode`); Arrow strings must be UTF-8, so tables carry `path` (the name, its undecodable
bytes shown as `\\xNN`) and `path_bytes` (the exact bytes, `os.fsencode(path)`, null where `path` is exact). NPZ
outputs hold the exact names (numpy strings are UTF-32); `OUT.failed.tsv` holds them as their original bytes.
"""

import csv
import errno
import fcntl
import json
import logging
import os
import shutil
import socket
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from maest.utils.errors import MAESTError, settings_difference
from maest.utils.files import atomic_write


logger = logging.getLogger(__name__)

OUTPUT_FORMATS = (".parquet", ".npz")
METADATA_KEY = b"maest"
# Settings that Parquet outputs also carry as (constant, dictionary-encoded) columns.
SETTINGS_COLUMNS = ("model", "block", "tokens", "inference_patchout_time_stride", "dtype")
STORE_VERSION = 2

# The per-track output columns: name in `TrackResult.outputs` -> (track column, per-segment column).
OUTPUT_COLUMNS = {"embedding": ("embedding", "segment_embeddings"), "scores": ("scores", "segment_scores")}


class SettingsMismatchError(MAESTError, ValueError):
    """Existing output or progress was made with other settings than the current run's."""


class OutputError(MAESTError, ValueError):
    """The output file cannot be used: unknown format, unreadable, or its folder is not writable."""


class OutputLockedError(MAESTError):
    """Another run is writing the same output right now."""


class StoreWriteError(MAESTError, OSError):
    """Finished tracks could not be saved (a full disk, a lost network filesystem); those saved before are kept."""


@dataclass
class TrackResult:
    """The outputs of one finished track: one row of an output table.

    Attributes:
        path: the track's name (a file path, `os.fsdecode` form, or `"array N"`).
        duration: decoded seconds.
        num_segments: segments the model ran on.
        outputs: per output name (`"scores"`, `"embedding"`), the track value (mean over segments, shape `(dim,)`).
        segment_outputs: per output name, the per-segment values of shape `(num_segments, dim)`.
        index: the track's position in the run's input list.
    """

    path: str
    duration: float
    num_segments: int
    outputs: dict
    segment_outputs: dict = field(default_factory=dict)
    index: int = -1


def output_format(path) -> str:
    suffix = Path(path).suffix.lower()
    if suffix not in OUTPUT_FORMATS:
        raise OutputError(f"{path}: unknown output format {suffix or '(none)'!r}; use a .parquet or .npz file name")
    return suffix


# ------------------------------------------------------------------------------------------------------- file names
def display_path(path: str) -> str:
    """`path` as valid UTF-8 text: undecodable bytes of a non-UTF-8 file name shown as `\\xNN`."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def exact_path_bytes(path: str) -> bytes | None:
    """The file name's bytes where `display_path` is not exact, else None."""
    raw = os.fsencode(path)
    try:
        raw.decode("utf-8")
        return None
    except UnicodeDecodeError:
        return raw


def table_paths(table: pa.Table) -> list[str]:
    """The exact track names of an output table (`path`, or `path_bytes` where the name is not UTF-8)."""
    paths = table["path"].to_pylist()
    if "path_bytes" not in table.column_names:
        return paths
    return [path if raw is None else os.fsdecode(raw) for path, raw in zip(paths, table["path_bytes"].to_pylist())]


def _path_columns(paths: list[str]) -> dict:
    return {
        "path": pa.array([display_path(path) for path in paths], pa.string()),
        "path_bytes": pa.array([exact_path_bytes(path) for path in paths], pa.binary()),
    }


# ------------------------------------------------------------------------------------------------------- tables
def _vectors(values: list[np.ndarray], dim: int) -> pa.Array:
    """A fixed-size-list float32 column from equal-length vectors of size `dim`."""
    matrix = np.stack(values).astype(np.float32) if values else np.zeros((0, dim), np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(matrix.reshape(-1)), dim)


def _segment_vectors(values: list[np.ndarray], dim: int) -> pa.Array:
    """A list<fixed_size_list<float32>> column: per row, its (num_segments, dim) matrix."""
    offsets = np.concatenate([[0], np.cumsum([len(v) for v in values])]).astype(np.int32)
    flat = np.concatenate(values).astype(np.float32) if values else np.zeros((0, dim), np.float32)
    return pa.ListArray.from_arrays(pa.array(offsets), _vectors(list(flat), dim))


def rows_to_table(rows: list[TrackResult], output_dims: dict[str, int], per_segment: bool) -> pa.Table:
    """The table of finished tracks: `path`, `path_bytes`, `duration` (seconds), `num_segments`, one fixed-size
    float32 vector column per output (`embedding`, `scores`; `output_dims` gives their sizes, so an empty table has
    the right schema too) and, with `per_segment`, a list column of the per-segment vectors."""
    columns = _path_columns([row.path for row in rows])
    columns["duration"] = pa.array([row.duration for row in rows], pa.float64())
    columns["num_segments"] = pa.array([row.num_segments for row in rows], pa.int32())
    for name, dim in output_dims.items():
        track_column, segment_column = OUTPUT_COLUMNS[name]
        columns[track_column] = _vectors([row.outputs[name] for row in rows], dim)
        if per_segment:
            columns[segment_column] = _segment_vectors([row.segment_outputs[name] for row in rows], dim)
    return pa.table(columns)


def table_metadata(table: pa.Table | pa.Schema) -> dict:
    """The `maest` metadata of a table (or of a schema, e.g. `pq.read_schema(file)`)."""
    schema = table if isinstance(table, pa.Schema) else table.schema
    raw = (schema.metadata or {}).get(METADATA_KEY)
    return json.loads(raw) if raw else {}


def with_metadata(table: pa.Table, metadata: dict) -> pa.Table:
    return table.replace_schema_metadata({METADATA_KEY: json.dumps(metadata).encode()})


# ------------------------------------------------------------------------------------------------------- final files
def write_output(path, table: pa.Table, metadata: dict) -> None:
    """Writes the final output atomically: Parquet (columns + the settings as schema metadata under `maest`, and as
    constant columns) or NPZ (one array per column, per-segment vectors flattened with `segment_track`, and the
    metadata as a JSON string under `metadata`)."""
    path = Path(path)
    settings = metadata.get("settings", {})
    if output_format(path) == ".parquet":
        for key in SETTINGS_COLUMNS:
            if key in settings and key not in table.column_names:
                value = settings[key]
                value = ",".join(value) if isinstance(value, list) else value
                table = table.append_column(key, pa.array([value] * table.num_rows))
        table = with_metadata(table, metadata)
        atomic_write(path, lambda temporary: pq.write_table(table, temporary))
        return
    arrays = {"metadata": np.array(json.dumps(metadata)), "path": np.array(table_paths(table), dtype=str)}
    arrays["duration"] = table["duration"].to_numpy()
    arrays["num_segments"] = table["num_segments"].to_numpy()
    failed = metadata.get("failed", [])
    arrays["failed_path"] = np.array([item["path"] for item in failed], dtype=str)
    arrays["failed_reason"] = np.array([item["reason"] for item in failed], dtype=str)
    for track_column, segment_column in OUTPUT_COLUMNS.values():
        if track_column in table.column_names:
            arrays[track_column] = _column_matrix(table[track_column])
        if segment_column in table.column_names:
            lists = table[segment_column].combine_chunks()
            counts = np.diff(lists.offsets.to_numpy())
            arrays[segment_column] = _column_matrix(lists.flatten())
            arrays["segment_track"] = np.repeat(np.arange(len(counts)), counts)
            arrays["segment_index"] = np.concatenate([np.arange(count) for count in counts]) if len(counts) else np.zeros(0, int)

    def write(temporary):
        with open(temporary, "wb") as file:
            np.savez(file, **arrays)

    atomic_write(path, write)


def _column_matrix(column) -> np.ndarray:
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    dim = column.type.list_size
    return column.flatten().to_numpy(zero_copy_only=False).reshape(-1, dim).astype(np.float32)


def read_output(path) -> pa.Table:
    """Reads a finished output (Parquet or NPZ) back as an Arrow table with its metadata (`table_metadata`)."""
    path = Path(path)
    if output_format(path) == ".parquet":
        return pq.read_table(path)
    with np.load(path, allow_pickle=False) as data:
        metadata = json.loads(str(data["metadata"]))
        names = data["path"].tolist()
        columns = _path_columns(names)
        columns["duration"] = pa.array(data["duration"], pa.float64())
        columns["num_segments"] = pa.array(data["num_segments"], pa.int32())
        for track_column, segment_column in OUTPUT_COLUMNS.values():
            if track_column in data:
                columns[track_column] = _vectors(list(data[track_column]), data[track_column].shape[1])
            if segment_column in data:
                segment_track = data["segment_track"]
                values = data[segment_column]
                columns[segment_column] = _segment_vectors(
                    [values[segment_track == row] for row in range(len(names))], values.shape[1]
                )
    return with_metadata(pa.table(columns), metadata)


# ------------------------------------------------------------------------------------------------------- failures
def write_failures(path, failures: list[dict]) -> None:
    """`OUT.failed.tsv`: a `path<TAB>reason` header and one row per failed track. Rows follow the csv module's
    tab-separated dialect: a field holding a tab, newline or quote is quoted (quotes doubled), so any file name
    survives; names are written as their bytes (non-UTF-8 names included). Read it with `read_failures`."""

    def write(temporary):
        with open(temporary, "w", encoding="utf-8", errors="surrogateescape", newline="") as file:
            writer = csv.writer(file, delimiter="\t", lineterminator="\n")
            writer.writerow(["path", "reason"])
            writer.writerows([item["path"], item["reason"]] for item in failures)

    atomic_write(path, write)


def read_failures(path) -> list[dict]:
    """The rows of a `write_failures` file: `[{"path": ..., "reason": ...}]` (names exactly as written)."""
    with open(path, encoding="utf-8", errors="surrogateescape", newline="") as file:
        rows = list(csv.reader(file, delimiter="\t"))
    return [{"path": path_, "reason": reason} for path_, reason in rows[1:]]


# ------------------------------------------------------------------------------------------------------- the lock
class OutputLock:
    """The one run writing `out`: an exclusive `flock` on `OUT.lock`, which holds `pid N on HOST` for the message
    a second run gets. The kernel drops the lock when its process ends (killed too), so a stale lock file is simply
    taken over. The holder removes the file when done.

    An `flock` belongs to the open file, which forked children (the DataLoader's decoding workers) share: a child
    closes its copy at once, or a run killed with SIGKILL would stay locked until its orphaned workers noticed."""

    _held: "set[OutputLock]" = set()  # acquired and not released in this process

    @classmethod
    def _forget_in_forked_child(cls) -> None:
        for lock in cls._held:  # every held lock has its descriptor: release() takes it out of the set
            os.close(lock._descriptor)
            lock._descriptor = None
        cls._held.clear()

    def __init__(self, out):
        self.out = Path(out)
        self.path = Path(str(out) + ".lock")
        self._descriptor: int | None = None

    def acquire(self) -> "OutputLock":
        while self._descriptor is None:
            try:
                descriptor = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            except OSError as error:
                raise OutputError(
                    f"cannot write {self.out}: {error.strerror.lower()} in {self.path.parent or '.'}"
                ) from error
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(descriptor, 200).decode(errors="replace").strip() or "another process"
                os.close(descriptor)
                raise OutputLockedError(
                    f"{self.out} is being written by another run ({holder}); wait for it to end or write to "
                    f"another output file"
                ) from None
            except OSError as error:  # a filesystem without locks: go on, unprotected
                if error.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
                    os.close(descriptor)
                    raise
                logger.warning(f"{self.path.parent} does not support file locks: concurrent runs on {self.out} are not detected")
            # The run that held it may have removed the file between our open and our lock: lock the current file.
            try:
                current = os.stat(self.path).st_ino == os.fstat(descriptor).st_ino
            except FileNotFoundError:
                current = False
            if current:
                self._descriptor = descriptor
                OutputLock._held.add(self)
            else:
                os.close(descriptor)
        os.ftruncate(self._descriptor, 0)
        os.write(self._descriptor, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
        return self

    def release(self) -> None:
        if self._descriptor is None:
            return
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
        os.close(self._descriptor)
        self._descriptor = None
        OutputLock._held.discard(self)

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
        return False


os.register_at_fork(after_in_child=OutputLock._forget_in_forked_child)


# ------------------------------------------------------------------------------------------------------- progress
class ProgressStore:
    """The resumable progress of one output file: `OUT.partial/manifest.json` and atomically written part files.

    Args:
        out: the final output file.
        settings: everything that changes the numbers (model, task, block, tokens, patchout, dtype, segmenting...);
            a store made with other settings is refused. Every part file carries them.
        output_dims: per output stored per track (`"embedding"`, `"scores"`), its vector size.
        per_segment: also store the per-segment vectors.
        rank: this process's number, in the part file names.
        flush_every_tracks / flush_every_seconds: when buffered rows are written to a part file.
    """

    def __init__(
        self,
        out,
        settings: dict,
        output_dims: dict[str, int],
        per_segment: bool = False,
        rank: int = 0,
        flush_every_tracks: int = 32,
        flush_every_seconds: float = 30.0,
    ):
        self.out = Path(out)
        output_format(self.out)
        self.directory = Path(str(self.out) + ".partial")
        self.settings = settings
        self.output_dims = dict(output_dims)
        self.per_segment = per_segment
        self.rank = rank
        self.flush_every_tracks = flush_every_tracks
        self.flush_every_seconds = flush_every_seconds
        self._rows: list[TrackResult] = []
        self._failures: list[dict] = []
        self._last_flush = time.monotonic()
        self._session = uuid.uuid4().hex[:8]
        self._sequence = 0
        self.saved = 0  # tracks this process saved to part files

    @property
    def manifest_path(self) -> Path:
        return self.directory / "manifest.json"

    def exists(self) -> bool:
        return self.manifest_path.is_file()

    def _refuse(self, where: str, found: dict) -> SettingsMismatchError:
        return SettingsMismatchError(
            f"{where} holds the progress of an interrupted run with other settings "
            f"({settings_difference(self.settings, found)}). Rerun with those settings to finish it, write "
            f"to another output file, or pass --overwrite (overwrite=True) to discard it."
        )

    def open(self, overwrite: bool = False) -> None:
        """Creates the store, or checks that an existing one (its manifest and each part file) was made with the
        same settings; a missing or damaged manifest is rewritten once the parts are checked."""
        if self.directory.exists() and overwrite:
            shutil.rmtree(self.directory)
        found = _read_json(self.manifest_path)
        if isinstance(found, dict) and found.get("settings") != self.settings:
            raise self._refuse(str(self.directory), found.get("settings") or {})
        self.check_parts()
        if isinstance(found, dict):
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        manifest = {"format": "maest-partial", "version": STORE_VERSION, "output": self.out.name, "settings": self.settings}
        atomic_write(self.manifest_path, lambda temporary: Path(temporary).write_text(json.dumps(manifest, indent=1)))

    def check_parts(self) -> None:
        """Refuses part files computed with other settings (or of a version that did not record them)."""
        for file in self.part_files():
            found = table_metadata(pq.read_schema(file)).get("settings")
            if found != self.settings:
                raise self._refuse(str(file), found or {"settings": "not recorded (older maest)"})

    def part_files(self) -> list[Path]:
        return sorted(self.directory.glob("part-*.parquet")) if self.directory.is_dir() else []

    def failure_files(self) -> list[Path]:
        return sorted(self.directory.glob("part-*.failed.json")) if self.directory.is_dir() else []

    def finished_paths(self) -> set[str]:
        return {path for file in self.part_files() for path in table_paths(pq.read_table(file, columns=["path", "path_bytes"]))}

    def add(self, row: TrackResult) -> None:
        self._rows.append(row)
        self._maybe_flush()

    def add_failure(self, path: str, reason: str) -> None:
        self._failures.append({"path": path, "reason": reason})
        self._maybe_flush()

    def _maybe_flush(self) -> None:
        pending = len(self._rows) + len(self._failures)
        if pending >= self.flush_every_tracks or time.monotonic() - self._last_flush >= self.flush_every_seconds:
            self.flush()

    def flush(self) -> None:
        """Writes the buffered rows and failures to new part files, each with the store's settings."""
        stem = f"part-r{self.rank:03d}-{time.time_ns():020d}-{self._session}-{self._sequence:06d}"
        try:
            if self._rows:
                table = with_metadata(rows_to_table(self._rows, self.output_dims, self.per_segment), {"settings": self.settings})
                atomic_write(self.directory / f"{stem}.parquet", lambda temporary: pq.write_table(table, temporary))
            if self._failures:
                failures = json.dumps({"settings": self.settings, "failures": self._failures})
                atomic_write(self.directory / f"{stem}.failed.json", lambda temporary: Path(temporary).write_text(failures))
        except OSError as error:
            raise StoreWriteError(
                f"could not save finished tracks to {self.directory} ({error.strerror or error}); the tracks saved "
                f"before are kept there: free the space (or fix the folder) and rerun the same command to continue"
            ) from error
        self.saved += len(self._rows)
        self._sequence += 1
        self._rows, self._failures = [], []
        self._last_flush = time.monotonic()

    def collected(self) -> tuple[pa.Table | None, list[dict]]:
        """All finished rows (the latest per path) and the latest failure per path of the tracks that never
        succeeded."""
        self.check_parts()
        tables = [pq.read_table(file).replace_schema_metadata(None) for file in self.part_files()]
        table = _latest_per_path(pa.concat_tables(tables)) if tables else None
        finished = set(table_paths(table)) if table is not None else set()
        failures = {}
        for file in self.failure_files():
            payload = _read_json(file)
            if isinstance(payload, dict) and payload.get("settings") == self.settings:
                for item in payload["failures"]:
                    failures[item["path"]] = item
        return table, [item for path, item in failures.items() if path not in finished]

    def remove(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


def _read_json(path: Path):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def _latest_per_path(table: pa.Table) -> pa.Table:
    last = {path: position for position, path in enumerate(table_paths(table))}
    return table.take(sorted(last.values()))


def load_existing_output(out, settings: dict, overwrite: bool = False) -> pa.Table | None:
    """The finished output already at `out` (to add to), or None. Refuses one made with other settings."""
    out = Path(out)
    if overwrite or not out.exists():
        return None
    try:
        table = read_output(out)
    except Exception as error:
        raise OutputError(f"{out} exists but cannot be read as a MAEST output ({error}); pass --overwrite to replace it") from error
    found = table_metadata(table).get("settings", {})
    if found != settings:
        raise SettingsMismatchError(
            f"{out} was written with other settings ({settings_difference(settings, found)}). Write to another "
            f"output file, or pass --overwrite (overwrite=True) to replace it."
        )
    if "path_bytes" not in table.column_names:  # written before names were kept as bytes: all of them UTF-8
        table = table.add_column(1, "path_bytes", pa.nulls(table.num_rows, pa.binary()))
    return table


def finalize_output(
    out,
    store: ProgressStore,
    metadata: dict,
    existing: pa.Table | None = None,
    order: list[str] | None = None,
    remove_store: bool = True,
) -> tuple[pa.Table, list[dict]]:
    """Merges the existing output and the store's part files into `out` (atomically), writes or removes the
    `OUT.failed.tsv` sidecar, and removes the store.

    Rows: those of the existing output first (updated in place when a track was redone), then the new ones in the
    order of `order` (the input list). Returns the final table and the failures.
    """
    out = Path(out)
    new_rows, failures = store.collected()
    if order is not None:  # rows and failures in input order, however many processes finished them in what order
        rank = {path: position for position, path in enumerate(order)}
        failures = sorted(failures, key=lambda item: rank.get(item["path"], len(rank)))
        if new_rows is not None:
            paths = table_paths(new_rows)
            new_rows = new_rows.take(sorted(range(len(paths)), key=lambda i: rank.get(paths[i], len(rank))))
    empty = rows_to_table([], store.output_dims, store.per_segment)
    pieces = [piece for piece in (existing, new_rows) if piece is not None]
    if pieces:
        names = empty.column_names
        combined = pa.concat_tables([piece.select(names).replace_schema_metadata(None) for piece in pieces])
        # One row per path: the newest row, at the place where the path first appeared.
        first, last = {}, {}
        for position, path in enumerate(table_paths(combined)):
            first.setdefault(path, position)
            last[path] = position
        table = combined.take([last[path] for path in first])
    else:
        table = empty
    metadata = dict(metadata, failed=failures, num_tracks=table.num_rows)
    write_output(out, table, metadata)
    failed_file = Path(str(out) + ".failed.tsv")
    if failures:
        write_failures(failed_file, failures)
    elif failed_file.exists():
        failed_file.unlink()
    if remove_store:
        store.remove()
    return table, failures


__all__ = [
    "OUTPUT_FORMATS",
    "OutputError",
    "OutputLock",
    "OutputLockedError",
    "ProgressStore",
    "SettingsMismatchError",
    "StoreWriteError",
    "TrackResult",
    "display_path",
    "finalize_output",
    "load_existing_output",
    "output_format",
    "read_failures",
    "read_output",
    "rows_to_table",
    "table_metadata",
    "table_paths",
    "write_failures",
    "write_output",
]
