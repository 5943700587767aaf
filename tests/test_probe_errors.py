"""What `maest probe` does with a user's mistakes: one line on stderr and exit status 2, never a traceback (exit 70).
Settings are checked before the model is loaded or anything is embedded, and an earlier probe's results are only
replaced with `--overwrite`."""

import json
import shutil
from pathlib import Path

import pytest

from test_probe_embeddings import make_audiofolder


def run_probe(capsys, *arguments) -> tuple[int, str]:
    """`maest probe --quiet ...` in this process: its exit status and its error line (at most one, and no
    traceback)."""
    from maest.cli import main

    status = main(["probe", "--quiet", *map(str, arguments)])
    stderr = capsys.readouterr().err
    assert "Traceback" not in stderr and "internal error" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == (status != 0), stderr
    return status, errors[0] if errors else ""


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_audiofolder(tmp_path_factory.mktemp("probe_errors") / "data")


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    """One embedding cache for the module: each track is embedded once."""
    return tmp_path_factory.mktemp("embedding_cache")


@pytest.mark.parametrize(
    "option, value, message",
    [
        # Before: AdamW's ValueError, exit 70.
        ("--learning-rate", "nan", "learning_rate must be a finite number greater than 0, got nan"),
        ("--learning-rate", "-1", "learning_rate must be a finite number greater than 0, got -1.0"),
        # Before: NaN scores, then a traceback from the metric (exit 70).
        ("--weight-decay", "inf", "weight_decay must be a finite number at least 0, got inf"),
        ("--epochs", "0", "epochs must be an integer at least 1, got 0"),
        ("--batch-size", "0", "batch_size must be an integer at least 1, got 0"),
        ("--validation-fraction", "2", "validation_fraction must be a finite number greater than 0 and less than 1"),
        ("--test-fraction", "nan", "test_fraction must be a finite number greater than 0 and less than 1, got nan"),
        # Before: torch's RuntimeError in the first forward pass, exit 70.
        ("--extraction-batch-size", "0", "extraction_batch_size must be an integer at least 1, got 0"),
        ("--seed", "-1", r"seed must be an integer in [0, 4294967295], got -1"),
        ("--device", "bogus", "unknown device 'bogus' (use cpu, cuda or cuda:N)"),
        ("--tokens", "xyz", "token set 'xyz': Unknown embedding token 'x'"),
        ("--tokens", ",", "no token sets given"),
    ],
)
def test_bad_settings_are_refused_before_the_model_is_loaded(tmp_path, capsys, option, value, message):
    # The model does not exist: the setting's error comes first, before hours of embedding could be spent.
    status, error = run_probe(capsys, "--model", tmp_path / "no-model", "--data", tmp_path / "no-data",
                              "--output-dir", tmp_path / "out", option, value)
    assert status == 2 and error.startswith(f"error: {message}"), error
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("data", ["no-such-user/no-such-dataset", "data/not-here"])
def test_a_dataset_that_is_missing_or_not_cached_offline_is_one_line(small_model_dir, tmp_path, capsys, data):
    """Before: datasets' ConnectionError with a 26-line traceback and exit 70 (`maest pretrain` said one line)."""
    status, error = run_probe(capsys, "--model", small_model_dir, "--data", data, "--output-dir", tmp_path / "out")
    assert status == 2
    assert error.startswith(
        f"error: '{data}' cannot be read as a local dataset (no such file or folder) nor a reachable Hub dataset: "
    ), error
    assert error.endswith("offline (HF_HUB_OFFLINE), only datasets in the local cache can be read")


@pytest.mark.slow  # 22 s on 2 busy cores: two probe runs and the embeddings of 32 tracks
def test_an_earlier_probe_is_not_overwritten_without_overwrite(small_model_dir, dataset, cache_dir, tmp_path, capsys):
    common = ["--model", small_model_dir, "--data", dataset, "--cache-dir", cache_dir, "--epochs", "2",
              "--output-dir", tmp_path / "out"]
    assert run_probe(capsys, *common)[0] == 0
    earlier = {name: (tmp_path / "out" / name).read_bytes() for name in ("results.json", "results.md", "heatmap.png")}

    status, error = run_probe(capsys, *common, "--probe", "linear")
    assert status == 2 and error == (
        f"error: {tmp_path / 'out'} already holds the results of an earlier probe (results.json, results.md, "
        f"heatmap.png): pass --overwrite to replace them, or choose another --output-dir"
    )
    assert {name: (tmp_path / "out" / name).read_bytes() for name in earlier} == earlier

    assert run_probe(capsys, *common, "--probe", "linear", "--overwrite")[0] == 0
    assert json.loads((tmp_path / "out" / "results.json").read_text())["settings"]["probe"] == "linear"


def test_an_output_dir_that_is_a_file_is_refused(small_model_dir, tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine\n")
    status, error = run_probe(capsys, "--model", small_model_dir, "--data", tmp_path, "--output-dir",
                              tmp_path / "notes.txt")
    assert status == 2 and error == f"error: the output directory {tmp_path / 'notes.txt'} is a file"
    assert (tmp_path / "notes.txt").read_text() == "mine\n"


def test_test_labels_missing_from_training_are_refused(small_model_dir, dataset, cache_dir, tmp_path, capsys):
    """The README's promise: a split the probe cannot be scored on is refused (before: a warning, exit 0, and a
    chance-level label inside the macro averages)."""
    data = tmp_path / "data"
    # The same audio files through links (the embedding cache knows them by their resolved path).
    shutil.copytree(dataset, data, copy_function=lambda source, target: Path(target).symlink_to(source))
    metadata = data / "train" / "metadata.jsonl"
    metadata.unlink()
    rows = [json.loads(line) for line in (dataset / "train" / "metadata.jsonl").read_text().splitlines()]
    for row in rows:
        row["tags"] = [tag for tag in row["tags"] if tag != "whistle"] or ["bass"]
    metadata.write_text("".join(json.dumps(row) + "\n" for row in rows))
    assert any("whistle" in json.loads(line)["tags"] for line in (data / "test" / "metadata.jsonl").open())

    status, error = run_probe(capsys, "--model", small_model_dir, "--data", data, "--cache-dir", cache_dir,
                              "--epochs", "2", "--output-dir", tmp_path / "out")
    assert status == 2 and error == (
        "error: the test split has 1 label(s) that never occur in the training split (labels 'whistle'), so a probe "
        "cannot learn them; split the data so that the training split covers every test label"
    )
    assert not (tmp_path / "out" / "results.json").exists()


def test_a_streamed_file_without_the_needed_columns_is_named(small_model_dir, tmp_path, capsys):
    """A CSV's columns are known only from its rows (before: 'columns are None', then a KeyError, exit 70)."""
    (tmp_path / "tracks.csv").write_text("a,b\n1,2\n")
    common = ["--model", small_model_dir, "--data", tmp_path / "tracks.csv", "--output-dir", tmp_path / "out"]
    status, error = run_probe(capsys, *common)
    assert status == 2 and error == "error: name the label column with --label-column; the dataset's columns are ['a', 'b']"
    status, error = run_probe(capsys, *common, "--label-column", "a")
    assert status == 2 and error == "error: the dataset has no column 'audio'; its columns are ['a', 'b']"
