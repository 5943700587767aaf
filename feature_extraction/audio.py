"""Audio files for MAEST: decoding to 16 kHz mono with torchcodec (FFmpeg), and streaming segment features of long
tracks with bounded memory.

Decoding resamples with FFmpeg and downmixes by averaging the channels (what Essentia's MonoLoader and
`MAESTFeatureExtractor` do; FFmpeg's own stereo-to-mono mix scales differently).

A track is cut into consecutive non-overlapping segments of the model's length (`MAESTFeatureExtractor.segment`).
Short tracks are decoded whole; tracks longer than `stream_threshold_seconds` are decoded one segment at a time with
`AudioDecoder.get_samples_played_in_range`, and each segment's frames are computed from its own samples
(`log_mel(window, centered=False)`), so memory stays bounded for tracks of any length. Both paths give the same
features (tested); for AAC (m4a) FFmpeg's decoder restarts at each range, which changes a few samples at segment
boundaries by about 1e-2.
"""

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

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


def _decoder(path, sampling_rate: int | None):
    from torchcodec.decoders import AudioDecoder

    path = str(path)
    if not os.path.exists(path):
        raise AudioDecodingError(f"{path}: no such file")
    if os.path.isdir(path):
        raise AudioDecodingError(f"{path}: is a directory")
    if not os.access(path, os.R_OK):
        raise AudioDecodingError(f"{path}: permission denied")
    if os.path.getsize(path) == 0:
        raise AudioDecodingError(f"{path}: empty file (0 bytes)")
    try:
        if _is_utf8(path):
            return AudioDecoder(path, sample_rate=sampling_rate)
        # torchcodec takes names as UTF-8 strings: a file whose name is other bytes is read through its file object,
        # kept open as long as the decoder lives.
        file = open(path, "rb")
        decoder = AudioDecoder(file, sample_rate=sampling_rate)
        decoder.source_file = file
        return decoder
    except Exception as error:  # torchcodec raises RuntimeError/ValueError with FFmpeg's message
        raise AudioDecodingError(f"{path}: not a decodable audio file ({_short(error)})") from error


def _is_utf8(path: str) -> bool:
    try:
        path.encode("utf-8")
        return True
    except UnicodeEncodeError:  # surrogate escapes of a non-UTF-8 file name (os.fsdecode)
        return False


def _short(error: Exception) -> str:
    message = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
    # torchcodec prefixes FFmpeg's message with its C++ source location.
    message = re.sub(r"^.*?\.cpp:\d+,\s*", "", message)
    return message[:300]


def audio_info(path) -> AudioInfo:
    """Duration, sample rate and channels of an audio file from its header (no decoding)."""
    metadata = _decoder(path, None).metadata
    duration = metadata.duration_seconds
    if duration is None:
        duration = getattr(metadata, "duration_seconds_from_header", None)
    return AudioInfo(
        path=str(path),
        duration_seconds=None if duration is None else float(duration),
        sample_rate=metadata.sample_rate,
        num_channels=metadata.num_channels,
        begin_seconds=float(metadata.begin_stream_seconds or 0.0),
    )


def load_audio(path, sampling_rate: int = 16000) -> torch.Tensor:
    """Decodes a whole file to mono float32 at `sampling_rate`.

    Returns:
        `torch.Tensor` of shape `(num_samples,)`.

    Raises:
        AudioDecodingError: missing, unreadable, empty, corrupt or non-audio files.
    """
    decoder = _decoder(path, sampling_rate)
    try:
        samples = decoder.get_all_samples().data
    except Exception as error:
        # A damaged file (cut off mid-frame, a broken packet): keep what decodes before the damage, as FFmpeg does.
        samples = _readable_prefix(decoder)
        if samples is None:
            raise AudioDecodingError(f"{path}: decoding failed ({_short(error)})") from error
    return _to_mono(samples, path)


def _readable_prefix(decoder, longest_step: float = 1.0, shortest_step: float = 0.001) -> torch.Tensor | None:
    """The samples up to the first undecodable part of the stream, found by decoding consecutive ranges that get
    ten times shorter each time one fails; None when nothing decodes. `(channels, samples)`."""
    start = float(decoder.metadata.begin_stream_seconds or 0.0)
    step, pieces = longest_step, []
    while step >= shortest_step:
        try:
            samples = decoder.get_samples_played_in_range(start, start + step).data
        except RuntimeError:
            step /= 10
            continue
        if samples.shape[-1] == 0:
            break
        pieces.append(samples)
        start += step
    return torch.cat(pieces, dim=-1) if pieces else None


def _to_mono(samples: torch.Tensor, path) -> torch.Tensor:
    if samples.ndim != 2 or samples.shape[-1] == 0:
        raise AudioDecodingError(f"{path}: no audio samples (empty track)")
    mono = samples.mean(dim=0, dtype=torch.float32) if samples.shape[0] > 1 else samples[0].float()
    if not torch.isfinite(mono).all():
        raise AudioDecodingError(f"{path}: decoded audio contains NaN or infinite samples")
    return mono


def stream_audio(path, chunk_samples: int, sampling_rate: int = 16000) -> Iterator[torch.Tensor]:
    """Decodes a file chunk by chunk: consecutive mono float32 chunks of `chunk_samples` samples at `sampling_rate`
    (the last one shorter), without holding the whole track in memory.

    Yields:
        `torch.Tensor` of shape `(num_samples,)`.
    """
    decoder = _decoder(path, sampling_rate)
    begin = float(decoder.metadata.begin_stream_seconds or 0.0)
    chunk_seconds = chunk_samples / sampling_rate
    index = 0
    while True:
        start = begin + index * chunk_seconds
        try:
            samples = decoder.get_samples_played_in_range(start, start + chunk_seconds).data
        except RuntimeError as error:
            if "No audio frames were decoded" in str(error):
                return  # past the end of the stream
            raise AudioDecodingError(f"{path}: decoding failed at {start:.1f} s ({_short(error)})") from error
        if samples.shape[-1] == 0:
            return
        yield _to_mono(samples, path)
        if samples.shape[-1] < chunk_samples:
            return
        index += 1


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
    order, while only one segment of audio is in memory: segment `k` holds frames `[k L, (k + 1) L)`, and frame `i`
    is centered on sample `i * hop`, so it needs samples `[k L hop - hop, (k + 1) L hop)` (zeros outside the track).

    Yields:
        `torch.Tensor` of shape `(1, segment_frames, feature_size)`; the generator's return value (`StopIteration.value`)
        is the number of decoded samples.
    """
    length = segment_frames or feature_extractor.max_length
    _check_feature_extractor(feature_extractor, length)
    hop = feature_extractor.hop_size
    segment_samples = length * hop
    # `buffer` holds the samples from frame `emitted * L`'s window start onwards; it starts with the hop of zeros
    # before the track (Essentia centers the first frame on sample 0).
    buffer = torch.zeros(hop)
    num_samples = 0
    emitted = 0
    previous = None
    for chunk in stream_audio(path, segment_samples, feature_extractor.sampling_rate):
        num_samples += chunk.shape[0]
        buffer = torch.cat([buffer, chunk])
        # A full segment needs (L - 1) hops plus one frame of samples past its start.
        while buffer.shape[0] >= segment_samples + hop:
            window = buffer[: segment_samples + hop]
            previous = feature_extractor.log_mel(window[None], centered=False)[0]
            emitted += 1
            buffer = buffer[segment_samples:]
            yield previous[None]
    if num_samples == 0:
        raise AudioDecodingError(f"{path}: no audio samples (empty track)")
    # The tail: the remaining frames up to Essentia's count 1 + ceil(n / hop), zero-padded past the end.
    tail_frames = feature_extractor.num_frames(num_samples) - emitted * length
    if tail_frames > 0:
        needed = (tail_frames + 1) * hop
        tail_window = torch.nn.functional.pad(buffer, (0, max(0, needed - buffer.shape[0])))[:needed]
        tail = feature_extractor.log_mel(tail_window[None], centered=False)[0]
        if previous is None:
            segments = feature_extractor.segment(tail, length, last_segment)
        else:
            # `segment` decides whether a partial last segment is kept from its length relative to a whole segment;
            # prefixing the last whole segment lets it apply the same rule as it does for the whole track.
            segments = feature_extractor.segment(torch.cat([previous, tail]), length, last_segment)[1:]
        for segment in segments:
            yield segment[None]
    return num_samples


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
    without a known duration) are streamed with bounded memory.

    Yields:
        `(segments, duration)`: `segments` of shape `(chunk_size, segment_frames, feature_size)`; `duration` is `None`
        until the last chunk, which carries the decoded duration in seconds.

    Raises:
        AudioDecodingError: unreadable, empty, corrupt or non-audio files, and tracks shorter than
            `min_duration_seconds`.
    """
    length = segment_frames or feature_extractor.max_length
    rate = feature_extractor.sampling_rate
    info = audio_info(path)
    if info.duration_seconds is not None and info.duration_seconds < min_duration_seconds:
        raise AudioDecodingError(_too_short(path, info.duration_seconds, min_duration_seconds))
    if info.duration_seconds is not None and info.duration_seconds <= stream_threshold_seconds:
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
    stream = stream_segment_features(path, feature_extractor, length, last_segment)
    pending = []
    while True:
        try:
            pending.append(next(stream))
        except StopIteration as end:
            num_samples = end.value
            break
        if len(pending) == segments_per_chunk:
            yield torch.cat(pending), None
            pending = []
    duration = num_samples / rate
    if duration < min_duration_seconds:
        raise AudioDecodingError(_too_short(path, duration, min_duration_seconds))
    yield (torch.cat(pending) if pending else torch.zeros(0, length, feature_extractor.feature_size)), duration


def _too_short(path, duration: float, minimum: float) -> str:
    return f"{path}: too short ({duration:.2f} s; the minimum is {minimum:g} s, see --min-duration)"


__all__ = [
    "AUDIO_EXTENSIONS",
    "AudioDecodingError",
    "AudioInfo",
    "audio_info",
    "find_audio_files",
    "load_audio",
    "stream_audio",
    "stream_segment_features",
    "track_segment_features",
]
