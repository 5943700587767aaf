"""Audio files for MAEST: decoding to 16 kHz mono with PyAV (FFmpeg's libraries from its wheels, so no system FFmpeg
is needed), and streaming segment features of long tracks with bounded memory.

Decoding resamples with FFmpeg's resampler (libswresample) and downmixes by averaging the channels (what Essentia's
MonoLoader and `MAESTFeatureExtractor` do; FFmpeg's own stereo-to-mono mix scales differently).

A track is cut into consecutive non-overlapping segments of the model's length (`MAESTFeatureExtractor.segment`).
Short tracks are decoded whole; tracks longer than `stream_threshold_seconds` are decoded in one pass that hands on
one segment of samples at a time, and each segment's frames are computed from its own samples
(`log_mel(window, centered=False)`), so memory stays bounded for tracks of any length. Both paths decode the same
samples and give the same features (tested).
"""

import io
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch


# Extensions that `find_audio_files` collects when it walks a directory (anything FFmpeg decodes works when a file
# is named explicitly).
AUDIO_EXTENSIONS = frozenset(
    {
        ".wav", ".wave", ".flac", ".mp3", ".ogg", ".oga", ".opus", ".m4a", ".mp4", ".aac", ".aif", ".aiff", ".aifc",
        ".wma", ".ape", ".wv", ".mka", ".webm", ".alac", ".caf", ".mp2", ".ac3", ".au", ".snd",
    }
)

# Tracks longer than this are streamed segment by segment instead of decoded whole.
DEFAULT_STREAM_THRESHOLD_SECONDS = 600.0


class AudioDecodingError(Exception):
    """A file that cannot be read as audio: the message names the file and the reason."""


@dataclass
class AudioInfo:
    """What a file's header says (no decoding)."""

    path: str
    duration_seconds: float | None
    sample_rate: int | None
    num_channels: int | None
    begin_seconds: float


def find_audio_files(paths, extensions=AUDIO_EXTENSIONS, unreadable: list | None = None) -> list[str]:
    """Expands paths into a list of files: directories are walked recursively (sorted, symlinks followed) for files
    with an audio extension; files named explicitly are kept whatever their extension. Order: as given, each
    directory's files sorted by path.

    Args:
        unreadable: where given, a list that receives `(folder, reason)` for each folder that could not be read
            (permission denied...); the walk goes on past it. Without it such a folder raises its `OSError`.

    Raises:
        FileNotFoundError: a path that does not exist.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    extensions = {extension.lower() for extension in extensions}
    files, seen = [], set()
    for path in paths:
        path = Path(path)
        if path.is_dir():
            found = sorted(_walk_audio_files(path, extensions, unreadable))
        elif path.exists() or path.is_symlink():
            found = [path]
        else:
            raise FileNotFoundError(f"{path}: no such file or directory")
        for file in found:
            key = os.path.abspath(file)
            if key not in seen:
                seen.add(key)
                files.append(str(file))
    return files


def _walk_audio_files(directory: Path, extensions, unreadable: list | None = None) -> Iterator[Path]:
    # Symlinked folders are followed once each (a link back to a parent would otherwise loop forever).
    visited = set()

    def report(error: OSError) -> None:
        if unreadable is None:
            raise error
        unreadable.append((str(error.filename or directory), f"folder not read ({error.strerror or error})"))

    for root, directories, names in os.walk(directory, followlinks=True, onerror=report):
        real = os.path.realpath(root)
        if real in visited:
            directories[:] = []
            continue
        visited.add(real)
        directories[:] = [name for name in directories if not name.startswith(".")]
        for name in names:
            if Path(name).suffix.lower() in extensions and not name.startswith("."):
                yield Path(root) / name


def _open(path, data: bytes | None = None):
    """The FFmpeg container of `path` and its first audio stream, opened by PyAV (whose wheels carry FFmpeg's
    libraries: no system FFmpeg is needed). With `data`, the encoded file is those bytes (a dataset's embedded audio,
    read from memory) and `path` only names it in messages."""
    import av

    path = str(path)
    if data is not None:
        if len(data) == 0:
            raise AudioDecodingError(f"{path}: empty file (0 bytes)")
        source = io.BytesIO(data)
    elif not os.path.exists(path):
        raise AudioDecodingError(f"{path}: no such file")
    elif os.path.isdir(path):
        raise AudioDecodingError(f"{path}: is a directory")
    elif not os.access(path, os.R_OK):
        raise AudioDecodingError(f"{path}: permission denied")
    elif os.path.getsize(path) == 0:
        raise AudioDecodingError(f"{path}: empty file (0 bytes)")
    else:
        # A name that is not UTF-8 (surrogate escapes of os.fsdecode) is read through its file object.
        source = path if _is_utf8(path) else open(path, "rb")
    try:
        container = av.open(source, metadata_errors="ignore")
    except (av.FFmpegError, OSError, ValueError) as error:
        raise AudioDecodingError(f"{path}: not a decodable audio file ({_short(error)})") from error
    if not container.streams.audio:
        container.close()
        raise AudioDecodingError(f"{path}: not a decodable audio file (no audio stream)")
    return container, container.streams.audio[0]


def _is_utf8(path: str) -> bool:
    try:
        path.encode("utf-8")
        return True
    except UnicodeEncodeError:  # surrogate escapes of a non-UTF-8 file name (os.fsdecode)
        return False


def _short(error: Exception) -> str:
    message = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
    # PyAV appends the file name to FFmpeg's message ("[Errno 1094995529] Invalid data ...: 'path'").
    message = re.sub(r"^\[Errno -?\d+\]\s*", "", message)
    message = re.sub(r":\s*'[^']*'$", "", message)
    return message[:300]


def audio_info(path) -> AudioInfo:
    """Duration, sample rate and channels of an audio file from its header (no decoding)."""
    container, stream = _open(path)
    with container:
        duration = None
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / 1_000_000  # AV_TIME_BASE
        begin = float(stream.start_time * stream.time_base) if stream.start_time is not None and stream.time_base else 0.0
        context = stream.codec_context
        return AudioInfo(
            path=str(path),
            duration_seconds=duration,
            sample_rate=context.sample_rate or None,
            num_channels=context.layout.nb_channels if context.layout is not None else None,
            begin_seconds=max(begin, 0.0),
        )


# Decoded samples are handed to the resampler in blocks of about this many (1.5 s at 44.1 kHz): one call per block
# instead of one per codec frame (1152 samples for MP3) saves a fifth of the decoding time, with the same samples.
RESAMPLE_BLOCK_SAMPLES = 1 << 16


def decode_frames(path, sampling_rate: int | None = 16000, data: bytes | None = None) -> Iterator[np.ndarray]:
    """The decoded audio of a file's first audio stream, in blocks, resampled to `sampling_rate` by FFmpeg's
    resampler (libswresample, through PyAV's `AudioResampler`; None: the file's own rate), channels kept.

    This is the one decoder and resampler of the package: inference, training, evaluation and the demo read audio
    through it. A stream damaged part-way (cut off mid-frame, a broken packet) ends at the damage. With `data`, the
    encoded file is read from those bytes and `path` only names it.

    Yields:
        `np.ndarray` float32 of shape `(channels, samples)`.
    """
    import av

    container, stream = _open(path, data)
    resampler = av.AudioResampler(format="fltp", rate=sampling_rate)
    pending, held, kind = [], 0, None

    def resample_pending():
        # The codec's frames of one format, layout and rate, as one frame for the resampler.
        block = av.AudioFrame.from_ndarray(np.concatenate(pending, axis=1), format=kind[0], layout=kind[1])
        block.sample_rate = kind[2]
        pending.clear()
        return [resampled.to_ndarray() for resampled in resampler.resample(block)]

    with container:
        decoded = 0
        try:
            for frame in container.decode(stream):
                frame_kind = (frame.format.name, frame.layout.name, frame.sample_rate)
                if pending and frame_kind != kind:
                    yield from resample_pending()
                    held = 0
                kind = frame_kind
                pending.append(frame.to_ndarray())
                held += frame.samples
                decoded += frame.samples
                if held >= RESAMPLE_BLOCK_SAMPLES:
                    yield from resample_pending()
                    held = 0
        except (av.FFmpegError, ValueError) as error:
            if decoded == 0:
                raise AudioDecodingError(f"{path}: decoding failed ({_short(error)})") from error
        if pending:
            yield from resample_pending()
        for resampled in resampler.resample(None):  # the resampler's delayed samples
            yield resampled.to_ndarray()


def load_audio(path, sampling_rate: int = 16000, data: bytes | None = None) -> torch.Tensor:
    """Decodes a whole file to mono float32 at `sampling_rate` (the mean of the channels). With `data`, the file is
    those encoded bytes, decoded from memory (a dataset's embedded audio), and `path` only names it in messages.

    Returns:
        `torch.Tensor` of shape `(num_samples,)`.

    Raises:
        AudioDecodingError: missing, unreadable, empty, corrupt or non-audio files.
    """
    frames = [frame for frame in decode_frames(path, sampling_rate, data) if frame.shape[-1]]
    if not frames:
        raise AudioDecodingError(f"{path}: no audio samples (empty track)")
    return _to_mono(torch.from_numpy(np.concatenate(frames, axis=-1)), path)


def _to_mono(samples: torch.Tensor, path) -> torch.Tensor:
    if samples.ndim != 2 or samples.shape[-1] == 0:
        raise AudioDecodingError(f"{path}: no audio samples (empty track)")
    # The mean of the channels (Essentia's MonoLoader and the feature extractor), not FFmpeg's own downmix.
    mono = samples.mean(dim=0, dtype=torch.float32) if samples.shape[0] > 1 else samples[0].float()
    if not torch.isfinite(mono).all():
        raise AudioDecodingError(f"{path}: decoded audio contains NaN or infinite samples")
    return mono


def stream_audio(path, chunk_samples: int, sampling_rate: int = 16000) -> Iterator[torch.Tensor]:
    """Decodes a file chunk by chunk: consecutive mono float32 chunks of `chunk_samples` samples at `sampling_rate`
    (the last one shorter), without holding the whole track in memory. The chunks concatenate to `load_audio`.

    Yields:
        `torch.Tensor` of shape `(num_samples,)`.
    """
    pending, held = [], 0
    for frame in decode_frames(path, sampling_rate):
        pending.append(_to_mono(torch.from_numpy(frame), path).numpy())
        held += frame.shape[-1]
        while held >= chunk_samples:
            samples = np.concatenate(pending)
            yield torch.from_numpy(samples[:chunk_samples].copy())
            pending, held = [samples[chunk_samples:]], held - chunk_samples
    if held:
        yield torch.from_numpy(np.concatenate(pending))


def encode_audio(path, audio, sampling_rate: int = 16000) -> None:
    """Writes audio to a file in the format its extension names (WAV as 16-bit PCM, FLAC, MP3, M4A/AAC; Ogg and
    Opus files hold Opus, at 48 kHz for rates above 24 kHz), with PyAV's FFmpeg: the encoder of the demo's data and the tests.

    Args:
        audio: float samples in [-1, 1], mono `(samples,)` or `(channels, samples)`.
    """
    import av

    samples = np.ascontiguousarray(np.asarray(audio, dtype=np.float32))
    if samples.ndim == 1:
        samples = samples[None]
    if samples.ndim != 2 or samples.shape[0] > 8 or samples.shape[1] == 0:
        raise ValueError(f"{path}: audio to encode must be (samples,) or (channels, samples), got shape {samples.shape}")
    layout = {1: "mono", 2: "stereo"}.get(samples.shape[0], f"{samples.shape[0]}c")
    with av.open(str(path), mode="w") as container:
        # Ogg holds Opus (FFmpeg's default there, FLAC, fails at the end of muxing; its Vorbis encoder is
        # experimental and writes wrong durations; the wheels carry no libvorbis).
        codec_name = "libopus" if container.format.name == "ogg" else container.default_audio_codec
        codec = av.codec.Codec(codec_name, "w")
        rates = sorted(codec.audio_rates or [sampling_rate])  # Opus encodes at 8 to 48 kHz only: the next rate up
        rate = next((rate for rate in rates if rate >= sampling_rate), rates[-1])
        stream = container.add_stream(codec.name, rate=rate, layout=layout)
        context = stream.codec_context
        # The encoder's sample format, rate and frame size (MP3 takes frames of 1152 samples, AAC 1024).
        resampler = av.AudioResampler(format=context.format, layout=layout, rate=context.sample_rate, frame_size=context.frame_size or None)
        frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout=layout)
        frame.sample_rate = sampling_rate
        for resampled in [*resampler.resample(frame), *resampler.resample(None)]:
            container.mux(stream.encode(resampled))
        container.mux(stream.encode(None))


def _check_feature_extractor(feature_extractor, segment_frames: int) -> None:
    if feature_extractor.frame_size != 2 * feature_extractor.hop_size:
        raise ValueError("streaming features needs frame_size == 2 * hop_size (MAEST's 512 / 256)")
    if segment_frames < 1:
        raise ValueError(f"segment_frames must be positive, got {segment_frames}")


def stream_segment_features(
    path, feature_extractor, segment_frames: int | None = None, last_segment: str = "auto"
) -> Iterator[torch.Tensor]:
    """The segments of a track's features, computed one at a time from the samples each needs.

    Yields the same segments as `feature_extractor(load_audio(path), return_segments=True, last_segment=...)`, in
    order, while only one segment of audio is in memory (`segment_windows` of `stream_audio`, each window's frames
    by `feature_extractor.segment_log_mel`).

    Yields:
        `torch.Tensor` of shape `(1, segment_frames, feature_size)`; the generator's return value (`StopIteration.value`)
        is the number of decoded samples.
    """
    length = segment_frames or feature_extractor.max_length
    chunks = stream_audio(path, length * feature_extractor.hop_size, feature_extractor.sampling_rate)
    windows = segment_windows(chunks, feature_extractor, length, last_segment)
    while True:
        try:
            window, frames = next(windows)
        except StopIteration as end:
            return end.value
        except AudioDecodingError as error:
            raise AudioDecodingError(_named(path, error)) from error
        yield feature_extractor.segment_log_mel(window[None], torch.tensor([frames]))


def track_segment_features(
    path,
    feature_extractor,
    segment_frames: int | None = None,
    last_segment: str = "auto",
    stream_threshold_seconds: float = DEFAULT_STREAM_THRESHOLD_SECONDS,
    segments_per_chunk: int = 4,
    min_duration_seconds: float = 0.0,
) -> Iterator[tuple[torch.Tensor, float | None]]:
    """Segments of one track's features, in chunks of at most `segments_per_chunk` segments, for whole-track
    analysis. Tracks up to `stream_threshold_seconds` (from the header) are decoded whole, longer ones (and those
    without a known duration) are streamed with bounded memory (`segment_windows`, each chunk's frames computed by
    `feature_extractor.segment_log_mel`).

    Yields:
        `(segments, duration)`: `segments` of shape `(chunk_size, segment_frames, feature_size)`; `duration` is `None`
        until the last chunk, which carries the decoded duration in seconds.

    Raises:
        AudioDecodingError: unreadable, empty, corrupt or non-audio files, and tracks shorter than
            `min_duration_seconds`.
    """
    length = segment_frames or feature_extractor.max_length
    rate = feature_extractor.sampling_rate
    if _decodes_whole(path, stream_threshold_seconds, min_duration_seconds):
        audio = load_audio(path, rate)
        duration = audio.shape[0] / rate
        if duration < min_duration_seconds:
            raise AudioDecodingError(_too_short(path, duration, min_duration_seconds))
        segments = feature_extractor(
            audio, sampling_rate=rate, max_length=length, return_segments=True, last_segment=last_segment
        )["input_values"]
        chunks = segments.split(segments_per_chunk)
        for index, chunk in enumerate(chunks):
            yield chunk, duration if index == len(chunks) - 1 else None
        return
    windows = segment_windows(stream_audio(path, length * feature_extractor.hop_size, rate), feature_extractor, length, last_segment)
    for chunk, frames, duration in _window_chunks(windows, path, rate, segments_per_chunk, min_duration_seconds):
        if chunk.shape[0] == 0:
            yield torch.zeros(0, length, feature_extractor.feature_size), duration
        else:
            yield feature_extractor.segment_log_mel(chunk, frames), duration


def segment_windows(
    chunks: Iterable[torch.Tensor], feature_extractor, segment_frames: int, last_segment: str = "auto"
) -> Iterator[tuple[torch.Tensor, int]]:
    """The samples of each segment of a track, for computing its frames elsewhere (on the model's device):
    `feature_extractor.segment_log_mel` of these windows equals `feature_extractor(audio, return_segments=True,
    last_segment=...)`.

    Segment `k` holds frames `[k L, (k + 1) L)`; frame `i` is centered on sample `i * hop`, so the segment needs the
    `(L + 1) * hop` samples from `k L hop - hop` (zeros before and after the track). The last segment follows
    `MAESTFeatureExtractor.segment`'s rule and carries how many of its frames are audio.

    Args:
        chunks: consecutive mono 16 kHz pieces of the track (the whole track as one piece, or `stream_audio`'s).

    Yields:
        `(window, frames)`: `window` of shape `((L + 1) * hop,)`, `frames` the number of its frames that are audio
        (`L` but for a partial last segment). The generator's return value is the number of samples.
    """
    _check_feature_extractor(feature_extractor, segment_frames)
    hop = feature_extractor.hop_size
    segment_samples = segment_frames * hop
    window_samples = segment_samples + hop
    buffer = torch.zeros(hop)  # Essentia centers the first frame on sample 0: a hop of zeros before the track
    num_samples = emitted = 0
    for chunk in chunks:
        num_samples += chunk.shape[0]
        buffer = torch.cat([buffer, chunk])
        while buffer.shape[0] >= window_samples:
            yield buffer[:window_samples].clone(), segment_frames
            emitted += 1
            buffer = buffer[segment_samples:]
    if num_samples == 0:
        raise AudioDecodingError("no audio samples (empty track)")
    # Up to Essentia's frame count 1 + ceil(n / hop): the last frames reach past the end (zero-padded).
    tail_frames = feature_extractor.num_frames(num_samples) - emitted * segment_frames
    while tail_frames >= segment_frames:
        yield torch.nn.functional.pad(buffer[:window_samples], (0, max(0, window_samples - buffer.shape[0]))), segment_frames
        emitted += 1
        buffer = buffer[segment_samples:]
        tail_frames -= segment_frames
    if feature_extractor.keeps_partial_segment(emitted, tail_frames, segment_frames, last_segment):
        yield torch.nn.functional.pad(buffer[:window_samples], (0, window_samples - min(buffer.shape[0], window_samples))), tail_frames
    return num_samples


def track_segment_windows(
    path,
    feature_extractor,
    segment_frames: int | None = None,
    last_segment: str = "auto",
    stream_threshold_seconds: float = DEFAULT_STREAM_THRESHOLD_SECONDS,
    segments_per_chunk: int = 4,
    min_duration_seconds: float = 0.0,
) -> Iterator[tuple[torch.Tensor, torch.Tensor, float | None]]:
    """`track_segment_features` without the front-end: each segment's samples (`segment_windows`), for a model
    whose device computes the frames. Same decoding, streaming, segments and failures.

    Yields:
        `(windows, frames, duration)`: `windows` of shape `(chunk_size, (segment_frames + 1) * hop)`, `frames` of
        shape `(chunk_size,)` (int64), `duration` `None` until the last chunk.
    """
    length = segment_frames or feature_extractor.max_length
    rate = feature_extractor.sampling_rate
    if _decodes_whole(path, stream_threshold_seconds, min_duration_seconds):
        pieces = [load_audio(path, rate)]
    else:
        pieces = stream_audio(path, length * feature_extractor.hop_size, rate)
    yield from _window_chunks(segment_windows(pieces, feature_extractor, length, last_segment), path, rate, segments_per_chunk, min_duration_seconds)


def _window_chunks(windows, name, rate: int, segments_per_chunk: int, min_duration_seconds: float):
    pending = []
    while True:
        try:
            pending.append(next(windows))
        except StopIteration as end:
            num_samples = end.value
            break
        except AudioDecodingError as error:
            raise AudioDecodingError(_named(name, error)) from error
        if len(pending) == segments_per_chunk:
            yield torch.stack([w for w, _ in pending]), torch.tensor([f for _, f in pending]), None
            pending = []
    duration = num_samples / rate
    if duration < min_duration_seconds:
        raise AudioDecodingError(_too_short(name, duration, min_duration_seconds))
    if pending:
        yield torch.stack([w for w, _ in pending]), torch.tensor([f for _, f in pending]), duration
    else:
        yield torch.zeros(0, 0), torch.zeros(0, dtype=torch.int64), duration


def _named(path, error: AudioDecodingError) -> str:
    """The error's message, starting with the track's name (`segment_windows` does not know it)."""
    message = str(error)
    return message if message.startswith(str(path)) else f"{path}: {message}"


def _decodes_whole(path, stream_threshold_seconds: float, min_duration_seconds: float) -> bool:
    """Whether a track is decoded whole (its header gives a duration up to the threshold) rather than streamed with
    bounded memory; a track whose header already says it is too short is refused before any decoding."""
    duration = audio_info(path).duration_seconds
    if duration is not None and duration < min_duration_seconds:
        raise AudioDecodingError(_too_short(path, duration, min_duration_seconds))
    return duration is not None and duration <= stream_threshold_seconds


def _too_short(path, duration: float, minimum: float) -> str:
    return f"{path}: too short ({duration:.2f} s; the minimum is {minimum:g} s, see --min-duration)"


__all__ = [
    "AUDIO_EXTENSIONS",
    "AudioDecodingError",
    "AudioInfo",
    "audio_info",
    "decode_frames",
    "encode_audio",
    "find_audio_files",
    "load_audio",
    "stream_audio",
    "stream_segment_features",
    "segment_windows",
    "track_segment_features",
    "track_segment_windows",
]
