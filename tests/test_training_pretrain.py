"""`maest pretrain` end to end on a generated corpus: export, exact resume (also after SIGKILL), two processes."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from maest import MAESTForAudioClassification
from maest.cli.training import parse_pretrain_arguments
from maest.training.checkpoints import PretrainCheckpointError
from maest.training.config import ConfigError
from maest.training.pretrain import PretrainConfig, Pretrainer, list_checkpoints, pretrain

REPOSITORY = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from maest.synthetic import write_corpus

    directory = tmp_path_factory.mktemp("corpus")
    write_corpus(directory, num_tracks=24, seconds=2.5, seed=1)
    return directory


def tiny_settings(corpus, output_dir, **overrides):
    settings = dict(
        output_dir=str(output_dir),
        train_data=str(corpus / "train"),
        validation_data=str(corpus / "validation"),
        label_column="tags",
        model_preset="maest-5s",
        # 1.7 s crops (106 frames, 10 patch columns), a 2-block model of width 32.
        model=dict(max_length=106, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64),
        train_patchout_time=3,
        batch_size=4,
        learning_rate=1e-3,
        samples_per_epoch=8,  # 2 steps per epoch
        max_steps=6,
        warmup_epochs=1,
        decay_start_epoch=1,
        decay_epochs=2,
        swa_start_epoch=1,
        swa_update_every_epochs=0.5,
        eval_every_epochs=3,
        checkpoint_every_steps=2,
        keep_checkpoints=2,
        num_workers=1,
        shuffle_buffer_size=8,
        report_to="none",
        progress_bar=False,
        model_card=True,
    )
    settings.update(overrides)
    return settings


def final_weights(directory):
    return load_file(str(Path(directory) / "final" / "model.safetensors"))


def assert_same_weights(first, second):
    assert first.keys() == second.keys()
    for key in first:
        assert torch.equal(first[key], second[key]), key


def test_config_file_and_command_line_overrides(tmp_path):
    (tmp_path / "c.yaml").write_text("batch_size: 4\nlearning_rate: 1e-4\nmodel: {hidden_size: 32}\n")
    config = parse_pretrain_arguments(
        [str(tmp_path / "c.yaml"), "--batch_size", "8", "--model", "{hidden_size: 64}", "--swa", "false", "--resume"]
    )
    assert (config.batch_size, config.model, config.swa, config.resume) == (8, {"hidden_size": 64}, False, "latest")
    # YAML 1.1 reads 1e-4 as a string: every usual notation of a number is a number.
    assert config.learning_rate == 1e-4 and isinstance(config.learning_rate, float)
    assert parse_pretrain_arguments(["--config", str(tmp_path / "c.yaml"), "--learning_rate", "1e-3"]).learning_rate == 1e-3
    assert PretrainConfig.from_dict({"learning_rate": "2.0e-5", "samples_per_epoch": "200_000"}).samples_per_epoch == 200_000
    with pytest.raises(ConfigError, match="unknown pretrain settings: learning_rat"):
        PretrainConfig.from_dict({"learning_rat": 1.0})
    with pytest.raises(SystemExit):
        parse_pretrain_arguments(["--epochs"])


@pytest.mark.parametrize(
    "text, message",
    [
        ("batch_size: [4", "not valid YAML at line 1"),
        ("learning_rate: -1e-3", "learning_rate must be greater than 0; got -0.001"),
        ("batch_size: 0", "batch_size must be at least 1; got 0"),
        ("batch_size: four", "batch_size must be an integer; got 'four'"),
        ("max_steps: 0", "max_steps must be at least 1"),
        ("- a list", "expected a mapping of settings"),
        ("mixed_precision: fp8", "mixed_precision must be one of auto, no, bf16, fp16"),
    ],
)
def test_bad_settings_are_one_line_errors(tmp_path, text, message):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as caught:
        PretrainConfig.from_file(path)
    assert "\n" not in str(caught.value) and str(path) in str(caught.value)


def test_command_line_errors_exit_2_with_one_line(tmp_path, capsys):
    from maest.cli import main

    (tmp_path / "c.yaml").write_text("batch_size: four\n")
    assert main(["pretrain", str(tmp_path / "c.yaml")]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: {tmp_path / 'c.yaml'}: batch_size must be an integer; got 'four'"
    ]
    assert main(["pretrain", "--max_steps", "0", "--train_data", str(tmp_path)]) == 2
    assert "max_steps must be at least 1" in capsys.readouterr().err
    (tmp_path / "empty.yaml").write_text(f"output_dir: {tmp_path / 'out'}\n")
    assert main(["pretrain", str(tmp_path / "empty.yaml")]) == 2  # no train_data
    assert capsys.readouterr().err.startswith("error: set train_data")
    with pytest.raises(SystemExit) as caught:
        main(["pretrain", "--help"])
    assert caught.value.code == 0 and "CONFIG.yaml --learning_rate 1e-3" in capsys.readouterr().out


def test_pretrain_exports_the_swa_model_with_card(corpus, tmp_path):
    export = pretrain(PretrainConfig(**tiny_settings(corpus, tmp_path / "run")))
    assert export == tmp_path / "run" / "final"
    model = MAESTForAudioClassification.from_pretrained(export)
    labels = (tmp_path / "run" / "labels.txt").read_text().split()
    assert [model.config.id2label[i] for i in range(len(labels))] == labels
    assert model.config.train_patchout_time == 3 and model.config.max_length == 106
    assert (export / "preprocessor_config.json").is_file() and (export / "README.md").is_file()
    summary = json.loads((export / "training_summary.json").read_text())
    assert summary["summary"]["weights"].startswith("SWA average of")
    assert summary["validation_history"][-1]["model"]["num_examples"] == 4
    # The exported weights are the SWA average of the last checkpoint, not the last step's weights.
    last = list_checkpoints(tmp_path / "run")[-1]
    assert last.name == "step-00000006" and len(list_checkpoints(tmp_path / "run")) == 2
    averaged = {k[len("module."):]: v for k, v in load_file(str(last / "swa.safetensors")).items() if k.startswith("module.")}
    live = load_file(str(last / "model.safetensors"))
    exported = final_weights(tmp_path / "run")
    key = "maest.layers.0.mlp.fc1.weight"
    assert torch.equal(exported[key], averaged[key]) and not torch.equal(exported[key], live[key])
    data_report = json.loads((tmp_path / "run" / "data_report.json").read_text())
    assert data_report["used"] >= 24 and data_report.get("undecodable_audio", 0) == 0


def test_resume_continues_exactly(corpus, tmp_path):
    pretrain(PretrainConfig(**tiny_settings(corpus, tmp_path / "straight")))
    # Stop after 3 steps (a checkpoint is written at the stop), then resume to the end in a new trainer.
    stopped = pretrain(PretrainConfig(**tiny_settings(corpus, tmp_path / "resumed", stop_after_steps=3)))
    assert stopped is None and [p.name for p in list_checkpoints(tmp_path / "resumed")] == ["step-00000002", "step-00000003"]
    pretrain(PretrainConfig(**tiny_settings(corpus, tmp_path / "resumed", resume="latest")))
    assert_same_weights(final_weights(tmp_path / "straight"), final_weights(tmp_path / "resumed"))


def test_resume_needs_a_complete_checkpoint(corpus, tmp_path):
    (tmp_path / "half").mkdir()
    with pytest.raises(PretrainCheckpointError, match="not a complete pre-training checkpoint"):
        pretrain(PretrainConfig(**tiny_settings(corpus, tmp_path / "run", resume=str(tmp_path / "half"))))
    with pytest.raises(PretrainCheckpointError, match="resume checkpoint .*nowhere does not exist"):
        pretrain(PretrainConfig(**tiny_settings(corpus, tmp_path / "run", resume=str(tmp_path / "nowhere"))))


def _cli_config(corpus, output_dir, **overrides):
    settings = tiny_settings(corpus, output_dir, **{"max_steps": 24, "checkpoint_every_steps": 2, "keep_checkpoints": 3, **overrides})
    path = Path(str(output_dir) + ".yaml")
    path.write_text(yaml.safe_dump(settings))
    return path


@pytest.mark.slow
def test_resume_after_sigkill_is_exact(corpus, tmp_path):
    command = [sys.executable, "-m", "maest", "pretrain"]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    straight = subprocess.run(command + [str(_cli_config(corpus, tmp_path / "straight"))], env=environment,
                              capture_output=True, text=True, timeout=600)
    assert straight.returncode == 0, straight.stderr[-3000:]

    config = _cli_config(corpus, tmp_path / "killed")
    process = subprocess.Popen(command + [str(config)], env=environment, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not (tmp_path / "killed" / "checkpoints" / "step-00000006").is_dir():
        assert process.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    assert not (tmp_path / "killed" / "final").exists()
    resumed = subprocess.run(command + ["--config", str(config), "--resume"], env=environment, capture_output=True,
                             text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stderr
    assert_same_weights(final_weights(tmp_path / "straight"), final_weights(tmp_path / "killed"))


TWO_PROCESS_SCRIPT = """
import sys
from safetensors.torch import save_file
from maest.training.pretrain import PretrainConfig, Pretrainer

trainer = Pretrainer(PretrainConfig.from_file(sys.argv[1]))
trainer.run()
rank = trainer.accelerator.process_index
save_file({k: v.contiguous() for k, v in trainer.model.state_dict().items()},
          f"{trainer.output_dir}/weights_rank{rank}.safetensors")
"""


@pytest.mark.slow
def test_two_processes_read_disjoint_data_and_stay_in_sync(corpus, tmp_path):
    output_dir = tmp_path / "ddp"
    config = _cli_config(corpus, output_dir, max_steps=4, record_example_ids=True, validation_data=None, swa=False)
    script = tmp_path / "run.py"
    script.write_text(TWO_PROCESS_SCRIPT)
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
    environment = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [torchrun, "--nproc_per_node", "2", "--master_port", "29517", str(script), str(config)],
        env=environment, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    seen = []
    for rank in (0, 1):
        lines = (output_dir / f"example_ids_rank{rank}.txt").read_text().splitlines()
        assert len(lines) == 4 * 4  # 4 steps x batch 4 on each process
        seen.append({tuple(line.split("\t")[1].split(":", 1)) for line in lines})  # (pass, file)
    # Within a pass over the data the two processes read disjoint tracks (each pass reshuffles the partition).
    for pass_index in {p for p, _ in seen[0] | seen[1]}:
        files = [{f for p, f in ranks if p == pass_index} for ranks in seen]
        assert not (files[0] & files[1]), pass_index
    assert {f for _, f in seen[0] if _ == "0"} and {f for _, f in seen[1] if _ == "0"}
    assert_same_weights(load_file(str(output_dir / "weights_rank0.safetensors")),
                        load_file(str(output_dir / "weights_rank1.safetensors")))
    # Each process ran 4 steps of batch 4: 8 examples per step in all, so 2 x 4 x 4 = 32 samples.
    summary = json.loads((output_dir / "final" / "training_summary.json").read_text())["summary"]
    assert summary["samples_seen"] == 32


def test_teacher_student_with_accumulation_and_checkpointing(corpus, tmp_path):
    from maest import MAESTConfig
    from maest.training.data import TagVocabulary, load_streaming_dataset, prepare_columns

    dataset = prepare_columns(load_streaming_dataset(str(corpus / "train")), "audio", "tags")
    labels = TagVocabulary.from_dataset(dataset, "tags").names
    torch.manual_seed(0)
    teacher_config = MAESTConfig.from_preset(
        "maest-5s", max_length=106, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
        id2label=dict(enumerate(labels)), label2id={name: i for i, name in enumerate(labels)},
    )
    MAESTForAudioClassification(teacher_config).save_pretrained(tmp_path / "teacher")
    settings = tiny_settings(corpus, tmp_path / "run", teacher_model=str(tmp_path / "teacher"), max_steps=3,
                             gradient_accumulation_steps=2, gradient_checkpointing=True, checkpoint_every_steps=None,
                             validation_data=None)
    trainer = Pretrainer(PretrainConfig(**settings))
    trainer.run()
    # Two batches per optimizer step; the distillation head was trained next to the classifier.
    assert json.loads((tmp_path / "run" / "data_report.json").read_text())["used"] >= 3 * 2 * 4
    model = MAESTForAudioClassification.from_pretrained(tmp_path / "run" / "final")
    assert model.config.use_distillation_head and model.classifier.distillation_dense is not None
    assert trainer.model.maest.is_activation_checkpointing
    summary = json.loads((tmp_path / "run" / "final" / "training_summary.json").read_text())["summary"]
    assert summary["recipe"]["teacher_student"] is True and summary["recipe"]["batch_size"] == 8


def test_shipped_30s_recipe_is_the_papers():
    """The example config that ships with the package holds the paper's recipe for the 30 s model (docs/design.md,
    section 'Training recipe')."""
    import maest.training

    path = Path(maest.training.__file__).parent / "pretrain-maest-30s.yaml"
    config = PretrainConfig.from_file(path, {"train_data": "some/dataset"})
    assert (config.learning_rate, config.weight_decay, config.mixup_alpha) == (2e-5, 1e-4, 0.3)
    assert (config.warmup_epochs, config.decay_start_epoch, config.decay_epochs, config.final_lr_factor) == (5, 50, 50, 0.01)
    assert (config.epochs, config.samples_per_epoch, config.batch_size) == (130, 200_000, 12)
    assert config.swa and config.swa_start_epoch == 50 and config.export_swa
    assert config.model_preset == "maest-30s" and config.train_patchout_time == 90
