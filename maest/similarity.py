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
time, and the names of the current data files), `vectors-<generation>.faiss` and `rows-<generation>.parquet` (id,
path, segment, start time and a hash of each vector). An update writes new data files, then replaces the manifest
atomically, then deletes the old files: a kill at any moment leaves the previous or the new index, never a mix.
"""

import hashlib
import json
import os
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from maest.errors import MAESTError
from maest.files import atomic_write, write_text_atomically


INDEX_FORMAT = "maest-similarity-index"
INDEX_VERSION = 1
# Up to this many vectors the index is exact; past it, approximate. An exact scan of 10k 2304-dim vectors is
# 23M multiply-adds (a few ms); benchmarks/similarity_benchmark.py measured 100-350 ms for 20k-50k on 2 busy cores.
EXACT_MAX_VECTORS = 10_000
RECALL_TARGET = 0.97  # recall@10 the build tunes nprobe for (the promise is 0.95; a margin for later additions)
RECALL_AT = 10
RECALL_QUERIES = 200
# The approximate index is retrained from scratch when it has grown this many times past the size it was trained
# at (its lists no longer fit the data); smaller additions only add rows.
RETRAIN_GROWTH = 4.0
# The settings that change embedding vectors: two sets of embeddings are comparable when these agree.
EMBEDDING_SETTINGS = (
    "model", "dtype", "inference_patchout_time_stride", "segment_frames", "last_segment", "min_duration", "block",
    "tokens",
)
READ_BATCH_ROWS = 4096
# `maest embed`'s path columns: `path` (text) and `path_bytes` (the exact bytes of names that are not UTF-8).
PATH_COLUMNS = ("path", "path_bytes")


class SimilarityIndexError(MAESTError, ValueError):
    """A bad index directory, embeddings file or query."""


class IndexSettingsMismatchError(SimilarityIndexError):
    """Embeddings made with other settings (model, block, tokens...) than the index's."""


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
        difference = ", ".join(
            f"{key}: {found.get(key)!r} there, {expected.get(key)!r} in the index"
            for key in sorted(set(expected) | set(found))
            if expected.get(key) != found.get(key)
        )
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


def iter_embedding_rows(path, per_segment: bool, segment_seconds: float):
    """Yields `(path, segment, start_seconds, vectors)` batches from a `maest embed` file: one vector per track
    (segment -1) or, with `per_segment`, one per segment. `vectors` is `(n, dim)` float32."""
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
    for batch in batches:
        paths = table_paths(pa.Table.from_batches([batch]))
        values = batch.column(column)
        if not per_segment:
            yield paths, np.full(len(paths), -1), np.zeros(len(paths)), _flat_matrix(values)
            continue
        counts = np.diff(values.offsets.to_numpy())
        segments = np.concatenate([np.arange(count) for count in counts]) if len(counts) else np.zeros(0, int)
        track_paths = [paths[row] for row, count in enumerate(counts) for _ in range(count)]
        yield track_paths, segments, segments * segment_seconds, _flat_matrix(values.flatten())


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
        directory = Path(directory)
        manifest = read_manifest(directory)
        rows = pq.read_table(directory / manifest["rows_file"])
        index = _faiss().read_index(str(directory / manifest["vectors_file"]))
        if "nprobe" in manifest and manifest["nprobe"]:
            index.nprobe = manifest["nprobe"]
        return cls(directory, manifest, rows, index)

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

    def search_audio(self, files: list[str], k: int = 10, model=None, progress: bool = False) -> list[list[Neighbour]]:
        """Neighbours of audio files, embedded with the index's model and settings (`model`: an already loaded
        `InferenceModel` of that model, to save loading it)."""
        results = embed_like_index(files, self.settings, model=model, progress=progress)
        if results.failed:
            item = results.failed[0]
            raise SimilarityIndexError(f"{item['path']}: {item['reason']}")
        query_settings = results.metadata["settings"]
        vectors = results.segment_embeddings if self.per_segment else list(results.embeddings[:, None, :])
        return [
            self.search(track_vectors, k, query=path, settings=query_settings)
            for path, track_vectors in zip(results.paths, vectors)
        ]


def embed_like_index(inputs, settings: dict, model=None, scores: bool = False, progress: bool = False, sampling_rate=None):
    """Runs `maest.inference.analyze` on `inputs` with the model and embedding settings of an index (plus the
    per-segment outputs, and the style scores with `scores`)."""
    # imported here: torch and transformers (seconds), needed only to embed audio, not to search embeddings
    from maest.inference import analyze, load_model

    if model is None:
        model = load_model(
            settings["model"], dtype=settings.get("dtype", "float32"),
            inference_patchout_time_stride=settings.get("inference_patchout_time_stride"),
        )
    return analyze(
        inputs, model, scores=scores, embedding=True, block=settings.get("block"),
        tokens=",".join(settings.get("tokens", ["cls", "dist", "mean"])), per_segment=True,
        last_segment=settings.get("last_segment", "auto"), min_duration=settings.get("min_duration", 1.0),
        progress=progress, sampling_rate=sampling_rate,
    )


def read_manifest(directory) -> dict:
    manifest_path = Path(directory) / "manifest.json"
    if not manifest_path.is_file():
        raise SimilarityIndexError(f"{directory}: not a similarity index (no manifest.json; build one with `maest index`)")
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("format") != INDEX_FORMAT or manifest.get("version") != INDEX_VERSION:
        raise SimilarityIndexError(f"{directory}: not a version-{INDEX_VERSION} MAEST similarity index")
    return manifest


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
    an approximate index `RETRAIN_GROWTH` times past its training size: then it is built again.

    Args:
        embeddings: a `.parquet` / `.npz` file written by `maest embed` (or `maest.inference.embed(out=...)`).
        per_segment: index every segment (the file must hold `segment_embeddings`: `maest embed --per-segment`).
        overwrite: build from scratch even when `out` holds an index (of other settings, too).
    """
    started = time.perf_counter()
    metadata = read_embeddings_metadata(embeddings)
    settings, out = metadata["settings"], Path(out)
    existing = None if overwrite or not (out / "manifest.json").exists() else SimilarityIndex.open(out)
    source = {"settings": settings, "segment_seconds": float(metadata.get("segment_seconds", 0.0)), "per_segment": per_segment}
    if existing is not None:
        check_settings(existing.settings, settings, f"the embeddings in {embeddings}")
        if existing.per_segment != per_segment:
            raise IndexSettingsMismatchError(
                f"{out} is a {'per-segment' if existing.per_segment else 'per-track'} index; pass "
                f"{'--per-segment' if existing.per_segment else 'no --per-segment'}, another --out, or --overwrite"
            )
        update = _update(existing, embeddings, source, exact_max_vectors, recall_target)
        if update is not None:
            return _finished(update, started)
    rows, vectors = _read_all(embeddings, source)
    index, approximate = _new_faiss_index(vectors, exact_max_vectors, recall_target)
    ids = np.arange(len(vectors), dtype=np.int64)
    manifest = dict(source, kind="approximate" if approximate else "exact", trained_size=len(vectors), next_id=len(vectors))
    manifest.update(approximate or {"nprobe": None, "recall": {"recall_at_10": 1.0, "exact": True}})
    manifest["source"] = os.path.abspath(embeddings)
    _write_generation(out, manifest, rows.append_column("id", pa.array(ids)), index)
    recall = manifest["recall"]["recall_at_10"]
    update = IndexUpdate(out, manifest["kind"], len(vectors), len(vectors), 0, 0, True, recall, manifest["nprobe"], 0.0)
    return _finished(update, started)


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


def _read_all(embeddings, source: dict) -> tuple[pa.Table, np.ndarray]:
    """All rows of an embeddings file: the row table (path, segment, start, hash) and normalized vectors."""
    tables, matrices = [], []
    for paths, segments, starts, vectors in iter_embedding_rows(embeddings, source["per_segment"], source["segment_seconds"]):
        tables.append(_rows_table(paths, segments, starts, vectors))
        matrices.append(normalize(vectors) if len(vectors) else vectors)
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


def _update(existing: SimilarityIndex, embeddings, source: dict, exact_max_vectors: int, recall_target: float):
    """Adds the new and changed rows of `embeddings` to `existing` and drops the vanished ones; None when the
    index must be built again instead."""
    known = {
        (path, segment): (row_id, row_hash)
        for path, segment, row_id, row_hash in zip(*(existing.rows[name].to_pylist() for name in ("path", "segment", "id", "hash")))
    }
    seen, new_rows, new_vectors, stale_ids = set(), [], [], []
    for paths, segments, starts, vectors in iter_embedding_rows(embeddings, source["per_segment"], source["segment_seconds"]):
        rows = _rows_table(paths, segments, starts, vectors)
        keep = []
        for position, (path, segment, row_hash) in enumerate(zip(*(rows[name].to_pylist() for name in ("path", "segment", "hash")))):
            seen.add((path, segment))
            old = known.get((path, segment))
            if old is None or old[1] != row_hash:
                keep.append(position)
                if old is not None:
                    stale_ids.append(old[0])
        if keep:
            new_rows.append(rows.take(keep))
            new_vectors.append(normalize(vectors[keep]))
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
        _write_generation(existing.directory, manifest, rows, index)
    return IndexUpdate(existing.directory, manifest["kind"], rows.num_rows, added - replaced, replaced,
                       len(stale_ids) - replaced, False, manifest["recall"]["recall_at_10"], manifest.get("nprobe"), 0.0)


def _write_generation(out: Path, manifest: dict, rows: pa.Table, index) -> None:
    """Writes the data files of a new generation, then the manifest that points at them (the commit), then removes
    the files of older generations and of killed writes."""
    faiss = _faiss()
    out.mkdir(parents=True, exist_ok=True)
    generation = f"{time.time_ns():020d}-{uuid.uuid4().hex[:6]}"
    manifest = dict(manifest, format=INDEX_FORMAT, version=INDEX_VERSION, size=rows.num_rows, dim=index.d,
                    vectors_file=f"vectors-{generation}.faiss", rows_file=f"rows-{generation}.parquet", updated=time.time())
    atomic_write(out / manifest["vectors_file"], lambda temporary: faiss.write_index(index, temporary))
    rows = rows.select(["id", "path", "segment", "start_seconds", "hash"])
    atomic_write(out / manifest["rows_file"], lambda temporary: pq.write_table(rows, temporary))
    write_text_atomically(out / "manifest.json", json.dumps(manifest, indent=1))
    current = {manifest["vectors_file"], manifest["rows_file"], "manifest.json"}
    for file in out.iterdir():
        ours = file.name.startswith(("vectors-", "rows-", ".vectors-", ".rows-", ".manifest.json."))
        if ours and file.name not in current:
            file.unlink(missing_ok=True)


__all__ = [
    "EXACT_MAX_VECTORS",
    "IndexSettingsMismatchError",
    "IndexUpdate",
    "Neighbour",
    "SimilarityIndex",
    "SimilarityIndexError",
    "build_index",
    "check_settings",
    "embed_like_index",
    "embedding_settings",
    "exact_neighbours",
    "new_approximate_index",
    "new_exact_index",
    "normalize",
    "recall_at",
    "tune_nprobe",
]
