"""The front-end against Essentia's TensorflowInputMusiCNN (MAEST's training features)."""

import json
import math

import numpy as np
import pytest
import torch
from conftest import synthetic_music

from maest import MAESTFeatureExtractor

essentia_standard = pytest.importorskip("essentia.standard")

MEAN, STD = 2.06755686098554, 1.268292820667291


def essentia_features(audio: np.ndarray) -> np.ndarray:
    """Essentia's own framing and TensorflowInputMusiCNN, then MAEST's normalization."""
    musicnn_input = essentia_standard.TensorflowInputMusiCNN()
    frames = essentia_standard.FrameGenerator(
        np.ascontiguousarray(audio, dtype=np.float32), frameSize=512, hopSize=256, startFromZero=False
    )
    log_mel = np.array([musicnn_input(frame) for frame in frames])
    return (log_mel - MEAN) / (2 * STD)


@pytest.fixture(scope="module")
def extractor():
    return MAESTFeatureExtractor()


def ours(extractor, audio, **kwargs):
    return extractor(audio, sampling_rate=16000, padding=False, truncation=False, **kwargs)["input_values"][0].numpy()


def test_music_matches_essentia(extractor):
    audio = synthetic_music(12.0, seed=3)
    expected, actual = essentia_features(audio), ours(extractor, audio)
    assert actual.shape == expected.shape == (1 + math.ceil(audio.size / 256), 96)
    error = np.abs(actual - expected)
    assert error.max() < 1e-3 and error.mean() < 5e-6, (error.max(), error.mean())


@pytest.mark.parametrize(
    "name, audio",
    [
        ("silence", np.zeros(16000, dtype=np.float32)),
        ("clipped", np.clip(3 * synthetic_music(2.0, seed=1), -1, 1)),
        ("length 72123", synthetic_music(72123 / 16000, seed=2)),
        ("length 257", synthetic_music(257 / 16000, seed=4)),
        ("one sample", np.array([0.5], dtype=np.float32)),
        ("full-scale noise", np.random.default_rng(0).uniform(-1, 1, 7777).astype(np.float32)),
    ],
)
def test_edge_cases_match_essentia(extractor, name, audio):
    expected, actual = essentia_features(audio), ours(extractor, audio)
    assert actual.shape == expected.shape, name
    error = np.abs(actual - expected)
    assert error.max() < 1e-3 and error.mean() < 5e-6, (name, error.max(), error.mean())


def test_frame_counts_follow_essentia():
    extractor = MAESTFeatureExtractor()
    assert [extractor.num_frames(n) for n in (480000, 72123, 116800)] == [1876, 283, 458]


def test_padding_happens_in_the_log_mel_domain(extractor):
    audio = synthetic_music(1.0)
    features = extractor(audio, sampling_rate=16000)["input_values"]
    assert features.shape == (1, 1876, 96)
    frames = extractor.num_frames(audio.size)
    np.testing.assert_allclose(features[0, frames:].numpy(), -MEAN / (2 * STD), rtol=1e-6)
    assert extractor.padding_value == pytest.approx(-0.8151, abs=1e-4)
    np.testing.assert_allclose(features[0, :frames].numpy(), ours(extractor, audio), atol=1e-6)


def test_truncation_keeps_the_first_frames(extractor):
    audio = synthetic_music(40.0, seed=5)
    features = extractor(audio, sampling_rate=16000)["input_values"][0]
    whole = ours(extractor, audio)
    assert features.shape == (1876, 96)
    np.testing.assert_allclose(features.numpy(), whole[:1876], atol=1e-6)
    with pytest.raises(ValueError, match="truncation=False"):
        extractor(audio, sampling_rate=16000, truncation=False)


def test_resampling_matches_the_same_signal_sampled_at_16k(extractor):
    """A band-limited signal sampled at 44.1 kHz and resampled must give the features of the same signal
    sampled at 16 kHz directly."""

    def tones(rate):
        t = np.arange(int(3 * rate)) / rate
        return (0.3 * np.sin(2 * np.pi * 220 * t) + 0.2 * np.sin(2 * np.pi * 1830 * t) * (1 + np.sin(2 * np.pi * 3 * t))).astype(np.float32)

    direct = extractor(tones(16000), sampling_rate=16000, padding="longest")["input_values"]
    resampled = extractor(tones(44100), sampling_rate=44100, padding="longest")["input_values"]
    assert direct.shape == resampled.shape
    # Frames away from the edges (the resampler's filter has transients there).
    assert (direct[:, 5:-5] - resampled[:, 5:-5]).abs().mean() < 5e-3


def _tones(rate: float, seconds: float) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return 0.3 * np.sin(2 * np.pi * 440 * t) + 0.2 * np.sin(2 * np.pi * 2500 * t + 1.0)


def test_per_sample_resampler_is_torchaudios_formula():
    """sinc_resample evaluates torchaudio's windowed-sinc interpolation directly (for rates where its kernel is huge)."""
    import torchaudio

    from maest.feature_extraction import sinc_resample

    for rate in (44100, 8000, 48000):
        audio = torch.from_numpy(_tones(rate, 0.5)).float()
        expected = torchaudio.functional.resample(audio, rate, 16000)
        actual = sinc_resample(audio, rate, 16000)
        assert actual.shape == expected.shape
        assert (actual - expected).abs().max() < 2e-5, rate


@pytest.mark.parametrize("rate", [44101, 7919, 22050.5, 1_000_000, 999_983, 44100])
def test_any_sampling_rate_resamples_a_sine_exactly(rate):
    """Against the same tones sampled at 16 kHz directly. Coprime rates (44101 / 16000) took torchaudio 53 s and
    12 GB for 10 s; the per-sample path costs time and memory proportional to the audio."""
    from maest.feature_extraction import resample_audio

    audio = torch.from_numpy(_tones(rate, 0.3)).float()
    resampled = resample_audio(audio, rate, 16000).numpy()
    assert resampled.shape == (math.ceil(audio.numel() * 16000 / rate),)
    expected = _tones(16000, 0.3)[: resampled.size]
    # Away from the edges (zeros beyond them); the filter's passband ripple at 2.5 kHz bounds the error.
    error = np.abs(resampled - expected)[100:-100]
    assert error.max() < 3e-3, (rate, error.max())


def test_multichannel_audio_is_downmixed_when_asked(extractor):
    left, right = synthetic_music(2.0, seed=1), synthetic_music(2.0, seed=2)
    mono = ours(extractor, (left + right) / 2)
    channels_first = ours(extractor, np.stack([left, right]), channel_axis=0)
    channels_last = ours(extractor, torch.from_numpy(np.stack([left, right], axis=1)), channel_axis=-1)
    np.testing.assert_allclose(channels_first, mono, atol=1e-6)
    np.testing.assert_allclose(channels_last, mono, atol=1e-6)
    # A batch of multi-channel clips: a list of (channels, samples) arrays (mono 1-D clips may be mixed in), or 3-D.
    listed = extractor([np.stack([left, right]), left], sampling_rate=16000, channel_axis=0, padding="longest")
    np.testing.assert_allclose(listed["input_values"][0].numpy(), mono, atol=1e-6)
    np.testing.assert_allclose(listed["input_values"][1].numpy(), ours(extractor, left), atol=1e-6)
    stacked = extractor(np.stack([np.stack([left, right])] * 2), sampling_rate=16000, channel_axis=0, padding="longest")
    assert stacked["input_values"].shape == (2, mono.shape[0], 96)


def test_a_2d_array_is_a_batch_as_in_transformers(extractor):
    """transformers' convention (AST, Whisper, Wav2Vec2 extractors): a 2-D array is (batch, samples)."""
    clips = np.stack([synthetic_music(0.05, seed=i) for i in range(3)])  # (3, 800)
    for batch in (clips, torch.from_numpy(clips)):
        output = extractor(batch, sampling_rate=16000, padding="longest")
        assert output["input_values"].shape == (3, extractor.num_frames(800), 96)
        for clip, features in zip(clips, output["input_values"]):
            np.testing.assert_allclose(features.numpy(), ours(extractor, clip), atol=1e-6)
    with pytest.raises(ValueError, match="channel_axis"):
        extractor(np.zeros((2, 2, 800), dtype=np.float32), sampling_rate=16000)
    with pytest.raises(ValueError, match="channel_axis"):
        extractor([np.zeros((2, 800), dtype=np.float32)], sampling_rate=16000)


def test_attention_mask_marks_audio_frames():
    """Constructor and call agree with pad(..., return_attention_mask=True): 1 for frames of audio, 0 for padding."""
    clips = [synthetic_music(0.5, seed=1), synthetic_music(1.0, seed=2)]
    plain = MAESTFeatureExtractor(max_length=100)
    assert "attention_mask" not in plain(clips, sampling_rate=16000)
    masked = MAESTFeatureExtractor(max_length=100, return_attention_mask=True)
    assert masked.to_dict()["return_attention_mask"] is True
    output = masked(clips, sampling_rate=16000)
    counts = output["num_frames"].tolist()
    expected = masked.pad(
        {"input_values": [f[:n].numpy() for f, n in zip(output["input_values"], counts)]},
        padding="max_length", max_length=100, return_attention_mask=True,
    )["attention_mask"]
    np.testing.assert_array_equal(output["attention_mask"].numpy(), expected)
    assert output["attention_mask"].sum(1).tolist() == counts
    segments = plain(synthetic_music(5.0), sampling_rate=16000, return_segments=True, last_segment="pad", return_attention_mask=True)
    assert segments["attention_mask"].sum(1).tolist() == [100, 100, 100, plain.num_frames(80000) - 300]
    with pytest.raises(ValueError, match="return_attention_mask"):
        MAESTFeatureExtractor(return_attention_mask="yes")


def test_a_batch_equals_single_clips(extractor):
    clips = [synthetic_music(seconds, seed=i) for i, seconds in enumerate((1.0, 2.5, 0.3))]
    batch = extractor(clips, sampling_rate=16000, padding="longest")
    assert batch["input_values"].shape == (3, extractor.num_frames(40000), 96)
    assert batch["num_frames"].tolist() == [extractor.num_frames(c.size) for c in clips]
    for clip, features, count in zip(clips, batch["input_values"], batch["num_frames"]):
        np.testing.assert_allclose(features[:count].numpy(), ours(extractor, clip), atol=1e-5)
        np.testing.assert_allclose(features[count:].numpy(), extractor.padding_value)


def test_segments_of_a_long_track(extractor):
    small = MAESTFeatureExtractor(max_length=316)
    audio = synthetic_music(17.0, seed=7)  # 1064 frames = 3 segments of 316 + 116 frames
    whole = ours(small, audio)
    assert whole.shape[0] == 1064
    for mode, expected_segments in (("auto", 3), ("drop", 3), ("pad", 4)):
        output = small(audio, sampling_rate=16000, return_segments=True, last_segment=mode)
        segments = output["input_values"]
        assert segments.shape == (expected_segments, 316, 96), mode
        np.testing.assert_allclose(segments[:3].reshape(-1, 96).numpy(), whole[: 3 * 316], atol=1e-6)
        assert output["segment_clip_index"].tolist() == [0] * expected_segments
    padded = small(audio, sampling_rate=16000, return_segments=True, last_segment="pad")["input_values"][3]
    np.testing.assert_allclose(padded[:116].numpy(), whole[948:], atol=1e-6)
    np.testing.assert_allclose(padded[116:].numpy(), small.padding_value)
    # "auto" keeps a last segment with at least half a segment of audio; a short clip always gives one segment.
    longer = small(synthetic_music(22.0), sampling_rate=16000, return_segments=True)  # 1376 frames: 4 x 316 + 112
    assert longer["input_values"].shape[0] == 4
    short = small(synthetic_music(1.0), sampling_rate=16000, return_segments=True, last_segment="drop")
    assert short["input_values"].shape[0] == 1
    two = small([synthetic_music(11.0), synthetic_music(1.0)], sampling_rate=16000, return_segments=True)
    assert two["segment_clip_index"].tolist() == [0, 0, 1]


def test_segment_times_locate_the_audio():
    """Segment `k` starts at `segment_start_seconds(k)`: a click there is centered in the segment's first frame."""
    small = MAESTFeatureExtractor(max_length=316)
    assert small.segment_seconds == pytest.approx(316 * 256 / 16000)
    assert MAESTFeatureExtractor().segment_seconds == pytest.approx(30.016)
    audio = np.zeros(int(4 * small.segment_seconds * 16000), dtype=np.float32)
    click = round(small.segment_start_seconds(2) * 16000)
    audio[click] = 1.0
    segments = small(audio, sampling_rate=16000, return_segments=True)["input_values"]
    loudest = segments.sum(-1).reshape(-1).argmax().item()
    assert divmod(loudest, 316) == (2, 0)
    assert small.segment_start_seconds(3) == pytest.approx(3 * small.segment_seconds)
    assert small.frames_to_seconds(1) == pytest.approx(0.016)


def test_bad_inputs(extractor):
    from maest.utils.errors import MAESTError

    with pytest.raises(MAESTError, match="empty"):
        extractor(np.zeros(0, dtype=np.float32), sampling_rate=16000)
    with pytest.raises(ValueError, match="NaN or infinite"):
        extractor(np.array([0.1, np.nan, 0.2], dtype=np.float32), sampling_rate=16000)
    with pytest.raises(ValueError, match="clip 1 contains NaN"):
        extractor([np.zeros(100, np.float32), np.full(100, np.inf, np.float32)], sampling_rate=16000)
    with pytest.raises(ValueError, match="beyond float32"):
        extractor(np.full(100, 1e300), sampling_rate=16000)
    with pytest.raises(TypeError, match="int8; pass floating-point audio in \\[-1, 1\\] or integer PCM"):
        extractor(np.zeros(1000, dtype=np.int8), sampling_rate=16000)
    with pytest.raises(TypeError, match="int64"):
        extractor(torch.zeros(1000, dtype=torch.int64), sampling_rate=16000)
    with pytest.raises(ValueError, match="implausible"):
        extractor(np.zeros((1000, 2), dtype=np.float32), sampling_rate=16000, channel_axis=0)
    with pytest.raises(ValueError, match="channel_axis must be"):
        extractor(np.zeros(1000, dtype=np.float32), sampling_rate=16000, channel_axis=2)
    for rate in (0, -16000, float("nan"), "16000"):
        with pytest.raises(ValueError, match="sampling_rate must be positive"):
            extractor(np.zeros(1000, dtype=np.float32), sampling_rate=rate)
    with pytest.raises(ValueError, match="last_segment"):
        extractor(np.zeros(1000, dtype=np.float32), sampling_rate=16000, return_segments=True, last_segment="x")
    with pytest.raises(ValueError, match="no audio"):
        extractor([], sampling_rate=16000)


def test_huge_finite_amplitudes_give_finite_features(extractor):
    """float32 power spectra overflow from amplitude ~1e15; such clips are analysed in float64 (the exact formula)."""
    audio = synthetic_music(1.0, seed=6)
    base = ours(extractor, audio)
    for gain in (1e16, 1e20, 1e30):
        features = ours(extractor, (audio.astype(np.float64) * gain).astype(np.float32))
        assert np.isfinite(features).all(), gain
        # log10(1 + m g^2 x) = 2 log10(g) + log10(x m) where m g^2 x >> 1: a shift of 2 log10(g) / (2 std).
        loud = base > 0.5
        shift = features[loud] - base[loud]
        np.testing.assert_allclose(shift, np.log10(gain) / STD, rtol=2e-3)
    quiet_and_loud = extractor([audio, audio * 1e20, audio], sampling_rate=16000)["input_values"]
    assert torch.isfinite(quiet_and_loud).all()
    np.testing.assert_allclose(quiet_and_loud[2].numpy(), quiet_and_loud[0].numpy())


@pytest.mark.parametrize(
    "setting, value",
    [
        ("frame_size", 1e9), ("frame_size", 1), ("hop_size", 0), ("hop_size", 600), ("sampling_rate", 0),
        ("sampling_rate", 16000.5), ("fmax", -1), ("fmax", 9000), ("fmin", 9000), ("feature_size", 0),
        ("feature_size", 1000), ("feature_size", 200), ("max_length", 0), ("std", 0), ("mean", float("nan")),
        ("log_multiplier", -1), ("hop_size", True), ("frame_size", "512"),
    ],
)
def test_bad_settings_are_refused_on_load(tmp_path, setting, value):
    from maest.feature_extraction import FeatureExtractorConfigError

    MAESTFeatureExtractor().save_pretrained(tmp_path)
    config_path = tmp_path / "preprocessor_config.json"
    config = json.loads(config_path.read_text())
    config[setting] = value
    config_path.write_text(json.dumps(config))
    with pytest.raises(FeatureExtractorConfigError, match=setting) as raised:
        MAESTFeatureExtractor.from_pretrained(tmp_path)
    assert "\n" not in str(raised.value)
    assert isinstance(raised.value, ValueError)


def test_slaney_filters_are_essentia_melbands():
    """transformers' Slaney filter bank against Essentia's MelBands (unit_tri) on single-bin spectra."""
    extractor = MAESTFeatureExtractor()
    melbands = essentia_standard.MelBands(
        inputSize=257, numberBands=96, sampleRate=16000, lowFrequencyBound=0, highFrequencyBound=8000,
        warpingFormula="slaneyMel", weighting="linear", normalize="unit_tri", type="power",
    )
    filters = extractor.mel_filters()
    for bin_index in range(0, 257, 7):
        spectrum = np.zeros(257, dtype=np.float32)
        spectrum[bin_index] = 1.0
        # Essentia computes the band edges in float32: weights agree to 1e-5 of the largest.
        np.testing.assert_allclose(melbands(spectrum), filters[bin_index], rtol=0, atol=1e-5 * filters.max())


def test_missing_sampling_rate_is_reported(monkeypatch):
    from maest.feature_extraction import feature_extraction_maest

    warnings = []
    monkeypatch.setattr(feature_extraction_maest.logger, "warning_once", warnings.append)
    MAESTFeatureExtractor()(np.zeros(1000, dtype=np.float32))
    assert len(warnings) == 1 and "without `sampling_rate`" in warnings[0]
    MAESTFeatureExtractor()(np.zeros(1000, dtype=np.float32), sampling_rate=16000)
    assert len(warnings) == 1


def test_save_and_load_round_trip(tmp_path):
    extractor = MAESTFeatureExtractor(max_length=626)
    extractor.save_pretrained(tmp_path)
    loaded = MAESTFeatureExtractor.from_pretrained(tmp_path)
    assert loaded.max_length == 626 and loaded.padding_value == extractor.padding_value
    audio = synthetic_music(1.5)
    torch.testing.assert_close(
        loaded(audio, sampling_rate=16000)["input_values"], extractor(audio, sampling_rate=16000)["input_values"]
    )


@pytest.mark.parametrize("dtype, full_scale, offset", [(np.int16, 2**15, 0), (np.int32, 2**31, 0), (np.uint8, 2**7, 128)])
def test_integer_pcm_is_scaled_as_wav_readers_do(dtype, full_scale, offset):
    # soundfile/torchaudio read PCM as (x - offset) / full_scale; the features of the integer clip equal those of its
    # float reading, numpy or torch, at any rate.
    from maest.feature_extraction import audio_to_mono

    extractor = MAESTFeatureExtractor(max_length=100)
    rng = np.random.default_rng(0)
    info = np.iinfo(dtype)
    pcm = rng.integers(info.min, info.max, size=22050, endpoint=True).astype(dtype)
    as_float = ((pcm.astype(np.float64) - offset) / full_scale).astype(np.float32)
    assert -1 <= as_float.min() and as_float.max() < 1
    expected = extractor(as_float, sampling_rate=22050)["input_values"]
    np.testing.assert_allclose(extractor(pcm, sampling_rate=22050)["input_values"], expected, atol=1e-5)
    np.testing.assert_allclose(audio_to_mono(torch.from_numpy(pcm), 22050, 16000), audio_to_mono(as_float, 22050, 16000), atol=1e-6)


def test_audio_to_mono_channels_are_explicit():
    from maest.feature_extraction import audio_to_mono

    left, right = np.linspace(-1, 1, 800, dtype=np.float32), np.full(800, 0.25, np.float32)
    stereo = np.stack([left, right])
    mean = (left + right) / 2
    np.testing.assert_allclose(audio_to_mono(stereo, 16000, 16000, channel_axis=0), mean, atol=1e-7)
    np.testing.assert_allclose(audio_to_mono(stereo.T, 16000, 16000, channel_axis=-1), mean, atol=1e-7)
    pcm_stereo = np.round(stereo.T * 32767).astype(np.int16)  # (samples, channels) int16, as scipy reads WAV
    np.testing.assert_allclose(audio_to_mono(pcm_stereo, 16000, 16000, channel_axis=-1), mean * 32767 / 32768, atol=1e-4)
    with pytest.raises(ValueError, match=r"clip x has shape \(2, 800\): expected 1-D \(samples,\); for multi-channel audio pass channel_axis"):
        audio_to_mono(stereo, 16000, 16000, name="clip x")
