"""MAEST follows transformers' model conventions (written here from transformers' documented behaviour): typed
`**kwargs` that carry `output_attentions` / `output_hidden_states`, the public attention switch, the problem type
inferred from the labels, tuple outputs, `save_pretrained` writing the code and a complete `auto_map`; and the model
package's one-place helpers (block indices, label files, the released-checkpoint registry)."""

import inspect
import json
import typing

import pytest
import torch
from torch.nn import functional
from transformers.utils import TransformersKwargs

from maest.modeling import (
    MAEST_AUTO_MAP,
    PUBLISHED_CHECKPOINTS,
    BlockIndexError,
    LabelError,
    MAESTConfig,
    MAESTConfigError,
    MAESTForAudioClassification,
    MAESTModel,
    UnknownCheckpointError,
    find_published,
    label_maps,
    match_published,
    read_label_file,
    validate_block_index,
)

pytestmark = pytest.mark.usefixtures("single_torch_thread")


@pytest.fixture()
def tiny_model(tiny_config):
    torch.manual_seed(0)
    return MAESTForAudioClassification(MAESTConfig.from_preset("maest-tiny")).eval()


def _inputs(batch: int = 2, frames: int = 200) -> torch.Tensor:
    return torch.randn(batch, frames, 96, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("model_class", [MAESTModel, MAESTForAudioClassification])
def test_forward_kwargs_are_typed_as_transformers_kwargs(model_class):
    kwargs = inspect.signature(model_class.forward).parameters["kwargs"]
    assert kwargs.kind is inspect.Parameter.VAR_KEYWORD
    assert typing.get_origin(kwargs.annotation) is typing.Unpack
    assert typing.get_args(kwargs.annotation) == (TransformersKwargs,)


def test_attentions_and_hidden_states_through_the_public_attention_switch(tiny_model):
    inputs = _inputs()
    with torch.no_grad():
        sdpa = tiny_model(inputs, output_hidden_states=True)
        tiny_model.set_attn_implementation("eager")
        eager = tiny_model(inputs, output_attentions=True, output_hidden_states=True)
    assert tiny_model.config._attn_implementation == "eager"
    num_tokens = 2 + 9 * 19  # 200 frames: 19 patch columns of 9 rows
    assert len(eager.attentions) == 3 and eager.attentions[0].shape == (2, 4, num_tokens, num_tokens)
    torch.testing.assert_close(eager.attentions[-1].sum(-1), torch.ones(2, 4, num_tokens))
    assert len(sdpa.hidden_states) == len(eager.hidden_states) == 4  # embeddings + 3 blocks
    torch.testing.assert_close(eager.logits, sdpa.logits, atol=1e-5, rtol=1e-5)


def test_return_dict_false_gives_a_tuple(tiny_model):
    with torch.no_grad():
        output = tiny_model(_inputs(), return_dict=False)
    assert isinstance(output, tuple)
    torch.testing.assert_close(output[0], tiny_model(_inputs()).logits)


def test_class_index_labels_infer_single_label(tiny_model):
    labels = torch.tensor([3, 5])
    output = tiny_model(_inputs(), labels=labels)
    torch.testing.assert_close(output.loss, functional.cross_entropy(output.logits, labels))
    assert tiny_model.config.problem_type == "single_label_classification"


def test_multi_hot_labels_stay_multi_label(tiny_model):
    labels = torch.zeros(2, 7)
    labels[0, [1, 4]] = 1
    labels[1, 6] = 1
    output = tiny_model(_inputs(), labels=labels)
    torch.testing.assert_close(output.loss, functional.binary_cross_entropy_with_logits(output.logits, labels))
    assert tiny_model.config.problem_type == "multi_label_classification"


@pytest.mark.parametrize("labels", [torch.tensor([3, 5]), torch.eye(7)[[1, 4]]], ids=["class indices", "multi-hot"])
def test_the_problem_type_survives_a_save_and_reload(tmp_path, labels):
    """An unset problem type stays unset through save_pretrained/from_pretrained and is still inferred from the
    labels afterwards, as for transformers' AST; the same call gives the same loss before and after."""
    torch.manual_seed(0)
    model = MAESTForAudioClassification(MAESTConfig.from_preset("maest-tiny")).eval()
    model.save_pretrained(tmp_path)
    reloaded = MAESTForAudioClassification.from_pretrained(tmp_path).eval()
    assert reloaded.config.problem_type is None
    with torch.no_grad():
        before, after = model(_inputs(), labels=labels), reloaded(_inputs(), labels=labels)
    torch.testing.assert_close(after.loss, before.loss)
    expected = "single_label_classification" if labels.ndim == 1 else "multi_label_classification"
    assert model.config.problem_type == reloaded.config.problem_type == expected
    # The inferred problem type is the model's from then on: it is saved, and reloads unchanged.
    reloaded.save_pretrained(tmp_path / "trained")
    assert MAESTForAudioClassification.from_pretrained(tmp_path / "trained").config.problem_type == expected


def test_the_distillation_head_is_off_unless_asked_for_and_inside_the_classifier():
    assert MAESTForAudioClassification(MAESTConfig.from_preset("maest-tiny")).classifier.distillation_dense is None
    model = MAESTForAudioClassification(MAESTConfig.from_preset("maest-tiny", use_distillation_head=True))
    # transformers finds a classifier's `num_labels`-sized Linears at the top level or inside one `*ClassificationHead`
    # module: all of MAEST's are in the head module, none at the top level.
    assert not any(isinstance(child, torch.nn.Linear) for child in model.children())
    assert type(model.classifier).__name__.endswith("ClassificationHead")
    head_linears = {name for name, child in model.classifier.named_children() if isinstance(child, torch.nn.Linear)}
    assert head_linears == {"dense", "distillation_dense"}


def test_a_maest_directory_saved_with_the_old_distillation_head_name_loads(tmp_path):
    """Directories saved when the head was a top-level `distillation_classifier` (and on by default, so their
    config.json does not name it): the model loads without the head unless asked, and with its weights if asked."""
    from safetensors.torch import load_file, save_file

    from maest import load_maest

    torch.manual_seed(0)
    model = MAESTForAudioClassification(MAESTConfig.from_preset("maest-tiny", use_distillation_head=True)).eval()
    model.save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    old = {key.replace("classifier.distillation_dense.", "distillation_classifier."): v for key, v in weights.items()}
    assert "distillation_classifier.weight" in old
    save_file(old, tmp_path / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((tmp_path / "config.json").read_text())
    del config["use_distillation_head"]
    (tmp_path / "config.json").write_text(json.dumps(config))

    plain = load_maest(tmp_path)
    assert plain.classifier.distillation_dense is None
    with torch.no_grad():
        torch.testing.assert_close(plain(_inputs()).logits, model(_inputs()).logits)
    with_head = load_maest(tmp_path, use_distillation_head=True)
    assert torch.equal(with_head.classifier.distillation_dense.weight, model.classifier.distillation_dense.weight)
    # Saving again writes the current layout.
    with_head.save_pretrained(tmp_path / "resaved")
    assert "classifier.distillation_dense.weight" in load_file(tmp_path / "resaved" / "model.safetensors")


def test_an_explicit_multi_label_problem_refuses_class_indices():
    model = MAESTForAudioClassification(MAESTConfig.from_preset("maest-tiny", problem_type="multi_label_classification"))
    with pytest.raises(ValueError, match="are class indices, but config.problem_type is 'multi_label_classification'"):
        model(_inputs(), labels=torch.tensor([3, 5]))


def test_a_single_label_problem_refuses_multi_hot_labels():
    model = MAESTForAudioClassification(MAESTConfig.from_preset("maest-tiny", problem_type="single_label_classification"))
    with pytest.raises(ValueError, match=r"labels of shape \(2, 7\) \(torch.float32\) are not class indices"):
        model(_inputs(), labels=torch.eye(7)[[1, 4]])


def test_embed_keeps_gradients_for_fine_tuning(tiny_model):
    embedding = tiny_model.maest.embed(_inputs(), block=1)
    assert embedding.requires_grad and embedding.shape == (2, 3 * 64)
    embedding.sum().backward()
    assert tiny_model.maest.embeddings.patch_embeddings.projection.weight.grad.abs().sum() > 0
    assert tiny_model.maest.layers[2].mlp.fc1.weight.grad is None  # blocks after the embedding's are not run


def test_save_pretrained_writes_the_code_and_a_complete_auto_map(tmp_path, tiny_model):
    tiny_model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["auto_map"] == MAEST_AUTO_MAP
    assert config.get("problem_type") is None  # unset, as the user left it
    assert {"modeling_maest.py", "configuration_maest.py"} <= {path.name for path in tmp_path.iterdir()}


def test_block_indices():
    assert validate_block_index(0, 12) == 0
    assert validate_block_index(-1, 12) == 11
    assert MAESTConfig().block_index() == 6 and MAESTConfig().block_index(-12) == 0
    for bad in (12, -13, True, 1.0):
        with pytest.raises(BlockIndexError, match="block must be"):
            validate_block_index(bad, 12)


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"num_hidden_layers": 1_000_000}, "num_hidden_layers must be in \\[1, 256\\]"),
        ({"hidden_size": 0}, "hidden_size must be in"),
        ({"hidden_size": 16384, "num_attention_heads": 16, "intermediate_size": 65536, "num_hidden_layers": 64},
         "parameters"),
        ({"hidden_size": 65, "num_attention_heads": 4}, "divisible"),
        ({"max_length": 10**9}, "max_length must be in"),
    ],
)
def test_configs_are_bounded(settings, message):
    with pytest.raises(MAESTConfigError, match=message):
        MAESTConfig(**settings)


def test_label_files(tmp_path):
    (tmp_path / "labels.txt").write_text("rock\n\njazz\n", encoding="utf-8")
    (tmp_path / "list.json").write_text(json.dumps(["rock", "jazz"]))
    (tmp_path / "map.json").write_text(json.dumps({"1": "jazz", "0": "rock"}))
    for name in ("labels.txt", "list.json", "map.json"):
        assert read_label_file(tmp_path / name) == ["rock", "jazz"]
    assert label_maps(["rock", "jazz"]) == ({0: "rock", 1: "jazz"}, {"rock": 0, "jazz": 1})
    (tmp_path / "gap.json").write_text(json.dumps({"0": "rock", "2": "jazz"}))
    (tmp_path / "bad.json").write_text("[rock")
    for name, message in [("gap.json", "indices 0..n-1"), ("bad.json", "not valid JSON"), ("none.txt", "cannot read")]:
        with pytest.raises(LabelError, match=message):
            read_label_file(tmp_path / name)


def test_one_registry_one_matcher():
    assert match_published("maest-30s").checkpoint == "discogs-maest-30s-pw-129e"
    assert match_published("mtg-upf/discogs-maest-30s-pw-129e-519l").label_set == "discogs519"
    # A file name extending two released names is the longer one.
    assert match_published("ckpts/discogs-maest-30s-pw-129e-519l-swa.ckpt").repo_name == "maest-30s-519l"
    assert match_published("discogs-maest-30s-pw-129e-swa.ckpt").repo_name == "maest-30s"
    assert match_published("my-model.ckpt") is None
    with pytest.raises(UnknownCheckpointError, match="not a released MAEST checkpoint"):
        find_published("my-model.ckpt")
    for published in PUBLISHED_CHECKPOINTS.values():
        config = published.config()
        expected = 519 if published.checkpoint.endswith("-519l") else 400
        assert config.num_labels == published.num_labels == expected
        assert config.id2label[0] == "Blues---Boogie Woogie"
        assert config.max_length == {5: 316, 10: 626, 20: 1256, 30: 1876}[published.seconds]


@pytest.mark.parametrize("training", [False, True], ids=["eval", "training with patchout"])
def test_the_model_compiles_as_one_graph(training):
    """`_can_compile_fullgraph` holds: torch.compile(fullgraph=True) captures the forward without a graph break (the
    eager backend checks the capture without the slow code generation)."""
    assert MAESTForAudioClassification._can_compile_fullgraph
    torch.manual_seed(0)
    config = MAESTConfig.from_preset("maest-tiny", use_distillation_head=True, train_patchout_time=3)
    model = MAESTForAudioClassification(config).train(training)
    labels = torch.eye(7)[[1, 4]]
    torch.compiler.reset()
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    torch.manual_seed(1)
    output = compiled(_inputs(), labels=labels)
    torch.manual_seed(1)
    expected = model(_inputs(), labels=labels)
    torch.testing.assert_close(output.logits, expected.logits)
    torch.testing.assert_close(output.loss, expected.loss)
