"""Similarity search speed and recall at collection scale, on generated music-like embeddings.

    python benchmarks/similarity_benchmark.py --sizes 50000 200000 --threads 2 --output benchmarks/results/similarity.json

The vectors (2304-dim, like MAEST's cls+dist+mean embedding) come from a two-level Gaussian mixture, structured like
a music collection rather than i.i.d. noise: `genres` centres on the sphere, `albums_per_genre` album centres
around each (spread 0.6), and tracks scattered around their album (spread 0.45) mostly inside a shared 128-dim
subspace (timbre/tempo-like directions) plus small isotropic noise. Queries are new tracks drawn from the same
mixture (not in the index). For each size it builds the approximate index exactly as `maest index` does
(`maest.similarity.new_approximate_index` + `tune_nprobe`), then times one-query searches (the way `maest similar`
and the app query) against the exact flat scan, side by side, and measures recall@10 against exact search.
"""

import argparse
import json
import os
import resource
import sys
import tempfile
import time

import faiss  # the optional extra `maest[similarity]`: this benchmark measures FAISS and needs it throughout
import numpy as np

from maest.similarity import exact_neighbours, new_approximate_index, normalize, recall_at, tune_nprobe
from maest.utils.files import write_text_atomically


def music_like_embeddings(count: int, dim: int, seed: int, genres: int = 200, albums_per_genre: int = 50,
                          chunk: int = 50_000) -> np.ndarray:
    """`(count, dim)` float32 from the two-level mixture (the same mixture for every seed's draw of tracks)."""
    structure = np.random.default_rng(12345)
    genre_centres = structure.standard_normal((genres, dim)).astype(np.float32)
    album_centres = np.repeat(genre_centres, albums_per_genre, axis=0)
    album_centres += 0.6 * structure.standard_normal(album_centres.shape).astype(np.float32)
    subspace = (structure.standard_normal((128, dim)) / np.sqrt(128)).astype(np.float32)  # unit-variance tracks
    rng = np.random.default_rng(seed)
    out = np.empty((count, dim), np.float32)
    for start in range(0, count, chunk):
        size = min(chunk, count - start)
        albums = rng.integers(0, len(album_centres), size)
        within = rng.standard_normal((size, 128)).astype(np.float32) @ subspace
        noise = 0.1 * rng.standard_normal((size, dim)).astype(np.float32)
        out[start:start + size] = album_centres[albums] + 0.45 * within + noise
    return out


def time_queries(index, queries: np.ndarray, k: int = 10) -> dict:
    """Milliseconds per single-vector search (the way a user queries), with the median and 95th percentile."""
    times = []
    for query in queries:
        started = time.perf_counter()
        index.search(query[None], k)
        times.append((time.perf_counter() - started) * 1000)
    times = np.array(times)
    return {"mean_ms": float(times.mean()), "p50_ms": float(np.median(times)), "p95_ms": float(np.percentile(times, 95))}


class ExactScan:
    """Exact search over the vectors in place (what an exact index does, without its copy of the vectors)."""

    def __init__(self, vectors: np.ndarray):
        self.vectors = vectors

    def search(self, queries: np.ndarray, k: int):
        return faiss.knn(queries, self.vectors, k, metric=faiss.METRIC_INNER_PRODUCT)


def run_size(count: int, dim: int, num_queries: int) -> dict:
    started = time.perf_counter()
    vectors = music_like_embeddings(count, dim, seed=0)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)  # in place: a million rows are 8.8 GB
    queries = normalize(music_like_embeddings(num_queries, dim, seed=1))
    generate_s = time.perf_counter() - started

    started = time.perf_counter()
    index = new_approximate_index(vectors)
    train_s = time.perf_counter() - started
    started = time.perf_counter()
    index.add_with_ids(vectors, np.arange(count, dtype=np.int64))
    add_s = time.perf_counter() - started
    started = time.perf_counter()
    nprobe, build_recall = tune_nprobe(index, vectors)
    tune_s = time.perf_counter() - started

    truth = exact_neighbours(vectors, queries, 10)
    index.nprobe = nprobe
    _, found = index.search(queries, 10)
    approximate = time_queries(index, queries)
    flat = time_queries(ExactScan(vectors), queries[: min(50, num_queries)])
    with tempfile.TemporaryDirectory() as folder:
        faiss.write_index(index, os.path.join(folder, "v.faiss"))
        index_bytes = os.path.getsize(os.path.join(folder, "v.faiss"))
    return {
        "vectors": count, "dim": dim, "num_lists": index.nlist, "nprobe": nprobe,
        "recall_at_10_build_sample": build_recall, "recall_at_10_new_queries": recall_at(found, truth),
        "approximate_query": approximate, "exact_query": flat,
        "speedup_vs_exact": flat["mean_ms"] / approximate["mean_ms"],
        "build_seconds": {"train": train_s, "add": add_s, "tune_nprobe": tune_s, "generate_data": generate_s},
        "index_file_mb": index_bytes / 2**20, "float32_vectors_mb": vectors.nbytes / 2**20,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[50_000, 200_000])
    parser.add_argument("--dim", type=int, default=2304)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", default=None, help="a JSON file for the results")
    args = parser.parse_args(argv)

    faiss.omp_set_num_threads(args.threads)
    results = {"threads": args.threads, "cpus": os.cpu_count(), "command": " ".join(sys.argv), "sizes": []}
    for count in args.sizes:
        result = run_size(count, args.dim, args.queries)
        results["sizes"].append(result)
        print(f"{count:>9} x {args.dim}: IVF-SQ8 {result['approximate_query']['mean_ms']:.2f} ms/query "
              f"(p95 {result['approximate_query']['p95_ms']:.2f}) vs exact {result['exact_query']['mean_ms']:.1f} ms "
              f"({result['speedup_vs_exact']:.0f}x), recall@10 {result['recall_at_10_new_queries']:.3f} "
              f"(nprobe {result['nprobe']}/{result['num_lists']}), index {result['index_file_mb']:.0f} MB "
              f"(float32 {result['float32_vectors_mb']:.0f} MB), build {sum(list(result['build_seconds'].values())[:3]):.0f} s",
              flush=True)
    results["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if args.output:
        write_text_atomically(args.output, json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
