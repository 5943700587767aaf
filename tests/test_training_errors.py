"""What `maest pretrain` does with a new user's mistakes: each one is refused with one line that names the problem
(never a traceback), and nothing finished is lost."""

import json
import shutil

import pytest
import torch

from maest.errors import MAESTError
from maest.training.checkpoints import PretrainCheckpointError, list_checkpoints
from maest.training.data import DataQualityError, TagVocabulary, TrainingDataError, load_streaming_dataset
from maest.training.pretrain import PretrainConfig, Pretrainer, pretrain

from test_training_pretrain import tiny_settings


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from maest.training.synthetic import write_corpus

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
