"""MAEST against the original implementation's outputs and against transformers' own AST."""

import copy
import os

import numpy as np
import pytest
import torch
from conftest import FIXTURES
from transformers import ASTForAudioClassification

from maest import MAESTConfig, MAESTForAudioClassification, MAESTModel, load_original_checkpoint, pool_embedding_tokens
from maest.modeling import find_published, parse_embedding_tokens
from maest.modeling.conversion import maest_to_ast_model


@pytest.fixture(scope="module")
def original_model(tiny_config):
    return load_original_checkpoint(FIXTURES / "tiny_native_state_dict.pt", config=tiny_config)


@pytest.fixture(scope="module")
def reference_input(reference):
    # The original layout is (batch, mel, time); transformers' input_values are (batch, time, mel).
    return torch.from_numpy(reference["input_b_f_t"]).transpose(1, 2).contiguous()


def _close(actual: torch.Tensor, expected: np.ndarray, atol=1e-5):
    np.testing.assert_allclose(actual.detach().numpy(), expected, atol=atol, rtol=1e-5)


def test_logits_pooled_and_block_embeddings_match_original(original_model, reference, reference_input):
    with torch.no_grad():
        outputs = original_model(reference_input, output_hidden_states=True)
        base_outputs = original_model.maest(reference_input)
    _close(outputs.logits, reference["logits"])
    _close(base_outputs.pooler_output, reference["pooled_cls_dist_mean_after_norm"])
    assert len(outputs.hidden_states) == original_model.config.num_hidden_layers + 1
    for block in range(original_model.config.num_hidden_layers):
        expected = reference[f"block{block}_cls_dist_mean"]
        _close(pool_embedding_tokens(outputs.hidden_states[block + 1]), expected)
        _close(original_model.maest.embed(reference_input, block=block), expected)


def test_short_input_and_inference_patchout_match_original(original_model, reference, reference_input):
    with torch.no_grad():
        _close(original_model(reference_input[:, :150]).logits, reference["short150_logits"])
        original_model.config.inference_patchout_time_stride = 2
        try:
            _close(original_model(reference_input).logits, reference["time_stride2_logits"])
        finally:
            original_model.config.inference_patchout_time_stride = 1


def test_training_checkpoint_loads_swa_weights_by_default(tiny_config, reference, reference_input):
    swa = load_original_checkpoint(FIXTURES / "tiny_native_lightning.ckpt", config=tiny_config)
    with torch.no_grad():
        _close(swa(reference_input).logits, reference["logits"])
    last = load_original_checkpoint(FIXTURES / "tiny_native_lightning.ckpt", config=tiny_config, use_swa=False)
    # The fixture's non-SWA weights are zeros.
    assert all(torch.count_nonzero(p) == 0 for p in last.parameters())


def test_embed_token_sets(original_model, reference, reference_input):
    expected = torch.from_numpy(reference["block1_cls_dist_mean"])
    width = original_model.config.hidden_size
    cls, dist, mean = expected[:, :width], expected[:, width : 2 * width], expected[:, 2 * width :]
    with torch.no_grad():
        _close(original_model.maest.embed(reference_input, block=1, tokens="cls"), cls.numpy())
        _close(original_model.maest.embed(reference_input, block=1, tokens="da"), torch.cat([dist, mean], 1).numpy())
        _close(original_model.maest.embed(reference_input, block=-2, tokens=["mean"]), mean.numpy())
    assert parse_embedding_tokens("cls,mean") == ("cls", "mean")
    assert parse_embedding_tokens("cda") == ("cls", "dist", "mean")
    with pytest.raises(ValueError, match="Unknown embedding token"):
        parse_embedding_tokens("cx")
    with pytest.raises(ValueError, match="block must be"):
        original_model.maest.embed(reference_input, block=3)


def test_equals_transformers_ast_with_the_same_weights(original_model, tiny_config):
    """Stock AST runs the full-length input (all time positions); MAEST must give the same logits and states."""
    config = original_model.config
    max_length = (config.num_time_positions - 1) * config.time_stride + config.patch_size
    ast = maest_to_ast_model(original_model, max_length=max_length, attn_implementation="eager")
    assert type(ast) is ASTForAudioClassification and ast.config.max_length == max_length
    inputs = torch.randn(2, max_length, 96, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = original_model(inputs, output_hidden_states=True)
        theirs = ast(inputs, output_hidden_states=True)
    torch.testing.assert_close(ours.logits, theirs.logits, atol=1e-5, rtol=1e-5)
    for mine, peer in zip(ours.hidden_states, theirs.hidden_states):
        torch.testing.assert_close(mine, peer, atol=1e-5, rtol=1e-5)


def test_published_30s_shape_has_the_original_parameter_count():
    with torch.device("meta"):
        model = MAESTForAudioClassification(MAESTConfig.from_preset("maest-30s", use_distillation_head=True))
        without_distillation_head = MAESTForAudioClassification(MAESTConfig.from_preset("maest-30s"))
    # The original layout carries `head_dist` (768 x 400 + 400 parameters).
    assert sum(p.numel() for p in model.parameters()) == 86_023_712
    assert sum(p.numel() for p in without_distillation_head.parameters()) == 86_023_712 - (768 * 400 + 400)
    assert model.config.num_time_positions == 187 and model.config.num_frequency_patches == 9


@pytest.mark.parametrize(
    "preset, positions, labels",
    [("maest-5s", 31, 400), ("maest-10s", 62, 400), ("maest-20s", 125, 400), ("maest-30s", 187, 400), ("maest-30s-519l", 187, 519)],
)
def test_presets(preset, positions, labels):
    config = MAESTConfig.from_preset(preset)
    assert (config.num_time_positions, config.num_labels, config.embedding_block) == (positions, labels, 6)
    # A preset is a shape: its problem type is left to the labels; a released checkpoint's config is multi-label.
    assert config.problem_type is None and not config.use_distillation_head
    published = find_published("discogs-maest-10s-dw-75e").config()
    assert published.max_length == 626 and published.problem_type == "multi_label_classification"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"hidden_size": 65}, "divisible"),
        ({"train_patchout_time": 400}, "train_patchout_time"),
        ({"inference_patchout_time_stride": 0}, "inference_patchout_time_stride"),
        ({"num_mel_bins": 8}, "num_mel_bins"),
        ({"embedding_block": 12}, "embedding_block"),
        ({"hidden_dropout_prob": float("nan")}, r"hidden_dropout_prob must be in \[0, 1\), got nan"),
        ({"attention_probs_dropout_prob": 1.0}, "attention_probs_dropout_prob"),
        ({"layer_norm_eps": 0.0}, "layer_norm_eps must be a positive finite number"),
        ({"initializer_range": float("inf")}, "initializer_range"),
    ],
)
def test_config_validation(kwargs, message):
    with pytest.raises(Exception, match=message):
        MAESTConfig(**kwargs)
    with pytest.raises(ValueError, match="Unknown MAEST preset"):
        MAESTConfig.from_preset("maest-31s")


def test_bad_inputs_are_refused_with_clear_errors(original_model):
    model = original_model
    with pytest.raises(ValueError, match=r"\(batch_size, num_frames, 96\)"):
        model(torch.zeros(1, 300, 128))
    with pytest.raises(ValueError, match="306 frames"):
        model(torch.zeros(1, 400, 96))
    with pytest.raises(ValueError, match="16 to"):
        model(torch.zeros(1, 10, 96))
    with pytest.raises(TypeError, match="floating-point"):
        model(torch.zeros(1, 300, 96, dtype=torch.long))
    # Values are not checked in forward (that would synchronize the device on every call): the feature extractor
    # and the collection job refuse non-finite features; a NaN here reaches the output instead of a number.
    bad = torch.zeros(1, 300, 96)
    bad[0, 5, 5] = float("nan")
    with torch.no_grad():
        assert torch.isnan(model(bad).logits).all()


def test_train_mode_patchout_and_random_time_offset():
    torch.manual_seed(0)
    config = MAESTConfig.from_preset("maest-tiny", train_patchout_time=10, train_patchout_freq=2)
    model = MAESTModel(config).train()
    inputs = torch.randn(2, 300, 96)
    embeddings = model.embeddings(inputs)
    # 29 columns - 10 dropped, 9 rows - 2 dropped, plus cls and dist.
    assert embeddings.shape == (2, 2 + 7 * 19, config.hidden_size)
    # A short input in training sees a random window of the time positions; in eval, the first columns.
    short = torch.randn(1, 100, 96)
    model.config.train_patchout_time = model.config.train_patchout_freq = 0
    torch.manual_seed(3)
    train_outputs = {tuple(model.embeddings(short)[0, 2, :3].tolist()) for _ in range(8)}
    assert len(train_outputs) > 1
    model.eval()
    assert torch.equal(model.embeddings(short), model.embeddings(short))
    with pytest.raises(ValueError, match="would drop all"):
        MAESTModel(MAESTConfig.from_preset("maest-tiny", train_patchout_time=20)).train()(torch.randn(1, 100, 96))


def test_inference_patchout_keeps_every_kth_patch(original_model, reference_input):
    config = original_model.config
    full = original_model.maest.embeddings(reference_input)
    config.inference_patchout_time_stride, config.inference_patchout_freq_stride = 3, 2
    try:
        strided = original_model.maest.embeddings(reference_input)
    finally:
        config.inference_patchout_time_stride = config.inference_patchout_freq_stride = 1
    grid = full[:, 2:].reshape(2, 9, 29, -1)
    expected = grid[:, ::2, ::3].reshape(2, -1, grid.shape[-1])
    torch.testing.assert_close(strided[:, 2:], expected)
    torch.testing.assert_close(strided[:, :2], full[:, :2])


def test_attentions_on_the_eager_path_match_sdpa_outputs(original_model, reference_input):
    assert original_model.config._attn_implementation == "sdpa"
    with torch.no_grad():
        plain = original_model(reference_input)
        # SDPA computes no attention weights: as in transformers, switch the implementation with the public call.
        original_model.set_attn_implementation("eager")
        try:
            with_attentions = original_model(reference_input, output_attentions=True)
        finally:
            original_model.set_attn_implementation("sdpa")
    assert original_model.config._attn_implementation == "sdpa"
    assert len(with_attentions.attentions) == 3
    assert with_attentions.attentions[0].shape == (2, 4, 2 + 9 * 29, 2 + 9 * 29)
    torch.testing.assert_close(with_attentions.attentions[0].sum(-1), torch.ones(2, 4, 263))
    torch.testing.assert_close(plain.logits, with_attentions.logits, atol=1e-5, rtol=1e-5)


def test_gradient_checkpointing_gives_the_same_gradients(tiny_config):
    torch.manual_seed(0)
    inputs, labels = torch.randn(2, 300, 96), torch.randint(0, 2, (2, 7)).float()

    def gradients(checkpointing: bool):
        torch.manual_seed(1)
        model = MAESTForAudioClassification(tiny_config).train()
        if checkpointing:
            model.activation_checkpointing_enable()
        torch.manual_seed(2)
        model(inputs, labels=labels).loss.backward()
        return {name: p.grad for name, p in model.named_parameters() if p.grad is not None}

    plain, checkpointed = gradients(False), gradients(True)
    assert plain.keys() == checkpointed.keys()
    for name in plain:
        torch.testing.assert_close(plain[name], checkpointed[name], atol=1e-6, rtol=1e-5)


@pytest.fixture(scope="module")
def teacher_student_model():
    """The reference checkpoint with its `head_dist` (the loader keeps the head a checkpoint carries)."""
    model = load_original_checkpoint(FIXTURES / "tiny_native_state_dict.pt", preset="maest-tiny")
    assert model.config.use_distillation_head
    return model


def test_the_original_head_dist_is_the_classifiers_distillation_dense(teacher_student_model):
    state_dict = torch.load(FIXTURES / "tiny_native_state_dict.pt", weights_only=True)
    head = teacher_student_model.classifier
    torch.testing.assert_close(head.distillation_dense.weight, state_dict["head_dist.weight"], rtol=0, atol=0)
    torch.testing.assert_close(head.distillation_dense.bias, state_dict["head_dist.bias"], rtol=0, atol=0)


def test_multilabel_and_teacher_student_losses(teacher_student_model, reference_input, reference):
    labels = torch.tensor([[1, 0, 0, 1, 0, 0, 1], [0, 1, 0, 0, 0, 0, 0]], dtype=torch.float32)
    teacher = 1.0 - labels
    with torch.no_grad():
        outputs = teacher_student_model(reference_input, labels=labels, distillation_labels=teacher)
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    expected = (bce(outputs.logits, labels) + bce(outputs.distillation_logits, teacher)) / 2
    torch.testing.assert_close(outputs.loss, expected)
    # The logits stay the main head's (the original's), whatever the distillation head says.
    _close(outputs.logits, reference["logits"])
    tokens = teacher_student_model.maest(reference_input).last_hidden_state[:, 1]
    head_dist = torch.load(FIXTURES / "tiny_native_state_dict.pt", weights_only=True)
    expected_distillation = tokens @ head_dist["head_dist.weight"].T + head_dist["head_dist.bias"]
    torch.testing.assert_close(outputs.distillation_logits, expected_distillation)


def test_without_teacher_labels_the_distillation_head_learns_the_labels(teacher_student_model, reference_input):
    """The head always takes part in the loss, so training reaches every parameter (DDP without unused-parameter
    detection stalls otherwise): on the ground truth when no teacher labels are given, weighted as in the recipe."""
    model = copy.deepcopy(teacher_student_model).train()
    labels = torch.tensor([[1, 0, 0, 1, 0, 0, 1], [0, 1, 0, 0, 0, 0, 0]], dtype=torch.float32)
    outputs = model(reference_input, labels=labels)
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    expected = (bce(outputs.logits, labels) + bce(outputs.distillation_logits, labels)) / 2
    torch.testing.assert_close(outputs.loss, expected)
    outputs.loss.backward()
    assert [name for name, parameter in model.named_parameters() if parameter.grad is None] == []
    assert model.classifier.distillation_dense.weight.grad.abs().sum() > 0


def test_distillation_labels_need_the_head(original_model, reference_input):
    assert original_model.classifier.distillation_dense is None  # the reference shape leaves the head out
    with pytest.raises(ValueError, match="distillation_labels need a model with use_distillation_head=True"):
        original_model(reference_input, distillation_labels=torch.zeros(2, 7))


def test_every_parameter_is_initialized_when_missing_from_a_checkpoint(tmp_path, tiny_config):
    MAESTModel(tiny_config).save_pretrained(tmp_path)
    model = MAESTForAudioClassification.from_pretrained(tmp_path)
    for name, parameter in model.named_parameters():
        assert torch.isfinite(parameter).all(), name
        assert parameter.abs().max() < 10, name
    assert torch.equal(model.classifier.layernorm.weight, torch.ones(tiny_config.hidden_size))
    fresh = MAESTModel(tiny_config)
    # Tokens and position embeddings get a truncated normal, not zeros or uninitialized memory.
    std = fresh.embeddings.time_position_embeddings.std().item()
    assert 0.01 < std < 0.03


_DDP_SCRIPT = """
import os, sys, torch, torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from maest import MAESTConfig, MAESTForAudioClassification

class WithUnusedLayerForAudioClassification(MAESTForAudioClassification):
    def __init__(self, config):
        super().__init__(config)
        self.unused = torch.nn.Linear(2, 2)

def train(model_class, config):
    torch.manual_seed(0)
    model = model_class(config).train()
    model.gradient_checkpointing_enable()
    ddp = DistributedDataParallel(model, find_unused_parameters=False)
    try:
        for _ in range(2):  # DDP reports parameters without a gradient when the next step starts
            ddp(torch.randn(2, 128, 96), labels=torch.eye(7)[[1, 4]]).loss.backward()
    except RuntimeError as error:
        return "unused parameters" if "finished reduction in the prior iteration" in str(error) else repr(error)
    return "trained"

os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[1])
dist.init_process_group("gloo", rank=0, world_size=1)
print(train(MAESTForAudioClassification, MAESTConfig.from_preset("maest-tiny", use_distillation_head=True)))
print(train(WithUnusedLayerForAudioClassification, MAESTConfig.from_preset("maest-tiny")))
dist.destroy_process_group()
"""


@pytest.mark.slow
def test_ddp_with_gradient_checkpointing_trains_the_distillation_head_without_unused_parameter_detection():
    """As the Trainer runs DistributedDataParallel: no unused-parameter detection, gradient checkpointing on. A model
    with the distillation head trains on plain labels; the control, a model with a layer outside the loss, fails."""
    import socket
    import subprocess
    import sys

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = str(probe.getsockname()[1])
    result = subprocess.run(
        [sys.executable, "-c", _DDP_SCRIPT, port], capture_output=True, text=True, timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["trained", "unused", "parameters"]
