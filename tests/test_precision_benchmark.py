"""`maest bench` (maest.benchmarks): the analytic FLOP count, and a quick run's JSON report."""

import json

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from maest import MAESTConfig, MAESTForAudioClassification
from maest.benchmarks.report import render
from maest.cli import main
from maest.benchmarks.measure import (
    TARGETS,
    count_flops,
    interleaved_rounds,
    music_features,
    patchout_time_stride,
)


def _counted_flops(fn) -> int:
    """FLOPs that torch's own counter records for `fn` (it counts convolutions, matmuls and attention bmm's)."""
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        fn()
    return counter.get_total_flops()


@pytest.fixture(scope="module")
def eager_model(tiny_config):
    # torch's FlopCounterMode does not count the CPU flash-attention kernel; the eager path's bmm's it does.
    torch.manual_seed(0)
    model = MAESTForAudioClassification(tiny_config).eval()
    model.set_attn_implementation("eager")
    return model


@pytest.mark.parametrize("stride", [1, 2, 3])
@pytest.mark.parametrize("num_frames", [300, 161])
def test_flop_count_matches_torch_flop_counter(eager_model, stride, num_frames):
    config = eager_model.config
    inputs = torch.randn(2, num_frames, config.num_mel_bins)
    with patchout_time_stride(eager_model, stride):
        counted = _counted_flops(lambda: eager_model(inputs))
    assert counted == 2 * count_flops(config, num_frames, time_stride=stride)


def test_flop_count_of_embeddings_runs_only_the_needed_blocks(eager_model):
    config = eager_model.config
    inputs = torch.randn(1, config.max_length, config.num_mel_bins)
    counted = _counted_flops(lambda: eager_model.maest.embed(inputs, block=1))
    assert counted == count_flops(config, num_blocks=2, include_heads=False)


def test_flop_count_with_training_patchout(tiny_config):
    config = MAESTConfig(**{**tiny_config.to_dict(), "train_patchout_time": 14})
    model = MAESTForAudioClassification(config).train()
    model.set_attn_implementation("eager")
    inputs = torch.randn(1, config.max_length, config.num_mel_bins)
    counted = _counted_flops(lambda: model(inputs))
    kept = config.num_time_patches(config.max_length) - 14
    assert counted == count_flops(config, kept_time_patches=kept)


def test_flop_count_of_the_30s_model():
    # ViT-Base on 2 + 9 * 187 tokens: 12 * (24 N d^2 + 4 N^2 d) plus the patch convolution and the heads (the main
    # head and the distillation head that the released checkpoints carry).
    config = MAESTConfig.from_preset("maest-30s", use_distillation_head=True)
    tokens, hidden = 2 + 9 * 187, 768
    expected = 12 * (24 * tokens * hidden**2 + 4 * tokens**2 * hidden)
    expected += 2 * 9 * 187 * 256 * hidden + 2 * 2 * hidden * 400
    assert count_flops(config) == expected
    assert 390e9 < count_flops(config) < 393e9


def test_interleaved_rounds_time_every_variant_in_every_round():
    calls = []
    variants = {name: (lambda name=name: calls.append(name)) for name in "abc"}
    times = interleaved_rounds(variants, rounds=3, device=torch.device("cpu"))
    assert {name: len(seconds) for name, seconds in times.items()} == {"a": 3, "b": 3, "c": 3}
    # One warm-up call each, then rounds whose first variant rotates.
    assert calls == list("abc") + list("abc") + list("bca") + list("cab")


def test_music_features_are_model_inputs(tiny_config):
    features = music_features(tiny_config, batch_size=2, seed=3)
    assert features.shape == (2, tiny_config.max_length, tiny_config.num_mel_bins)
    assert torch.isfinite(features).all()
    assert not torch.allclose(features[0], features[1])  # different clips per seed


def test_quick_benchmark_writes_a_complete_report(tmp_path, capsys):
    output = tmp_path / "results.json"
    status = main(
        [
            "bench", "--quick", "--preset", "maest-tiny", "--rounds", "1", "--training-rounds", "1",
            "--skip-e2e", "--backends", "--extra-variants", "int8-keep-fc2", "--peak-size", "256", "--output", str(output),
        ]
    )  # fmt: skip
    assert status == 0
    results = json.loads(output.read_text())
    assert set(results) >= {"machine", "settings", "inference", "training", "end_to_end", "targets", "options"}
    inference = results["inference"]
    variants = {"float32", "bfloat16", "int8", "int8-keep-fc2", "stride2", "stride3", "ast"}
    assert set(inference["model_only"]) == variants
    for entry in inference["model_only"].values():
        assert len(entry["seconds_per_batch_rounds"]) == 1
        assert entry["minutes_audio_per_second"] > 0
    assert inference["matmul_peak_gflops"] > 0
    config = MAESTConfig.from_preset("maest-tiny")
    assert inference["flop_bound"]["float32_gflops_per_input"] == pytest.approx(count_flops(config) / 1e9)
    assert set(inference["ratios"]) >= {
        "maest_over_ast", "stride2_over_none", "stride3_over_none", "bfloat16_over_float32", "int8_over_float32",
        "fraction_of_flop_bound",
    }  # fmt: skip
    assert all(value > 0 for value in inference["ratios"].values())
    accuracy = inference["accuracy"]
    assert set(accuracy) == variants - {"float32"}
    for name in variants - {"float32", "ast"}:
        assert -1 <= accuracy[name]["embedding_cosine_min"] <= 1 + 1e-6
        assert 0 <= accuracy[name]["top5_agreement"] <= 1
    # The AST peer carries MAEST's weights: same tags.
    assert accuracy["ast"]["top5_agreement"] == 1.0
    assert accuracy["ast"]["logits_max_abs_difference"] < 1e-3

    training = results["training"]
    assert training["time_columns"] == config.num_time_patches(config.max_length)
    assert training["train_patchout_time"] == round(training["time_columns"] * 90 / 186)
    assert training["steps_per_second_patchout"] > 0 and training["steps_per_second_no_patchout"] > 0
    assert results["end_to_end"] == {"skipped": "--skip-e2e"}
    assert set(results["targets"]) <= set(TARGETS)
    assert {"maest_over_ast", "fraction_of_flop_bound", "training_patchout_speedup"} <= set(results["targets"])

    printed = capsys.readouterr().out
    assert printed.strip() == render(results).strip()
    assert "fraction_of_flop_bound" in printed and "int8-keep-fc2" in printed


@pytest.mark.slow
def test_end_to_end_section_runs_files_through_the_embed_api(tiny_config):
    from maest.benchmarks.measure import benchmark_end_to_end

    torch.manual_seed(0)
    model = MAESTForAudioClassification(tiny_config).eval()
    result = benchmark_end_to_end(
        model, torch.device("cpu"), batch_size=2, rounds=1, num_files=2, dtype="float32", log=lambda _: None,
        num_workers=0,
    )  # fmt: skip
    assert result["num_files"] == 2 and result["batch_size"] == 2
    # Files of one to two segments: at least one segment each, at most two.
    assert 2 <= result["segments"] <= 4
    segment_seconds = (tiny_config.max_length - 1) * 256 / 16000
    assert segment_seconds * 2 / 60 <= result["audio_minutes"] <= segment_seconds * 4 / 60
    assert len(result["seconds_rounds"]["end_to_end"]) == len(result["seconds_rounds"]["model_only"]) == 1
    assert result["end_to_end_over_model_only"] > 0
