"""examples/finetune.py: MAEST with transformers' Trainer on a `datasets` dataset of generated audio, for multi-label
and single-label classification; the result saves, loads back with its new labels and carries a card."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import ClassLabel, Dataset, Features, List, Value
from huggingface_hub import ModelCard

from conftest import SMALL_MODEL_LABELS, write_audio
from maest import MAESTForAudioClassification
from maest.modeling import MAEST_AUTO_MAP as AUTO_MAP

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "finetune.py"
SOURCE_RATE = 22050  # decoded and resampled to 16 kHz by `datasets`
TONES = {"low": 220.0, "high": 1760.0}


@pytest.fixture(scope="module")
def finetune_module():
    spec = importlib.util.spec_from_file_location("maest_finetune_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _clip(tags, rng, seconds=2.5) -> np.ndarray:
    """Noise at a random level, plus a steady tone for each tag: learnable from a log-mel spectrogram."""
    t = np.arange(int(seconds * SOURCE_RATE)) / SOURCE_RATE
    audio = rng.uniform(0.01, 0.05) * rng.standard_normal(t.shape[0])
    for tag in tags:
        audio += 0.3 * np.sin(2 * np.pi * TONES[tag] * (1 + rng.uniform(-0.03, 0.03)) * t)
    return (audio / max(1.0, np.abs(audio).max())).astype(np.float32)


def _audio_files(directory: Path, tag_sets, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    return [str(write_audio(directory / f"{index}.wav", _clip(tags, rng), SOURCE_RATE)) for index, tags in enumerate(tag_sets)]


def _single_label_dataset(directory: Path, count: int, seed: int) -> Dataset:
    names = ["low", "high"]
    labels = [index % 2 for index in range(count)]
    files = _audio_files(directory, [[names[label]] for label in labels], seed)
    features = Features({"audio": Value("string"), "genre": ClassLabel(names=names)})
    return Dataset.from_dict({"audio": files, "genre": labels}, features=features)


def _multi_label_dataset(directory: Path, count: int, seed: int) -> Dataset:
    choices = [[], ["low"], ["high"], ["low", "high"]]
    tag_sets = [choices[index % 4] for index in range(count)]
    files = _audio_files(directory, tag_sets, seed)
    features = Features({"audio": Value("string"), "tags": List(Value("string"))})
    return Dataset.from_dict({"audio": files, "tags": tag_sets}, features=features)


def _check_saved(directory: Path, label_names, problem_type, base_model):
    model = MAESTForAudioClassification.from_pretrained(directory)
    assert [model.config.id2label[i] for i in range(model.config.num_labels)] == label_names
    assert model.config.problem_type == problem_type
    assert model.classifier.dense.out_features == len(label_names)
    config = json.loads((directory / "config.json").read_text())
    assert config["auto_map"] == AUTO_MAP
    for name in ("preprocessor_config.json", "configuration_maest.py", "modeling_maest.py", "feature_extraction_maest.py"):
        assert (directory / name).is_file(), name
    card = ModelCard.load(directory / "README.md")
    assert card.data.base_model is None  # a local path is no Hub id: named in the text only
    assert f"fine-tuned from `{base_model}`" in card.text
    assert ", ".join(label_names) in card.text
    return model, card


def test_single_label_finetuning(tmp_path, small_model_dir, finetune_module):
    train = _single_label_dataset(tmp_path / "train", 24, seed=0)
    evaluation = _single_label_dataset(tmp_path / "eval", 8, seed=1)
    output = tmp_path / "maest-tones"
    metrics = finetune_module.finetune(
        str(small_model_dir), train, evaluation, str(output), label_column="genre", num_frames=128, epochs=3,
        learning_rate=1e-3, batch_size=8, save_checkpoints=False, evaluate_before=True, dataset_name="tones",
    )
    assert metrics["eval_loss"] < metrics["initial_loss"]
    assert metrics["eval_accuracy"] > metrics["initial_accuracy"] or metrics["eval_accuracy"] == 1.0
    model, card = _check_saved(output, ["low", "high"], "single_label_classification", small_model_dir)
    # A new task gets a new head (the base model had 7 other labels); the base had no distillation head.
    assert model.classifier.distillation_dense is None and SMALL_MODEL_LABELS[0] not in card.text
    recorded = {result.metric_type: result.metric_value for result in card.data.eval_results}
    assert recorded == {key: round(metrics[f"eval_{key}"], 4) for key in ("accuracy", "roc_auc", "average_precision")}
    # The one-vs-rest ROC-AUC of two classes is the same for both columns; a learnable task beats chance.
    assert metrics["eval_roc_auc"] > 0.5


def test_multi_label_finetuning_through_the_command_line(tmp_path, small_model_dir, finetune_module):
    dataset_dir = tmp_path / "tags_dataset"
    from datasets import DatasetDict

    DatasetDict(
        {"train": _multi_label_dataset(tmp_path / "train", 24, seed=2), "test": _multi_label_dataset(tmp_path / "test", 8, seed=3)}
    ).save_to_disk(str(dataset_dir))
    output = tmp_path / "maest-tags"
    assert finetune_module.main([
        "--model", str(small_model_dir), "--dataset", str(dataset_dir), "--label-column", "tags",
        "--output-dir", str(output), "--epochs", "2", "--learning-rate", "1e-3", "--num-frames", "128",
        "--no-checkpoints", "--evaluate-before",
    ]) == 0
    model, card = _check_saved(output, ["high", "low"], "multi_label_classification", small_model_dir)
    assert "| eval examples | 8 (test) |" in card.text
    # Multi-label targets are multi-hot: the saved model scores each tag on its own.
    with torch.no_grad():
        logits = model.eval()(torch.randn(2, 128, 96)).logits
    assert logits.shape == (2, 2)
    recorded = json.loads((output / "finetune_metrics.json").read_text())
    assert recorded["eval"]["eval_loss"] < recorded["initial"]["initial_loss"]
    assert {result.metric_type for result in card.data.eval_results} == {"roc_auc", "average_precision"}
    assert recorded["eval"]["eval_roc_auc"] > 0.5


def test_label_column_types_are_checked(tmp_path, finetune_module):
    dataset = Dataset.from_dict({"audio": ["a.wav"], "score": [0.5]})
    with pytest.raises(ValueError, match="label column 'score' has type"):
        finetune_module.label_names_and_problem(dataset, "score")
    with pytest.raises(ValueError, match="no label column 'genre'"):
        finetune_module.label_names_and_problem(dataset, "genre")


def test_a_base_with_a_distillation_head_fine_tunes_with_every_parameter_trained(tmp_path, finetune_module):
    """A teacher-student base keeps its distillation head (new, for the new labels); with no teacher it trains on the
    labels, so one step gives every parameter a gradient, as DistributedDataParallel requires."""
    from maest import MAESTConfig

    torch.manual_seed(0)
    config = MAESTConfig.from_preset("maest-tiny", use_distillation_head=True)
    MAESTForAudioClassification(config).save_pretrained(tmp_path / "teacher-student")
    model = finetune_module.load_model_for_labels(str(tmp_path / "teacher-student"), ["low", "high"], multi_label=False)
    assert model.classifier.distillation_dense.out_features == 2
    model.train()(torch.randn(2, 128, 96), labels=torch.tensor([0, 1])).loss.backward()
    assert [name for name, parameter in model.named_parameters() if parameter.grad is None] == []
