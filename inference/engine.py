"""Whole-track MAEST inference over many tracks, with decoding and the front-end running in parallel with the model.

Data flow: a `torch.utils.data.DataLoader` whose worker processes each take every `num_workers`-th track, decode it
(PyAV), compute its log-mel segments and send them on in chunks of a few segments (long tracks are streamed, so
no process holds a whole hour of audio); the main process packs segments of consecutive tracks into batches of
`batch_size`, runs the model under `torch.inference_mode()`, and completes a track when its last segment is done:
scores are the mean of the per-segment sigmoid activations, embeddings the mean of the per-segment embeddings.

With the front-end on the model's device (the default on CUDA), the workers only decode and resample: they send
each segment's samples (`segment_windows`, in pinned memory), and the log-mel frames of a whole batch are computed
on the GPU by the same `log_mel` (`MAESTFeatureExtractor.segment_log_mel`), equal to the workers' CPU front-end.
One CPU core computes the front-end of about 40 segments/s; a GPU, tens of thousands.
"""

import functools
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from maest.feature_extraction.audio import (
    DEFAULT_STREAM_THRESHOLD_SECONDS,
    AudioDecodingError,
    _window_chunks,
    segment_windows,
    track_segment_features,
    track_segment_windows,
)
from maest.feature_extraction.feature_extraction_maest import AudioInputError, audio_to_mono

from .model import InferenceModel
from .store import TrackResult


@dataclass
class TrackInput:
    """One track: a file path, or audio in memory (`audio` with its `sampling_rate`, and its `channel_axis` when it
    has channels) under a display `name`. Audio in memory goes through `audio_to_mono`, as training's does."""

    name: str
    audio: object = None
    sampling_rate: int | None = None
    channel_axis: int | None = None


@dataclass
class SegmentChunk:
    """What a loader worker sends: some consecutive segments of track `index`; the last chunk of a track carries its
    `duration`; a failed track sends one chunk with `error` set. With the front-end on the model's device,
    `segments` holds each segment's samples and `num_frames` how many of its frames are audio."""

    index: int
    segments: torch.Tensor | None
    duration: float | None = None
    last: bool = False
    error: str | None = None
    num_frames: torch.Tensor | None = None

    def pin_memory(self):
        # Called by the DataLoader (pin_memory=True, for CUDA) so that copies to the GPU can overlap.
        if self.segments is not None:
            self.segments = self.segments.pin_memory()
        return self


@dataclass
class TrackFailure:
    index: int
    name: str
    reason: str


@dataclass
class FrontEndSettings:
    segment_frames: int
    last_segment: str = "auto"
    min_duration: float = 1.0
    stream_threshold_seconds: float = DEFAULT_STREAM_THRESHOLD_SECONDS
    segments_per_chunk: int = 4
    # Workers send samples and the model's device computes the frames (`segment_windows` / `segment_log_mel`).
    on_device: bool = False


class TrackSegmentDataset(IterableDataset):
    """Segments of tracks as `SegmentChunk`s; with several loader workers each takes every `num_workers`-th track."""

    def __init__(self, tracks: list[TrackInput], feature_extractor, settings: FrontEndSettings):
        self.tracks = tracks
        self.feature_extractor = feature_extractor
        self.settings = settings

    def __iter__(self):
        worker = get_worker_info()
        indices = range(len(self.tracks))
        if worker is not None:
            indices = indices[worker.id :: worker.num_workers]
        for index in indices:
            yield from self.track_chunks(index)

    def track_chunks(self, index: int):
        track = self.tracks[index]
        if self.settings.on_device:
            yield from self.track_windows(index)
            return
        try:
            if track.audio is None:
                chunks = track_segment_features(
                    track.name,
                    self.feature_extractor,
                    segment_frames=self.settings.segment_frames,
                    last_segment=self.settings.last_segment,
                    stream_threshold_seconds=self.settings.stream_threshold_seconds,
                    segments_per_chunk=self.settings.segments_per_chunk,
                    min_duration_seconds=self.settings.min_duration,
                )
            else:
                chunks = self._array_chunks(track)
            for segments, duration in chunks:
                check_finite(track.name, segments)
                yield SegmentChunk(index, segments, duration=duration, last=duration is not None)
        except Exception as error:  # one bad track never stops a collection
            yield SegmentChunk(index, None, last=True, error=_failure_reason(track.name, error))

    def track_windows(self, index: int):
        """`track_chunks` for the front-end on the model's device: the segments' samples, checked as in
        `track_chunks` (finite samples give finite features: `log_mel` switches to float64 for huge ones)."""
        track, settings = self.tracks[index], self.settings
        try:
            if track.audio is None:
                chunks = track_segment_windows(
                    track.name,
                    self.feature_extractor,
                    segment_frames=settings.segment_frames,
                    last_segment=settings.last_segment,
                    stream_threshold_seconds=settings.stream_threshold_seconds,
                    segments_per_chunk=settings.segments_per_chunk,
                    min_duration_seconds=settings.min_duration,
                )
            else:
                chunks = self._array_windows(track)
            for windows, num_frames, duration in chunks:
                yield SegmentChunk(index, windows, duration=duration, last=duration is not None, num_frames=num_frames)
        except Exception as error:  # one bad track never stops a collection
            yield SegmentChunk(index, None, last=True, error=_failure_reason(track.name, error))

    def _array_clip(self, track: TrackInput) -> tuple[torch.Tensor, float]:
        """The track's mono samples at the model's rate and its duration in seconds (too short: refused)."""
        extractor = self.feature_extractor
        clip = audio_to_mono(track.audio, track.sampling_rate, extractor.sampling_rate, track.channel_axis, track.name)
        duration = clip.shape[0] / extractor.sampling_rate
        if duration < self.settings.min_duration:
            raise AudioDecodingError(
                f"{track.name}: too short ({duration:.2f} s; the minimum is {self.settings.min_duration:g} s)"
            )
        return clip, duration

    def _array_windows(self, track: TrackInput):
        extractor = self.feature_extractor
        clip, duration = self._array_clip(track)
        windows = segment_windows([clip], extractor, self.settings.segment_frames, self.settings.last_segment)
        yield from _window_chunks(windows, track.name, extractor.sampling_rate, self.settings.segments_per_chunk, 0.0)

    def _array_chunks(self, track: TrackInput):
        extractor = self.feature_extractor
        clip, duration = self._array_clip(track)
        segments = extractor(
            clip,
            sampling_rate=extractor.sampling_rate,
            max_length=self.settings.segment_frames,
            return_segments=True,
            last_segment=self.settings.last_segment,
        )["input_values"]
        chunks = segments.split(self.settings.segments_per_chunk)
        for position, chunk in enumerate(chunks):
            yield chunk, duration if position == len(chunks) - 1 else None


def _failure_reason(name: str, error: Exception) -> str:
    """A failed track's line in the failure list: decoding and input errors already name the track."""
    if isinstance(error, (AudioDecodingError, AudioInputError)):
        return str(error)
    return f"{name}: {type(error).__name__}: {error}"


def check_finite(name: str, segments: torch.Tensor) -> None:
    """Refuses non-finite features (e.g. samples of 1e20 overflow the power spectrum): checked here, in the loader
    workers, so the model's forward needs no device sync and one bad file fails only its own track."""
    if not bool(torch.isfinite(segments).all()):
        raise AudioDecodingError(
            f"{name}: its features contain NaN or infinite values (audio samples far outside [-1, 1]?)"
        )


def _identity(item):
    return item


LOADER_NICENESS = 10  # how far below the model a loader process runs when the model is on the CPU


def prepare_loader_process(niceness: int = 0, worker_id: int | None = None) -> None:
    """Makes this process a loader: one thread, and `niceness` below the model's priority (`worker_id`: what a
    `DataLoader` passes to its `worker_init_fn`, unused)."""
    # Each worker is one decoding/front-end pipeline on one thread. With the model on the CPU, the workers also run
    # at a lower priority: the model's threads keep the cores (a preempted thread stalls all of them at the next
    # barrier), and the workers fill the gaps, a few percent of the model's time, kept ahead by the prefetch queue.
    torch.set_num_threads(1)
    if niceness:
        try:
            os.nice(niceness)
        except OSError:
            pass


@dataclass
class _TrackState:
    expected: int = 0
    outputs: dict = field(default_factory=dict)
    received: int = 0
    duration: float | None = None
    finished: bool = False
    failed: bool = False


class CollectionRunner:
    """Runs an `InferenceModel` over tracks and calls back per finished or failed track.

    Args:
        inference_model: the loaded model.
        scores / embedding: which outputs to compute (`embedding` uses `block` and `tokens`).
        batch_size: segments per model call (segments of several tracks share a batch).
        num_workers: loader processes for decoding and features (0: in this process).
        progress: show a tqdm bar (tracks, audio minutes per second, ETA) on stderr.
        front_end_on_device: compute the log-mel frames on the model's device, batch by batch, with the workers only
            decoding (None: on CUDA, for the torch back-end); the features equal the workers' CPU front-end.
    """

    def __init__(
        self,
        inference_model: InferenceModel,
        scores: bool = True,
        embedding: bool = False,
        block: int | None = None,
        tokens="cls,dist,mean",
        batch_size: int = 8,
        num_workers: int = 0,
        last_segment: str = "auto",
        min_duration: float = 1.0,
        stream_threshold_seconds: float = DEFAULT_STREAM_THRESHOLD_SECONDS,
        progress: bool = False,
        front_end_on_device: bool | None = None,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        if not (scores or embedding):
            raise ValueError("nothing to compute: ask for scores and/or an embedding")
        self.inference_model = inference_model
        self.scores = scores
        self.embedding = embedding
        self.block = inference_model.resolve_block(block) if embedding else None
        self.tokens = tokens
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.front_end = FrontEndSettings(
            segment_frames=inference_model.segment_frames,
            last_segment=last_segment,
            min_duration=min_duration,
            stream_threshold_seconds=stream_threshold_seconds,
            segments_per_chunk=max(1, min(batch_size, 4)),
            on_device=inference_model.device.type == "cuda" if front_end_on_device is None else bool(front_end_on_device),
        )
        if self.front_end.on_device and getattr(inference_model, "backend", "torch") != "torch":
            self.front_end.on_device = False  # exported graphs take features on the CPU
        self.progress = progress

    def chunks(self, tracks: list[TrackInput]) -> Iterable[SegmentChunk]:
        dataset = TrackSegmentDataset(tracks, self.inference_model.feature_extractor, self.front_end)
        if self.num_workers == 0 or len(tracks) == 0:
            return iter(dataset)
        loader = DataLoader(
            dataset,
            batch_size=None,
            collate_fn=_identity,
            num_workers=min(self.num_workers, len(tracks)),
            worker_init_fn=functools.partial(prepare_loader_process, LOADER_NICENESS if self.inference_model.device.type == "cpu" else 0),
            prefetch_factor=4,
            pin_memory=self.inference_model.device.type == "cuda",
        )
        return iter(loader)

    def run(
        self,
        tracks: list[TrackInput],
        on_result: Callable[[TrackResult], None],
        on_failure: Callable[[TrackFailure], None],
    ) -> None:
        """Processes `tracks`; `on_result` / `on_failure` are called once per track, in order of completion."""
        from tqdm.auto import tqdm

        bar = tqdm(total=len(tracks), unit="track", file=sys.stderr, disable=not self.progress, dynamic_ncols=True)
        batcher = _Batcher(self, tracks, on_result, on_failure, bar)
        try:
            for chunk in self.chunks(tracks):
                batcher.add(chunk)
                while batcher.queued >= self.batch_size:
                    batcher.run_batch(self.batch_size)
            while batcher.queued:
                batcher.run_batch(self.batch_size)
        finally:
            bar.close()


class _Batcher:
    """Packs the segments of consecutive tracks into model batches and completes each track once all its segments
    went through the model."""

    def __init__(self, runner: CollectionRunner, tracks, on_result, on_failure, bar):
        self.runner = runner
        self.tracks = tracks
        self.on_result = on_result
        self.on_failure = on_failure
        self.bar = bar
        self.states: dict[int, _TrackState] = {}
        # (track index, segments or their samples, frames of audio per segment with the front-end on the device)
        self.queue: list[tuple[int, torch.Tensor, torch.Tensor | None]] = []
        self.queued = 0
        self.started = time.monotonic()
        self.audio_seconds = 0.0

    def add(self, chunk: SegmentChunk) -> None:
        state = self.states.setdefault(chunk.index, _TrackState())
        name = self.tracks[chunk.index].name
        if chunk.error is None and chunk.last and state.expected + len(chunk.segments) == 0:
            chunk.error = f"{name}: no segments"
        if chunk.error is not None:
            state.failed = state.finished = True
            self.settle(chunk.index)
            self.on_failure(TrackFailure(chunk.index, name, chunk.error))
            self.bar.update(1)
            return
        if len(chunk.segments):
            self.queue.append((chunk.index, chunk.segments, chunk.num_frames))
            self.queued += len(chunk.segments)
            state.expected += len(chunk.segments)
        if chunk.last:
            state.finished = True
            state.duration = chunk.duration
            self.settle(chunk.index)

    def take(self, size: int) -> list[tuple[int, torch.Tensor, torch.Tensor | None]]:
        """Up to `size` queued segments, splitting a track's chunk where the batch ends."""
        taken, count = [], 0
        while self.queue and count < size:
            index, segments, num_frames = self.queue.pop(0)
            if count + len(segments) > size:
                rest = None if num_frames is None else num_frames[size - count :]
                self.queue.insert(0, (index, segments[size - count :], rest))
                segments = segments[: size - count]
                num_frames = None if num_frames is None else num_frames[: size - count]
            taken.append((index, segments, num_frames))
            count += len(segments)
        self.queued -= count
        return taken

    def run_batch(self, size: int) -> None:
        taken = self.take(size)
        live = [(index, segments, num_frames) for index, segments, num_frames in taken if not self.states[index].failed]
        if live:
            runner = self.runner
            outputs = runner.inference_model.run(
                self.inputs(live),
                scores=runner.scores,
                embedding=runner.embedding,
                block=runner.block,
                tokens=runner.tokens,
            )
            offset = 0
            for index, segments, _ in live:
                state = self.states[index]
                for name, values in outputs.items():
                    state.outputs.setdefault(name, []).append(values[offset : offset + len(segments)])
                state.received += len(segments)
                offset += len(segments)
        for index in dict.fromkeys(index for index, _, _ in taken):
            self.settle(index)

    def inputs(self, live) -> torch.Tensor:
        """The model's input features of a batch: the workers' features, or (front-end on the device) the frames
        computed on the model's device from the segments' samples. Each pinned chunk is copied on its own (a
        concatenation on the host would not be pinned)."""
        if not self.runner.front_end.on_device:
            return torch.cat([segments for _, segments, _ in live])
        model = self.runner.inference_model
        device = model.device
        windows = torch.cat([segments.to(device, non_blocking=True) for _, segments, _ in live])
        num_frames = torch.cat([num_frames for _, _, num_frames in live]).to(device, non_blocking=True)
        return model.feature_extractor.segment_log_mel(windows, num_frames)

    def settle(self, index: int) -> None:
        # A track is done once its last chunk arrived and all its segments went through the model; a failed track
        # is forgotten once none of its segments wait in the queue.
        state = self.states.get(index)
        if state is None or not state.finished:
            return
        if state.failed:
            if not any(queued_index == index for queued_index, _, _ in self.queue):
                self.states.pop(index)
        elif state.received == state.expected:
            self.complete(index)

    def complete(self, index: int) -> None:
        state = self.states.pop(index)
        segment_outputs = {name: torch.cat(parts).numpy() for name, parts in state.outputs.items()}
        result = TrackResult(
            path=self.tracks[index].name,
            duration=float(state.duration),
            num_segments=state.expected,
            outputs={name: values.mean(axis=0, dtype=np.float64).astype(np.float32) for name, values in segment_outputs.items()},
            segment_outputs=segment_outputs,
            index=index,
        )
        self.on_result(result)
        self.audio_seconds += result.duration
        elapsed = max(time.monotonic() - self.started, 1e-9)
        self.bar.set_postfix_str(f"{self.audio_seconds / 60 / elapsed:.2f} audio min/s", refresh=False)
        self.bar.update(1)


__all__ = ["CollectionRunner", "SegmentChunk", "TrackFailure", "TrackInput", "TrackResult", "TrackSegmentDataset", "check_finite"]
