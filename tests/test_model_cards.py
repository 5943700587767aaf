"""Model cards: Hub metadata that `huggingface_hub` parses back, the paper's figures, the released checkpoints' facts,
results from training and probes, and usage examples that run."""

import json
import re
import shutil

import pytest
import torch
from huggingface_hub import ModelCard

from conftest import FIXTURES, SMALL_MODEL_LABELS, synthetic_music, write_audio
from maest import MAESTConfig, MAESTForAudioClassification
from maest.cli import main
from maest.model_cards import CITATION_BIBTEX, build_model_card, count_parameters, write_model_card
from maest.modeling import PUBLISHED_CHECKPOINTS, find_published

# docs/design.md, section 'Downstream protocol': the 30 s model (ROC-AUC, mAP in percent), in the paper's order.
PAPER_FIGURES = [
    ("mtg-jamendo", "genre", 88.2, 21.6),
    ("mtg-jamendo", "instrument", 80.0, 22.9),
    ("mtg-jamendo", "moodtheme", 78.1, 15.4),
    ("mtg-jamendo", "top50tags", 84.0, 31.5),
    ("magnatagatune", None, 92.0, 41.9),
    ("msd", "split-1", 92.4, 40.7),
    ("msd", "split-2", 89.8, 35.4),
]
PRESET_FRAMES = {"maest-5s": 316, "maest-10s": 626, "maest-20s": 1256, "maest-30s": 1876, "maest-30s-519l": 1876}


def _metrics(card: ModelCard) -> dict:
    """{(dataset_type, dataset_config, metric_type): value} from a parsed card."""
    return {
        (result.dataset_type, result.dataset_config, result.metric_type): result.metric_value
        for result in card.data.eval_results or []
    }


def test_30s_card_carries_the_paper_figures_as_a_model_index(tmp_path):
    path = write_model_card(
        tmp_path / "maest-30s", MAESTConfig.from_preset("maest-30s"), published="discogs-maest-30s-pw-129e-swa.ckpt",
        repo_id="my-org/maest-30s",
    )
    assert path == tmp_path / "maest-30s" / "README.md"
    card = ModelCard.load(path)  # the Hub's parser
    assert card.data.model_name == "maest-30s"
    metrics = _metrics(card)
    assert len(metrics) == 2 * len(PAPER_FIGURES)
    for dataset, config, roc_auc, average_precision in PAPER_FIGURES:
        assert metrics[(dataset, config, "roc_auc")] == pytest.approx(roc_auc / 100)
        assert metrics[(dataset, config, "average_precision")] == pytest.approx(average_precision / 100)
    assert all(result.source_url == "https://arxiv.org/abs/2309.16418" for result in card.data.eval_results)
    data = card.data.to_dict()
    assert data["license"] == "cc-by-nc-sa-4.0"
    assert data["pipeline_tag"] == "audio-classification"
    assert data["library_name"] == "transformers"
    assert {"maest", "music"} <= set(data["tags"])
    text = card.text
    # The paper figures and the baseline also appear as a table (percent).
    assert "| MTG-Jamendo (genre) | 88.2 | 21.6 | 87.7 | 19.9 |" in text
    assert "| MagnaTagATune | 92.0 | 41.9 | 90.2 | 37.4 |" in text
    assert 'pipeline("audio-classification", model="my-org/maest-30s")' in text
    assert "1876 frames" in text and "1875-frame crops" in text
    assert CITATION_BIBTEX in text
    assert "Alonso-Jim" in text and "ISMIR" in text
    assert "LABEL_399" in text  # converted without label names: the card says so


@pytest.mark.parametrize("checkpoint", sorted(PUBLISHED_CHECKPOINTS))
def test_every_released_checkpoint_has_a_valid_card(tmp_path, checkpoint):
    published = PUBLISHED_CHECKPOINTS[checkpoint]
    config = MAESTConfig.from_preset(published.preset)
    card = ModelCard(str(build_model_card(tmp_path, config, published=checkpoint)))
    assert card.data.license == "cc-by-nc-sa-4.0"
    assert card.text.lstrip().startswith(f"# {published.repo_name}\n")  # maest-5s ... maest-30s-519l
    assert f"`{checkpoint}`" in card.text
    assert f"up to\n  {PRESET_FRAMES[published.preset]} frames" in card.text
    assert f"{published.num_labels} multi-label style activations" in card.text
    assert "Discogs" in card.text and "Western" in card.text and "16 kHz mono" in card.text
    if published.has_paper_results:
        assert len(card.data.eval_results) == 14
    else:
        # The paper's figures belong to the 30 s model: shown for reference, never claimed in this model's index.
        assert card.data.eval_results is None
        assert "not with this\ncheckpoint" in card.text
    if published.num_labels == 519:
        assert "about 4M tracks" in card.text
    if published.teacher_student:
        assert "Teacher-student" in card.text


def test_published_names_resolve():
    assert find_published("maest-30s").checkpoint == "discogs-maest-30s-pw-129e"
    assert find_published("/ckpts/discogs-maest-30s-pw-129e-519l-swa.ckpt").repo_name == "maest-30s-519l"
    assert find_published("discogs-maest-30s-pw-129e-swa.ckpt").repo_name == "maest-30s"
    assert find_published("discogs-maest-10s-dw-75e").initialization.startswith("DeiT")
    with pytest.raises(ValueError, match="not a released MAEST checkpoint"):
        find_published("my-model.ckpt")


def test_published_card_refuses_a_config_of_another_shape(tmp_path):
    with pytest.raises(ValueError, match="not the shape of discogs-maest-30s-pw-129e"):
        build_model_card(tmp_path, MAESTConfig.from_preset("maest-5s"), published="maest-30s")


def test_trained_card_from_training_summary_and_probe_results(tmp_path, small_model_dir):
    directory = tmp_path / "run"
    shutil.copytree(small_model_dir, directory)
    probe_results = [
        {"task": "genre", "dataset": "mtg-jamendo", "dataset_config": "genre", "split": "test", "roc_auc": 0.8712,
         "average_precision": 0.1934, "block": 6, "tokens": "cda"},
        {"task": "mood", "roc_auc": 0.75, "average_precision": 0.12},
    ]
    (directory / "probe.json").write_text(json.dumps(probe_results))
    summary = {"dataset": "my-discogs-subset", "epochs": 3, "steps": 1200,
               "recipe": {"learning_rate": 2e-5, "mixup_alpha": 0.3, "swa": True}, "notes": "kept | dropped\nretried"}
    path = write_model_card(
        directory, base_model="my-org/maest-30s", training_summary=summary, probe_results=directory / "probe.json",
        evaluation_results={"task": "styles", "eval_roc_auc": 0.91, "eval_loss": 0.2, "eval_runtime": 3.0},
    )
    card = ModelCard.load(path)
    assert card.data.base_model == "my-org/maest-30s"
    assert card.data.model_name == "run"
    metrics = _metrics(card)
    assert metrics == {
        ("mtg-jamendo", "genre", "roc_auc"): 0.8712,
        ("mtg-jamendo", "genre", "average_precision"): 0.1934,
        ("mood", None, "roc_auc"): 0.75,
        ("mood", None, "average_precision"): 0.12,
        ("styles", None, "roc_auc"): 0.91,
    }
    text = card.text
    assert "| recipe.learning_rate | 2e-05 |" in text and "| steps | 1200 |" in text
    assert "| notes | kept \\| dropped<br>retried |" in text  # one table row whatever the text holds
    assert "block=6, tokens=cda" in text
    assert "eval_loss" not in text and "runtime" not in text
    # Parameters counted from the weights file agree with the model.
    model = MAESTForAudioClassification.from_pretrained(directory)
    assert count_parameters(directory) == sum(parameter.numel() for parameter in model.parameters())
    assert f"{count_parameters(directory) / 1e3:.1f}k parameters" in text
    assert ", ".join(SMALL_MODEL_LABELS) in text
    assert "https://huggingface.co/my-org/maest-30s" in text
    local = build_model_card(directory, base_model=str(small_model_dir))
    assert local.data.base_model is None and f"`{small_model_dir}`" in local.text


@pytest.mark.parametrize(
    "results, message",
    [
        ({"task": "genre", "roc_auc": 88.2}, "outside \\[0, 1\\]"),
        ({"task": "genre", "roc_auc": float("nan")}, "finite number"),
        ({"task": "genre", "block": 6}, "has no metric"),
        ({"roc_auc": 0.8}, "needs a 'task'"),
        ("not-a-file.json", "does not exist"),
    ],
)
def test_bad_results_are_refused_with_the_reason(tmp_path, small_model_dir, results, message):
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        build_model_card(small_model_dir, probe_results=results if results != "not-a-file.json" else tmp_path / results)


def test_task_keyed_results_and_single_label_card(tmp_path):
    config = MAESTConfig(
        max_length=300, hidden_size=64, num_hidden_layers=3, num_attention_heads=4, intermediate_size=128,
        id2label={0: "calm", 1: "energetic"}, label2id={"calm": 0, "energetic": 1},
        problem_type="single_label_classification",
    )
    card = build_model_card(tmp_path, config, probe_results={"genre": {"roc_auc": 0.8}, "mood": {"mAP": 0.2}})
    assert _metrics(ModelCard(str(card))) == {("genre", None, "roc_auc"): 0.8, ("mood", None, "average_precision"): 0.2}
    text = " ".join(card.text.split())
    assert "single-label audio classification with 2 labels" in text
    assert "classes (softmax)" in text and "calm, energetic" in text


def _python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)


def test_card_usage_examples_run(tmp_path, small_model_dir):
    """The card's code, pointed at a real directory and a real file, runs and gives consistent results."""
    card = build_model_card(small_model_dir, repo_id="my-org/maest-small")
    blocks = _python_blocks(card.text)
    assert len(blocks) == 4
    track = write_audio(tmp_path / "track.wav", synthetic_music(13.0, 22050, seed=3), 22050)
    namespace = {"audio": synthetic_music(13.0, 22050, seed=3), "sampling_rate": 22050}
    for block in blocks:
        code = block.replace("my-org/maest-small", str(small_model_dir)).replace("track.mp3", str(track))
        if "pipeline(" in code:
            code = code.replace('classifier("', 'namespace_result = classifier("')
        exec(compile(code, "card", "exec"), namespace)
    assert len(namespace["namespace_result"]) == 5
    assert namespace["segments"].input_values.shape[0] == 3  # 814 frames: 2 segments of 316 + a partial one over half a segment
    assert namespace["scores"].shape == (len(SMALL_MODEL_LABELS),)
    assert namespace["track_embedding"].shape == (3 * 64,)
    assert type(namespace["model"]).__name__ == "MAESTForAudioClassification"


def _tiny_original_5s_checkpoint(path):
    """The tiny reference weights reshaped as a 5 s, 400-style released checkpoint (31 time positions)."""
    state_dict = torch.load(FIXTURES / "tiny_native_state_dict.pt", weights_only=True)
    generator = torch.Generator().manual_seed(0)
    time_positions = state_dict["time_new_pos_embed"]
    state_dict["time_new_pos_embed"] = torch.cat([time_positions, time_positions[..., -1:]], dim=-1)
    for head in ("head.1", "head_dist"):
        state_dict[f"{head}.weight"] = 0.02 * torch.randn(400, 64, generator=generator)
        state_dict[f"{head}.bias"] = torch.zeros(400)
    torch.save(state_dict, path)
    return path


def test_convert_writes_the_released_checkpoints_card_ready_to_push(tmp_path, capsys):
    source = _tiny_original_5s_checkpoint(tmp_path / "discogs-maest-5s-pw-129e-swa.ckpt")
    output = tmp_path / "maest-5s"
    assert main(["convert", str(source), str(output), "--hub-name", "my-org/maest-5s"]) == 0
    card = ModelCard.load(output / "README.md")
    assert "`discogs-maest-5s-pw-129e`" in card.text
    assert 'model="my-org/maest-5s"' in card.text
    assert "316 frames" in card.text and "312-frame crops" in card.text
    assert card.data.eval_results is None  # the paper's figures are the 30 s model's
    capsys.readouterr()
    assert main(["push", str(output), "my-org/maest-5s", "--dry-run"]) == 0
    listed = capsys.readouterr().out
    assert "README.md\n" in listed and "(generated)" not in listed


def test_convert_card_for_an_unreleased_checkpoint(tmp_path):
    output = tmp_path / "tiny"
    assert main(["convert", str(FIXTURES / "tiny_native_state_dict.pt"), str(output), "--preset", "maest-tiny",
                 "--card"]) == 0
    card = ModelCard.load(output / "README.md")
    assert "| converted from | tiny_native_state_dict.pt |" in card.text
    assert card.data.license == "cc-by-nc-sa-4.0"
    # Without --card, convert writes no card (its former behaviour).
    assert main(["convert", str(FIXTURES / "tiny_native_state_dict.pt"), str(tmp_path / "plain"), "--preset",
                 "maest-tiny"]) == 0
    assert not (tmp_path / "plain" / "README.md").exists()


def test_card_cli_never_overwrites_without_force(tmp_path, small_model_dir, capsys):
    directory = tmp_path / "model"
    shutil.copytree(small_model_dir, directory)
    (directory / "probe.json").write_text(json.dumps({"task": "genre", "roc_auc": 0.8, "average_precision": 0.2}))
    assert main(["card", str(directory), "--probe-results", str(directory / "probe.json")]) == 0
    assert _metrics(ModelCard.load(directory / "README.md"))[("genre", None, "roc_auc")] == 0.8
    (directory / "README.md").write_text("my own notes")
    assert main(["card", str(directory)]) == 2  # a usage error, not "some items failed"
    assert "--force" in capsys.readouterr().err
    assert (directory / "README.md").read_text() == "my own notes"
    assert main(["card", str(directory), "--force"]) == 0
    assert ModelCard.load(directory / "README.md").data.pipeline_tag == "audio-classification"


def test_maest_probe_report_gives_its_best_result(tmp_path):
    """A `maest probe` results.json (settings, best, every configuration) becomes one model-index entry: the best
    configuration's test scores, not its validation scores."""
    rows = [
        {"block": block, "tokens": tokens, "roc_auc": 0.80 + 0.01 * block, "average_precision": 0.20 + 0.01 * block,
         "best_epoch": 5, "validation_roc_auc": 0.99, "validation_average_precision": 0.98, "num_labels_skipped": 0,
         "history": [{"epoch": 0, "train_loss": 0.7}]}
        for block, tokens in ((5, "cda"), (6, "cd"))
    ]
    report = {
        "settings": {"model": "runs/maest", "data": "data/genre_tracks", "label_column": "genre", "probe": "mlp",
                     "num_tracks": {"train": 80, "validation": 10, "test": 10}},
        "best": {key: value for key, value in rows[1].items() if key != "history"},
        "results": rows,
    }
    (tmp_path / "results.json").write_text(json.dumps(report))
    config = MAESTConfig(max_length=300, hidden_size=64, num_hidden_layers=3, num_attention_heads=4,
                         intermediate_size=128, num_labels=7)
    card = ModelCard(str(build_model_card(tmp_path, config, probe_results=tmp_path / "results.json")))
    assert _metrics(card) == {("genre-tracks", None, "roc_auc"): 0.86, ("genre-tracks", None, "average_precision"): 0.26}
    text = " ".join(card.text.split())
    assert "| genre | genre_tracks | test | 0.8600 | 0.2600 |" in text
    assert "block=6, tokens=cd, probe=mlp" in text and "history" not in text
