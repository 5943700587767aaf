"""Splitting a collection between processes: disjoint, complete, deterministic, balanced by duration."""

import random

import numpy as np
import pytest

from maest.inference.sharding import probe_duration, probe_durations, shard_by_duration, shard_durations

from conftest import synthetic_music, write_audio


def _collection(num_tracks, seed=0):
    rng = random.Random(seed)
    paths = [f"/music/artist{rng.randrange(50):02d}/track{index:05d}.flac" for index in range(num_tracks)]
    # Skewed like a real catalogue: mostly 2-6 minute songs, a few hour-long mixes, some unreadable (None).
    durations = []
    for _ in paths:
        draw = rng.random()
        durations.append(None if draw < 0.03 else rng.uniform(3000, 4000) if draw < 0.05 else rng.uniform(120, 360))
    return paths, durations


@pytest.mark.parametrize("num_shards", [1, 2, 3, 7, 64])
def test_shards_are_disjoint_and_complete(num_shards):
    paths, durations = _collection(500)
    shards = shard_by_duration(paths, durations, num_shards)
    assert len(shards) == num_shards
    flat = [index for shard in shards for index in shard]
    assert sorted(flat) == list(range(len(paths)))  # every track once, none missing
    assert all(shard == sorted(shard) for shard in shards)


def test_more_shards_than_tracks_leaves_empty_shards():
    shards = shard_by_duration(["a", "b"], [10.0, 20.0], 4)
    assert sorted(index for shard in shards for index in shard) == [0, 1]
    assert sum(1 for shard in shards if not shard) == 2


def test_sharding_is_deterministic_and_independent_of_list_order():
    paths, durations = _collection(300, seed=1)
    shards = shard_by_duration(paths, durations, 5)
    assert shard_by_duration(list(paths), list(durations), 5) == shards
    # The same tracks listed in another order land on the same shards (ties are broken by path, not position).
    permutation = list(range(len(paths)))
    random.Random(2).shuffle(permutation)
    shuffled = shard_by_duration([paths[i] for i in permutation], [durations[i] for i in permutation], 5)
    as_paths = [{paths[permutation[i]] for i in shard} for shard in shuffled]
    assert as_paths == [{paths[i] for i in shard} for shard in shards]


def test_equal_durations_are_split_by_path():
    paths = [f"track{index}.wav" for index in range(6)]
    shards = shard_by_duration(paths, [60.0] * 6, 3)
    assert shards == [[0, 3], [1, 4], [2, 5]]


@pytest.mark.parametrize("num_shards", [2, 4, 8, 16])
def test_shards_are_balanced_by_duration(num_shards):
    paths, durations = _collection(1000, seed=3)
    shards = shard_by_duration(paths, durations, num_shards)
    loads = shard_durations(shards, durations)
    longest = max(d or 0.0 for d in durations)
    # Greedy assignment: the fullest shard exceeds the emptiest by at most one track.
    assert max(loads) - min(loads) <= longest
    # ... and in practice far less: within 1% of the ideal share.
    ideal = sum(loads) / num_shards
    assert max(loads) <= 1.01 * ideal
    # Splitting by file count instead is visibly worse on the same skewed collection.
    by_count = [list(range(shard, len(paths), num_shards)) for shard in range(num_shards)]
    assert max(shard_durations(by_count, durations)) > max(loads)


def test_one_long_track_gets_a_shard_of_its_own():
    paths = ["mix.flac", "a.mp3", "b.mp3", "c.mp3", "d.mp3"]
    durations = [3600.0, 200.0, 210.0, 190.0, 205.0]
    shards = shard_by_duration(paths, durations, 2)
    assert [0] in shards


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_shards"):
        shard_by_duration(["a"], [1.0], 0)
    with pytest.raises(ValueError, match="1 paths but 2 durations"):
        shard_by_duration(["a"], [1.0, 2.0], 2)


def test_durations_come_from_the_container_header(tmp_path):
    paths = []
    for seconds, extension in [(2.0, "wav"), (3.5, "flac"), (6.0, "mp3")]:
        paths.append(write_audio(tmp_path / f"track.{extension}", synthetic_music(seconds, seed=1)))
    corrupt = tmp_path / "corrupt.mp3"
    corrupt.write_bytes(b"ID3 not really an mp3" * 20)
    durations = probe_durations([*paths, corrupt, tmp_path / "missing.wav"], num_workers=2)
    np.testing.assert_allclose(durations[:3], [2.0, 3.5, 6.0], atol=0.1)  # mp3 adds an encoder delay
    assert durations[3:] == [None, None]
    assert probe_duration(paths[0]) == pytest.approx(2.0, abs=1e-3)
