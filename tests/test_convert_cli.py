"""`maest convert`: every user error is one line on stderr with exit status 2 and leaves no output behind; original
checkpoints without label names get the published Discogs style names."""

import json
import logging
import time
from importlib import resources

import pytest
import torch
from conftest import FIXTURES

from maest.cli import main
from maest.modeling import MAEST_PRESETS, load_maest

CHECKPOINT = FIXTURES / "tiny_native_lightning.ckpt"
# The package data file, read directly (not through the code under test).
DISCOGS400 = resources.files("maest.modeling").joinpath("labels", "discogs400.txt")


class NotATensor:
    pass


def _convert_error(capsys, *args) -> str:
    """Runs `maest convert ARGS`, checks the one-line error and exit status 2, returns the line."""
    assert main(["convert", *map(str, args)]) == 2
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    assert "Traceback" not in captured.err
    return lines[0]


def _bad_source(tmp_path, case: str):
    """A source that `maest convert` must refuse, and what the message must say."""
    if case == "missing file":
        return tmp_path / "missing.ckpt", "missing.ckpt: no such file or directory"
    if case == "missing directory":
        return tmp_path / "no" / "such" / "dir", "dir: no such file or directory"
    if case == "not a checkpoint":
        (tmp_path / "notes.txt").write_text("hello")
        return tmp_path / "notes.txt", "notes.txt: not a checkpoint file"
    if case == "corrupt checkpoint":
        (tmp_path / "corrupt.ckpt").write_bytes(b"this is not a checkpoint\n" * 10)
        return tmp_path / "corrupt.ckpt", "corrupt.ckpt: not a readable PyTorch checkpoint"
    if case == "pickled objects":
        torch.save({"state_dict": {}, "callback": NotATensor()}, tmp_path / "objects.ckpt")
        return tmp_path / "objects.ckpt", "only unpickles tensors"
    if case == "no MAEST weights":
        torch.save({"encoder.weight": torch.zeros(2)}, tmp_path / "other.pt")
        return tmp_path / "other.pt", "no MAEST weights found"
    directory = tmp_path / "model"
    directory.mkdir()
    if case == "pickled pytorch_model.bin in a MAEST directory":
        (directory / "config.json").write_text(json.dumps({"model_type": "maest"}))
        torch.save({"x": torch.zeros(1)}, directory / "pytorch_model.bin")
        return directory, "pytorch_model.bin: MAEST directories are loaded from safetensors only"
    if case == "directory without config.json":
        return directory, "model: not a model directory"
    if case == "config.json that is not JSON":
        (directory / "config.json").write_text("{model_type: maest")
        return directory, "config.json: not a readable config"
    if case == "config of a wrong type":
        (directory / "config.json").write_text(json.dumps({"model_type": "maest", "num_hidden_layers": "four"}))
        return directory, "invalid config: Field 'num_hidden_layers' expected int"
    raise AssertionError(case)


@pytest.mark.parametrize(
    "case",
    [
        "missing file",
        "missing directory",
        "not a checkpoint",
        "corrupt checkpoint",
        "pickled objects",
        "no MAEST weights",
        "pickled pytorch_model.bin in a MAEST directory",
        "directory without config.json",
        "config.json that is not JSON",
        "config of a wrong type",
    ],
)
def test_bad_sources_are_one_line_errors(tmp_path, capsys, case):
    source, message = _bad_source(tmp_path, case)
    assert message in _convert_error(capsys, source, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert not [path for path in tmp_path.iterdir() if ".partial-" in path.name]


@pytest.mark.parametrize(
    "field, value",
    [("num_hidden_layers", 1_000_000), ("hidden_size", 10**9), ("max_length", 10**12), ("num_labels", 10**9)],
)
def test_absurd_configs_are_refused_at_once(tmp_path, capsys, field, value):
    directory = tmp_path / "model"
    directory.mkdir()
    config = {"model_type": "maest", field: value}
    if field == "num_labels":
        config = {"model_type": "maest", "id2label": {str(i): f"l{i}" for i in range(10)}, "num_labels": 10}
        config["hidden_size"], config["num_hidden_layers"], config["intermediate_size"] = 16384, 256, 65536
        field = "parameters"
    (directory / "config.json").write_text(json.dumps(config))
    start = time.perf_counter()
    line = _convert_error(capsys, directory, tmp_path / "out")
    assert time.perf_counter() - start < 10  # no model of that size was built
    assert "invalid config" in line and field in line


def test_output_errors(tmp_path, capsys):
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "keep.txt").write_text("mine")
    assert "existing exists and is not empty; pass --overwrite" in _convert_error(capsys, CHECKPOINT, existing)
    assert (existing / "keep.txt").read_text() == "mine"

    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    assert "a_file exists and is not a directory" in _convert_error(capsys, CHECKPOINT, a_file)
    assert "does not exist" in _convert_error(capsys, CHECKPOINT, a_file / "out")  # its folder is a file
    assert "does not exist" in _convert_error(capsys, CHECKPOINT, tmp_path / "no" / "folder" / "out")

    assert main(["convert", str(CHECKPOINT), str(existing), "--overwrite"]) == 0
    assert not (existing / "keep.txt").exists() and (existing / "model.safetensors").is_file()
    assert not [path for path in tmp_path.iterdir() if path.name.startswith(".")]


def test_label_errors(tmp_path, capsys):
    out = tmp_path / "out"
    (tmp_path / "two.txt").write_text("rock\njazz\n")
    assert "2 label names for a model with 7 outputs" in _convert_error(capsys, CHECKPOINT, out, "--labels", tmp_path / "two.txt")
    (tmp_path / "empty.txt").write_text("\n\n")
    assert "empty.txt: no label names" in _convert_error(capsys, CHECKPOINT, out, "--labels", tmp_path / "empty.txt")
    (tmp_path / "repeats.txt").write_text("rock\njazz\nrock\n")
    assert "'rock' appears twice" in _convert_error(capsys, CHECKPOINT, out, "--labels", tmp_path / "repeats.txt")
    (tmp_path / "latin1.txt").write_bytes("Mus\xe9e\n".encode("latin-1"))
    assert "latin1.txt is not UTF-8" in _convert_error(capsys, CHECKPOINT, out, "--labels", tmp_path / "latin1.txt")
    assert "cannot read the label file" in _convert_error(capsys, CHECKPOINT, out, "--labels", tmp_path / "none.txt")
    assert "unknown preset 'maest-99s'" in _convert_error(capsys, CHECKPOINT, out, "--preset", "maest-99s")
    assert not out.exists()


def test_hub_id_offline_is_one_line(tmp_path, capsys):
    # conftest sets HF_HUB_OFFLINE=1: the id cannot be fetched.
    assert "'some-org/some-model' is not available offline" in _convert_error(capsys, "some-org/some-model", tmp_path / "out")


def _tiny_state_dict_with_outputs(num_labels: int) -> dict:
    state_dict = torch.load(FIXTURES / "tiny_native_state_dict.pt", weights_only=True)
    generator = torch.Generator().manual_seed(0)
    for head in ("head.1", "head_dist"):
        state_dict[f"{head}.weight"] = 0.02 * torch.randn(num_labels, 64, generator=generator)
        state_dict[f"{head}.bias"] = torch.zeros(num_labels)
    return state_dict


def test_converting_400_outputs_gives_the_discogs_style_names(tmp_path, caplog):
    torch.save(_tiny_state_dict_with_outputs(400), tmp_path / "styles.pt")
    with caplog.at_level(logging.INFO, logger="maest.modeling.label_names"):
        assert main(["convert", str(tmp_path / "styles.pt"), str(tmp_path / "out"), "--preset", "maest-tiny"]) == 0
    names = DISCOGS400.read_text(encoding="utf-8").splitlines()
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["id2label"]["0"] == names[0] and config["id2label"]["399"] == names[399]
    assert config["label2id"][names[0]] == 0
    assert any("discogs400" in record.getMessage() for record in caplog.records)


def test_other_output_counts_keep_placeholders_and_given_labels_win(tmp_path):
    torch.save(_tiny_state_dict_with_outputs(400), tmp_path / "styles.pt")
    (tmp_path / "mine.txt").write_text("\n".join(f"tag {i}" for i in range(400)))
    model = load_maest(tmp_path / "styles.pt", labels=(tmp_path / "mine.txt").read_text().splitlines())
    assert model.config.id2label[0] == "tag 0"
    assert load_maest(CHECKPOINT).config.id2label[0] == "LABEL_0"  # 7 outputs: no published set


def test_519_outputs_and_the_registry_agree(tmp_path):
    from maest.modeling import find_published

    torch.save(_tiny_state_dict_with_outputs(519), tmp_path / "styles.pt")
    model = load_maest(tmp_path / "styles.pt")
    published = find_published("discogs-maest-30s-pw-129e-519l")
    assert published.label_set == "discogs519" and model.config.id2label[518] == published.label_names()[518]
    assert MAEST_PRESETS[published.preset]["num_labels"] == 519
