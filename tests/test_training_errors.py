"""What `maest pretrain` does with a new user's mistakes: each one is refused with one line that names the problem
(never a traceback), and nothing finished is lost."""

import json
import re
import shutil
import time

import pytest
import torch
import yaml

from maest.training.checkpoints import PretrainCheckpointError, list_checkpoints
from maest.training.config import ConfigError
from maest.training.data import DataQualityError, TagVocabulary, TrainingDataError, load_streaming_dataset
from maest.training.pretrain import PretrainConfig, Pretrainer, pretrain
from maest.utils.errors import MAESTError

from test_training_pretrain import tiny_settings


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from maest.synthetic import write_corpus

    directory = tmp_path_factory.mktemp("corpus")
    write_corpus(directory, num_tracks=12, seconds=2.0, seed=3)
    return directory


@pytest.fixture(scope="module")
def stopped_run(corpus, tmp_path_factory):
    """A run stopped after 2 steps, with its checkpoints (copied by the tests that damage them)."""
    output_dir = tmp_path_factory.mktemp("stopped") / "run"
    settings = tiny_settings(corpus, output_dir, stop_after_steps=2, validation_data=None, model_card=False)
    assert pretrain(PretrainConfig(**settings)) is None
    return output_dir, settings


def one_line(error) -> str:
    message = str(error.value)
    assert "\n" not in message and "Traceback" not in message, message
    return message


def resume_copy(stopped_run, tmp_path, damage):
    output_dir, settings = stopped_run
    copy = tmp_path / "run"
    shutil.copytree(output_dir, copy)
    damage(list_checkpoints(copy)[-1])
    return Pretrainer(PretrainConfig(**{**settings, "output_dir": str(copy), "resume": "latest"}))


def test_reusing_an_output_dir_needs_resume_or_overwrite(stopped_run, tmp_path):
    output_dir, settings = stopped_run
    with pytest.raises(MAESTError, match="already holds a pre-training run .*--resume.*--overwrite") as caught:
        Pretrainer(PretrainConfig(**settings))
    assert str(output_dir) in one_line(caught)
    # --overwrite starts afresh: the earlier run's files are gone before anything is written.
    copy = tmp_path / "run"
    shutil.copytree(output_dir, copy)
    (copy / "labels.txt").write_text("stale\n")
    Pretrainer(PretrainConfig(**{**settings, "output_dir": str(copy), "overwrite": True}))
    assert not (copy / "labels.txt").exists() and not list_checkpoints(copy)


def test_checkpoint_without_trainer_state_is_called_incomplete(stopped_run, tmp_path):
    trainer = resume_copy(stopped_run, tmp_path, lambda path: (path / "trainer_state_0.json").unlink())
    with pytest.raises(PretrainCheckpointError, match="not a complete pre-training checkpoint") as caught:
        trainer.run()
    assert "processes" not in one_line(caught)


def test_truncated_checkpoint_is_named(stopped_run, tmp_path):
    def truncate(path):
        weights = path / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:1000])

    trainer = resume_copy(stopped_run, tmp_path, truncate)
    with pytest.raises(PretrainCheckpointError, match="cannot be loaded") as caught:
        trainer.run()
    assert "step-00000002" in one_line(caught)


class NotATensor:
    pass


def test_pickled_objects_in_a_checkpoint_are_refused(stopped_run, tmp_path):
    def plant_pickle(path):
        torch.save({"state": NotATensor(), "param_groups": []}, path / "optimizer.bin")

    trainer = resume_copy(stopped_run, tmp_path, plant_pickle)
    with pytest.raises(PretrainCheckpointError, match="cannot be loaded") as caught:
        trainer.run()
    one_line(caught)


def test_pickled_init_from_and_teacher_are_refused(corpus, tmp_path):
    torch.save({"model": NotATensor()}, tmp_path / "weights.pt")
    for key in ("init_from", "teacher_model"):
        settings = tiny_settings(corpus, tmp_path / key, validation_data=None, **{key: str(tmp_path / "weights.pt")})
        with pytest.raises(MAESTError) as caught:
            Pretrainer(PretrainConfig(**settings)).run()
        assert "weights.pt" in one_line(caught)


@pytest.mark.parametrize("preset", ["maest-tiny", "maest-30s-519l"])
def test_the_datas_vocabulary_sets_the_label_count(corpus, tmp_path, preset):
    settings = tiny_settings(corpus, tmp_path / "run", model_preset=preset, validation_data=None)
    trainer = Pretrainer(PretrainConfig(**settings))
    vocabulary = TagVocabulary(["a", "b", "c"], counts={"a": 1, "b": 1, "c": 1})
    model, _ = trainer.build_model(vocabulary)
    assert model.config.num_labels == 3 and model.config.id2label == {0: "a", 1: "b", 2: "c"}
    frames = model.config.max_length
    loss = model(torch.zeros(2, frames, model.config.num_mel_bins), labels=torch.zeros(2, 3)).loss
    assert torch.isfinite(loss)


def test_bad_data_folders_are_named(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(TrainingDataError, match="the data folder .*empty is empty"):
        load_streaming_dataset(str(tmp_path / "empty"))
    (tmp_path / "meta").mkdir()
    (tmp_path / "meta" / "metadata.jsonl").write_text("")
    (tmp_path / "meta" / "a.wav").write_bytes(b"RIFF")
    with pytest.raises(TrainingDataError, match="metadata.jsonl is empty: it needs one line per audio file"):
        load_streaming_dataset(str(tmp_path / "meta"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_streaming_dataset(str(tmp_path / "missing"))
    with pytest.raises(TrainingDataError, match="'no/such-folder' cannot be read as a reachable Hub dataset") as caught:
        load_streaming_dataset("no/such-folder")
    one_line(caught)


def test_an_all_corrupt_dataset_is_one_line(tmp_path):
    folder = tmp_path / "corrupt"
    folder.mkdir()
    rows = []
    for index in range(6):
        (folder / f"{index}.wav").write_bytes(b"RIFF....WAVEfmt not audio at all")
        rows.append(json.dumps({"file_name": f"{index}.wav", "tags": ["rock"] if index % 2 else ["jazz"]}))
    (folder / "metadata.jsonl").write_text("\n".join(rows) + "\n")
    settings = tiny_settings(tmp_path, tmp_path / "run", train_data=str(folder), validation_data=None, num_workers=1)
    with pytest.raises(DataQualityError, match="a whole pass over the data gave no usable example") as caught:
        Pretrainer(PretrainConfig(**settings)).run()
    assert "Original Traceback" not in one_line(caught) and "DataLoader worker" not in str(caught.value)


def test_no_train_data_is_refused_before_anything_is_written(tmp_path):
    from maest.training.config import ConfigError

    with pytest.raises(ConfigError, match="set train_data") as caught:
        Pretrainer(PretrainConfig(output_dir=str(tmp_path / "run")))
    one_line(caught)
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------------------------- every setting checked
def run_pretrain_command(capsys, *arguments) -> tuple[int, str]:
    """`maest pretrain ...` in this process: its exit status and its one error line (asserted to be the only output
    on stderr that is not a log line)."""
    from maest.cli import main

    status = main(["pretrain", *map(str, arguments)])
    stderr = capsys.readouterr().err
    assert "Traceback" not in stderr and "internal error" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == (status != 0), stderr
    return status, errors[0] if errors else ""


@pytest.mark.parametrize(
    "line, message",
    [
        # YAML's own NaN and infinity are floats: before, `.nan` reached AdamW (exit 70) and `.inf` trained.
        ("learning_rate: .nan", "learning_rate must be a finite number; got nan"),
        ("epochs: .inf", "epochs must be a finite number; got inf"),
        ("warmup_epochs: .nan", "warmup_epochs must be a finite number; got nan"),
        ("decay_start_epoch: -1", "decay_start_epoch must be at least 0; got -1.0"),
        ("distillation_threshold: 2", r"distillation_threshold must be in \[0, 1\]; got 2.0"),
        ("seed: -1", "seed must be at least 0; got -1"),
        ("model_preset: maest-50s", "model_preset must be one of maest-5s, .*; got 'maest-50s'"),
        # The model overrides: MAESTConfig's names and types (before: a strict-dataclass traceback, exit 70).
        ("model: {hidden_size: big}", "model.hidden_size must be an integer; got 'big'"),
        ("model: {hidden_dropout_prob: .nan}", "model.hidden_dropout_prob must be a finite number; got nan"),
        # Ranges: MAESTConfig's own checks, run before anything is read or written.
        ("model: {hidden_dropout_prob: 1.5}", r"model overrides\): hidden_dropout_prob must be in \[0, 1\), got 1.5"),
        ("model: {layer_norm_eps: 0}", r"model overrides\): layer_norm_eps must be a positive finite number, got 0.0"),
        ("model: {hidden_sise: 192}", "model.hidden_sise is not a MAEST model setting; they are: hidden_size, "),
        ("model: {num_labels: 3}", "model.num_labels cannot be set: pre-training takes it from the data's label"),
    ],
)
def test_every_setting_is_checked_with_one_line(tmp_path, capsys, line, message):
    (tmp_path / "settings.yaml").write_text(f"train_data: {tmp_path}\n{line}\n")
    status, error = run_pretrain_command(capsys, tmp_path / "settings.yaml", "--output_dir", tmp_path / "run")
    assert status == 2
    assert re.search(message, error), error
    assert not (tmp_path / "run").exists()


def test_nan_on_the_command_line_is_refused(tmp_path, capsys):
    status, error = run_pretrain_command(capsys, "--train_data", tmp_path, "--learning_rate", "nan")
    assert status == 2 and error == "error: command line: learning_rate must be a finite number; got nan"


def test_a_model_shape_that_cannot_be_built_is_refused_before_the_data_is_read(corpus, tmp_path):
    settings = tiny_settings(corpus, tmp_path / "run", train_data=str(tmp_path / "no-such-data"),
                             model=dict(max_length=106, hidden_size=33, num_attention_heads=2))
    with pytest.raises(ConfigError, match=r"hidden_size \(33\) must be divisible by num_attention_heads \(2\)"):
        Pretrainer(PretrainConfig(**settings))  # the data folder does not exist: the shape is checked first
    assert not (tmp_path / "run").exists()


def test_an_output_dir_that_is_a_file_is_refused(corpus, tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine\n")
    (tmp_path / "settings.yaml").write_text(yaml.safe_dump(tiny_settings(corpus, tmp_path / "notes.txt")))
    status, error = run_pretrain_command(capsys, tmp_path / "settings.yaml")
    assert status == 2 and error == f"error: output_dir {tmp_path / 'notes.txt'} is a file, not a directory"
    assert (tmp_path / "notes.txt").read_text() == "mine\n"


def test_a_batch_larger_than_an_epoch_is_refused_before_anything_runs(corpus, tmp_path, capsys):
    """Before: "0.0 steps per epoch" in the log, then decoding a million examples from an 8-example stream."""
    (tmp_path / "settings.yaml").write_text(yaml.safe_dump(tiny_settings(corpus, tmp_path / "run")))
    status, error = run_pretrain_command(capsys, tmp_path / "settings.yaml", "--batch_size", "1000000")
    assert status == 2
    assert error == (
        "error: samples_per_epoch (8) is smaller than one optimizer step (1000000 samples = batch_size 1000000 x "
        "gradient_accumulation_steps 1 x 1 process(es)); lower batch_size or raise samples_per_epoch"
    )
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("num_workers", [0, 1])
def test_a_batch_larger_than_the_data_is_an_error_not_a_hang(corpus, tmp_path, num_workers):
    """The training stream repeats forever: a batch larger than one pass over the data would never be filled with
    new examples (and a huge one fills memory). Refused at the end of the first pass, from a worker process too."""
    num_examples = len((corpus / "train" / "metadata.jsonl").read_text().splitlines())
    settings = tiny_settings(corpus, tmp_path / "run", batch_size=1000, samples_per_epoch=10**6,
                             num_workers=num_workers, validation_data=None, model_card=False)
    started = time.perf_counter()
    with pytest.raises(TrainingDataError) as caught:
        Pretrainer(PretrainConfig(**settings)).run()
    assert one_line(caught) == (
        f"batch_size 1000 is larger than the data: a whole pass over the training data has {num_examples} "
        f"examples; set batch_size to at most {num_examples}"
    )
    assert time.perf_counter() - started < 120


def test_a_missing_data_folder_is_called_missing_not_empty(tmp_path):
    for data_format in ("audiofolder", "parquet", "webdataset"):
        with pytest.raises(FileNotFoundError, match=f"'{tmp_path / 'missing'}' does not exist \\(data_format {data_format}\\)"):
            load_streaming_dataset(str(tmp_path / "missing"), data_format=data_format)


def test_demo_mistakes_are_one_line(tmp_path, capsys):
    """Before: a negative seed and an --output-dir naming a file were exit 70 with a traceback."""
    from maest.cli import main

    with pytest.raises(SystemExit) as caught:
        main(["demo", "--quick", "--seed", "-1", "--output-dir", str(tmp_path / "demo")])
    assert caught.value.code == 2
    assert "argument --seed: must be in [0, 4294967295], got -1" in capsys.readouterr().err
    (tmp_path / "notes.txt").write_text("mine\n")
    status, error = main(["demo", "--quick", "--output-dir", str(tmp_path / "notes.txt")]), capsys.readouterr().err
    assert status == 2 and error == f"error: --output-dir {tmp_path / 'notes.txt'} is a file, not a folder\n"
    assert not (tmp_path / "demo").exists() and (tmp_path / "notes.txt").read_text() == "mine\n"
