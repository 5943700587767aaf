"""Splitting a collection of tracks between processes, balanced by audio duration.

The work of embedding a track grows with its duration (one model call per segment), not with its file size or count,
so a catalogue is split by duration: tracks sorted longest first, each assigned to the process with the least audio so
far (greedy "longest processing time first" scheduling). The split is a pure function of the track list, the
durations and the number of processes, so every process of a job computes the same split on its own, and a rerun
with the same inputs gets the same split.

Durations come from the container metadata (PyAV reads the header; nothing is decoded), so probing a
catalogue costs a file open per track.
"""

import heapq
import math
from concurrent.futures import ThreadPoolExecutor
from typing import List, Optional, Sequence

from maest.feature_extraction.audio import AudioDecodingError, audio_info


def probe_duration(path) -> Optional[float]:
    """The duration of an audio file in seconds, from its container metadata (no decoding); None where the file
    cannot be opened or states no duration (such a file is reported when it is processed, not here)."""
    try:
        duration = audio_info(path).duration_seconds
    except (AudioDecodingError, OSError):
        return None
    if duration is None or not math.isfinite(duration) or duration < 0:
        return None
    return duration


def probe_durations(paths: Sequence, num_workers: int = 8) -> List[Optional[float]]:
    """`probe_duration` of each path, in order; `num_workers` threads overlap the file opens (network filesystems
    answer one open at a time slowly, many at a time quickly)."""
    if num_workers <= 1 or len(paths) <= 1:
        return [probe_duration(path) for path in paths]
    with ThreadPoolExecutor(max_workers=num_workers) as pool:
        return list(pool.map(probe_duration, paths, chunksize=64))


def shard_by_duration(
    paths: Sequence, durations: Sequence[Optional[float]], num_shards: int
) -> List[List[int]]:
    """Splits tracks into `num_shards` disjoint shards of about equal total duration.

    Args:
        paths: the tracks (any objects with a stable `str`), only used to break ties between equal durations so the
            split does not depend on the order of the list.
        durations: seconds per track; `None` (unknown: unreadable file) counts as 0, so such tracks are spread
            over the shards like the shortest ones.
        num_shards: the number of processes.

    Returns:
        `num_shards` lists of indices into `paths`, each in ascending order. Together they hold every index exactly
        once. The greedy assignment guarantees that the largest and the smallest shard differ by at most the
        longest single track.
    """
    if num_shards < 1:
        raise ValueError(f"num_shards must be at least 1, got {num_shards}")
    if len(paths) != len(durations):
        raise ValueError(f"{len(paths)} paths but {len(durations)} durations")
    order = sorted(
        range(len(paths)), key=lambda index: (-float(durations[index] or 0.0), str(paths[index]), index)
    )
    # (total seconds so far, shard): the least loaded shard pops first, ties go to the lowest shard number.
    loads = [(0.0, shard) for shard in range(num_shards)]
    shards: List[List[int]] = [[] for _ in range(num_shards)]
    for index in order:
        load, shard = heapq.heappop(loads)
        shards[shard].append(index)
        heapq.heappush(loads, (load + float(durations[index] or 0.0), shard))
    return [sorted(indices) for indices in shards]


def shard_durations(shards: Sequence[Sequence[int]], durations: Sequence[Optional[float]]) -> List[float]:
    """Total seconds of each shard (unknown durations count as 0)."""
    return [sum(float(durations[index] or 0.0) for index in shard) for shard in shards]
