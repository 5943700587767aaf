"""maest.similarity, `maest index` and `maest similar`: build, incremental update, refusal of other settings,
approximate search against exact search, and a near-duplicate found among distinct tracks."""

import json
import subprocess

import numpy as np
import pytest

from conftest import synthetic_music, write_audio
from maest.cli import main
from maest.inference.store import TrackResult, rows_to_table, write_output
from maest.similarity import (
    IndexSettingsMismatchError, SimilarityIndex, build_index, exact_neighbours, normalize, recall_at,
)

pytest.importorskip("faiss")

SETTINGS = {
    "model": "/models/m", "outputs": ["embedding"], "dtype": "float32", "inference_patchout_time_stride": 1,
    "segment_frames": 316, "last_segment": "auto", "min_duration": 1.0, "per_segment": True, "block": 1,
    "tokens": ["cls", "dist", "mean"],
}


def clustered_vectors(count: int, dim: int = 48, clusters: int = 12, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim))
    return (centres[rng.integers(0, clusters, count)] + 0.5 * rng.standard_normal((count, dim))).astype(np.float32)


def write_embeddings(path, vectors: np.ndarray, settings=SETTINGS, first: int = 0):
    rows = [
        TrackResult(f"/music/track{first + i}.wav", 10.0, 2, {"embedding": vector}, {"embedding": np.stack([vector, -vector])})
        for i, vector in enumerate(vectors)
    ]
    write_output(path, rows_to_table(rows, {"embedding": vectors.shape[1]}, True), {"settings": settings, "segment_seconds": 5.0})


def test_build_update_and_refuse_other_settings(tmp_path):
    vectors = clustered_vectors(210)
    write_embeddings(tmp_path / "e.parquet", vectors[:200])
    update = build_index(tmp_path / "e.parquet", tmp_path / "index")
    assert (update.kind, update.size, update.added, update.rebuilt) == ("exact", 200, 200, True)
    old_files = {file.name for file in (tmp_path / "index").iterdir()}

    write_embeddings(tmp_path / "e.parquet", vectors)  # `maest embed` resumed: ten more tracks
    update = build_index(tmp_path / "e.parquet", tmp_path / "index")
    assert (update.size, update.added, update.replaced, update.removed, update.rebuilt) == (210, 10, 0, 0, False)
    files = {file.name for file in (tmp_path / "index").iterdir()}
    assert len(files) == 3 and not (files - {"manifest.json"}) & old_files  # old generation removed

    index = SimilarityIndex.open(tmp_path / "index")
    query = vectors[205] + 0.01
    top = index.search(query, k=5, settings=SETTINGS)
    assert top[0].path == "/music/track205.wav"
    truth = exact_neighbours(normalize(vectors), normalize(query[None]), 5)[0]
    assert [n.path for n in top] == [f"/music/track{i}.wav" for i in truth]
    assert top[0].score == pytest.approx(float((normalize(query[None]) @ normalize(vectors[205:206]).T)[0, 0]), abs=1e-5)

    other = dict(SETTINGS, block=2)
    with pytest.raises(IndexSettingsMismatchError, match="block: 2 there, 1 in the index"):
        index.search(query, settings=other)
    write_embeddings(tmp_path / "other.parquet", vectors, settings=other)
    with pytest.raises(IndexSettingsMismatchError, match="block"):
        build_index(tmp_path / "other.parquet", tmp_path / "index")
    assert main(["index", str(tmp_path / "other.parquet"), "--out", str(tmp_path / "index")]) == 2


def test_changed_and_removed_rows_are_updated(tmp_path):
    vectors = clustered_vectors(50)
    write_embeddings(tmp_path / "e.parquet", vectors)
    build_index(tmp_path / "e.parquet", tmp_path / "index")
    changed = vectors[:40].copy()
    changed[3] = -changed[3]
    write_embeddings(tmp_path / "e.parquet", changed)
    update = build_index(tmp_path / "e.parquet", tmp_path / "index")
    assert (update.size, update.added, update.replaced, update.removed) == (40, 0, 1, 10)
    index = SimilarityIndex.open(tmp_path / "index")
    assert index.search(changed[3], k=1)[0].path == "/music/track3.wav"
    assert "/music/track45.wav" not in index.paths()


def test_killed_update_leaves_the_previous_index(tmp_path, monkeypatch):
    import maest.similarity as similarity

    vectors = clustered_vectors(30)
    write_embeddings(tmp_path / "e.parquet", vectors[:20])
    build_index(tmp_path / "e.parquet", tmp_path / "index")
    write_embeddings(tmp_path / "e.parquet", vectors)

    def killed(*args, **kwargs):  # dies after the new vectors file, before the rows and the manifest
        raise KeyboardInterrupt

    monkeypatch.setattr(similarity.pq, "write_table", killed)
    with pytest.raises(KeyboardInterrupt):
        build_index(tmp_path / "e.parquet", tmp_path / "index")
    monkeypatch.undo()
    assert len(SimilarityIndex.open(tmp_path / "index")) == 20
    update = build_index(tmp_path / "e.parquet", tmp_path / "index")
    assert (update.size, update.added) == (30, 10)
    assert len(list((tmp_path / "index").iterdir())) == 3  # the killed run's file is gone


def test_approximate_index_agrees_with_exact_search(tmp_path):
    vectors = clustered_vectors(4000, dim=64, clusters=40)
    write_embeddings(tmp_path / "e.parquet", vectors)
    update = build_index(tmp_path / "e.parquet", tmp_path / "index", exact_max_vectors=1000)
    assert update.kind == "approximate" and update.recall >= 0.95
    index = SimilarityIndex.open(tmp_path / "index")
    queries = clustered_vectors(100, dim=64, clusters=40, seed=0)[:50] + 0.1  # same centres, new points
    truth = exact_neighbours(normalize(vectors), normalize(queries), 10)
    found = [[int(n.path[len("/music/track"):-4]) for n in index.search(query, k=10)] for query in queries]
    assert recall_at(np.array(found), truth) >= 0.9

    more = clustered_vectors(20, dim=64, clusters=40, seed=1)
    write_embeddings(tmp_path / "more.parquet", np.concatenate([vectors, more]))
    update = build_index(tmp_path / "more.parquet", tmp_path / "index", exact_max_vectors=1000)
    assert (update.added, update.rebuilt, update.kind) == (20, False, "approximate")
    assert SimilarityIndex.open(tmp_path / "index").search(more[7], k=1)[0].path == "/music/track4007.wav"


@pytest.fixture(scope="module")
def spread_model_dir(tmp_path_factory):
    """The small random MAEST with weights drawn 25x wider than the default: with the default (0.02) init every
    track's embedding points the same way (cosine > 0.996 between distinct tracks), which would make any ranking a
    coin toss; with wide weights distinct tracks score about 0.7-0.8 and an MP3 copy of a track about 0.97."""
    import torch
    from conftest import SMALL_MODEL_KWARGS
    from maest import MAESTConfig, MAESTFeatureExtractor, MAESTForAudioClassification

    torch.manual_seed(0)
    config = MAESTConfig(**SMALL_MODEL_KWARGS, initializer_range=0.5, id2label={0: "a", 1: "b"}, label2id={"a": 0, "b": 1})
    directory = tmp_path_factory.mktemp("spread_maest")
    MAESTForAudioClassification(config).eval().save_pretrained(directory)
    MAESTFeatureExtractor(max_length=config.max_length).save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def collection(tmp_path_factory, spread_model_dir):
    """Six distinct generated tracks embedded with the small model, and an MP3 re-encoding of the first."""
    from maest.inference import embed

    folder = tmp_path_factory.mktemp("collection")
    for seed in range(6):
        write_audio(folder / f"track{seed}.wav", synthetic_music(8.0, seed=seed))
    duplicate = tmp_path_factory.mktemp("queries") / "track0_copy.mp3"
    subprocess.run(["ffmpeg", "-loglevel", "error", "-i", str(folder / "track0.wav"), "-b:a", "128k", str(duplicate)], check=True)
    embeddings = folder.parent / "collection.parquet"
    embed([str(folder)], out=embeddings, model=str(spread_model_dir), num_workers=0, block=2)
    return folder, duplicate, embeddings


def test_similar_finds_the_mp3_copy_and_indexed_paths(collection, tmp_path, capsys):
    folder, duplicate, embeddings = collection
    assert main(["index", str(embeddings), "--out", str(tmp_path / "index")]) == 0
    capsys.readouterr()
    assert main(["similar", str(duplicate), "--index", str(tmp_path / "index"), "--top-k", "6", "--format", "json"]) == 0
    neighbours = json.loads(capsys.readouterr().out)
    assert neighbours[0]["path"] == str(folder / "track0.wav")
    # A real margin, not a tie among near-identical embeddings of a random model.
    assert neighbours[0]["score"] > 0.9 and neighbours[1]["score"] < neighbours[0]["score"] - 0.1

    indexed = str(folder / "track3.wav")
    assert main(["similar", indexed, "--index", str(tmp_path / "index"), "--top-k", "2", "--format", "csv"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "query,rank,path,score" and len(lines) == 3
    assert all(indexed not in line.split(",")[2] for line in lines[1:])  # the query is not its own neighbour
    assert main(["similar", str(tmp_path / "nothing.wav"), "--index", str(tmp_path / "index")]) == 2


def test_per_segment_index_finds_the_segment_and_its_start(tmp_path):
    # Each track has two segments: v and -v (write_embeddings), 5 s apart.
    vectors = clustered_vectors(40, seed=3)
    write_embeddings(tmp_path / "e.parquet", vectors)
    update = build_index(tmp_path / "e.parquet", tmp_path / "index", per_segment=True)
    assert (update.size, update.added) == (80, 80)
    index = SimilarityIndex.open(tmp_path / "index")
    assert index.per_segment and len(index) == 80
    top = index.search(-vectors[7], k=3, settings=SETTINGS)
    assert (top[0].path, top[0].segment, top[0].start_seconds) == ("/music/track7.wav", 1, 5.0)
    truth = exact_neighbours(normalize(np.concatenate([vectors, -vectors])), normalize(-vectors[7:8]), 3)[0]
    expected = [(f"/music/track{i % 40}.wav", i // 40) for i in truth]
    assert [(n.path, n.segment) for n in top] == expected
    # A per-track index of the same file has one row per track and no segment fields.
    build_index(tmp_path / "e.parquet", tmp_path / "tracks")
    assert SimilarityIndex.open(tmp_path / "tracks").search(vectors[7], k=1)[0].segment is None
