"""Output files of collection runs (Parquet or NPZ), written atomically, and the resumable progress store beside them.

While a run writes `OUT`, finished tracks go to `OUT.partial/`: a `manifest.json` with the run's settings and part
files written atomically (temporary file + `os.replace`) every few tracks or seconds, so an interrupted run (Ctrl-C,
kill, crash) loses at most the last few tracks and never leaves a corrupt file. The next call with the same settings
skips the finished tracks; different settings are refused (or the old progress is discarded with `overwrite=True`).
`finalize_output` merges the existing output (if any) and all part files into `OUT` (again atomically), writes
`OUT.failed.tsv` when tracks failed, and removes `OUT.partial/`.

Part files are named per process (`part-r<rank>-<seq>-<id>`), so several processes (ranks) can fill one store with
disjoint shares of a collection and one of them finalizes it.
"""

import json
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from maest.files import atomic_write


OUTPUT_FORMATS = (".parquet", ".npz")
METADATA_KEY = b"maest"
# Settings that Parquet outputs also carry as (constant, dictionary-encoded) columns.
SETTINGS_COLUMNS = ("model", "block", "tokens", "inference_patchout_time_stride", "dtype")
STORE_VERSION = 1

# The per-track output columns: name in `TrackResult.outputs` -> (track column, per-segment column).
OUTPUT_COLUMNS = {"embedding": ("embedding", "segment_embeddings"), "scores": ("scores", "segment_scores")}


class SettingsMismatchError(ValueError):
    """Existing output or progress was made with other settings than the current run's."""


@dataclass
class Row:
    path: str
    duration: float
    num_segments: int
    outputs: dict
    segment_outputs: dict = field(default_factory=dict)


def output_format(path) -> str:
    suffix = Path(path).suffix.lower()
    if suffix not in OUTPUT_FORMATS:
        raise ValueError(f"{path}: unknown output format {suffix or '(none)'!r}; use a .parquet or .npz file name")
    return suffix


def _vectors(values: list[np.ndarray], dim: int | None = None) -> pa.Array:
    """A fixed-size-list float32 column from equal-length vectors."""
    matrix = np.stack(values).astype(np.float32) if values else np.zeros((0, dim or 0), np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(matrix.reshape(-1)), matrix.shape[1])


def _segment_vectors(values: list[np.ndarray]) -> pa.Array:
    """A list<fixed_size_list<float32>> column: per row, its (num_segments, dim) matrix."""
    offsets = np.concatenate([[0], np.cumsum([len(v) for v in values])]).astype(np.int32)
    flat = np.concatenate(values).astype(np.float32)
    return pa.ListArray.from_arrays(pa.array(offsets), _vectors(list(flat)) if len(flat) else _vectors([], values[0].shape[1]))


def rows_to_table(rows: list[Row], output_names: list[str], per_segment: bool) -> pa.Table:
    """The table of finished tracks: `path`, `duration` (seconds), `num_segments`, one fixed-size float32 vector
    column per output (`embedding`, `scores`) and, with `per_segment`, a list column of the per-segment vectors."""
    columns = {
        "path": pa.array([row.path for row in rows], pa.string()),
        "duration": pa.array([row.duration for row in rows], pa.float64()),
        "num_segments": pa.array([row.num_segments for row in rows], pa.int32()),
    }
    for name in output_names:
        track_column, segment_column = OUTPUT_COLUMNS[name]
        columns[track_column] = _vectors([row.outputs[name] for row in rows])
        if per_segment:
            columns[segment_column] = _segment_vectors([row.segment_outputs[name] for row in rows])
    return pa.table(columns)


def table_metadata(table: pa.Table) -> dict:
    raw = (table.schema.metadata or {}).get(METADATA_KEY)
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
    arrays = {"metadata": np.array(json.dumps(metadata)), "path": np.array(table["path"].to_pylist(), dtype=str)}
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
        columns = {"path": pa.array(data["path"].tolist(), pa.string())}
        columns["duration"] = pa.array(data["duration"], pa.float64())
        columns["num_segments"] = pa.array(data["num_segments"], pa.int32())
        for track_column, segment_column in OUTPUT_COLUMNS.values():
            if track_column in data:
                columns[track_column] = _vectors(list(data[track_column]), data[track_column].shape[1])
            if segment_column in data:
                segment_track = data["segment_track"]
                values = data[segment_column]
                columns[segment_column] = _segment_vectors([values[segment_track == row] for row in range(len(data["path"]))])
    return with_metadata(pa.table(columns), metadata)


def _settings_difference(expected: dict, found: dict) -> str:
    keys = sorted(set(expected) | set(found))
    return ", ".join(f"{key}: {found.get(key)!r} there, {expected.get(key)!r} now" for key in keys if expected.get(key) != found.get(key))


# ------------------------------------------------------------------------------------------------------- progress
class ProgressStore:
    """The resumable progress of one output file: `OUT.partial/manifest.json` and atomically written part files.

    Args:
        out: the final output file.
        settings: everything that changes the numbers (model, task, block, tokens, patchout, dtype, segmenting...);
            a store made with other settings is refused.
        output_names: outputs stored per track (`"embedding"`, `"scores"`).
        per_segment: also store the per-segment vectors.
        rank: this process's number, in the part file names.
        flush_every_tracks / flush_every_seconds: when buffered rows are written to a part file.
    """

    def __init__(
        self,
        out,
        settings: dict,
        output_names: list[str],
        per_segment: bool = False,
        rank: int = 0,
        flush_every_tracks: int = 32,
        flush_every_seconds: float = 30.0,
    ):
        self.out = Path(out)
        output_format(self.out)
        self.directory = Path(str(self.out) + ".partial")
        self.settings = settings
        self.output_names = list(output_names)
        self.per_segment = per_segment
        self.rank = rank
        self.flush_every_tracks = flush_every_tracks
        self.flush_every_seconds = flush_every_seconds
        self._rows: list[Row] = []
        self._failures: list[dict] = []
        self._last_flush = time.monotonic()
        self._session = uuid.uuid4().hex[:8]
        self._sequence = 0

    @property
    def manifest_path(self) -> Path:
        return self.directory / "manifest.json"

    def exists(self) -> bool:
        return self.manifest_path.is_file()

    def open(self, overwrite: bool = False) -> None:
        """Creates the store, or checks that an existing one was made with the same settings."""
        if self.directory.exists() and overwrite:
            shutil.rmtree(self.directory)
        if self.exists():
            found = json.loads(self.manifest_path.read_text()).get("settings", {})
            if found != self.settings:
                raise SettingsMismatchError(
                    f"{self.directory} holds the progress of an interrupted run with other settings "
                    f"({_settings_difference(self.settings, found)}). Rerun with those settings to finish it, write "
                    f"to another output file, or pass --overwrite (overwrite=True) to discard it."
                )
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        manifest = {"format": "maest-partial", "version": STORE_VERSION, "output": self.out.name, "settings": self.settings}
        atomic_write(self.manifest_path, lambda temporary: Path(temporary).write_text(json.dumps(manifest, indent=1)))

    def part_files(self) -> list[Path]:
        return sorted(self.directory.glob("part-*.parquet")) if self.directory.is_dir() else []

    def failure_files(self) -> list[Path]:
        return sorted(self.directory.glob("part-*.failed.json")) if self.directory.is_dir() else []

    def finished_paths(self) -> set[str]:
        return {path for file in self.part_files() for path in pq.read_table(file, columns=["path"])["path"].to_pylist()}

    def add(self, row: Row) -> None:
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
        """Writes the buffered rows and failures to new part files."""
        stem = f"part-r{self.rank:03d}-{time.time_ns():020d}-{self._session}-{self._sequence:06d}"
        if self._rows:
            table = rows_to_table(self._rows, self.output_names, self.per_segment)
            atomic_write(self.directory / f"{stem}.parquet", lambda temporary: pq.write_table(table, temporary))
        if self._failures:
            failures = json.dumps(self._failures)
            atomic_write(self.directory / f"{stem}.failed.json", lambda temporary: Path(temporary).write_text(failures))
        self._sequence += 1
        self._rows, self._failures = [], []
        self._last_flush = time.monotonic()

    def collected(self) -> tuple[pa.Table | None, list[dict]]:
        """All finished rows (the latest per path) and the latest failure per path of the tracks that never
        succeeded."""
        tables = [pq.read_table(file) for file in self.part_files()]
        table = _latest_per_path(pa.concat_tables(tables)) if tables else None
        finished = set(table["path"].to_pylist()) if table is not None else set()
        failures = {}
        for file in self.failure_files():
            for item in json.loads(file.read_text()):
                failures[item["path"]] = item
        return table, [item for path, item in failures.items() if path not in finished]

    def remove(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


def _latest_per_path(table: pa.Table) -> pa.Table:
    paths = table["path"].to_pylist()
    last = {path: position for position, path in enumerate(paths)}
    return table.take(sorted(last.values()))


def load_existing_output(out, settings: dict, overwrite: bool = False) -> pa.Table | None:
    """The finished output already at `out` (to add to), or None. Refuses one made with other settings."""
    out = Path(out)
    if overwrite or not out.exists():
        return None
    try:
        table = read_output(out)
    except Exception as error:
        raise ValueError(f"{out} exists but cannot be read as a MAEST output ({error}); pass --overwrite to replace it") from error
    found = table_metadata(table).get("settings", {})
    if found != settings:
        raise SettingsMismatchError(
            f"{out} was written with other settings ({_settings_difference(settings, found)}). Write to another "
            f"output file, or pass --overwrite (overwrite=True) to replace it."
        )
    return table


def finalize_output(
    out, store: ProgressStore, metadata: dict, existing: pa.Table | None = None, order: list[str] | None = None
) -> tuple[pa.Table, list[dict]]:
    """Merges the existing output and the store's part files into `out` (atomically), writes or removes the
    `OUT.failed.tsv` sidecar, and removes the store.

    Rows: those of the existing output first (updated in place when a track was redone), then the new ones in the
    order of `order` (the input list). Returns the final table and the failures.
    """
    out = Path(out)
    new_rows, failures = store.collected()
    if new_rows is not None and order is not None:
        rank = {path: position for position, path in enumerate(order)}
        paths = new_rows["path"].to_pylist()
        new_rows = new_rows.take(sorted(range(len(paths)), key=lambda i: rank.get(paths[i], len(rank))))
    pieces = [piece for piece in (existing, new_rows) if piece is not None]
    if pieces:
        names = [name for name in pieces[-1].column_names if name not in SETTINGS_COLUMNS]
        combined = pa.concat_tables([piece.select(names).replace_schema_metadata(None) for piece in pieces])
        # One row per path: the newest row, at the place where the path first appeared.
        first, last = {}, {}
        for position, path in enumerate(combined["path"].to_pylist()):
            first.setdefault(path, position)
            last[path] = position
        table = combined.take([last[path] for path in first])
    else:
        table = rows_to_table([], store.output_names, store.per_segment)
    metadata = dict(metadata, failed=failures, num_tracks=table.num_rows)
    write_output(out, table, metadata)
    failed_file = Path(str(out) + ".failed.tsv")
    if failures:
        lines = "".join(f"{_tsv(item['path'])}\t{_tsv(item['reason'])}\n" for item in failures)
        atomic_write(failed_file, lambda temporary: Path(temporary).write_text("path\treason\n" + lines))
    elif failed_file.exists():
        failed_file.unlink()
    store.remove()
    return table, failures


def _tsv(text: str) -> str:
    return " ".join(str(text).split())


__all__ = [
    "OUTPUT_FORMATS",
    "ProgressStore",
    "Row",
    "SettingsMismatchError",
    "finalize_output",
    "load_existing_output",
    "read_output",
    "rows_to_table",
    "table_metadata",
    "write_output",
]
