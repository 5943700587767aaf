"""The GPU path, run on the CPU where no GPU is present (the same code): the front-end on the model's device equals
the workers' CPU front-end, whole tracks, streamed tracks, arrays and failures alike; inference precision defaults;
the model compiles with no graph break. Tests marked `cuda` run the same on a GPU (`make gpu-check`)."""

import numpy as np
import pytest
import torch

from conftest import synthetic_music, write_audio
from maest import MAESTFeatureExtractor
from maest.feature_extraction.audio import load_audio, segment_windows, track_segment_windows
from maest.inference import load_model
from maest.inference.engine import CollectionRunner, TrackInput


SEGMENT_FRAMES = 316  # 5.056 s segments, as the small test model
HOP = 256

pytestmark = pytest.mark.usefixtures("single_torch_thread")

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def windowed_features(extractor, audio, last_segment, device="cpu"):
    pieces = list(segment_windows([audio], extractor, SEGMENT_FRAMES, last_segment))
    if not pieces:
        return torch.zeros(0, SEGMENT_FRAMES, extractor.feature_size)
    windows = torch.stack([window for window, _ in pieces]).to(device)
    num_frames = torch.tensor([frames for _, frames in pieces])
    return extractor.segment_log_mel(windows, num_frames).cpu()


# Lengths around every boundary of the segment rule: shorter than a segment, one sample short of a whole number of
# segments (Essentia's frame count then adds a frame: 1 + ceil(n / hop)), exact multiples, partial last segments
# just below and at half a segment.
LENGTHS = [
    4000,
    SEGMENT_FRAMES * HOP - 1,
    SEGMENT_FRAMES * HOP,
    2 * SEGMENT_FRAMES * HOP - HOP - 1,
    2 * SEGMENT_FRAMES * HOP + (SEGMENT_FRAMES // 2 - 2) * HOP,
    2 * SEGMENT_FRAMES * HOP + (SEGMENT_FRAMES // 2) * HOP,
    3 * SEGMENT_FRAMES * HOP + 12345,
]


@pytest.fixture(scope="module")
def music():
    return torch.from_numpy(synthetic_music(max(LENGTHS) / 16000 + 0.01, seed=1))


@pytest.mark.parametrize("num_samples", LENGTHS)
@pytest.mark.parametrize("last_segment", ["auto", "pad", "drop"])
def test_segment_windows_on_the_device_equal_the_feature_extractor(music, num_samples, last_segment):
    extractor = MAESTFeatureExtractor(max_length=SEGMENT_FRAMES)
    audio = music[:num_samples]
    expected = extractor(audio, sampling_rate=16000, return_segments=True, last_segment=last_segment)["input_values"]
    actual = windowed_features(extractor, audio, last_segment)
    assert actual.shape == expected.shape
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-5)


def test_a_custom_padding_value_pads_the_last_segment():
    extractor = MAESTFeatureExtractor(max_length=SEGMENT_FRAMES, padding_value=3.5)
    audio = torch.from_numpy(synthetic_music(1.0, seed=3))
    expected = extractor(audio, sampling_rate=16000, return_segments=True)["input_values"]
    actual = windowed_features(extractor, audio, "auto")
    assert (actual[0, -10:] == 3.5).all()
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-5)


def test_windows_of_a_streamed_file_equal_the_whole_file(tmp_path):
    extractor = MAESTFeatureExtractor(max_length=SEGMENT_FRAMES)
    path = write_audio(tmp_path / "clip.flac", synthetic_music(13.0, sampling_rate=22050, seed=4), 22050)
    whole = list(track_segment_windows(path, extractor, stream_threshold_seconds=1e9, segments_per_chunk=2))
    streamed = list(track_segment_windows(path, extractor, stream_threshold_seconds=0, segments_per_chunk=2))
    assert [len(frames) for _, frames, _ in whole] == [2, 1] and whole[-1][2] == pytest.approx(13.0, abs=1e-3)
    torch.testing.assert_close(torch.cat([w for w, _, _ in streamed]), torch.cat([w for w, _, _ in whole]), rtol=0, atol=0)
    features = extractor.segment_log_mel(torch.cat([w for w, _, _ in whole]), torch.cat([f for _, f, _ in whole]))
    expected = extractor(load_audio(path), sampling_rate=16000, return_segments=True)["input_values"]
    torch.testing.assert_close(features, expected, rtol=0, atol=1e-5)


@pytest.fixture(scope="module")
def tracks(tmp_path_factory):
    directory = tmp_path_factory.mktemp("gpu_path")
    names = []
    for seed, (name, seconds, rate) in enumerate([("a.wav", 3.0, 16000), ("b.mp3", 12.4, 44100), ("c.flac", 10.0, 16000)]):
        names.append(str(write_audio(directory / name, synthetic_music(seconds, sampling_rate=rate, seed=seed), rate)))
    (directory / "corrupt.mp3").write_bytes(b"ID3\x03\x00\x00\x00" + bytes(range(256)) * 8)
    write_audio(directory / "blip.wav", synthetic_music(0.4, seed=9))
    names[1:1] = [str(directory / "corrupt.mp3"), str(directory / "blip.wav")]
    return [TrackInput(name) for name in names] + [TrackInput("in memory", synthetic_music(8.0, 22050, seed=7), 22050)]


def run_collection(model, tracks, on_device, **options):
    results, failures = {}, {}
    runner = CollectionRunner(model, embedding=True, front_end_on_device=on_device, **options)
    runner.run(tracks, lambda result: results.update({result.path: result}), lambda failure: failures.update({failure.name: failure.reason}))
    return results, failures


def check_same_collection(model, tracks, **options):
    expected, expected_failures = run_collection(model, tracks, on_device=False, batch_size=3)
    actual, failures = run_collection(model, tracks, on_device=True, batch_size=3, **options)
    assert failures == expected_failures and len(failures) == 2
    assert "too short" in failures[tracks[2].name]
    assert sorted(actual) == sorted(expected) and len(actual) == 4
    for name, result in expected.items():
        assert actual[name].num_segments == result.num_segments and actual[name].duration == pytest.approx(result.duration)
        for output in ("scores", "embedding"):
            np.testing.assert_allclose(actual[name].segment_outputs[output], result.segment_outputs[output], atol=1e-4)


def test_collection_with_the_front_end_on_the_device_equals_the_cpu_front_end(small_model_dir, tracks):
    model = load_model(str(small_model_dir))
    check_same_collection(model, tracks)
    # Streamed long tracks and loader workers take the same path.
    check_same_collection(model, tracks, stream_threshold_seconds=0.0, num_workers=2)


@cuda
def test_cuda_collection_with_the_front_end_on_the_gpu_equals_the_cpu_front_end(small_model_dir, tracks):
    model = load_model(str(small_model_dir), device="cuda", dtype="float32")
    check_same_collection(model, tracks, num_workers=2)


@cuda
def test_cuda_log_mel_equals_the_cpu():
    extractor = MAESTFeatureExtractor()
    audio = torch.from_numpy(synthetic_music(65.0, seed=11))
    for last_segment in ("auto", "pad"):
        expected = extractor(audio, sampling_rate=16000, return_segments=True, last_segment=last_segment, max_length=SEGMENT_FRAMES)
        actual = windowed_features(extractor, audio, last_segment, device="cuda")
        torch.testing.assert_close(actual, expected["input_values"], rtol=0, atol=1e-5)


def test_pretraining_defaults_to_bf16_autocast_on_a_cuda_gpu_only(monkeypatch):
    from maest.training.config import PretrainConfig
    from maest.training.pretrain import resolve_mixed_precision

    assert PretrainConfig().mixed_precision == "auto"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert resolve_mixed_precision("auto") == "bf16"
    assert resolve_mixed_precision("no") == "no" and resolve_mixed_precision("fp16") == "fp16"
    monkeypatch.setenv("ACCELERATE_USE_CPU", "1")  # training forced onto the CPU of a GPU machine
    assert resolve_mixed_precision("auto") == "no"
    monkeypatch.delenv("ACCELERATE_USE_CPU")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_mixed_precision("auto") == "no"


@cuda
def test_cuda_defaults_are_bfloat16_and_tf32_for_float32(small_model_dir):
    auto = load_model(str(small_model_dir), device="cuda")
    assert auto.dtype == "bfloat16" and next(auto.model.parameters()).dtype == torch.bfloat16
    load_model(str(small_model_dir), device="cuda", dtype="float32")
    assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32


@pytest.mark.slow
def test_the_gpu_checks_bench_runs_maest_bench_and_reads_its_results(small_model_dir, monkeypatch):
    """The GPU check runs `maest bench` as its own process (as a user runs it) and keeps its JSON results; here on
    the CPU with the small model, the GPU's arguments replaced (the check itself stops where there is no CUDA)."""
    from maest.benchmarks import gpu_check

    arguments = ["bench", "--device", "cpu", "--quick", "--skip-training", "--skip-e2e", "--backends", "--model", str(small_model_dir)]
    monkeypatch.setattr(gpu_check, "BENCH_ARGUMENTS", arguments)
    results = gpu_check.run_bench(["--rounds", "1"])
    assert results["command"] == "maest " + " ".join(arguments + ["--rounds", "1"])
    assert results["inference"]["model_only"]["float32"]["seconds_per_batch_median"] > 0
    if not torch.cuda.is_available():
        assert gpu_check.main(["--skip-tests", "--output", "unused.json"]) == 2
