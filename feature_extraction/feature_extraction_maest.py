"""MAEST front-end: the log-mel features MAEST was trained on (Essentia's TensorflowInputMusiCNN), in batched torch.

This file is self-contained so that saved directories can carry it as remote code.
"""

import math

import numpy as np
import torch
from transformers import BatchFeature, SequenceFeatureExtractor
from transformers.utils import logging


logger = logging.get_logger(__name__)

LAST_SEGMENT_MODES = ("auto", "pad", "drop")


def slaney_hz_to_mel(frequencies: np.ndarray) -> np.ndarray:
    """Slaney's mel scale: linear below 1 kHz (3 f / 200), logarithmic above."""
    frequencies = np.asarray(frequencies, dtype=np.float64)
    log_step = np.log(6.4) / 27.0
    return np.where(
        frequencies < 1000.0, 3.0 * frequencies / 200.0, 15.0 + np.log(np.maximum(frequencies, 1e-10) / 1000.0) / log_step
    )


def slaney_mel_to_hz(mels: np.ndarray) -> np.ndarray:
    mels = np.asarray(mels, dtype=np.float64)
    log_step = np.log(6.4) / 27.0
    return np.where(mels < 15.0, 200.0 * mels / 3.0, 1000.0 * np.exp(log_step * (mels - 15.0)))


def slaney_mel_filter_bank(num_bands: int, num_fft_bins: int, sampling_rate: int, fmin: float, fmax: float) -> np.ndarray:
    """Triangular filters with unit area (each scaled by 2 / (f[i + 2] - f[i])), as Essentia's MelBands with
    `normalize="unit_tri"`. Returns float64 weights of shape `(num_fft_bins, num_bands)`."""
    edges = slaney_mel_to_hz(np.linspace(slaney_hz_to_mel(fmin), slaney_hz_to_mel(fmax), num_bands + 2))
    bin_frequencies = np.arange(num_fft_bins) * sampling_rate / (2.0 * (num_fft_bins - 1))
    lower, center, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (bin_frequencies[None] - lower) / (center - lower)
    falling = (upper - bin_frequencies[None]) / (upper - center)
    weights = np.maximum(0.0, np.minimum(rising, falling)) * (2.0 / (upper - lower))
    return weights.T


class MAESTFeatureExtractor(SequenceFeatureExtractor):
    r"""
    Turns audio into MAEST's `input_values`: normalized log-mel spectrograms of shape `(batch, frames, 96)` that
    reproduce Essentia's `TensorflowInputMusiCNN` features, which MAEST was trained on.

    16 kHz mono; frames of 512 samples every 256, the first centered on sample 0 (zero padding), `1 + ceil(n / 256)`
    frames for `n` samples; symmetric Hann window; power spectrum; 96 Slaney mel bands (0-8 kHz, unit-area
    triangles); `log10(1 + 10000 * mel)`; then `(x - mean) / (2 * std)`. Short inputs are padded in the log-mel
    domain before normalization (the padded frames equal `-mean / (2 * std)`).

    Args:
        feature_size (`int`, defaults to 96): mel bands.
        sampling_rate (`int`, defaults to 16000): the rate the features are computed at; other rates are
            resampled when `sampling_rate` is passed to `__call__`.
        max_length (`int`, defaults to 1876): frames per model input (the model's `max_length`; 1876 for 30 s).
        frame_size (`int`, defaults to 512), hop_size (`int`, defaults to 256): framing in samples.
        fmin (`float`, defaults to 0), fmax (`float`, defaults to 8000): mel range in Hz.
        log_multiplier (`float`, defaults to 10000): the `10000` in `log10(1 + 10000 * mel)`.
        mean (`float`), std (`float`): MAEST's normalization statistics.
    """

    model_input_names = ["input_values"]

    def __init__(
        self,
        feature_size: int = 96,
        sampling_rate: int = 16000,
        max_length: int = 1876,
        frame_size: int = 512,
        hop_size: int = 256,
        fmin: float = 0.0,
        fmax: float = 8000.0,
        log_multiplier: float = 10000.0,
        mean: float = 2.06755686098554,
        std: float = 1.268292820667291,
        padding_value: float | None = None,
        **kwargs,
    ):
        kwargs.pop("return_attention_mask", None)
        padding_value = -mean / (2.0 * std) if padding_value is None else padding_value
        super().__init__(feature_size=feature_size, sampling_rate=sampling_rate, padding_value=padding_value, **kwargs)
        self.max_length = max_length
        self.frame_size = frame_size
        self.hop_size = hop_size
        self.fmin = fmin
        self.fmax = fmax
        self.log_multiplier = log_multiplier
        self.mean = mean
        self.std = std
        self.return_attention_mask = False
        self._mel_filters = torch.from_numpy(
            slaney_mel_filter_bank(feature_size, frame_size // 2 + 1, sampling_rate, fmin, fmax)
        ).float()
        # Essentia's Hann window is symmetric: 0.5 - 0.5 cos(2 pi n / (N - 1)).
        self._window = torch.hann_window(frame_size, periodic=False, dtype=torch.float64).float()

    def to_dict(self):
        output = super().to_dict()
        for name in ("_mel_filters", "_window"):
            output.pop(name, None)
        return output

    # ----------------------------------------------------------------------------------------------- time axis
    def frames_to_seconds(self, num_frames: int | float) -> float:
        """Time between frame `0` and frame `num_frames`: frames are `hop_size` samples apart at `sampling_rate` (the
        feature rate, 16 kHz), frame `i` centered on sample `i * hop_size`. `frames_to_seconds(1)` is 0.016 s."""
        return num_frames * self.hop_size / self.sampling_rate

    @property
    def segment_seconds(self) -> float:
        """Seconds of audio per segment of `max_length` frames: the step between consecutive segments.

        Segments are consecutive and non-overlapping in frames (segment `k` holds frames `[k L, (k + 1) L)` for
        `L = max_length`), so they start `L * hop_size` samples apart and tile the track: segment `k` stands for the
        audio in `[k, k + 1) * segment_seconds`. This is `L * hop / sr` (30.016 s for the 30 s model's 1876 frames),
        not the `(L - 1) * hop / sr` between the centers of a segment's first and last frames. For another segment
        length use `frames_to_seconds(length)`.
        """
        return self.frames_to_seconds(self.max_length)

    def segment_start_seconds(self, segment_index: int, segment_frames: int | None = None) -> float:
        """Start time of segment `segment_index` of a clip (the center of its first frame): `k * segment_seconds`,
        for segments of `segment_frames` frames (`max_length` by default)."""
        return self.frames_to_seconds(segment_index * (segment_frames or self.max_length))

    # ----------------------------------------------------------------------------------------------- input handling
    def num_frames(self, num_samples: int) -> int:
        """Frames of a clip of `num_samples` 16 kHz samples: `1 + ceil(n / hop)`, as Essentia's FrameCutter."""
        return 1 + math.ceil(num_samples / self.hop_size)

    def _as_mono_tensor(self, audio, index: int) -> torch.Tensor:
        name = f"audio clip {index}"
        if isinstance(audio, (list, tuple)):
            audio = np.asarray(audio, dtype=np.float32)
        if isinstance(audio, np.ndarray):
            if not (np.issubdtype(audio.dtype, np.floating)):
                raise TypeError(
                    f"{name} has dtype {audio.dtype}; pass floating-point audio in [-1, 1] (integer PCM: divide "
                    f"int16 by 32768)"
                )
            # from_numpy shares memory; read-only arrays (e.g. decoded buffers) are copied first.
            audio = torch.from_numpy(np.array(audio, copy=not audio.flags.writeable or None, order="C"))
        if not torch.is_tensor(audio):
            raise TypeError(f"{name} must be a numpy array, a torch tensor or a list of floats, got {type(audio).__name__}")
        if not audio.is_floating_point():
            raise TypeError(f"{name} has dtype {audio.dtype}; pass floating-point audio in [-1, 1]")
        if audio.ndim == 2:
            # One multi-channel clip; the channel axis is the short one (torchaudio's (channels, samples) or
            # soundfile's (samples, channels)). Batches are lists.
            channel_axis = 0 if audio.shape[0] <= audio.shape[1] else 1
            if audio.shape[channel_axis] > 16:
                raise ValueError(
                    f"{name} has shape {tuple(audio.shape)}: a 2-D array is one multi-channel clip, and "
                    f"{audio.shape[channel_axis]} channels is implausible; pass a batch as a list of 1-D clips"
                )
            audio = audio.mean(dim=channel_axis)
        if audio.ndim != 1:
            raise ValueError(f"{name} must be 1-D (mono) or 2-D (multi-channel), got shape {tuple(audio.shape)}")
        if audio.numel() == 0:
            raise ValueError(f"{name} is empty")
        if not torch.isfinite(audio).all():
            raise ValueError(f"{name} contains NaN or infinite samples")
        return audio.to(torch.float32)

    def _resample(self, audio: torch.Tensor, sampling_rate: int) -> torch.Tensor:
        if sampling_rate == self.sampling_rate:
            return audio
        import torchaudio

        return torchaudio.functional.resample(audio, int(sampling_rate), self.sampling_rate)

    def prepare_audio(self, raw_audio, sampling_rate: int | None = None) -> list[torch.Tensor]:
        """Validated float32 mono 16 kHz clips from any supported input (see `__call__`)."""
        if sampling_rate is None:
            logger.warning_once(
                "MAESTFeatureExtractor was called without `sampling_rate`; assuming the audio is already at "
                f"{self.sampling_rate} Hz. Pass `sampling_rate=` to resample, or silently wrong features may result."
            )
            sampling_rate = self.sampling_rate
        if sampling_rate <= 0:
            raise ValueError(f"sampling_rate must be positive, got {sampling_rate}")
        batched = isinstance(raw_audio, (list, tuple)) and len(raw_audio) > 0 and not np.isscalar(raw_audio[0])
        batched = batched or (torch.is_tensor(raw_audio) or isinstance(raw_audio, np.ndarray)) and raw_audio.ndim == 3
        clips = list(raw_audio) if batched else [raw_audio]
        if len(clips) == 0:
            raise ValueError("no audio given")
        return [self._resample(self._as_mono_tensor(clip, i), sampling_rate) for i, clip in enumerate(clips)]

    # ----------------------------------------------------------------------------------------------- features
    def log_mel(self, waveforms: torch.Tensor, centered: bool = True) -> torch.Tensor:
        """Normalized log-mel frames of equal-length clips.

        Args:
            waveforms (`torch.Tensor` of shape `(batch, samples)`): 16 kHz mono float audio.
            centered (`bool`): frame as Essentia does (first frame centered on sample 0, `1 + ceil(n / hop)` frames).
                With `False`, frames start at sample 0 and only whole frames are taken, which lets a caller compute
                frames `[a, b)` of a long track from the samples `[a * hop - hop, (b - 1) * hop + hop)` alone.

        Returns:
            `torch.Tensor` of shape `(batch, frames, feature_size)`.
        """
        if centered:
            num_samples = waveforms.shape[-1]
            half = self.frame_size // 2
            end_padding = self.hop_size * math.ceil(num_samples / self.hop_size) + self.frame_size - half - num_samples
            waveforms = torch.nn.functional.pad(waveforms, (half, end_padding))
        frames = waveforms.unfold(-1, self.frame_size, self.hop_size)
        spectrum = torch.fft.rfft(frames * self._window.to(waveforms.device), dim=-1)
        power = spectrum.real.square() + spectrum.imag.square()
        mel = power @ self._mel_filters.to(waveforms.device)
        return self.normalize(torch.log10(1.0 + self.log_multiplier * mel))

    def normalize(self, log_mel: torch.Tensor) -> torch.Tensor:
        # The factor 2 is MAEST's own (it is applied everywhere in the original).
        return (log_mel - self.mean) / (2.0 * self.std)

    def _pad_frames(self, features: torch.Tensor, length: int) -> torch.Tensor:
        missing = length - features.shape[0]
        if missing <= 0:
            return features[:length]
        return torch.nn.functional.pad(features, (0, 0, 0, missing), value=self.padding_value)

    def segment(self, features: torch.Tensor, length: int, last_segment: str = "auto") -> torch.Tensor:
        """Splits the frames of one clip into consecutive non-overlapping segments of `length` frames.

        The last, partial segment is padded (`"pad"`), dropped (`"drop"`), or (`"auto"`, the default) kept only if it
        has at least half a segment of audio. A clip shorter than one segment always gives one padded segment.

        Returns:
            `torch.Tensor` of shape `(num_segments, length, feature_size)`.
        """
        if last_segment not in LAST_SEGMENT_MODES:
            raise ValueError(f"last_segment must be one of {LAST_SEGMENT_MODES}, got {last_segment!r}")
        num_full, remainder = divmod(features.shape[0], length)
        keep_partial = remainder > 0 and (
            num_full == 0 or last_segment == "pad" or (last_segment == "auto" and remainder * 2 >= length)
        )
        segments = list(features[: num_full * length].reshape(num_full, length, features.shape[-1]))
        if keep_partial:
            segments.append(self._pad_frames(features[num_full * length :], length))
        return torch.stack(segments)

    def __call__(
        self,
        raw_audio,
        sampling_rate: int | None = None,
        padding: str | bool = "max_length",
        max_length: int | None = None,
        truncation: bool = True,
        return_segments: bool = False,
        last_segment: str = "auto",
        return_tensors: str | None = "pt",
        **kwargs,
    ) -> BatchFeature:
        """
        Args:
            raw_audio: one clip or a list of clips; each a 1-D array/tensor (mono) or a 2-D one (multi-channel,
                downmixed by averaging; the shorter axis is the channel axis), float samples in [-1, 1].
            sampling_rate (`int`): the rate of `raw_audio`; resampled to 16 kHz when different. Strongly
                recommended: without it the audio is assumed to be 16 kHz (with a warning).
            padding (`"max_length"`, `"longest"`, `True`/`False`): pad every clip to `max_length` frames (default),
                to the longest clip, or not at all (only for a single clip).
            max_length (`int`, *optional*): frames per input, `self.max_length` (the model's length) by default.
            truncation (`bool`): cut clips longer than `max_length` frames to their first `max_length` frames.
            return_segments (`bool`): return every consecutive segment of `max_length` frames of each clip, for
                whole-track analysis; `segment_clip_index` maps each segment to its clip.
            last_segment (`"auto"`, `"pad"`, `"drop"`): what `return_segments` does with a partial last segment
                (see [`MAESTFeatureExtractor.segment`]).
            return_tensors (`"pt"`, `"np"` or `None`): tensor type of the result.

        Returns:
            [`BatchFeature`] with `input_values` of shape `(batch_or_segments, frames, 96)` and `num_frames`, the
            unpadded frame count per clip; with `return_segments`, also `segment_clip_index`.
        """
        max_length = max_length or self.max_length
        clips = self.prepare_audio(raw_audio, sampling_rate)
        # One batched pass: zero-padding every clip to the longest is what Essentia's framing does at each clip's end,
        # so each clip's own frames are unchanged; the frames past a clip's end are then cut off.
        lengths = [clip.shape[0] for clip in clips]
        batch = torch.stack([torch.nn.functional.pad(clip, (0, max(lengths) - clip.shape[0])) for clip in clips])
        log_mels = self.log_mel(batch)
        num_frames = torch.tensor([self.num_frames(length) for length in lengths])
        features = [log_mel[:count] for log_mel, count in zip(log_mels, num_frames.tolist())]
        data = {"num_frames": num_frames}
        if return_segments:
            segments = [self.segment(f, max_length, last_segment) for f in features]
            data["input_values"] = torch.cat(segments)
            data["segment_clip_index"] = torch.cat([torch.full((len(s),), i) for i, s in enumerate(segments)])
        else:
            if padding in ("max_length", True):
                length = max_length
            elif padding == "longest":
                length = min(max(f.shape[0] for f in features), max_length if truncation else 10**12)
            elif padding in (False, "do_not_pad"):
                if len(features) > 1 and len(set(num_frames.tolist())) > 1:
                    raise ValueError("clips of different lengths need padding; use padding='longest' or 'max_length'")
                length = features[0].shape[0] if not truncation else min(features[0].shape[0], max_length)
            else:
                raise ValueError(f"padding must be 'max_length', 'longest', True or False, got {padding!r}")
            if not truncation and any(f.shape[0] > length for f in features):
                raise ValueError(
                    f"a clip has {int(num_frames.max())} frames, more than max_length={length}, and truncation=False; "
                    f"use return_segments=True for whole tracks"
                )
            data["input_values"] = torch.stack([self._pad_frames(f, length) for f in features])
        return BatchFeature(data, tensor_type=return_tensors)


__all__ = ["MAESTFeatureExtractor", "slaney_mel_filter_bank"]
