"""MAEST front-end: the log-mel features MAEST was trained on (Essentia's TensorflowInputMusiCNN), in batched torch.

This file is self-contained so that saved directories can carry it as remote code.
"""

import math
import numbers
import warnings

import numpy as np
import torch
from transformers import BatchFeature, SequenceFeatureExtractor
from transformers.audio_utils import mel_filter_bank
from transformers.utils import logging


try:
    from maest.utils.errors import MAESTError
except ImportError:  # loaded as remote code (`trust_remote_code=True`) where the package is not installed

    class MAESTError(Exception):
        """A user error: the message is one line that names the file, setting or value at fault."""


logger = logging.get_logger(__name__)

LAST_SEGMENT_MODES = ("auto", "pad", "drop")
# The normalization of MAEST's training features: the mean and standard deviation of the log-mels.
DEFAULT_MEAN = 2.06755686098554
DEFAULT_STD = 1.268292820667291

# float32 power spectra overflow for amplitudes above about 1e15 (the 10000 * mel of a 512-sample frame); clips louder
# than this are analysed in float64, where every finite float32 sample gives finite features.
FLOAT64_PEAK = 1e6

# Windowed-sinc resampling as torchaudio's default (Hann window, 6 zero crossings, cutoff 0.99 x the lower Nyquist).
LOWPASS_FILTER_WIDTH = 6
ROLLOFF = 0.99
# torchaudio's polyphase kernel has (new / g) x (orig / g + taps) entries for g = gcd(orig, new): small for the usual
# rates (44100 -> 16000: 160 x 475), gigabytes for coprime ones (44101 -> 16000: 16000 x 44135). Above this size,
# `resample_audio` evaluates the same interpolation formula per output sample instead.
MAX_POLYPHASE_KERNEL = 1 << 20
# Output samples x taps evaluated at once by the per-sample resampler (bounds its memory to tens of MB).
RESAMPLE_CHUNK_ELEMENTS = 1 << 18
# More channels than this in one clip is taken for a wrong `channel_axis` (e.g. (samples, channels) given as axis 0).
MAX_CHANNELS = 64


class FeatureExtractorConfigError(MAESTError, ValueError):
    """A feature-extractor setting (a `preprocessor_config.json` field or a constructor argument) is out of range."""


class AudioInputError(MAESTError, ValueError):
    """Audio given to the feature extractor has the wrong shape, type or values (NaN, infinite, empty)."""


class AudioTypeError(AudioInputError, TypeError):
    """Audio of a type or dtype the feature extractor does not take (integers other than int16/int32/uint8 PCM, strings...)."""


def _sinc_weights(offsets_seconds: torch.Tensor, orig_rate: float, new_rate: float) -> torch.Tensor:
    """Interpolation weights of input samples `offsets_seconds` away from an output instant: a sinc low-passed at
    `ROLLOFF` x the lower Nyquist frequency, under a Hann window reaching `LOWPASS_FILTER_WIDTH` zero crossings."""
    cutoff = min(orig_rate, new_rate) * ROLLOFF
    phase = (offsets_seconds * cutoff).clamp(-LOWPASS_FILTER_WIDTH, LOWPASS_FILTER_WIDTH)
    window = torch.cos(phase * (math.pi / (2 * LOWPASS_FILTER_WIDTH))).square()
    return torch.special.sinc(phase) * window * (cutoff / orig_rate)


def sinc_resample(audio: torch.Tensor, orig_rate: float, new_rate: float) -> torch.Tensor:
    """Band-limited resampling at an exact, arbitrary rate ratio, in time and memory proportional to the audio.

    Output sample `n` (at `n / new_rate` seconds) is the windowed-sinc interpolation of the input samples within
    `LOWPASS_FILTER_WIDTH` zero crossings: the same formula as `torchaudio.functional.resample` (which needs a kernel
    of `new / gcd` rows, unbounded for coprime rates), evaluated for chunks of output samples instead. Time offsets
    are exact (float64); the weights and sums are float32 (float64 for clips louder than `FLOAT64_PEAK`).

    Args:
        audio (`torch.Tensor` of shape `(samples,)`): float audio at `orig_rate`.

    Returns:
        `torch.Tensor` of shape `(ceil(samples * new_rate / orig_rate),)`, float32.
    """
    dtype = torch.float64 if audio.numel() and audio.abs().max() > FLOAT64_PEAK else torch.float32
    num_out = math.ceil(audio.shape[0] * new_rate / orig_rate)
    half_taps = math.ceil(LOWPASS_FILTER_WIDTH * orig_rate / (min(orig_rate, new_rate) * ROLLOFF))
    taps = torch.arange(-half_taps, half_taps + 2, dtype=torch.int64)
    padded = torch.nn.functional.pad(audio.to(dtype), (half_taps + 1, half_taps + 2))
    chunk = max(1, RESAMPLE_CHUNK_ELEMENTS // taps.numel())
    pieces = []
    for first in range(0, num_out, chunk):
        instants = torch.arange(first, min(first + chunk, num_out), dtype=torch.float64) / new_rate
        centers = torch.floor(instants * orig_rate).to(torch.int64)
        positions = centers[:, None] + taps  # (chunk, taps) input sample indices
        offsets = (positions.to(torch.float64) / orig_rate - instants[:, None]).to(dtype)
        weights = _sinc_weights(offsets, orig_rate, new_rate)
        samples = padded[(positions + half_taps + 1).clamp(0, padded.shape[0] - 1)]
        pieces.append(torch.linalg.vecdot(samples, weights))
    return torch.cat(pieces).to(torch.float32)


def resample_audio(audio: torch.Tensor, orig_rate: float, new_rate: int) -> torch.Tensor:
    """Resamples mono audio from `orig_rate` to `new_rate` Hz (any positive rates) with windowed-sinc interpolation.

    Rates with a small reduced ratio (44100, 48000, 22050, 8000 ... to 16000) go through
    `torchaudio.functional.resample`; others (coprime rates such as 44101 or 7919, fractional rates) through
    `sinc_resample`, which computes the same formula (outputs agree to float32 rounding) at a cost proportional to
    the audio. Both are exact in the rate ratio.

    Args:
        audio (`torch.Tensor` of shape `(samples,)`): float32 audio.

    Returns:
        `torch.Tensor` of shape `(ceil(samples * new_rate / orig_rate),)`, float32.
    """
    if orig_rate == new_rate:
        return audio
    if float(orig_rate).is_integer():
        orig, new = int(orig_rate), int(new_rate)
        divisor = math.gcd(orig, new)
        half_taps = math.ceil(LOWPASS_FILTER_WIDTH * orig / (min(orig, new) * ROLLOFF))
        if (new // divisor) * (orig // divisor + 2 * half_taps) <= MAX_POLYPHASE_KERNEL:
            # float64 for loud clips: float32 sums of samples near 1e38 overflow.
            import torchaudio  # imported here: only resampling needs it (remote-code users may lack it)

            dtype = torch.float64 if audio.abs().max() > FLOAT64_PEAK else audio.dtype
            return torchaudio.functional.resample(audio.to(dtype), orig, new).to(torch.float32)
    return sinc_resample(audio, float(orig_rate), float(new_rate))


# Integer PCM as WAV files hold it: (offset, full scale) of each sample format, mapped to [-1, 1) as soundfile and
# torchaudio read it as float. Other integer types have no agreed full scale and are refused.
PCM_FULL_SCALE = {"int16": (0, 2.0**15), "int32": (0, 2.0**31), "uint8": (128, 2.0**7)}


def _pcm_to_float(audio, name: str):
    """Integer PCM (int16, int32, uint8; numpy or torch) as float64 in [-1, 1); floats as they are."""
    is_tensor = torch.is_tensor(audio)
    if is_tensor and (audio.is_floating_point() or audio.is_complex()):
        return audio
    if not is_tensor and not np.issubdtype(audio.dtype, np.integer) and audio.dtype != np.bool_:
        return audio
    dtype_name = str(audio.dtype).replace("torch.", "")
    if dtype_name not in PCM_FULL_SCALE:
        raise AudioTypeError(
            f"{name} has dtype {dtype_name}; pass floating-point audio in [-1, 1] or integer PCM "
            f"({', '.join(PCM_FULL_SCALE)})"
        )
    offset, full_scale = PCM_FULL_SCALE[dtype_name]
    samples = audio.to(torch.float64) if is_tensor else torch.from_numpy(np.asarray(audio, dtype=np.float64))
    return (samples - offset) / full_scale


def audio_to_mono(audio, sampling_rate: float, target_rate: float, channel_axis: int | None = None, name: str = "audio") -> torch.Tensor:
    """One clip of audio in memory as float32 mono at `target_rate`: the one adapter from arrays to the model's
    input that the feature extractor, training data, evaluation and inference all use.

    Integer PCM is scaled to [-1, 1) (int16 / 2^15, int32 / 2^31, (uint8 - 128) / 2^7; other integers are refused);
    multi-channel audio needs its `channel_axis` (0: `(channels, samples)`, -1: `(samples, channels)`) and is
    downmixed by averaging the channels; the rate is changed by `resample_audio`.

    Args:
        audio: a numpy array, a torch tensor or a list of floats: `(samples,)`, or 2-D with `channel_axis`.
        name: how error messages name the clip.

    Returns:
        `torch.Tensor` of shape `(samples,)`, float32.

    Raises:
        AudioTypeError, AudioInputError: one line naming the clip and its dtype, shape or values.
    """
    if isinstance(audio, (list, tuple)):
        audio = np.asarray(audio, dtype=np.float32)
    if not (torch.is_tensor(audio) or isinstance(audio, np.ndarray)):
        raise AudioTypeError(f"{name} must be a numpy array, a torch tensor or a list of floats, got {type(audio).__name__}")
    audio = _pcm_to_float(audio, name)
    if isinstance(audio, np.ndarray):
        if not np.issubdtype(audio.dtype, np.floating):
            raise AudioTypeError(f"{name} has dtype {audio.dtype}; pass floating-point audio in [-1, 1]")
        # from_numpy shares memory; read-only arrays (e.g. decoded buffers) are copied first.
        audio = torch.from_numpy(np.array(audio, copy=not audio.flags.writeable or None, order="C"))
    if not audio.is_floating_point():
        raise AudioTypeError(f"{name} has dtype {audio.dtype}; pass floating-point audio in [-1, 1]")
    if channel_axis not in (None, 0, 1, -1):
        raise AudioInputError(f"channel_axis must be None, 0 ((channels, samples)) or -1 ((samples, channels)), got {channel_axis!r}")
    if channel_axis is not None and audio.ndim == 2:
        if audio.shape[channel_axis] > MAX_CHANNELS:
            raise AudioInputError(
                f"{name} has shape {tuple(audio.shape)}: {audio.shape[channel_axis]} channels on channel_axis="
                f"{channel_axis} is implausible; (channels, samples) is channel_axis=0, (samples, channels) -1"
            )
        audio = audio.mean(dim=channel_axis, dtype=torch.float64)
    if audio.ndim != 1:
        hint = "" if channel_axis is not None else "; for multi-channel audio pass channel_axis=0 or -1"
        raise AudioInputError(f"{name} has shape {tuple(audio.shape)}: expected 1-D (samples,){hint}")
    if audio.numel() == 0:
        raise AudioInputError(f"{name} is empty")
    if not torch.isfinite(audio).all():
        raise AudioInputError(f"{name} contains NaN or infinite samples")
    mono = audio.to(torch.float32)
    if not torch.isfinite(mono).all():
        raise AudioInputError(f"{name} has samples beyond float32's range (peak {audio.abs().max().item():.3g})")
    valid_rate = isinstance(sampling_rate, numbers.Real) and not isinstance(sampling_rate, bool)
    if not (valid_rate and math.isfinite(sampling_rate) and sampling_rate > 0):
        raise AudioInputError(f"{name}: sampling_rate must be positive, got {sampling_rate!r}")
    resampled = resample_audio(mono, sampling_rate, target_rate)
    if not torch.isfinite(resampled).all():
        raise AudioInputError(f"{name} overflows float32 when resampled (samples near 3.4e38)")
    return resampled


def max_length_mismatch(feature_extractor, model_max_length: int) -> str | None:
    """Why `feature_extractor` cannot make the segments of a model whose `config.max_length` is `model_max_length`
    (one line), or None when it can: the one check between a front-end and a model, whose callers raise their own
    error type with it."""
    if feature_extractor.max_length == model_max_length:
        return None
    return f"the feature extractor's max_length ({feature_extractor.max_length}) differs from the model's ({model_max_length})"


def _setting(name: str, value, low, high, integer: bool = False):
    """`value` checked to be a finite number in `[low, high]` (an integer when `integer`); one-line error otherwise."""
    kind = "an integer" if integer else "a number"
    valid = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    valid = valid and (not integer or float(value).is_integer()) and low <= value <= high
    if not valid:
        raise FeatureExtractorConfigError(f"feature extractor setting {name} must be {kind} in [{low}, {high}], got {value!r}")
    return int(value) if integer else float(value)


class MAESTFeatureExtractor(SequenceFeatureExtractor):
    r"""
    Turns audio into MAEST's `input_values`: normalized log-mel spectrograms of shape `(batch, frames, 96)` that
    reproduce Essentia's `TensorflowInputMusiCNN` features, which MAEST was trained on.

    16 kHz mono; frames of 512 samples every 256, the first centered on sample 0 (zero padding), `1 + ceil(n / 256)`
    frames for `n` samples; symmetric Hann window; power spectrum; 96 Slaney mel bands (0-8 kHz, unit-area
    triangles); `log10(1 + 10000 * mel)`; then `(x - mean) / (2 * std)`. Short inputs are padded in the log-mel
    domain before normalization (the padded frames equal `-mean / (2 * std)`).

    Inputs follow transformers' convention: a 1-D array is one clip, a 2-D array `(batch, samples)` or a list of 1-D
    arrays is a batch of clips. Multi-channel audio is explicit: pass `channel_axis` (0 for `(channels, samples)`,
    -1 for `(samples, channels)`) and each clip is downmixed by averaging its channels.

    Features are computed in float32 as Essentia does, and in float64 for clips with samples above `FLOAT64_PEAK`
    (1e6), where float32 power spectra would overflow: any finite input gives finite features, the exact value of
    the formula (amplitude 1e20 gives about 17 after normalization; Essentia's float32 gives infinity there).
    Non-finite samples raise `AudioInputError`.

    Args:
        feature_size (`int`, defaults to 96): mel bands.
        sampling_rate (`int`, defaults to 16000): the rate the features are computed at; other rates are
            resampled when `sampling_rate` is passed to `__call__`.
        max_length (`int`, defaults to 1876): frames per model input (the model's `max_length`; 1876 for 30 s).
        frame_size (`int`, defaults to 512), hop_size (`int`, defaults to 256): framing in samples.
        fmin (`float`, defaults to 0), fmax (`float`, defaults to 8000): mel range in Hz.
        log_multiplier (`float`, defaults to 10000): the `10000` in `log10(1 + 10000 * mel)`.
        mean (`float`), std (`float`): MAEST's normalization statistics.
        return_attention_mask (`bool`, defaults to `False`): also return `attention_mask`, 1 for the frames of
            audio and 0 for padding frames, as `pad(..., return_attention_mask=True)` does. MAEST itself takes no
            mask (it was trained on padded inputs); the mask is for callers that pool over frames.

    Raises:
        `FeatureExtractorConfigError` for a setting out of range (for example `hop_size: 0` in a
        `preprocessor_config.json`).
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
        mean: float = DEFAULT_MEAN,
        std: float = DEFAULT_STD,
        padding_value: float | None = None,
        return_attention_mask: bool = False,
        **kwargs,
    ):
        sampling_rate = _setting("sampling_rate", sampling_rate, 1, 10**7, integer=True)
        frame_size = _setting("frame_size", frame_size, 2, 1 << 16, integer=True)
        hop_size = _setting("hop_size", hop_size, 1, frame_size, integer=True)
        feature_size = _setting("feature_size", feature_size, 1, frame_size // 2 + 1, integer=True)
        self.max_length = _setting("max_length", max_length, 1, 10**7, integer=True)
        self.fmin = _setting("fmin", fmin, 0.0, sampling_rate / 2)
        self.fmax = _setting("fmax", fmax, 0.0, sampling_rate / 2)
        if self.fmax <= self.fmin:
            raise FeatureExtractorConfigError(f"feature extractor setting fmax ({fmax!r}) must be above fmin ({fmin!r})")
        self.log_multiplier = _setting("log_multiplier", log_multiplier, 1e-30, 1e30)
        self.mean = _setting("mean", mean, -1e30, 1e30)
        self.std = _setting("std", std, 1e-30, 1e30)
        padding_value = -self.mean / (2.0 * self.std) if padding_value is None else padding_value
        padding_value = _setting("padding_value", padding_value, -1e30, 1e30)
        if not isinstance(return_attention_mask, bool):
            raise FeatureExtractorConfigError(f"return_attention_mask must be true or false, got {return_attention_mask!r}")
        super().__init__(
            feature_size=feature_size,
            sampling_rate=sampling_rate,
            padding_value=padding_value,
            return_attention_mask=return_attention_mask,
            **kwargs,
        )
        self.frame_size = frame_size
        self.hop_size = hop_size
        self._mel_filters = torch.from_numpy(self.mel_filters())
        # Essentia's Hann window is symmetric: 0.5 - 0.5 cos(2 pi n / (N - 1)).
        self._window = torch.hann_window(frame_size, periodic=False, dtype=torch.float64)

    def mel_filters(self) -> np.ndarray:
        """Essentia's MelBands (`normalize="unit_tri"`, Slaney scale) as `(frame_size // 2 + 1, feature_size)`
        float64 weights: transformers' Slaney filters are the same (checked against Essentia in the tests)."""
        with warnings.catch_warnings():  # its warning about empty filters becomes the error below
            warnings.simplefilter("ignore", UserWarning)
            filters = mel_filter_bank(
                num_frequency_bins=self.frame_size // 2 + 1,
                num_mel_filters=self.feature_size,
                min_frequency=self.fmin,
                max_frequency=self.fmax,
                sampling_rate=self.sampling_rate,
                norm="slaney",
                mel_scale="slaney",
            )
        empty = np.flatnonzero(filters.max(axis=0) == 0)
        if empty.size:
            raise FeatureExtractorConfigError(
                f"feature extractor setting feature_size={self.feature_size} is too many mel bands for "
                f"frame_size={self.frame_size} between {self.fmin:g} and {self.fmax:g} Hz: band {empty[0]} gets no "
                f"FFT bin"
            )
        return filters

    def to_dict(self):
        output = super().to_dict()
        for name in ("_mel_filters", "_window"):
            output.pop(name, None)
        return output

    @classmethod
    def from_dict(cls, feature_extractor_dict: dict, **kwargs):
        """As `FeatureExtractionMixin.from_dict`. The `preprocessor_config.json` published with the AST-format
        checkpoints (`mtg-upf/discogs-maest-*`) names this class (for its remote code) but holds the settings of that
        AST-style extractor: the mel bands in `num_mel_bins` (`feature_size` is 1 there) and a `padding_value` in the
        log-mel domain, before normalization. They are read as this front-end's settings for the same model: its
        bands, `max_length`, `mean` and `std` (the window stays Essentia's symmetric one, the training features')."""
        if "num_mel_bins" in feature_extractor_dict:
            settings = dict(feature_extractor_dict)
            settings["feature_size"] = settings.pop("num_mel_bins")
            settings.pop("do_normalize", None)  # this front-end always normalizes, as MAEST was trained
            mean = settings.get("mean", DEFAULT_MEAN)
            std = settings.get("std", DEFAULT_STD)
            settings["padding_value"] = (settings.get("padding_value", 0.0) - mean) / (2.0 * std)
            feature_extractor_dict = settings
        return super().from_dict(feature_extractor_dict, **kwargs)

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

    @staticmethod
    def _split_clips(raw_audio, channel_axis: int | None) -> list:
        """The clips of `raw_audio` (one clip, a batch array, or a list of clips), not yet converted."""
        clip_ndim = 1 if channel_axis is None else 2
        if isinstance(raw_audio, (list, tuple)):
            if len(raw_audio) == 0:
                raise AudioInputError("no audio given (an empty list)")
            is_one_clip = all(isinstance(value, numbers.Real) for value in raw_audio)  # a list of floats
            return [raw_audio] if is_one_clip else list(raw_audio)
        if not (torch.is_tensor(raw_audio) or isinstance(raw_audio, np.ndarray)):
            raise AudioTypeError(
                f"audio must be a numpy array, a torch tensor or a list of clips, got {type(raw_audio).__name__}"
            )
        if raw_audio.ndim == clip_ndim:
            return [raw_audio]
        if raw_audio.ndim == clip_ndim + 1:
            return list(raw_audio)
        layout = "(samples,) or a batch (batch, samples)" if channel_axis is None else "a clip with channels or a batch of them"
        hint = "" if channel_axis is not None else "; for multi-channel audio pass channel_axis=0 or -1"
        raise AudioInputError(f"audio of shape {tuple(raw_audio.shape)}: expected {layout}{hint}")

    def prepare_audio(self, raw_audio, sampling_rate: float | None = None, channel_axis: int | None = None) -> list[torch.Tensor]:
        """Validated float32 mono clips at `self.sampling_rate` from any supported input (see `__call__`).

        Returns:
            list of `torch.Tensor` of shape `(samples,)`, one per clip.
        """
        if sampling_rate is None:
            logger.warning_once(
                "MAESTFeatureExtractor was called without `sampling_rate`; assuming the audio is already at "
                f"{self.sampling_rate} Hz. Pass `sampling_rate=` to resample, or silently wrong features may result."
            )
            sampling_rate = self.sampling_rate
        valid_rate = isinstance(sampling_rate, numbers.Real) and not isinstance(sampling_rate, bool)
        if not (valid_rate and math.isfinite(sampling_rate) and sampling_rate > 0):
            raise AudioInputError(f"sampling_rate must be positive, got {sampling_rate!r}")
        if channel_axis not in (None, 0, 1, -1):
            raise AudioInputError(f"channel_axis must be None, 0 ((channels, samples)) or -1 ((samples, channels)), got {channel_axis!r}")
        clips = self._split_clips(raw_audio, channel_axis)
        return [
            audio_to_mono(clip, sampling_rate, self.sampling_rate, channel_axis, f"audio clip {index}")
            for index, clip in enumerate(clips)
        ]

    # ----------------------------------------------------------------------------------------------- features
    def log_mel(self, waveforms: torch.Tensor, centered: bool = True) -> torch.Tensor:
        """Normalized log-mel frames of equal-length clips.

        Computed in float32 (as Essentia), or in float64 when a sample exceeds `FLOAT64_PEAK`, so that finite
        audio always gives finite features.

        Args:
            waveforms (`torch.Tensor` of shape `(batch, samples)`): 16 kHz mono float audio.
            centered (`bool`): frame as Essentia does (first frame centered on sample 0, `1 + ceil(n / hop)` frames).
                With `False`, frames start at sample 0 and only whole frames are taken, which lets a caller compute
                frames `[a, b)` of a long track from the samples `[a * hop - hop, (b - 1) * hop + hop)` alone.

        Returns:
            `torch.Tensor` of shape `(batch, frames, feature_size)`, float32.
        """
        dtype = torch.float64 if waveforms.numel() and waveforms.abs().max() > FLOAT64_PEAK else torch.float32
        waveforms = waveforms.to(dtype)
        if centered:
            num_samples = waveforms.shape[-1]
            half = self.frame_size // 2
            end_padding = self.hop_size * math.ceil(num_samples / self.hop_size) + self.frame_size - half - num_samples
            waveforms = torch.nn.functional.pad(waveforms, (half, end_padding))
        frames = waveforms.unfold(-1, self.frame_size, self.hop_size)
        window = self._window.to(device=waveforms.device, dtype=dtype)
        spectrum = torch.fft.rfft(frames * window, dim=-1)
        power = spectrum.real.square() + spectrum.imag.square()
        mel = power @ self._mel_filters.to(device=waveforms.device, dtype=dtype)
        return self.normalize(torch.log10(1.0 + self.log_multiplier * mel)).to(torch.float32)

    def segment_log_mel(self, windows: torch.Tensor, num_frames: torch.Tensor) -> torch.Tensor:
        """The frames of segments from their samples, on the windows' device: `log_mel(windows, centered=False)`,
        with the frames past each segment's `num_frames` set to `padding_value` (as `segment` pads a partial last
        segment). With `maest.feature_extraction.audio.segment_windows`, this equals the segments of `__call__`
        (`return_segments=True`); it lets a GPU compute the front-end of a whole batch.

        Args:
            windows (`torch.Tensor` of shape `(batch, (length + 1) * hop_size)`): each segment's 16 kHz samples.
            num_frames (`torch.Tensor` of shape `(batch,)`): how many of each segment's `length` frames are audio.

        Returns:
            `torch.Tensor` of shape `(batch, length, feature_size)`, float32, on the windows' device.
        """
        frames = self.log_mel(windows, centered=False)
        positions = torch.arange(frames.shape[1], device=frames.device)
        audio = positions[None, :, None] < num_frames.to(frames.device)[:, None, None]
        return torch.where(audio, frames, torch.tensor(self.padding_value, dtype=frames.dtype, device=frames.device))

    def normalize(self, log_mel: torch.Tensor) -> torch.Tensor:
        # The factor 2 is MAEST's own (it is applied everywhere in the original).
        return (log_mel - self.mean) / (2.0 * self.std)

    def _pad_frames(self, features: torch.Tensor, length: int, value: float | None = None) -> torch.Tensor:
        missing = length - features.shape[0]
        if missing <= 0:
            return features[:length]
        value = self.padding_value if value is None else value
        return torch.nn.functional.pad(features, (0, 0, 0, missing), value=value)

    def segment(self, features: torch.Tensor, length: int, last_segment: str = "auto", padding_value: float | None = None) -> torch.Tensor:
        """Splits the frames of one clip into consecutive non-overlapping segments of `length` frames.

        The last, partial segment is padded (`"pad"`), dropped (`"drop"`), or (`"auto"`, the default) kept only if it
        has at least half a segment of audio. A clip shorter than one segment always gives one padded segment.

        Args:
            features (`torch.Tensor` of shape `(frames, channels)`): one clip's frames.
            padding_value (`float`, *optional*): what pads the last segment (`self.padding_value` by default).

        Returns:
            `torch.Tensor` of shape `(num_segments, length, channels)`.
        """
        num_full, remainder = divmod(features.shape[0], length)
        segments = list(features[: num_full * length].reshape(num_full, length, features.shape[-1]))
        if self.keeps_partial_segment(num_full, remainder, length, last_segment):
            segments.append(self._pad_frames(features[num_full * length :], length, padding_value))
        return torch.stack(segments)

    @staticmethod
    def keeps_partial_segment(num_full: int, remainder: int, length: int, last_segment: str) -> bool:
        """`segment`'s rule for a last segment of `remainder` frames after `num_full` whole ones of `length`."""
        if last_segment not in LAST_SEGMENT_MODES:
            raise AudioInputError(f"last_segment must be one of {LAST_SEGMENT_MODES}, got {last_segment!r}")
        return remainder > 0 and (
            num_full == 0 or last_segment == "pad" or (last_segment == "auto" and remainder * 2 >= length)
        )

    def _padded_length(self, num_frames: list[int], padding, max_length: int, truncation: bool) -> int:
        """Frames per output row for `padding` (see `__call__`)."""
        if padding in ("max_length", True):
            length = max_length
        elif padding == "longest":
            length = min(max(num_frames), max_length if truncation else max(num_frames))
        elif padding in (False, "do_not_pad"):
            if len(set(num_frames)) > 1:
                raise AudioInputError("clips of different lengths need padding; use padding='longest' or 'max_length'")
            length = min(num_frames[0], max_length) if truncation else num_frames[0]
        else:
            raise AudioInputError(f"padding must be 'max_length', 'longest', True or False, got {padding!r}")
        if not truncation and max(num_frames) > length:
            raise AudioInputError(
                f"a clip has {max(num_frames)} frames, more than max_length={length}, and truncation=False; "
                f"use return_segments=True for whole tracks"
            )
        return length

    def __call__(
        self,
        raw_audio,
        sampling_rate: float | None = None,
        padding: str | bool = "max_length",
        max_length: int | None = None,
        truncation: bool = True,
        return_segments: bool = False,
        last_segment: str = "auto",
        return_tensors: str | None = "pt",
        channel_axis: int | None = None,
        return_attention_mask: bool | None = None,
        **kwargs,
    ) -> BatchFeature:
        """
        Args:
            raw_audio: float samples in [-1, 1] (int16, int32 or uint8 PCM is scaled to that range, see
                `audio_to_mono`): one clip (1-D array/tensor or list of floats), a batch as a 2-D
                `(batch, samples)` array/tensor or a list of 1-D clips of any lengths. With `channel_axis`, each
                clip has a channel axis (a 2-D clip, a 3-D batch, or a list of 2-D or 1-D clips).
            sampling_rate (`int`): the rate of `raw_audio`; resampled to 16 kHz when different (any positive rate).
                Strongly recommended: without it the audio is assumed to be 16 kHz (with a warning).
            padding (`"max_length"`, `"longest"`, `True`/`False`): pad every clip to `max_length` frames (default),
                to the longest clip, or not at all (clips of equal length only).
            max_length (`int`, *optional*): frames per input, `self.max_length` (the model's length) by default.
            truncation (`bool`): cut clips longer than `max_length` frames to their first `max_length` frames.
            return_segments (`bool`): return every consecutive segment of `max_length` frames of each clip, for
                whole-track analysis; `segment_clip_index` maps each segment to its clip.
            last_segment (`"auto"`, `"pad"`, `"drop"`): what `return_segments` does with a partial last segment
                (see [`MAESTFeatureExtractor.segment`]).
            return_tensors (`"pt"`, `"np"` or `None`): tensor type of the result.
            channel_axis (`int`, *optional*): the channel axis of each clip (0: `(channels, samples)` as torchaudio
                and PyAV decode, -1: `(samples, channels)` as soundfile); the channels are averaged.
            return_attention_mask (`bool`, *optional*): also return `attention_mask` (1 for frames of audio, 0 for
                padding); `self.return_attention_mask` by default.

        Returns:
            [`BatchFeature`] with `input_values` of shape `(batch_or_segments, frames, 96)` and `num_frames`, the
            unpadded frame count per clip; with `return_segments`, also `segment_clip_index`; with
            `return_attention_mask`, `attention_mask` of shape `(batch_or_segments, frames)`.

        Raises:
            `AudioInputError` for empty, NaN or infinite audio, bad shapes or settings.
        """
        max_length = _setting("max_length", max_length or self.max_length, 1, 10**7, integer=True)
        if return_attention_mask is None:
            return_attention_mask = self.return_attention_mask
        clips = self.prepare_audio(raw_audio, sampling_rate, channel_axis)
        # One batched pass: zero-padding every clip to the longest is what Essentia's framing does at each clip's end,
        # so each clip's own frames are unchanged; the frames past a clip's end are then cut off.
        lengths = [clip.shape[0] for clip in clips]
        batch = torch.stack([torch.nn.functional.pad(clip, (0, max(lengths) - clip.shape[0])) for clip in clips])
        log_mels = self.log_mel(batch)
        finite = torch.isfinite(log_mels).flatten(1).all(1)
        if not finite.all():  # unreachable for finite float32 audio (see log_mel); a guard, never silent
            raise AudioInputError(f"audio clip {int((~finite).nonzero()[0])} gives non-finite features")
        num_frames = [self.num_frames(length) for length in lengths]
        features = [log_mel[:count] for log_mel, count in zip(log_mels, num_frames)]
        data = {"num_frames": torch.tensor(num_frames)}
        # Masks go through the same segmenting and padding as the features (1 for audio frames, 0 for padding).
        masks = [torch.ones(count, 1) for count in num_frames]
        if return_segments:
            segments = [self.segment(f, max_length, last_segment) for f in features]
            data["input_values"] = torch.cat(segments)
            data["segment_clip_index"] = torch.cat([torch.full((len(s),), i) for i, s in enumerate(segments)])
            mask = torch.cat([self.segment(m, max_length, last_segment, padding_value=0.0) for m in masks])
        else:
            length = self._padded_length(num_frames, padding, max_length, truncation)
            data["input_values"] = torch.stack([self._pad_frames(f, length) for f in features])
            mask = torch.stack([self._pad_frames(m, length, value=0.0) for m in masks])
        if return_attention_mask:
            data["attention_mask"] = mask[..., 0].to(torch.int32)
        return BatchFeature(data, tensor_type=return_tensors)


__all__ = [
    "AudioInputError",
    "AudioTypeError",
    "FeatureExtractorConfigError",
    "MAESTFeatureExtractor",
    "audio_to_mono",
    "max_length_mismatch",
    "resample_audio",
    "sinc_resample",
]
