"""MAEST supervised pre-training with Accelerate on streamed data (`maest pretrain`).

The loop follows accelerate's examples: build data, model, optimizer and scheduler; `accelerator.prepare` the model,
optimizer and scheduler; step through batches under `accelerator.accumulate`. The streaming data loader is NOT
passed through `prepare`: each process already reads its own part of the stream (`split_dataset_by_node`), and
preparing it too would shard it twice. An epoch is `samples_per_epoch` examples (the paper's 200k), not a pass over
the data; the stream repeats (reshuffled) for as long as training runs, so every process runs the same number of
steps and gradients stay in sync.

Checkpoints (`checkpoint_every_steps`) hold Accelerate's state (model, optimizer, scheduler, RNG states), the SWA
average, and each process's data position; they are written to a temporary folder and renamed, so a killed run
leaves either a complete checkpoint or none. `--resume` continues from the latest one exactly as if the run had not
stopped.
"""

import dataclasses
import json
import logging
import math
import os
import shutil
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch
import yaml

from .data import (
    TaggedAudioStream,
    TagVocabulary,
    format_data_report,
    load_streaming_dataset,
    merge_counts,
    prepare_columns,
    stream_num_workers,
)
from .recipe import PaperSchedule, WeightAveraging, mixup, teacher_labels

logger = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "step-"
TRAINER_STATE = "trainer_state_{rank}.json"
SWA_WEIGHTS = "swa.safetensors"


@dataclasses.dataclass
class PretrainConfig:
    """Everything `maest pretrain` needs; a YAML file holds these keys, `--key value` overrides them (dotted keys
    such as `--model.hidden_size 64` set entries of `model`)."""

    output_dir: str = "maest-pretrain"
    # --- data: any `datasets` source, streamed
    train_data: str | None = None  # Hub id, audiofolder directory, tar/parquet glob or directory
    train_split: str = "train"
    validation_data: str | None = None  # defaults to train_data with validation_split
    validation_split: str | None = None
    data_format: str = "auto"  # auto, hub, audiofolder, webdataset, parquet
    data_config_name: str | None = None
    audio_column: str = "audio"
    label_column: str = "tags"
    label_format: str = "auto"  # auto, names (list or comma-separated), multi_hot
    labels_file: str | None = None  # one tag per line or JSON; built from the data when unset
    unknown_tags: str = "skip"  # skip the example, or drop the unknown tag
    teacher_logits_column: str | None = None
    max_bad_fraction: float = 0.5
    shuffle_buffer_size: int = 1000
    class_balanced_sampling: bool = True
    class_balance_power: float = 0.5  # weight of a class = count ** -power (1: fully balanced)
    num_workers: int = 2
    validation_max_examples: int | None = None
    # --- model
    model_preset: str = "maest-30s"
    model: dict = dataclasses.field(default_factory=dict)  # MAESTConfig overrides
    init_from: str | None = None  # None (random), a MAEST directory/checkpoint, PaSST or DeiT weight file
    init_format: str = "auto"
    train_patchout_time: int | None = None  # None: the paper's (30 per 10 s of input)
    train_patchout_freq: int = 0
    gradient_checkpointing: bool = False
    # --- recipe (DESIGN.md section 5)
    batch_size: int = 12  # per process
    gradient_accumulation_steps: int = 1
    learning_rate: float = 2e-5
    weight_decay: float = 1e-4
    max_grad_norm: float | None = None
    samples_per_epoch: int = 200_000
    epochs: float = 130
    max_steps: int | None = None  # overrides epochs
    warmup_epochs: float = 5
    decay_start_epoch: float = 50
    decay_epochs: float = 50
    final_lr_factor: float = 0.01
    mixup_alpha: float = 0.3  # 0 disables mixup
    swa: bool = True
    swa_start_epoch: float = 50
    swa_update_every_epochs: float = 1
    export_swa: bool = True
    teacher_model: str | None = None
    distillation_threshold: float = 0.45
    mixed_precision: str = "no"  # no, bf16, fp16
    seed: int = 0
    # --- bookkeeping
    logging_steps: int = 50
    eval_every_epochs: float | None = 1
    checkpoint_every_steps: int | None = 1000
    keep_checkpoints: int = 3
    report_to: str = "tensorboard"  # tensorboard or none
    resume: str | None = None  # "latest" or a checkpoint directory
    stop_after_steps: int | None = None  # stop (after checkpointing) at this step without finishing; for tests
    progress_bar: bool = True
    record_example_ids: bool = False  # write the examples each process trained on to example_ids_rank<r>.txt
    model_card: bool = True

    @classmethod
    def from_file(cls, path, overrides: dict | None = None) -> "PretrainConfig":
        data = {}
        if path is not None:
            with open(path) as handle:
                data = yaml.safe_load(handle) or {}
            if not isinstance(data, dict):
                raise ValueError(f"{path}: expected a mapping of settings")
        return cls.from_dict(data, overrides)

    @classmethod
    def from_dict(cls, data: dict, overrides: dict | None = None) -> "PretrainConfig":
        data = json.loads(json.dumps(data))
        for key, value in (overrides or {}).items():
            target = data
            *parents, leaf = key.replace("-", "_").split(".")
            for parent in parents:
                target = target.setdefault(parent, {})
            target[leaf] = value
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown pretrain settings: {', '.join(unknown)}")
        return cls(**data)


def parse_overrides(tokens: list[str]) -> dict:
    """`["--batch_size", "8", "--model.hidden_size", "64"]` -> `{"batch_size": 8, "model.hidden_size": 64}`; values
    are parsed as YAML scalars."""
    overrides = {}
    index = 0
    while index < len(tokens):
        token = tokens[index]
        if not token.startswith("--"):
            raise ValueError(f"expected --key value, got {token!r}")
        key = token[2:]
        if "=" in key:
            key, value = key.split("=", 1)
            index += 1
        else:
            if index + 1 >= len(tokens):
                raise ValueError(f"{token} needs a value")
            value = tokens[index + 1]
            index += 2
        overrides[key] = yaml.safe_load(value)
    return overrides


# ----------------------------------------------------------------------------------------------- metrics
def macro_roc_auc_and_map(scores: np.ndarray, targets: np.ndarray) -> dict:
    """Macro ROC-AUC and macro average precision (the project's metrics, `maest.training.metrics`) over the labels
    with both positives and negatives in `targets` `(examples, labels)`."""
    from .metrics import average_precision, roc_auc

    value, skipped = roc_auc(targets, scores)
    precision, _ = average_precision(targets, scores)
    return {"roc_auc": value, "average_precision": precision, "num_classes": int(targets.shape[1] - skipped)}


# ----------------------------------------------------------------------------------------------- checkpoints
def list_checkpoints(output_dir) -> list[Path]:
    root = Path(output_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX)]
    return sorted(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX):]))


def find_resume_checkpoint(resume: str | None, output_dir) -> Path | None:
    if not resume:
        return None
    if resume in ("latest", "auto", "true", "True"):
        checkpoints = list_checkpoints(output_dir)
        return checkpoints[-1] if checkpoints else None
    path = Path(resume)
    if not (path / TRAINER_STATE.format(rank=0)).is_file():
        raise FileNotFoundError(f"{path} is not a complete pre-training checkpoint (no {TRAINER_STATE.format(rank=0)})")
    return path


class Pretrainer:
    """Runs one pre-training job described by a [`PretrainConfig`]; `run()` returns the export directory."""

    def __init__(self, config: PretrainConfig):
        from accelerate import Accelerator
        from accelerate.utils import set_seed

        self.config = config
        self.output_dir = Path(config.output_dir)
        self.accelerator = Accelerator(
            mixed_precision=config.mixed_precision,
            gradient_accumulation_steps=config.gradient_accumulation_steps,
            step_scheduler_with_optimizer=False,
            log_with="tensorboard" if config.report_to == "tensorboard" else None,
            project_dir=str(self.output_dir),
        )
        set_seed(config.seed)
        self.is_main = self.accelerator.is_main_process
        if self.is_main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
        self.accelerator.wait_for_everyone()

    # ------------------------------------------------------------------------------------------- set-up
    def _vocabulary(self, train_dataset) -> TagVocabulary:
        config = self.config
        kwargs = dict(label_format=config.label_format, unknown_tags=config.unknown_tags)
        saved = self.output_dir / "labels.txt"
        if self.is_main and not saved.is_file():
            if config.labels_file:
                vocabulary = TagVocabulary.load(config.labels_file, **kwargs)
                if config.class_balanced_sampling and vocabulary.counts is None:
                    vocabulary = TagVocabulary.from_dataset(train_dataset, config.label_column, names=vocabulary.names, **kwargs)
            else:
                vocabulary = TagVocabulary.from_dataset(train_dataset, config.label_column, **kwargs)
            vocabulary.save(self.output_dir)
        self.accelerator.wait_for_everyone()
        # Every process (and a resumed run) reads the same saved vocabulary.
        return TagVocabulary.load(saved, **kwargs)

    def _datasets(self):
        from datasets.distributed import split_dataset_by_node

        config = self.config
        if not config.train_data:
            raise ValueError("set train_data (a Hub dataset id, an audiofolder directory, or tar/parquet files)")
        extra = [config.teacher_logits_column] if config.teacher_logits_column else []
        train = load_streaming_dataset(config.train_data, config.train_split, config.data_format, config.data_config_name)
        train = prepare_columns(train, config.audio_column, config.label_column, extra)
        vocabulary = self._vocabulary(train)
        train = train.shuffle(seed=config.seed, buffer_size=config.shuffle_buffer_size)
        validation = None
        if config.validation_data or config.validation_split:
            validation = load_streaming_dataset(
                config.validation_data or config.train_data, config.validation_split or "train", config.data_format,
                config.data_config_name,
            )
            validation = prepare_columns(validation, config.audio_column, config.label_column, extra)
        world = self.accelerator.num_processes
        if world > 1:
            # The only sharding across processes (the loader is not `prepare`d, see the module docstring).
            rank = self.accelerator.process_index
            train = split_dataset_by_node(train, rank=rank, world_size=world)
            if validation is not None:
                validation = split_dataset_by_node(validation, rank=rank, world_size=world)
        return train, validation, vocabulary

    def _model(self, vocabulary):
        from maest import MAESTConfig, MAESTFeatureExtractor, MAESTForAudioClassification

        from .initialization import load_initial_weights

        config = self.config
        model_kwargs = dict(config.model)
        model_kwargs.update(
            id2label=dict(enumerate(vocabulary.names)),
            label2id={name: i for i, name in enumerate(vocabulary.names)},
            # The distillation head only takes part in teacher-student training; an unused head would also stall
            # DistributedDataParallel, which expects a gradient for every parameter.
            use_distillation_head=bool(config.teacher_model or config.teacher_logits_column),
        )
        model_config = MAESTConfig.from_preset(config.model_preset, **model_kwargs)
        patchout = config.train_patchout_time
        if patchout is None:  # the paper's: 30 / 60 / 90 columns for 10 / 20 / 30 s inputs (about 48%)
            patchout = 30 * (model_config.max_length // 626) if model_config.max_length >= 626 else 0
        model_config.train_patchout_time = patchout
        model_config.train_patchout_freq = config.train_patchout_freq
        model_config.validate_architecture()
        model = MAESTForAudioClassification(model_config)
        self.init_report = None
        if config.init_from:
            self.init_report = load_initial_weights(model, config.init_from, config.init_format)
        if config.gradient_checkpointing:
            # transformers 5 calls it activation checkpointing (the old name is deprecated).
            (getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable)()
        feature_extractor = MAESTFeatureExtractor(max_length=model_config.max_length)
        return model, feature_extractor

    def _loader(self, dataset, vocabulary, feature_extractor, train: bool, start_positions=None):
        config = self.config
        stream = TaggedAudioStream(
            dataset,
            vocabulary,
            feature_extractor,
            batch_size=config.batch_size,
            audio_column=config.audio_column,
            label_column=config.label_column,
            teacher_logits_column=config.teacher_logits_column,
            crop="random" if train else "center",
            repeat=train,
            class_balance_power=config.class_balance_power if (train and config.class_balanced_sampling) else None,
            seed=config.seed,
            rank=self.accelerator.process_index,
            start_positions=start_positions,
            max_bad_fraction=config.max_bad_fraction,
            max_examples=None if train else config.validation_max_examples,
        )
        num_workers = stream_num_workers(dataset, config.num_workers) if config.num_workers > 0 else 0
        # A private generator: creating the loader must not draw from the global RNG (exact resume).
        generator = torch.Generator().manual_seed(config.seed)
        loader = torch.utils.data.DataLoader(
            stream, batch_size=None, num_workers=num_workers, generator=generator,
            persistent_workers=False, prefetch_factor=2 if num_workers else None,
        )
        return loader, max(1, num_workers)

    # ------------------------------------------------------------------------------------------- checkpoints
    def save_checkpoint(self, step: int, state: dict):
        accelerator = self.accelerator
        root = self.output_dir / "checkpoints"
        final = root / f"{CHECKPOINT_PREFIX}{step:08d}"
        temporary = root / f".incomplete-{CHECKPOINT_PREFIX}{step:08d}"
        if self.is_main:
            shutil.rmtree(temporary, ignore_errors=True)
            root.mkdir(parents=True, exist_ok=True)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(temporary), safe_serialization=True)
        if self.is_main and self.swa is not None:
            from safetensors.torch import save_file

            save_file({k: v.detach().cpu().contiguous() for k, v in self.swa.state_dict().items()}, str(temporary / SWA_WEIGHTS))
        with open(temporary / TRAINER_STATE.format(rank=accelerator.process_index), "w") as handle:
            json.dump(state, handle)
            handle.flush()
            os.fsync(handle.fileno())
        accelerator.wait_for_everyone()
        if self.is_main:
            if final.exists():  # re-saving a step after a resume: replace it
                shutil.rmtree(final)
            os.replace(temporary, final)
            for old in list_checkpoints(self.output_dir)[: -self.config.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)
        accelerator.wait_for_everyone()
        return final

    def load_checkpoint(self, path: Path) -> dict:
        accelerator = self.accelerator
        state_file = path / TRAINER_STATE.format(rank=accelerator.process_index)
        if not state_file.is_file():
            raise FileNotFoundError(
                f"{path} has no data position for process {accelerator.process_index}: it was written by a run with "
                f"another number of processes; resume with the same launch settings"
            )
        state = json.loads(state_file.read_text())
        if state["num_processes"] != accelerator.num_processes or state["num_workers"] != self.num_workers:
            raise ValueError(
                f"{path} was written with {state['num_processes']} process(es) x {state['num_workers']} data worker(s); "
                f"this run has {accelerator.num_processes} x {self.num_workers}. Resume with the same settings so that "
                f"every process continues from its own data position"
            )
        accelerator.load_state(str(path))
        if self.swa is not None and (path / SWA_WEIGHTS).is_file():
            from safetensors.torch import load_file

            self.swa.load_state_dict(load_file(str(path / SWA_WEIGHTS), device=str(accelerator.device)))
        return state

    # ------------------------------------------------------------------------------------------- evaluation
    @torch.no_grad()
    def evaluate(self, model, loader) -> dict:
        from accelerate.utils import gather_object

        was_training = model.training
        model.eval()
        scores, targets = [], []
        for batch in loader:
            logits = model(batch["input_values"].to(self.accelerator.device)).logits
            scores.append(torch.sigmoid(logits.float()).cpu().numpy())
            targets.append(batch["labels"].numpy())
        model.train(was_training)
        local = [(np.concatenate(scores), np.concatenate(targets))] if scores else []
        gathered = gather_object(local) if self.accelerator.num_processes > 1 else local
        if not gathered:
            return {}
        all_scores = np.concatenate([s for s, _ in gathered])
        all_targets = np.concatenate([t for _, t in gathered])
        result = macro_roc_auc_and_map(all_scores, all_targets)
        result["num_examples"] = int(len(all_scores))
        return result

    # ------------------------------------------------------------------------------------------- the loop
    def run(self) -> Path:
        from tqdm.auto import tqdm

        config = self.config
        accelerator = self.accelerator
        train_dataset, validation_dataset, vocabulary = self._datasets()
        model, feature_extractor = self._model(vocabulary)
        self.vocabulary, self.feature_extractor = vocabulary, feature_extractor

        world = accelerator.num_processes
        samples_per_step = config.batch_size * config.gradient_accumulation_steps * world
        steps_per_epoch = config.samples_per_epoch / samples_per_step
        total_steps = config.max_steps or max(1, round(config.epochs * steps_per_epoch))
        schedule = PaperSchedule(steps_per_epoch, config.warmup_epochs, config.decay_start_epoch, config.decay_epochs,
                                 config.final_lr_factor)
        optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
        unwrapped = accelerator.unwrap_model(model)
        self.model = unwrapped
        self.swa = WeightAveraging(unwrapped) if config.swa else None
        swa_start = max(1, round(config.swa_start_epoch * steps_per_epoch))
        swa_every = max(1, round(config.swa_update_every_epochs * steps_per_epoch))
        eval_every = max(1, round(config.eval_every_epochs * steps_per_epoch)) if config.eval_every_epochs else None

        teacher = None
        if config.teacher_model:
            from maest import MAESTForAudioClassification

            teacher = MAESTForAudioClassification.from_pretrained(config.teacher_model).to(accelerator.device).eval()
            teacher_labels_ = [teacher.config.id2label[i] for i in range(teacher.config.num_labels)]
            if teacher_labels_ != vocabulary.names:
                raise ValueError(
                    f"the teacher's {len(teacher_labels_)} labels differ from the vocabulary's {len(vocabulary)} (names or "
                    f"order; first teacher labels {teacher_labels_[:5]}, vocabulary {vocabulary.names[:5]}): pass the "
                    f"teacher's labels as labels_file"
                )
            teacher.requires_grad_(False)

        # The data workers' positions. Batches come round-robin from the workers, so checkpoints are taken when the
        # number of consumed batches is a multiple of the worker count: a resumed loader starts at worker 0 again.
        _, self.num_workers = self._loader(train_dataset, vocabulary, feature_extractor, True)
        state = {"step": 0, "batches": 0, "positions": {}, "counts": {}, "num_processes": world,
                 "num_workers": self.num_workers, "best": None}
        resume_from = find_resume_checkpoint(config.resume, self.output_dir)
        if resume_from is not None:
            state = self.load_checkpoint(resume_from)
            if self.is_main:
                logger.info(f"resumed from {resume_from} at step {state['step']}")
        elif config.resume and self.is_main:
            logger.info(f"no checkpoint in {self.output_dir / 'checkpoints'}; starting from the beginning")
        loader, _ = self._loader(train_dataset, vocabulary, feature_extractor, True, start_positions=state["positions"])

        if config.report_to == "tensorboard":
            scalars = {k: v for k, v in dataclasses.asdict(config).items() if isinstance(v, (int, float, str, bool))}
            accelerator.init_trackers("pretrain", config=scalars)
        if self.is_main:
            (self.output_dir / "pretrain_config.yaml").write_text(yaml.safe_dump(dataclasses.asdict(config), sort_keys=False))
            logger.info(
                f"pre-training {sum(p.numel() for p in unwrapped.parameters()):,} parameters for {total_steps} steps "
                f"({steps_per_epoch:.1f} steps per epoch of {config.samples_per_epoch} samples, {world} process(es), "
                f"{self.num_workers} data worker(s) each), {len(vocabulary)} labels"
            )

        step = state["step"]
        stop_at = min(total_steps, config.stop_after_steps or total_steps)
        progress = tqdm(total=total_steps, initial=step, desc="pre-training", disable=not (self.is_main and config.progress_bar))
        running_loss, running_count = 0.0, 0
        checkpoint_pending = False
        history = []
        started = time.perf_counter()
        data_iterator = iter(loader)
        model.train()
        while step < stop_at:
            with accelerator.accumulate(model):
                batch = next(data_iterator)
                state["batches"] += 1
                state["positions"][str(batch["worker"])] = list(batch["position"])
                state["counts"][str(batch["worker"])] = batch["counts"]
                if config.record_example_ids:
                    with open(self.output_dir / f"example_ids_rank{accelerator.process_index}.txt", "a") as handle:
                        handle.write("".join(f"{step}\t{example_id}\n" for example_id in batch["ids"]))
                input_values = batch["input_values"].to(accelerator.device)
                targets = [batch["labels"].to(accelerator.device)]
                # Teacher labels come from the unmixed input and are then mixed like the ground truth.
                if teacher is not None:
                    targets.append(teacher_labels(teacher(input_values).logits, config.distillation_threshold))
                elif "teacher_logits" in batch:
                    targets.append(teacher_labels(batch["teacher_logits"].to(accelerator.device), config.distillation_threshold))
                if config.mixup_alpha:
                    input_values, targets, _, _ = mixup(input_values, targets, config.mixup_alpha)
                outputs = model(input_values, labels=targets[0], distillation_labels=targets[1] if len(targets) > 1 else None)
                accelerator.backward(outputs.loss)
                if config.max_grad_norm and accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
                optimizer.step()
                if accelerator.sync_gradients:
                    scheduler.step()
                optimizer.zero_grad()
            running_loss += outputs.loss.detach().float().item()
            running_count += 1
            if not accelerator.sync_gradients:
                continue
            step += 1
            state["step"] = step
            progress.update(1)
            if self.swa is not None and step >= swa_start and (step - swa_start) % swa_every == 0:
                self.swa.update(unwrapped)
            if step % config.logging_steps == 0 or step == stop_at:
                logs = {"train/loss": running_loss / max(1, running_count), "train/learning_rate": scheduler.get_last_lr()[0],
                        "train/epoch": step / steps_per_epoch}
                accelerator.log(logs, step=step)
                progress.set_postfix(loss=f"{logs['train/loss']:.4f}", lr=f"{logs['train/learning_rate']:.2e}")
                running_loss, running_count = 0.0, 0
            if validation_dataset is not None and eval_every and (step % eval_every == 0 or step == total_steps):
                history.append(self._validate(model, validation_dataset, vocabulary, feature_extractor, step))
            checkpoint_due = config.checkpoint_every_steps and step % config.checkpoint_every_steps == 0
            checkpoint_pending |= bool(config.checkpoint_every_steps) and (checkpoint_due or step == stop_at)
            # A resumed loader restarts its round-robin at worker 0: checkpoint only where the next batch is worker 0's.
            if checkpoint_pending and state["batches"] % self.num_workers == 0:
                self.save_checkpoint(step, state)
                checkpoint_pending = False
        progress.close()
        elapsed = time.perf_counter() - started

        counts = self._global_counts(state["counts"])
        if self.is_main:
            logger.info(f"data: {format_data_report(counts)}")
            (self.output_dir / "data_report.json").write_text(json.dumps(dict(counts), indent=1))
        if step < total_steps:
            accelerator.end_training()
            return None
        export_dir = self._export(unwrapped, state, history, counts, total_steps, elapsed)
        accelerator.end_training()
        return export_dir

    def _global_counts(self, per_worker: dict) -> Counter:
        counts = merge_counts(per_worker)
        if self.accelerator.num_processes > 1:
            from accelerate.utils import gather_object

            total = Counter()
            for c in gather_object([dict(counts)]):
                total.update(c)
            counts = total
        return counts

    def _validate(self, model, dataset, vocabulary, feature_extractor, step) -> dict:
        loader, _ = self._loader(dataset, vocabulary, feature_extractor, train=False)
        result = {"step": step, "model": self.evaluate(model, loader)}
        if self.swa is not None and self.swa.num_averaged > 0:
            loader, _ = self._loader(dataset, vocabulary, feature_extractor, train=False)
            result["swa"] = self.evaluate(self.swa.module, loader)
        logs = {}
        for name in ("model", "swa"):
            for key in ("roc_auc", "average_precision"):
                if name in result and key in result[name]:
                    logs[f"validation/{name}_{key}"] = result[name][key]
        self.accelerator.log(logs, step=step)
        if self.is_main:
            logger.info(f"step {step} validation: " + ", ".join(f"{k} {v:.4f}" for k, v in logs.items()))
        return result

    def _export(self, unwrapped, state, history, counts, total_steps, elapsed) -> Path:
        config = self.config
        export_dir = self.output_dir / "final"
        use_swa = config.export_swa and self.swa is not None and self.swa.num_averaged > 0
        if config.export_swa and not use_swa and self.is_main:
            logger.warning("SWA had not started (swa_start_epoch is past the end of training): exporting the last weights")
        if self.is_main:
            model = self.swa.module if use_swa else unwrapped
            temporary = self.output_dir / ".incomplete-final"
            shutil.rmtree(temporary, ignore_errors=True)
            model.save_pretrained(temporary)
            self.feature_extractor.save_pretrained(temporary)
            summary = {
                "dataset": config.train_data,
                "steps": total_steps,
                "samples_seen": total_steps * config.batch_size * config.gradient_accumulation_steps * self.accelerator.num_processes,
                "epochs": round(total_steps * config.batch_size * config.gradient_accumulation_steps * self.accelerator.num_processes / config.samples_per_epoch, 3),
                "initialization": config.init_from or "random",
                "weights": f"SWA average of {self.swa.num_averaged} snapshots" if use_swa else "last step",
                "recipe": {
                    "learning_rate": config.learning_rate, "weight_decay": config.weight_decay,
                    "batch_size": config.batch_size * config.gradient_accumulation_steps * self.accelerator.num_processes,
                    "mixup_alpha": config.mixup_alpha, "train_patchout_time": unwrapped.config.train_patchout_time,
                    "class_balanced_sampling": config.class_balanced_sampling,
                    "teacher_student": bool(config.teacher_model or config.teacher_logits_column),
                    "mixed_precision": config.mixed_precision,
                },
                "data": format_data_report(counts),
                "wall_time_seconds": round(elapsed, 1),
            }
            if history and "model" in history[-1]:
                last = history[-1].get("swa" if use_swa else "model") or history[-1]["model"]
                summary["validation"] = {k: round(v, 4) for k, v in last.items() if isinstance(v, float)}
            (temporary / "training_summary.json").write_text(json.dumps({"summary": summary, "validation_history": history}, indent=1))
            if config.model_card:
                try:
                    from maest.model_cards import write_model_card
                except ImportError:
                    write_model_card = None
                if write_model_card is not None:
                    base = config.init_from if config.init_from and not Path(config.init_from).is_file() else None
                    write_model_card(temporary, model_name=self.output_dir.name, base_model=base, training_summary=summary,
                                     evaluation_results=None)
            if export_dir.exists():
                shutil.rmtree(export_dir)
            os.replace(temporary, export_dir)
            logger.info(f"saved the {'SWA ' if use_swa else ''}model to {export_dir}")
        self.accelerator.wait_for_everyone()
        return export_dir


def pretrain(config: PretrainConfig) -> Path | None:
    """Runs pre-training; returns the `save_pretrained` directory (`output_dir/final`), or `None` when the run
    stopped early (`stop_after_steps`)."""
    return Pretrainer(config).run()


__all__ = ["PretrainConfig", "Pretrainer", "macro_roc_auc_and_map", "parse_overrides", "pretrain"]
