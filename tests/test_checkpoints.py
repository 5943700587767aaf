"""Every published checkpoint layout loads, conversions round-trip, bad files are refused."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import FIXTURES
from safetensors.torch import save_file
from transformers import ASTConfig, ASTForAudioClassification

from maest import CheckpointError, MAESTForAudioClassification, MAESTModel, load_original_checkpoint
from maest.hub import convert_checkpoint
from maest.modeling import MAEST_AUTO_MAP, load_maest
from maest.modeling.conversion import maest_to_ast_state_dict

LEGACY_AST_NAMES = [
    ("layers.{i}.attention.q_proj", "encoder.layer.{i}.attention.attention.query"),
    ("layers.{i}.attention.k_proj", "encoder.layer.{i}.attention.attention.key"),
    ("layers.{i}.attention.v_proj", "encoder.layer.{i}.attention.attention.value"),
    ("layers.{i}.attention.o_proj", "encoder.layer.{i}.attention.output.dense"),
    ("layers.{i}.mlp.fc1", "encoder.layer.{i}.intermediate.dense"),
    ("layers.{i}.mlp.fc2", "encoder.layer.{i}.output.dense"),
    ("layers.{i}.layernorm_before", "encoder.layer.{i}.layernorm_before"),
    ("layers.{i}.layernorm_after", "encoder.layer.{i}.layernorm_after"),
]


@pytest.fixture(scope="module")
def original_model(tiny_config):
    return load_original_checkpoint(FIXTURES / "tiny_native_state_dict.pt", config=tiny_config)


def write_hub_ast_repo(model, directory, legacy_names: bool, labels):
    """An AST-format MAEST repo as `mtg-upf/discogs-maest-*` publishes them."""
    config = model.config
    ast_config = ASTConfig(
        hidden_size=config.hidden_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        intermediate_size=config.intermediate_size,
        layer_norm_eps=1e-6,
        num_mel_bins=96,
        max_length=(config.num_time_positions - 1) * 10 + 16,
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
    )
    ast = ASTForAudioClassification(ast_config).eval()
    ast.load_state_dict(maest_to_ast_state_dict(model.state_dict()))
    ast.save_pretrained(directory)
    if legacy_names:
        # transformers 4.x names, as stored on the Hub.
        state_dict = {k: v.contiguous() for k, v in ast.state_dict().items()}
        for i in range(config.num_hidden_layers):
            for new, old in LEGACY_AST_NAMES:
                for kind in ("weight", "bias"):
                    key = f"audio_spectrogram_transformer.{new.format(i=i)}.{kind}"
                    state_dict[f"audio_spectrogram_transformer.{old.format(i=i)}.{kind}"] = state_dict.pop(key)
        save_file(state_dict, str(directory / "model.safetensors"), metadata={"format": "pt"})
    return ast


@pytest.mark.parametrize("legacy_names", [True, False])
def test_ast_format_repo_loads_directly_and_equals_stock_ast(tmp_path, original_model, legacy_names):
    labels = [f"style {i}" for i in range(7)]
    ast = write_hub_ast_repo(original_model, tmp_path, legacy_names, labels)
    maest = load_maest(tmp_path)
    assert maest.config.model_type == "maest" and maest.config.id2label[3] == "style 3"
    assert maest.config.classifier_layer_norm_eps == 1e-6 and maest.classifier.distillation_dense is None
    inputs = torch.randn(2, 306, 96, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(maest(inputs).logits, ast(inputs).logits, atol=1e-5, rtol=1e-5)
        # What stock AST cannot do: shorter inputs, with the original's position handling.
        original_short = original_model.maest(inputs[:, :150]).pooler_output
        torch.testing.assert_close(maest.maest(inputs[:, :150]).pooler_output, original_short, atol=1e-5, rtol=1e-5)
    # The split position embeddings add up to the original ones.
    ours, original = maest.maest.embeddings, original_model.maest.embeddings
    torch.testing.assert_close(
        ours.frequency_position_embeddings + ours.time_position_embeddings,
        original.frequency_position_embeddings + original.time_position_embeddings,
    )
    bare = load_maest(tmp_path, MAESTModel)
    torch.testing.assert_close(bare(inputs).pooler_output, maest.maest(inputs).pooler_output)


def test_original_checkpoint_file_loads_through_load_maest(reference):
    model = load_maest(FIXTURES / "tiny_native_lightning.ckpt")
    # Without a config the head count is inferred as hidden_size // 64 = 1 for the tiny model, which changes the
    # outputs; an explicit config gives the original's.
    assert model.config.num_attention_heads == 1
    assert model.config.hidden_size == 64 and model.config.num_labels == 7


def test_convert_cli_writes_a_complete_directory(tmp_path, reference):
    from transformers import AutoConfig, AutoFeatureExtractor, AutoModel, AutoModelForAudioClassification

    from maest import MAESTConfig, MAESTFeatureExtractor
    from maest.cli import main

    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(f"genre {i}" for i in range(7)))
    output = tmp_path / "converted"
    status = main(["convert", str(FIXTURES / "tiny_native_lightning.ckpt"), str(output), "--preset", "maest-tiny", "--labels", str(labels)])
    assert status == 0
    config = json.loads((output / "config.json").read_text())
    assert config["model_type"] == "maest" and config["id2label"]["6"] == "genre 6"
    assert set(config["auto_map"]) == {"AutoConfig", "AutoModel", "AutoModelForAudioClassification", "AutoFeatureExtractor"}
    for name in ("modeling_maest.py", "configuration_maest.py", "feature_extraction_maest.py", "model.safetensors"):
        assert (output / name).is_file(), name
    assert isinstance(AutoConfig.from_pretrained(output), MAESTConfig)
    assert isinstance(AutoModel.from_pretrained(output), MAESTModel)
    assert isinstance(AutoFeatureExtractor.from_pretrained(output), MAESTFeatureExtractor)
    model = AutoModelForAudioClassification.from_pretrained(output)
    assert isinstance(model, MAESTForAudioClassification)
    inputs = torch.from_numpy(reference["input_b_f_t"]).transpose(1, 2)
    with torch.no_grad():
        np.testing.assert_allclose(model(inputs).logits.numpy(), reference["logits"], atol=1e-5)


def test_convert_ast_repo_to_maest_directory(tmp_path, original_model):
    write_hub_ast_repo(original_model, tmp_path / "ast", True, [f"s{i}" for i in range(7)])
    model = convert_checkpoint(tmp_path / "ast", tmp_path / "maest")
    reloaded = MAESTForAudioClassification.from_pretrained(tmp_path / "maest")
    inputs = torch.randn(1, 200, 96)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(inputs).logits, model(inputs).logits)
    assert json.loads((tmp_path / "maest" / "preprocessor_config.json").read_text())["max_length"] == 306


def test_remote_code_loads_without_the_package(tmp_path, reference, tiny_config):
    directory = tmp_path / "model"
    load_original_checkpoint(FIXTURES / "tiny_native_state_dict.pt", config=tiny_config).save_pretrained(directory)
    from maest import MAESTFeatureExtractor

    MAESTFeatureExtractor(max_length=300).save_pretrained(directory)
    np.save(tmp_path / "inputs.npy", reference["input_b_f_t"])
    script = f"""
import sys
sys.modules["maest"] = None  # the package is not importable in this process
import numpy as np, torch
from transformers import AutoFeatureExtractor, AutoModel, AutoModelForAudioClassification
model = AutoModelForAudioClassification.from_pretrained({str(directory)!r}, trust_remote_code=True)
assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
assert type(AutoModel.from_pretrained({str(directory)!r}, trust_remote_code=True)).__name__ == "MAESTModel"
extractor = AutoFeatureExtractor.from_pretrained({str(directory)!r}, trust_remote_code=True)
assert type(extractor).__name__ == "MAESTFeatureExtractor"
inputs = torch.from_numpy(np.load({str(tmp_path / "inputs.npy")!r})).transpose(1, 2)
with torch.no_grad():
    np.save({str(tmp_path / "logits.npy")!r}, model(inputs).logits.numpy())
features = extractor(np.zeros(16000, dtype=np.float32), sampling_rate=16000)["input_values"]
assert tuple(features.shape) == (1, 300, 96)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env={"HF_HUB_OFFLINE": "1", "PATH": ""})
    assert result.returncode == 0, result.stderr[-3000:]
    np.testing.assert_allclose(np.load(tmp_path / "logits.npy"), reference["logits"], atol=1e-5)


class NotATensor:
    pass


def test_bad_checkpoints_are_refused(tmp_path, tiny_config):
    corrupt = tmp_path / "corrupt.ckpt"
    corrupt.write_bytes(b"\x80\x02this is not a checkpoint" * 10)
    with pytest.raises(CheckpointError, match="corrupt.ckpt"):
        load_original_checkpoint(corrupt, config=tiny_config)

    state_dict = torch.load(FIXTURES / "tiny_native_state_dict.pt", weights_only=True)
    pickled = tmp_path / "pickled.ckpt"
    torch.save({"state_dict": state_dict, "callback": NotATensor()}, pickled)
    with pytest.raises(CheckpointError, match="only unpickles tensors"):
        load_original_checkpoint(pickled, config=tiny_config)

    text = tmp_path / "weights.pt"
    text.write_text("{}")
    with pytest.raises(CheckpointError, match="weights.pt"):
        load_original_checkpoint(text, config=tiny_config)

    no_maest = tmp_path / "other.pt"
    torch.save({"encoder.weight": torch.zeros(2)}, no_maest)
    with pytest.raises(CheckpointError, match="no MAEST weights"):
        load_original_checkpoint(no_maest, config=tiny_config)

    wrong_shape = tmp_path / "wrong.pt"
    torch.save(state_dict, wrong_shape)
    with pytest.raises(CheckpointError, match="shape"):
        load_original_checkpoint(wrong_shape, config=tiny_config.__class__.from_preset("maest-tiny", max_length=400))

    with pytest.raises(CheckpointError, match="missing.ckpt: no such checkpoint file"):
        load_original_checkpoint(tmp_path / "missing.ckpt", config=tiny_config)


def test_save_load_round_trip_keeps_everything(tmp_path, original_model):
    original_model.config.inference_patchout_time_stride = 2
    try:
        original_model.save_pretrained(tmp_path)
    finally:
        original_model.config.inference_patchout_time_stride = 1
    reloaded = MAESTForAudioClassification.from_pretrained(tmp_path)
    assert reloaded.config.inference_patchout_time_stride == 2
    reloaded.config.inference_patchout_time_stride = 1
    for (name, a), (_, b) in zip(original_model.state_dict().items(), reloaded.state_dict().items()):
        assert torch.equal(a, b), name
    # transformers' save_pretrained copies the code; the saved config names every Auto class.
    assert json.loads((tmp_path / "config.json").read_text())["auto_map"] == MAEST_AUTO_MAP
    assert (tmp_path / "modeling_maest.py").is_file() and (tmp_path / "configuration_maest.py").is_file()


def test_loading_an_original_checkpoint_leaves_the_given_config_alone(tiny_config):
    # As transformers' from_pretrained(config=...): the model gets a copy; names and later changes stay with it.
    before = tiny_config.to_dict()
    model = load_original_checkpoint(
        FIXTURES / "tiny_native_state_dict.pt", config=tiny_config, labels=[f"tag {i}" for i in range(tiny_config.num_labels)]
    )
    model.config.inference_patchout_time_stride = 2
    assert model.config is not tiny_config
    assert model.config.id2label[0] == "tag 0"
    assert tiny_config.to_dict() == before
