"""Similarity search over MAEST embeddings: an on-disk index built from `maest embed` output, queried by vectors,
by tracks already in the index, or by audio files embedded on the fly with the index's model and settings.

```python
from maest.similarity import build_index, SimilarityIndex

build_index("collection.parquet", "collection.index")           # again after `maest embed` added tracks: adds them
index = SimilarityIndex.open("collection.index")
index.search_paths(["/music/a.mp3"], k=10)                      # [[Neighbour(path, score, ...), ...]]
index.search_audio(["new_song.wav"], k=10)                      # embedded with the index's model and settings
```

The vector search is FAISS (`faiss-cpu`): cosine similarity is the inner product of L2-normalized vectors. Small
collections (up to `EXACT_MAX_VECTORS`, 10k) are searched exactly (`IndexFlatIP`); larger ones with an inverted-file
index (spherical k-means lists, vectors stored as 8-bit scalar-quantized codes), whose `nprobe` is chosen at build
time as the smallest that reaches `RECALL_TARGET` recall@10 against exact search on sampled queries (reported in
the manifest).

An index directory holds `manifest.json` (the embeddings' settings, the kind of index, the recall measured at build
time, the names and SHA-256 checksums of the current data files), `vectors-<generation>.faiss` and
`rows-<generation>.parquet` (id, path, segment, start time and a hash of each vector). An update takes the index's
lock (`INDEX.lock` beside it: a second update is refused), records the names of the files it is about to write in the
manifest, writes them, then replaces the manifest atomically (the commit), then deletes the files of the previous
generation and of killed writes: only files the manifest named. A kill at any moment leaves the previous or the new
index, never a mix; a reader that opened the previous generation while an update removed it reads the new one.
Opening an index checks its files against the manifest's checksums: a damaged index is reported in one line, with
the command that rebuilds it.
"""

import contextlib
import hashlib
import json
import os
import re
import shlex
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from maest.utils.errors import MAESTError, one_line, settings_difference
from maest.utils.files import atomic_write, write_text_atomically


INDEX_FORMAT = "maest-similarity-index"
INDEX_VERSION = 2  # 2: checksums of the data files; the files of an unfinished write are named in the manifest
READABLE_VERSIONS = (1, 2)
# The data files an index writes: only files named so, and named in its manifest, are ever deleted by an update.
DATA_FILE_NAME = re.compile(r"(vectors-[0-9]{20}-[0-9a-f]{6}\.faiss|rows-[0-9]{20}-[0-9a-f]{6}\.parquet)")
ROW_COLUMNS = ("id", "path", "segment", "start_seconds", "hash")
# An approximate index trains about 2 sqrt(n) (at least 16) lists on its vectors: below this size there is too little
# to train on, so --exact-max cannot be set lower.
MIN_EXACT_MAX_VECTORS = 100
# A reader retries when an update removed the generation it was about to read (each retry reads the newer manifest).
OPEN_ATTEMPTS = 5
# Up to this many vectors the index is exact; past it, approximate. An exact scan of 10k 2304-dim vectors is
# 23M multiply-adds (a few ms); benchmarks/similarity_benchmark.py measured 100-350 ms for 20k-50k on 2 busy cores.
EXACT_MAX_VECTORS = 10_000
RECALL_TARGET = 0.97  # recall@10 the build tunes nprobe for (the promise is 0.95; a margin for later additions)
RECALL_AT = 10
RECALL_QUERIES = 200
# The approximate index is retrained from scratch when it has grown this many times past the size it was trained
# at (its lists no longer fit the data); smaller additions only add rows.
RETRAIN_GROWTH = 4.0
# The settings that change embedding vectors: two sets of embeddings are comparable when these agree. `weights` is
# the model's identity by content (`maest.inference.backends.weights_digest`: weights changed in place in the same
# directory are another model); `backend` is recorded only where a runtime's numbers differ from torch's.
EMBEDDING_SETTINGS = (
    "model", "weights", "dtype", "backend", "inference_patchout_time_stride", "segment_frames", "last_segment",
    "min_duration", "block", "tokens",
)
READ_BATCH_ROWS = 4096
# `maest embed`'s path columns: `path` (text) and `path_bytes` (the exact bytes of names that are not UTF-8).
PATH_COLUMNS = ("path", "path_bytes")


class SimilarityIndexError(MAESTError, ValueError):
    """A bad index directory, embeddings file or query."""


class IndexSettingsMismatchError(SimilarityIndexError):
    """Embeddings made with other settings (model, block, tokens...) than the index's."""


class IndexDamagedError(SimilarityIndexError):
    """An index whose files are missing, truncated or altered (checksums, sizes and structure checked on open)."""

    def __init__(self, directory, problem: str, source: str | None = None):
        self.directory, self.problem = Path(directory), problem
        embeddings = shlex.quote(source) if source else "EMBEDDINGS"
        super().__init__(
            f"{directory}: the index is damaged ({problem}); rebuild it from its embeddings: "
            f"maest index {embeddings} --out {shlex.quote(str(directory))} --overwrite"
        )


@dataclass
class Neighbour:
    """One search result: an indexed track (or, in a per-segment index, a segment of it) and its cosine
    similarity to the query."""

    query: str
    rank: int
    path: str
    score: float
    segment: int | None = None
    start_seconds: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class IndexUpdate:
    """What `build_index` did."""

    directory: Path
    kind: str
    size: int
    added: int
    replaced: int
    removed: int
    rebuilt: bool
    recall: float | None
    nprobe: int | None
    seconds: float
    duplicates: int = 0  # rows of the embeddings file left out because a later row had the same track
    repaired: str | None = None  # the damage of the previous index, when this build replaced it


# --------------------------------------------------------------------------------------------------------- vectors
def normalize(vectors: np.ndarray) -> np.ndarray:
    """L2-normalizes rows (`(n, dim)` float32); the inner product of normalized vectors is their cosine."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim != 2:
        raise SimilarityIndexError(f"vectors must have shape (n, dim), got {vectors.shape}")
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    if np.any(norms == 0) or not np.all(np.isfinite(norms)):
        raise SimilarityIndexError("an embedding is all zeros or not finite; it has no direction to compare")
    return vectors / norms


def embedding_settings(settings: dict) -> dict:
    """The part of a run's settings that decides what its embedding vectors mean."""
    return {key: settings[key] for key in EMBEDDING_SETTINGS if key in settings}


def check_settings(index_settings: dict, query_settings: dict, what: str) -> None:
    """Refuses to compare embeddings made with other settings than the index's."""
    expected, found = embedding_settings(index_settings), embedding_settings(query_settings)
    if expected != found:
        difference = settings_difference(expected, found, "in the index")
        raise IndexSettingsMismatchError(f"{what} were made with other settings than the index ({difference})")


def _vector_hash(vector: np.ndarray) -> bytes:
    return hashlib.blake2b(np.ascontiguousarray(vector, dtype=np.float32).tobytes(), digest_size=12).digest()


# ------------------------------------------------------------------------------------------------ embeddings input
def read_embeddings_metadata(path) -> dict:
    """The `maest embed` metadata (settings, segment length) of a Parquet or NPZ embeddings file."""
    # imported here: the `maest.inference` package imports torch and transformers (seconds), and building or
    # searching an index from embeddings files needs neither
    from maest.inference.store import METADATA_KEY, output_format, read_output, table_metadata

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such embeddings file")
    try:
        if output_format(path) == ".parquet":
            metadata = (pq.read_schema(path).metadata or {}).get(METADATA_KEY)
            metadata = json.loads(metadata) if metadata else {}
        else:
            metadata = table_metadata(read_output(path))
    except (pa.ArrowException, OSError, ValueError) as error:
        raise SimilarityIndexError(f"{path}: cannot be read as `maest embed` output ({error})") from error
    if "embedding" not in metadata.get("settings", {}).get("outputs", []):
        raise SimilarityIndexError(f"{path}: holds no embeddings (write it with `maest embed`)")
    return metadata


def iter_embedding_rows(path, per_segment: bool, segment_seconds: float, keep: np.ndarray | None = None):
    """Yields `(path, segment, start_seconds, vectors)` batches from a `maest embed` file: one vector per track
    (segment -1) or, with `per_segment`, one per segment. `vectors` is `(n, dim)` float32. `keep`: a boolean per row
    of the file, False for rows to leave out (see `embedding_rows`)."""
    # imported here: the `maest.inference` package imports torch and transformers (see read_embeddings_metadata)
    from maest.inference.store import output_format, read_output, table_paths

    column = "segment_embeddings" if per_segment else "embedding"
    path = Path(path)
    if output_format(path) == ".parquet":
        file = pq.ParquetFile(path)
        names = file.schema_arrow.names
        batches = file.iter_batches(batch_size=READ_BATCH_ROWS, columns=[name for name in PATH_COLUMNS + (column,) if name in names])
    else:
        table = read_output(path)
        names = table.column_names
        batches = table.select([name for name in PATH_COLUMNS + (column,) if name in names]).to_batches(READ_BATCH_ROWS)
    if column not in names:
        raise SimilarityIndexError(f"{path}: has no {column!r} column" + (" (embed with --per-segment)" if per_segment else ""))
    first_row = 0
    for batch in batches:
        if keep is not None:
            selected = keep[first_row:first_row + batch.num_rows]
            first_row += batch.num_rows
            batch = batch.filter(pa.array(selected))
        paths = table_paths(pa.Table.from_batches([batch]))
        values = batch.column(column)
        if not per_segment:
            yield paths, np.full(len(paths), -1), np.zeros(len(paths)), _flat_matrix(values)
            continue
        counts = np.diff(values.offsets.to_numpy())
        segments = np.concatenate([np.arange(count) for count in counts]) if len(counts) else np.zeros(0, int)
        track_paths = [paths[row] for row, count in enumerate(counts) for _ in range(count)]
        yield track_paths, segments, segments * segment_seconds, _flat_matrix(values.flatten())


@dataclass
class EmbeddingRows:
    """Which rows of an embeddings file to index: the last row of each track (`keep`), and how many earlier rows
    of the same tracks were left out."""

    keep: np.ndarray
    tracks: int
    duplicates: int
    duplicated_tracks: int


def embedding_rows(path) -> EmbeddingRows:
    """Reads the track names of a `maest embed` file and keeps the last row of each track: a file with a track twice
    (concatenated outputs, a hand-made table) would otherwise store one (path, segment) key twice."""
    # imported here: the `maest.inference` package imports torch and transformers (see read_embeddings_metadata)
    from maest.inference.store import output_format, read_output, table_paths

    path = Path(path)
    try:
        if output_format(path) == ".parquet":
            names = pq.read_schema(path).names
            table = pq.read_table(path, columns=[name for name in PATH_COLUMNS if name in names])
        else:
            table = read_output(path)
        paths = table_paths(table)
    except (pa.ArrowException, OSError, ValueError, KeyError) as error:
        raise SimilarityIndexError(f"{path}: cannot be read as `maest embed` output ({error})") from error
    last = {name: position for position, name in enumerate(paths)}
    keep = np.zeros(len(paths), bool)
    keep[list(last.values())] = True
    counts: dict[str, int] = {}
    for name in paths:
        counts[name] = counts.get(name, 0) + 1
    return EmbeddingRows(keep, len(last), len(paths) - len(last), sum(count > 1 for count in counts.values()))


def _flat_matrix(values: pa.Array) -> np.ndarray:
    dim = values.type.list_size
    return values.flatten().to_numpy(zero_copy_only=False).reshape(-1, dim).astype(np.float32)


# -------------------------------------------------------------------------------------------------- faiss indexes
def _faiss():
    try:
        # imported here: an optional extra (`pip install "maest[similarity]"`)
        import faiss
    except ImportError as error:
        raise SimilarityIndexError('similarity search needs FAISS: pip install "maest[similarity]"') from error
    return faiss


def new_exact_index(dim: int):
    """Exact cosine search: a flat inner-product index with our row ids."""
    faiss = _faiss()
    return faiss.IndexIDMap2(faiss.IndexFlatIP(dim))


def new_approximate_index(vectors: np.ndarray, seed: int = 0):
    """An inverted-file index trained on `vectors` (normalized, `(n, dim)`): about 2 sqrt(n) lists from spherical
    k-means on a sample, 8-bit scalar-quantized codes (a quarter of float32's memory)."""
    faiss = _faiss()
    count, dim = vectors.shape
    num_lists = int(np.clip(2 * np.sqrt(count), 16, 65536))
    quantizer = faiss.IndexFlatIP(dim)
    index = faiss.IndexIVFScalarQuantizer(quantizer, dim, num_lists, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT)
    index.cp.spherical = True  # centroids on the unit sphere, like the data
    index.cp.seed = seed
    index.cp.niter = 10
    index.cp.min_points_per_centroid = 5  # small collections train on what they have, without a warning
    sample = np.random.default_rng(seed).choice(count, size=min(count, 40 * num_lists), replace=False)
    index.train(vectors[np.sort(sample)])
    index.set_direct_map_type(faiss.DirectMap.Hashtable)  # lets rows be removed and looked up by id
    return index


def exact_neighbours(vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """The ids (positions in `vectors`) of each query's k nearest rows by inner product, `(num_queries, k)`."""
    faiss = _faiss()
    _, ids = faiss.knn(queries, vectors, k, metric=faiss.METRIC_INNER_PRODUCT)
    return ids


def recall_at(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean fraction of the true k nearest neighbours that were found (`(num_queries, k)` id arrays)."""
    return float(np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(found, truth)]))


def tune_nprobe(index, vectors: np.ndarray, target: float = RECALL_TARGET, num_queries: int = RECALL_QUERIES, seed: int = 0):
    """The smallest `nprobe` (lists scanned per query) whose recall@10 against exact search reaches `target`, on
    sampled rows of `vectors` used as queries. `index` holds `vectors` with ids 0..n-1. Each query's own row is left
    out of both result lists (it is always found), so the figure is what a new track's query gets. Returns
    (nprobe, recall)."""
    rng = np.random.default_rng(seed + 1)
    sample = rng.choice(len(vectors), size=min(len(vectors), num_queries), replace=False)
    queries = vectors[sample]
    k = min(RECALL_AT, len(vectors) - 1)
    truth = _without_self(exact_neighbours(vectors, queries, k + 1), sample, k)
    nprobe, recall = 1, 0.0
    while True:
        index.nprobe = nprobe
        _, found = index.search(queries, k + 1)
        recall = recall_at(_without_self(found, sample, k), truth)
        if recall >= target or nprobe >= index.nlist:
            return nprobe, recall
        nprobe = min(nprobe * 2, index.nlist)


def _without_self(ids: np.ndarray, own: np.ndarray, k: int) -> np.ndarray:
    return np.array([[i for i in row if i != self_id][:k] for row, self_id in zip(ids, own)])


# ----------------------------------------------------------------------------------------------------- the index
class SimilarityIndex:
    """An index directory opened for search (see the module docstring for its files)."""

    def __init__(self, directory, manifest: dict, rows: pa.Table, index):
        self.directory = Path(directory)
        self.manifest = manifest
        self.rows = rows
        self.index = index
        self._position_of_id = None
        self._ids_of_path = None

    @classmethod
    def open(cls, directory) -> "SimilarityIndex":
        """Opens an index for search, checking its files against the manifest (checksums, sizes, dimension).

        Raises:
            SimilarityIndexError: not an index; IndexDamagedError: damaged (the message says how to rebuild it).
        """
        directory = Path(directory)
        manifest = read_manifest(directory)
        for _ in range(OPEN_ATTEMPTS):
            with contextlib.ExitStack() as files:
                try:
                    vectors_file, rows_file = (
                        files.enter_context(open(directory / manifest[key], "rb")) for key in ("vectors_file", "rows_file")
                    )
                except FileNotFoundError as error:
                    newer = read_manifest(directory)
                    if _data_files(newer) == _data_files(manifest):
                        raise IndexDamagedError(directory, f"{Path(error.filename).name} is missing", manifest.get("source")) from None
                    manifest = newer  # an update committed a newer generation and removed this one: read that
                    continue
                except OSError as error:
                    raise SimilarityIndexError(f"{directory}: cannot read the index ({error.strerror or error})") from error
                # Both files are open: an update that removes them now does not take them from this reader.
                rows, index = _read_data(directory, manifest, vectors_file, rows_file)
            if manifest.get("nprobe"):
                index.nprobe = manifest["nprobe"]
            return cls(directory, manifest, rows, index)
        raise SimilarityIndexError(f"{directory}: the index was updated {OPEN_ATTEMPTS} times while it was being opened; try again")

    @property
    def settings(self) -> dict:
        return self.manifest["settings"]

    @property
    def per_segment(self) -> bool:
        return self.manifest["per_segment"]

    @property
    def kind(self) -> str:
        return self.manifest["kind"]

    def __len__(self) -> int:
        return self.rows.num_rows

    def paths(self) -> list[str]:
        """The distinct indexed tracks, in index order."""
        return list(dict.fromkeys(os.fsdecode(value) for value in self.rows["path"].to_pylist()))

    def _row_lookup(self):
        if self._position_of_id is None:
            ids = self.rows["id"].to_numpy()
            self._position_of_id = {int(row_id): position for position, row_id in enumerate(ids)}
            self._ids_of_path = {}
            for row_id, path in zip(ids, self.rows["path"].to_pylist()):
                self._ids_of_path.setdefault(os.fsdecode(path), []).append(int(row_id))
        return self._position_of_id, self._ids_of_path

    def vectors_of(self, path: str) -> np.ndarray:
        """The indexed vectors of a track (`(num_rows, dim)`; one row, or one per segment). An approximate index
        gives back its 8-bit codes' decoding, close to the original."""
        _, ids_of_path = self._row_lookup()
        ids = ids_of_path.get(path) or ids_of_path.get(os.path.abspath(path))
        if not ids:
            raise SimilarityIndexError(f"{path}: not in the index {self.directory}")
        return np.stack([self.index.reconstruct(row_id) for row_id in ids])

    def search(self, vectors: np.ndarray, k: int = 10, query: str = "query", settings: dict | None = None,
               exclude_path: str | None = None) -> list[Neighbour]:
        """The k nearest indexed items to a query given as one or more vectors (`(n, dim)` or `(dim,)`; several
        rows, e.g. a track's segments, are searched together and each item scores its best match).

        Args:
            settings: the settings the query vectors were made with (`maest embed` metadata); other settings than
                the index's are refused. Without them only the dimension is checked.
            exclude_path: leave this track out (the query itself, when it is in the index).
        """
        if settings is not None:
            check_settings(self.settings, settings, f"the embeddings of {query}")
        vectors = normalize(np.atleast_2d(vectors))
        if vectors.shape[1] != self.index.d:
            raise SimilarityIndexError(f"{query}: embeddings of dimension {vectors.shape[1]}, the index has {self.index.d}")
        if k < 1:
            raise SimilarityIndexError(f"top-k must be at least 1, got {k}")
        if len(self) == 0:
            return []
        extra = len(self._row_lookup()[1].get(exclude_path, ())) if exclude_path else 0
        scores, ids = self.index.search(vectors, min(len(self), k + extra + (k if self.per_segment else 0)))
        return self._neighbours(query, scores, ids, k, exclude_path)

    def _neighbours(self, query, scores, ids, k, exclude_path) -> list[Neighbour]:
        position_of_id, _ = self._row_lookup()
        best: dict[int, float] = {}
        for row_scores, row_ids in zip(scores, ids):
            for score, row_id in zip(row_scores, row_ids):
                if row_id >= 0 and score > best.get(int(row_id), -np.inf):
                    best[int(row_id)] = float(score)
        paths, segments, starts = (self.rows[name].to_pylist() for name in ("path", "segment", "start_seconds"))
        neighbours = []
        for row_id, score in sorted(best.items(), key=lambda item: -item[1]):
            position = position_of_id[row_id]
            path = os.fsdecode(paths[position])
            if path == exclude_path:
                continue
            segment = segments[position] if self.per_segment else None
            start = starts[position] if self.per_segment else None
            neighbours.append(Neighbour(query, len(neighbours) + 1, path, score, segment, start))
            if len(neighbours) == k:
                break
        return neighbours

    def search_paths(self, paths: list[str], k: int = 10) -> list[list[Neighbour]]:
        """Neighbours of tracks already in the index (each leaves itself out)."""
        results = []
        for path in paths:
            vectors = self.vectors_of(path)
            indexed = path if path in self._row_lookup()[1] else os.path.abspath(path)
            results.append(self.search(vectors, k, query=path, exclude_path=indexed))
        return results

    def search_audio(self, files: list[str], k: int = 10, model=None, progress: bool = False,
                     failures: list | None = None) -> list[list[Neighbour]]:
        """Neighbours of audio files, embedded with the index's model and settings (`model`: an already loaded
        `InferenceModel` of that model, to save loading it), one list per file in the order given.

        Args:
            failures: a list to collect the files that could not be embedded (`{"path", "reason"}`; their result is
                an empty list). Without it the first such file raises `SimilarityIndexError`.
        """
        results = embed_like_index(files, self.settings, model=model, progress=progress)
        if results.failed and failures is None:
            raise SimilarityIndexError(results.failed[0]["reason"])
        query_settings = results.metadata["settings"]
        vectors = results.segment_embeddings if self.per_segment else list(results.embeddings[:, None, :])
        found = {
            path: self.search(track_vectors, k, query=path, settings=query_settings)
            for path, track_vectors in zip(results.paths, vectors)
        }
        failed = {item["path"]: item for item in results.failed}
        neighbours = []
        for file in files:
            name = os.path.abspath(file)  # how the collection job names a track
            if name in found:
                neighbours.append(found[name])
            else:
                failures.append(failed.get(name) or {"path": name, "reason": f"{file}: not analyzed"})
                neighbours.append([])
        return neighbours


def embed_like_index(inputs, settings: dict, model=None, scores: bool = False, progress: bool = False, sampling_rate=None):
    """Runs `maest.inference.analyze` on `inputs` with the model and embedding settings of an index (plus the
    per-segment outputs, and the style scores with `scores`)."""
    # imported here: torch and transformers (seconds), needed only to embed audio, not to search embeddings
    from maest.inference import analyze, load_model
    from maest.inference.model import DEFAULT_BACKEND

    if model is None:
        model = load_model(
            settings["model"], dtype=settings.get("dtype", "float32"),
            inference_patchout_time_stride=settings.get("inference_patchout_time_stride"),
            backend=settings.get("backend", DEFAULT_BACKEND),  # recorded where its numbers differ from torch's
        )
    return analyze(
        inputs, model, scores=scores, embedding=True, block=settings.get("block"),
        tokens=",".join(settings.get("tokens", ["cls", "dist", "mean"])), per_segment=True,
        last_segment=settings.get("last_segment", "auto"), min_duration=settings.get("min_duration", 1.0),
        progress=progress, sampling_rate=sampling_rate,
    )


# The keys of a finished manifest and their types (the index cannot be used without them).
MANIFEST_KEYS = {
    "settings": dict, "per_segment": bool, "kind": str, "vectors_file": str, "rows_file": str, "size": int,
    "dim": int, "next_id": int, "trained_size": int, "recall": dict,
}


def read_manifest(directory, finished: bool = True) -> dict:
    """The manifest of an index directory, checked: JSON, format, version, the keys a search needs (`finished`)
    and data file names of the index's own pattern.

    Raises:
        SimilarityIndexError: not an index folder; IndexDamagedError: a damaged manifest.
    """
    directory = Path(directory)
    manifest_path = directory / "manifest.json"
    if directory.exists() and not directory.is_dir():
        raise SimilarityIndexError(f"{directory}: is a file, not a similarity index folder")
    if not manifest_path.is_file():
        raise SimilarityIndexError(f"{directory}: not a similarity index (no manifest.json; build one with `maest index`)")
    try:
        manifest = json.loads(manifest_path.read_bytes().decode("utf-8"))
    except OSError as error:
        raise SimilarityIndexError(f"{manifest_path}: cannot be read ({error.strerror or error})") from error
    except ValueError:  # UnicodeDecodeError included: a binary file
        raise IndexDamagedError(directory, "manifest.json is empty or not JSON") from None
    if not isinstance(manifest, dict) or manifest.get("format") != INDEX_FORMAT:
        raise IndexDamagedError(directory, f"manifest.json is not a {INDEX_FORMAT} manifest")
    source = manifest.get("source") if isinstance(manifest.get("source"), str) else None
    if manifest.get("version") not in READABLE_VERSIONS:
        raise SimilarityIndexError(
            f"{directory}: an index of version {manifest.get('version')!r}; this maest reads versions "
            f"{', '.join(map(str, READABLE_VERSIONS))} (upgrade maest, or rebuild it: maest index EMBEDDINGS --out {directory} --overwrite)"
        )
    names = list(manifest.get("pending", [])) + [manifest[key] for key in ("vectors_file", "rows_file") if key in manifest]
    if not all(isinstance(name, str) and DATA_FILE_NAME.fullmatch(name) for name in names):
        raise IndexDamagedError(directory, "manifest.json names data files that are not the index's", source)
    if finished:
        if "vectors_file" not in manifest and manifest.get("pending"):
            raise SimilarityIndexError(
                f"{directory}: its first build did not finish (killed or failed); run `maest index` on it again"
            )
        for key, kind in MANIFEST_KEYS.items():
            if not isinstance(manifest.get(key), kind):
                problem = "lacks" if key not in manifest else "has a wrong"
                raise IndexDamagedError(directory, f"manifest.json {problem} {key!r}", source)
    return manifest


def _data_files(manifest: dict) -> tuple:
    return manifest.get("vectors_file"), manifest.get("rows_file")


def _read_data(directory: Path, manifest: dict, vectors_file, rows_file):
    """The rows table and FAISS index of a generation from its open files, checked against the manifest."""
    source = manifest.get("source")
    checksums = manifest.get("checksums") or {}
    for file, name in ((vectors_file, manifest["vectors_file"]), (rows_file, manifest["rows_file"])):
        if name in checksums and hashlib.file_digest(file, "sha256").hexdigest() != checksums[name]:
            raise IndexDamagedError(directory, f"{name} does not match its checksum", source)
        file.seek(0)
    try:
        rows = pq.read_table(rows_file)
    except (pa.ArrowException, OSError) as error:
        raise IndexDamagedError(directory, f"{manifest['rows_file']} cannot be read: {one_line(error)}", source) from error
    try:
        index = _faiss().read_index(_faiss().PyCallbackIOReader(vectors_file.read))
    except RuntimeError as error:
        raise IndexDamagedError(directory, f"{manifest['vectors_file']} cannot be read as a FAISS index", source) from error
    missing = [name for name in ROW_COLUMNS if name not in rows.column_names]
    if missing:
        raise IndexDamagedError(directory, f"{manifest['rows_file']} lacks the column {missing[0]!r}", source)
    if not rows.num_rows == index.ntotal == manifest["size"] or index.d != manifest["dim"]:
        raise IndexDamagedError(
            directory, f"{index.ntotal} vectors of dimension {index.d} and {rows.num_rows} rows, the manifest says "
            f"{manifest['size']} of dimension {manifest['dim']}", source,
        )
    return rows, index


# ------------------------------------------------------------------------------------------------ building, updating
def build_index(
    embeddings,
    out,
    per_segment: bool = False,
    overwrite: bool = False,
    exact_max_vectors: int = EXACT_MAX_VECTORS,
    recall_target: float = RECALL_TARGET,
) -> IndexUpdate:
    """Builds the index `out` from a `maest embed` file, or brings an existing one up to date with it.

    An existing index only gains the rows that are new in `embeddings`, replaces those whose vectors changed and drops
    those no longer there (no rebuild), unless the update crosses `exact_max_vectors` (exact -> approximate) or grows
    an approximate index `RETRAIN_GROWTH` times past its training size: then it is built again. An index whose data
    files are damaged is rebuilt from `embeddings` (`IndexUpdate.repaired` says what was wrong).

    A file without any track is refused (it is what `maest embed` writes when every track failed; indexing it would
    empty the index). A track present in several rows is indexed once, from its last row (`IndexUpdate.duplicates`).

    Args:
        embeddings: a `.parquet` / `.npz` file written by `maest embed` (or `maest.inference.embed(out=...)`).
        out: the index folder: new, empty, or holding an index (nothing else: its files are never touched).
        per_segment: index every segment (the file must hold `segment_embeddings`: `maest embed --per-segment`).
        overwrite: build from scratch even when `out` holds an index (of other settings, or damaged, too).
        exact_max_vectors: the largest collection searched exactly (at least `MIN_EXACT_MAX_VECTORS`).

    Raises:
        OutputLockedError: another update of `out` is running.
    """
    # imported here: the `maest.inference` package imports torch and transformers (see read_embeddings_metadata)
    from maest.inference.store import OutputLock

    started = time.perf_counter()
    if isinstance(exact_max_vectors, bool) or not isinstance(exact_max_vectors, int) or exact_max_vectors < MIN_EXACT_MAX_VECTORS:
        raise SimilarityIndexError(
            f"the largest exact index (--exact-max) must be an integer of at least {MIN_EXACT_MAX_VECTORS} (an approximate "
            f"index trains its lists on the vectors it holds), got {exact_max_vectors!r}"
        )
    out = Path(out)
    metadata = read_embeddings_metadata(embeddings)
    rows_to_index = embedding_rows(embeddings)
    if rows_to_index.tracks == 0:
        failed = Path(str(embeddings) + ".failed.tsv")
        why = f" (every track failed: see {failed})" if failed.exists() else ""
        raise SimilarityIndexError(f"{embeddings}: holds no tracks{why}; the index {out} was not changed")
    source = {"settings": metadata["settings"], "segment_seconds": float(metadata.get("segment_seconds", 0.0)), "per_segment": per_segment}
    try:
        out.parent.mkdir(parents=True, exist_ok=True)  # the lock file is beside the index folder
    except OSError as error:
        raise SimilarityIndexError(f"cannot create the index {out} ({error.strerror or error})") from error
    with OutputLock(out):
        _check_index_folder(out)  # under the lock: a build in progress has files and not yet a manifest
        update = _build_locked(embeddings, out, source, rows_to_index, overwrite, exact_max_vectors, recall_target)
    update.duplicates = rows_to_index.duplicates
    return _finished(update, started)


def _check_index_folder(out: Path) -> None:
    """Refuses an `--out` that is a file, or a folder holding other files than an index's."""
    if out.exists() and not out.is_dir():
        raise SimilarityIndexError(f"{out}: is a file; --out names the index folder (new, or holding an index)")
    if out.is_dir() and not (out / "manifest.json").exists():
        try:  # (a killed first build may have left the temporary file of its first manifest: the index's own)
            others = next((file for file in out.iterdir() if not _is_manifest_temporary(file.name)), None)
        except OSError as error:
            raise SimilarityIndexError(f"{out}: cannot be read ({error.strerror or error})") from error
        if others is not None:
            raise SimilarityIndexError(
                f"{out}: is a folder of other files ({others.name}...), not a similarity index; give --out a new or empty folder"
            )


def _is_manifest_temporary(name: str) -> bool:
    return name.startswith(".manifest.json.") and name.endswith(".tmp")  # `atomic_write`'s temporary name


def _build_locked(embeddings, out: Path, source: dict, rows_to_index: EmbeddingRows, overwrite: bool,
                  exact_max_vectors: int, recall_target: float) -> IndexUpdate:
    """`build_index` while holding the index's lock."""
    found = None  # the manifest found in `out`: the files it names are this index's, to remove once replaced
    repaired = None
    if (out / "manifest.json").exists():
        try:
            found = read_manifest(out, finished=False)
        except IndexDamagedError:
            if not overwrite:
                raise
        if found is not None:  # files of a killed or failed write: garbage now that this update holds the lock
            _remove_index_files(out, set(found.get("pending", [])) - set(_data_files(found)))
        finished = found is not None and "vectors_file" in found
        if finished and not overwrite:
            read_manifest(out)  # a finished manifest is complete, or damaged (refused: --overwrite rebuilds)
            check_settings(found["settings"], source["settings"], f"the embeddings in {embeddings}")
            if found["per_segment"] != source["per_segment"]:
                raise IndexSettingsMismatchError(
                    f"{out} is a {'per-segment' if found['per_segment'] else 'per-track'} index; pass "
                    f"{'--per-segment' if found['per_segment'] else 'no --per-segment'}, another --out, or --overwrite"
                )
            try:
                existing = SimilarityIndex.open(out)
            except IndexDamagedError as error:
                repaired = error.problem  # the embeddings hold the whole collection: rebuilt from them below
            else:
                update = _update(existing, embeddings, source, rows_to_index.keep, exact_max_vectors, recall_target)
                if update is not None:
                    return update
    rows, vectors = _read_all(embeddings, source, rows_to_index.keep)
    index, approximate = _new_faiss_index(vectors, exact_max_vectors, recall_target)
    ids = np.arange(len(vectors), dtype=np.int64)
    manifest = dict(source, kind="approximate" if approximate else "exact", trained_size=len(vectors), next_id=len(vectors))
    manifest.update(approximate or {"nprobe": None, "recall": {"recall_at_10": 1.0, "exact": True}})
    manifest["source"] = os.path.abspath(embeddings)
    _write_generation(out, manifest, rows.append_column("id", pa.array(ids)), index, found)
    recall = manifest["recall"]["recall_at_10"]
    return IndexUpdate(out, manifest["kind"], len(vectors), len(vectors), 0, 0, True, recall, manifest["nprobe"], 0.0,
                       repaired=repaired)


def _finished(update: IndexUpdate, started: float) -> IndexUpdate:
    update.seconds = time.perf_counter() - started
    return update


def _new_faiss_index(vectors: np.ndarray, exact_max_vectors: int, recall_target: float):
    """An exact index of `vectors` (ids 0..n-1), or a trained approximate one with its tuned nprobe and measured
    recall (the second value; None for exact)."""
    if len(vectors) == 0:
        raise SimilarityIndexError("no embeddings to index")
    ids = np.arange(len(vectors), dtype=np.int64)
    if len(vectors) <= exact_max_vectors:
        index = new_exact_index(vectors.shape[1])
        index.add_with_ids(vectors, ids)
        return index, None
    index = new_approximate_index(vectors)
    index.add_with_ids(vectors, ids)
    nprobe, recall = tune_nprobe(index, vectors, target=recall_target)
    report = {"recall_at_10": recall, "target": recall_target, "queries": min(len(vectors), RECALL_QUERIES),
              "measured_at_size": len(vectors), "exact": False}
    return index, {"nprobe": nprobe, "recall": report, "num_lists": index.nlist}


def _normalized(vectors: np.ndarray, paths: list[str], embeddings) -> np.ndarray:
    """`normalize`, naming the track whose embedding has no direction."""
    norms = np.linalg.norm(vectors, axis=1)
    bad = np.flatnonzero((norms == 0) | ~np.isfinite(norms))
    if len(bad):
        raise SimilarityIndexError(f"{embeddings}: the embedding of {paths[bad[0]]} is all zeros or not finite; re-embed that track")
    return normalize(vectors)


def _read_all(embeddings, source: dict, keep: np.ndarray) -> tuple[pa.Table, np.ndarray]:
    """The rows of an embeddings file to index: the row table (path, segment, start, hash) and normalized vectors."""
    tables, matrices = [], []
    for paths, segments, starts, vectors in iter_embedding_rows(embeddings, source["per_segment"], source["segment_seconds"], keep):
        tables.append(_rows_table(paths, segments, starts, vectors))
        matrices.append(_normalized(vectors, paths, embeddings) if len(vectors) else vectors)
    if not tables:
        raise SimilarityIndexError(f"{embeddings}: holds no embeddings")
    return pa.concat_tables(tables), np.concatenate(matrices)


def _rows_table(paths, segments, starts, vectors) -> pa.Table:
    return pa.table({
        "path": pa.array([os.fsencode(path) for path in paths], pa.binary()),
        "segment": pa.array(np.asarray(segments, np.int32)),
        "start_seconds": pa.array(np.asarray(starts, np.float64)),
        "hash": pa.array([_vector_hash(vector) for vector in vectors], pa.binary(12)),
    })


def _update(existing: SimilarityIndex, embeddings, source: dict, keep: np.ndarray, exact_max_vectors: int,
            recall_target: float):
    """Adds the new and changed rows of `embeddings` to `existing` and drops the vanished ones; None when the
    index must be built again instead."""
    known = {
        (path, segment): (row_id, row_hash)
        for path, segment, row_id, row_hash in zip(*(existing.rows[name].to_pylist() for name in ("path", "segment", "id", "hash")))
    }
    seen, new_rows, new_vectors, stale_ids = set(), [], [], []
    for paths, segments, starts, vectors in iter_embedding_rows(embeddings, source["per_segment"], source["segment_seconds"], keep):
        rows = _rows_table(paths, segments, starts, vectors)
        changed = []
        for position, (path, segment, row_hash) in enumerate(zip(*(rows[name].to_pylist() for name in ("path", "segment", "hash")))):
            seen.add((path, segment))
            old = known.get((path, segment))
            if old is None or old[1] != row_hash:
                changed.append(position)
                if old is not None:
                    stale_ids.append(old[0])
        if changed:
            new_rows.append(rows.take(changed))
            new_vectors.append(_normalized(vectors[changed], [paths[i] for i in changed], embeddings))
    stale_ids += [row_id for key, (row_id, _) in known.items() if key not in seen]
    added = sum(table.num_rows for table in new_rows)
    size = len(existing) - len(stale_ids) + added
    manifest = dict(existing.manifest, **source)
    if size > exact_max_vectors and (existing.kind == "exact" or size > RETRAIN_GROWTH * manifest["trained_size"]):
        return None
    return _apply(existing, manifest, new_rows, new_vectors, stale_ids)


def _apply(existing: SimilarityIndex, manifest: dict, new_rows, new_vectors, stale_ids) -> IndexUpdate:
    index = existing.index
    replaced = len({tuple(key) for table in new_rows for key in zip(table["path"].to_pylist(), table["segment"].to_pylist())}
                   & {key for key in zip(existing.rows["path"].to_pylist(), existing.rows["segment"].to_pylist())})
    if stale_ids:
        index.remove_ids(np.asarray(stale_ids, dtype=np.int64))
    rows = existing.rows
    if stale_ids:
        rows = rows.filter(pc.invert(pc.is_in(rows["id"], pa.array(stale_ids, pa.int64()))))
    added = sum(table.num_rows for table in new_rows)
    if added or stale_ids:
        first_id = manifest["next_id"]
        ids = np.arange(first_id, first_id + added, dtype=np.int64)
        if added:
            index.add_with_ids(np.concatenate(new_vectors), ids)
            new_table = pa.concat_tables(new_rows).append_column("id", pa.array(ids))
            rows = pa.concat_tables([rows, new_table.select(rows.column_names)])
        manifest["next_id"] = first_id + added
        _write_generation(existing.directory, manifest, rows, index, existing.manifest)
    return IndexUpdate(existing.directory, manifest["kind"], rows.num_rows, added - replaced, replaced,
                       len(stale_ids) - replaced, False, manifest["recall"]["recall_at_10"], manifest.get("nprobe"), 0.0)


def _write_generation(out: Path, manifest: dict, rows: pa.Table, index, found: dict | None) -> None:
    """Writes the data files of a new generation, then the manifest that points at them (the commit), then removes
    the files that `found` (the manifest the update started from) names: the previous generation's, and those of
    killed writes. Before writing, the new files are named in the manifest (as `pending`), so that a killed write's
    files are known to be the index's. A failed write (a full disk, a read-only folder) leaves the previous index."""
    generation = f"{time.time_ns():020d}-{uuid.uuid4().hex[:6]}"
    names = {"vectors_file": f"vectors-{generation}.faiss", "rows_file": f"rows-{generation}.parquet"}
    ours = set((found or {}).get("pending", [])) | {name for name in _data_files(found or {}) if name}
    manifest = dict(manifest, format=INDEX_FORMAT, version=INDEX_VERSION, size=rows.num_rows, dim=index.d,
                    updated=time.time(), **names)
    manifest.pop("pending", None)
    rows = rows.select(list(ROW_COLUMNS))
    try:
        out.mkdir(parents=True, exist_ok=True)
        journal = dict(found or {"format": INDEX_FORMAT, "version": INDEX_VERSION})
        journal["pending"] = sorted(set(journal.get("pending", [])) | set(names.values()))
        write_text_atomically(out / "manifest.json", json.dumps(journal, indent=1))
        manifest["checksums"] = {
            names["vectors_file"]: _write_data_file(out / names["vectors_file"], lambda file: _faiss().write_index(index, _faiss().PyCallbackIOWriter(file.write))),
            names["rows_file"]: _write_data_file(out / names["rows_file"], lambda file: pq.write_table(rows, file)),
        }
        write_text_atomically(out / "manifest.json", json.dumps(manifest, indent=1))
    except OSError as error:
        _remove_index_files(out, names.values())
        before = "the previous index is unchanged" if found and "vectors_file" in found else "nothing was indexed"
        raise SimilarityIndexError(
            f"could not write the index {out} ({error.strerror or one_line(error)}); {before}. Free space or make the "
            f"folder writable, and run the command again"
        ) from error
    _remove_index_files(out, ours - set(names.values()))


def _write_data_file(path: Path, write) -> str:
    """Writes a data file atomically through `write(open_binary_file)` and returns its SHA-256 (read back from
    the disk, so that the checksum is of what a reader will read)."""

    def write_and_close(temporary):
        # A Python file: a full disk raises here (faiss's own file writer only prints errors of its final flush).
        with open(temporary, "wb") as file:
            write(file)

    atomic_write(path, write_and_close)
    with open(path, "rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


def _remove_index_files(out: Path, names) -> None:
    """Removes data files of the index (names its manifest recorded) and the temporary files of their killed writes
    (`atomic_write` names them `.NAME.<random>.tmp`), and the manifest's own temporary files."""
    names = set(names)
    prefixes = tuple(f".{name}." for name in names | {"manifest.json"})
    try:
        listing = list(out.iterdir())
    except OSError:
        return
    for file in listing:
        if file.name in names or (file.name.startswith(prefixes) and file.name.endswith(".tmp")):
            try:
                file.unlink()
            except OSError:
                pass  # removed by the next update


__all__ = [
    "EXACT_MAX_VECTORS",
    "EmbeddingRows",
    "IndexDamagedError",
    "IndexSettingsMismatchError",
    "IndexUpdate",
    "Neighbour",
    "SimilarityIndex",
    "SimilarityIndexError",
    "build_index",
    "check_settings",
    "embed_like_index",
    "embedding_rows",
    "embedding_settings",
    "exact_neighbours",
    "new_approximate_index",
    "new_exact_index",
    "normalize",
    "read_manifest",
    "recall_at",
    "tune_nprobe",
]
