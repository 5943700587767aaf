"""MAEST supervised pre-training with Accelerate on streamed data (`maest pretrain`).

The loop (`Pretrainer.run`) follows accelerate's examples: build data, model, optimizer and scheduler;
`accelerator.prepare` the model, optimizer and scheduler; step through batches under `accelerator.accumulate`. The
streaming data loader is NOT passed through `prepare`: each process already reads its own part of the stream
(`split_dataset_by_node`), and preparing it too would shard it twice. An epoch is `samples_per_epoch` examples (the
paper's 200k), not a pass over the data; the stream repeats (reshuffled) for as long as training runs, so every
process runs the same number of steps and gradients stay in sync.

Settings: `maest.training.config`; checkpoints (written atomically, `--resume` continues exactly as if the run had
not stopped): `maest.training.checkpoints`; validation metrics: `maest.training.validation`.
"""

import dataclasses
import json
import logging
import os
import pickle
import shutil
import time
from collections import Counter
from pathlib import Path

import torch
import yaml
from accelerate import Accelerator
from accelerate.utils import gather_object, set_seed
from datasets.distributed import split_dataset_by_node
from tqdm.auto import tqdm

from maest.feature_extraction import MAESTFeatureExtractor
from maest.model_cards import write_model_card
from maest.modeling import MAESTForAudioClassification, label_maps, load_maest
from maest.utils.errors import MAESTError, one_line

from .checkpoints import (
    check_output_dir,
    find_resume_checkpoint,
    list_checkpoints,
    load_checkpoint,
    remove_run_files,
    save_checkpoint,
)
from .config import ConfigError, PretrainConfig
from .data import (
    DataQualityError,
    TaggedAudioStream,
    TagVocabulary,
    TrainingDataError,
    format_data_report,
    from_worker,
    load_streaming_dataset,
    merge_counts,
    prepare_columns,
    stream_num_workers,
)
from .initialization import load_initial_weights
from .recipe import PaperSchedule, WeightAveraging, mixup, teacher_labels
from .validation import evaluate

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class TrainingPlan:
    """The run's length and the steps at which things happen, from the config and the number of processes."""

    steps_per_epoch: float
    total_steps: int
    stop_at: int  # `total_steps`, or `stop_after_steps` when earlier
    swa_start: int
    swa_every: int
    eval_every: int | None

    @classmethod
    def from_config(cls, config: PretrainConfig, num_processes: int) -> "TrainingPlan":
        samples_per_step = config.batch_size * config.gradient_accumulation_steps * num_processes
        if samples_per_step > config.samples_per_epoch:
            # Less than one step per epoch: the epoch-based schedule, SWA and validation would all round to nothing.
            raise ConfigError(
                f"samples_per_epoch ({config.samples_per_epoch}) is smaller than one optimizer step "
                f"({samples_per_step} samples = batch_size {config.batch_size} x gradient_accumulation_steps "
                f"{config.gradient_accumulation_steps} x {num_processes} process(es)); lower batch_size or raise "
                f"samples_per_epoch"
            )
        steps_per_epoch = config.samples_per_epoch / samples_per_step
        total_steps = config.max_steps or max(1, round(config.epochs * steps_per_epoch))
        return cls(
            steps_per_epoch=steps_per_epoch,
            total_steps=total_steps,
            stop_at=min(total_steps, config.stop_after_steps or total_steps),
            swa_start=max(1, round(config.swa_start_epoch * steps_per_epoch)),
            swa_every=max(1, round(config.swa_update_every_epochs * steps_per_epoch)),
            eval_every=max(1, round(config.eval_every_epochs * steps_per_epoch)) if config.eval_every_epochs else None,
        )


def resolve_mixed_precision(setting: str) -> str:
    """What `mixed_precision: auto` (the default) stands for: bf16 autocast where training runs on a CUDA GPU with
    bf16 (compute capability 8.0 and up), `no` elsewhere (CPUs, `ACCELERATE_USE_CPU=1`). Other settings as given."""
    if setting != "auto":
        return setting
    on_cpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
    if not on_cpu and torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False):
        return "bf16"
    return "no"


class Pretrainer:
    """Runs one pre-training job described by a [`PretrainConfig`]; `run()` returns the export directory."""

    def __init__(self, config: PretrainConfig):
        if not config.train_data:
            raise ConfigError("set train_data (a Hub dataset id, an audiofolder directory, or tar/parquet files)")
        self.config = config
        self.output_dir = Path(config.output_dir)
        if self.output_dir.exists() and not self.output_dir.is_dir():
            raise ConfigError(f"output_dir {self.output_dir} is a file, not a directory")
        self.mixed_precision = resolve_mixed_precision(config.mixed_precision)
        self.accelerator = Accelerator(
            mixed_precision=self.mixed_precision,
            gradient_accumulation_steps=config.gradient_accumulation_steps,
            step_scheduler_with_optimizer=False,
            log_with="tensorboard" if config.report_to == "tensorboard" else None,
            project_dir=str(self.output_dir),
        )
        set_seed(config.seed)
        # The model's shape and the run's plan are checked before anything is read or written.
        config.model_config()
        self.plan = TrainingPlan.from_config(config, self.accelerator.num_processes)
        self.is_main = self.accelerator.is_main_process
        # Every process checks before any writes: an earlier run's labels and checkpoints must not leak into this one.
        stale = check_output_dir(self.output_dir, config.resume, config.overwrite)
        self.accelerator.wait_for_everyone()
        if self.is_main:
            remove_run_files(stale)
            self.output_dir.mkdir(parents=True, exist_ok=True)
        self.accelerator.wait_for_everyone()
        self.swa = None

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
        config = self.config
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

    def build_model(self, vocabulary):
        """The model to train (labels from the data's vocabulary, whatever the preset's count) and its feature
        extractor."""
        config = self.config
        id2label, label2id = label_maps(vocabulary.names)
        model_config = config.model_config(
            id2label=id2label,
            label2id=label2id,
            num_labels=len(vocabulary),  # the data's vocabulary, whatever the preset's label count
            # The distillation head only takes part in teacher-student training; an unused head would also stall
            # DistributedDataParallel, which expects a gradient for every parameter.
            use_distillation_head=bool(config.teacher_model or config.teacher_logits_column),
        )
        model = MAESTForAudioClassification(model_config)
        self.init_report = None
        if config.init_from:
            try:
                self.init_report = load_initial_weights(model, config.init_from, config.init_format)
            except MAESTError:
                raise
            except (OSError, ValueError, RuntimeError, pickle.UnpicklingError) as error:
                raise MAESTError(f"init_from {config.init_from}: cannot be loaded ({one_line(error)})") from None
        if config.gradient_checkpointing:
            # transformers 5 calls it activation checkpointing (the old name is deprecated).
            (getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable)()
        feature_extractor = MAESTFeatureExtractor(max_length=model_config.max_length)
        return model, feature_extractor

    def _loader(self, dataset, train: bool, start_positions=None):
        config = self.config
        stream = TaggedAudioStream(
            dataset,
            self.vocabulary,
            self.feature_extractor,
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


    def _teacher(self, vocabulary):
        """The teacher of teacher-student training (frozen, eval mode), or `None`."""
        config = self.config
        if not config.teacher_model:
            return None

        try:
            teacher = load_maest(config.teacher_model)
        except MAESTError:
            raise
        except (OSError, ValueError, RuntimeError, pickle.UnpicklingError) as error:
            raise MAESTError(f"teacher_model {config.teacher_model}: cannot be loaded ({one_line(error)})") from None
        names = [teacher.config.id2label[i] for i in range(teacher.config.num_labels)]
        if names != vocabulary.names:
            raise MAESTError(
                f"the teacher's {len(names)} labels differ from the vocabulary's {len(vocabulary)} (names or order; "
                f"first teacher labels {names[:5]}, vocabulary {vocabulary.names[:5]}): pass the teacher's labels "
                f"as labels_file"
            )
        return teacher.to(self.accelerator.device).eval().requires_grad_(False)

    def _initial_state(self) -> dict:
        """The trainer state: a checkpoint's when resuming, else the start. Batches come round-robin from the data
        workers, so checkpoints are taken when the number of consumed batches is a multiple of the worker count (a
        resumed loader starts at worker 0 again)."""
        config = self.config
        state = {"step": 0, "batches": 0, "positions": {}, "counts": {}, "num_processes": self.accelerator.num_processes,
                 "num_workers": self.num_workers, "best": None}
        resume_from = find_resume_checkpoint(config.resume, self.output_dir)
        if resume_from is not None:
            state = load_checkpoint(self.accelerator, resume_from, self.swa, self.num_workers)
            if self.is_main:
                logger.info(f"resumed from {resume_from} at step {state['step']}")
        elif config.resume and self.is_main:
            logger.info(f"no checkpoint in {self.output_dir / 'checkpoints'}; starting from the beginning")
        return state

    def _start_logging(self, plan: TrainingPlan) -> None:
        config = self.config
        if config.report_to == "tensorboard":
            scalars = {k: v for k, v in dataclasses.asdict(config).items() if isinstance(v, (int, float, str, bool))}
            self.accelerator.init_trackers("pretrain", config=scalars)
        if self.is_main:
            settings = {**dataclasses.asdict(config), "model": dict(config.model)}
            (self.output_dir / "pretrain_config.yaml").write_text(yaml.safe_dump(settings, sort_keys=False))
            logger.info(
                f"pre-training {sum(p.numel() for p in self.model.parameters()):,} parameters for {plan.total_steps} "
                f"steps ({plan.steps_per_epoch:.1f} steps per epoch of {config.samples_per_epoch} samples, "
                f"{self.accelerator.num_processes} process(es), {self.num_workers} data worker(s) each), "
                f"{len(self.vocabulary)} labels"
            )

    def _next_batch(self, batches, state: dict, step: int) -> dict:
        """The next training batch; records the worker's data position in `state`."""
        try:
            batch = next(batches)
        except (DataQualityError, TrainingDataError) as error:  # re-raised by the DataLoader with the worker's traceback
            raise from_worker(error) from None
        state["batches"] += 1
        state["positions"][str(batch["worker"])] = list(batch["position"])
        state["counts"][str(batch["worker"])] = batch["counts"]
        if self.config.record_example_ids:
            with open(self.output_dir / f"example_ids_rank{self.accelerator.process_index}.txt", "a") as handle:
                handle.write("".join(f"{step}\t{example_id}\n" for example_id in batch["ids"]))
        return batch

    def _targets(self, batch: dict, input_values: torch.Tensor, teacher) -> list[torch.Tensor]:
        """The ground truth, and the teacher's labels when distilling (from the unmixed input)."""
        device, threshold = self.accelerator.device, self.config.distillation_threshold
        targets = [batch["labels"].to(device)]
        if teacher is not None:
            targets.append(teacher_labels(teacher(input_values).logits, threshold))
        elif "teacher_logits" in batch:
            targets.append(teacher_labels(batch["teacher_logits"].to(device), threshold))
        return targets

    def _after_step(self, step: int, state: dict, plan: TrainingPlan, model, validation_dataset, history) -> None:
        """SWA snapshot, validation and checkpoint, each when due."""
        if self.swa is not None and step >= plan.swa_start and (step - plan.swa_start) % plan.swa_every == 0:
            self.swa.update(self.model)
        if validation_dataset is not None and plan.eval_every and (
            step % plan.eval_every == 0 or step == plan.total_steps
        ):
            history.append(self._validate(model, validation_dataset, step))
        every = self.config.checkpoint_every_steps
        self.checkpoint_pending |= bool(every) and (step % every == 0 or step == plan.stop_at)
        # A resumed loader restarts its round-robin at worker 0: checkpoint only where the next batch is worker 0's.
        if self.checkpoint_pending and state["batches"] % self.num_workers == 0:
            save_checkpoint(self.accelerator, self.output_dir, step, state, self.swa, self.config.keep_checkpoints)
            self.checkpoint_pending = False

    # ------------------------------------------------------------------------------------------- the loop
    def run(self) -> Path | None:
        """Trains; returns the export directory (`output_dir/final`), or `None` when stopped at `stop_after_steps`."""
        config, accelerator = self.config, self.accelerator
        train_dataset, validation_dataset, self.vocabulary = self._datasets()
        model, self.feature_extractor = self.build_model(self.vocabulary)
        plan = self.plan
        optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
        schedule = PaperSchedule(plan.steps_per_epoch, config.warmup_epochs, config.decay_start_epoch,
                                 config.decay_epochs, config.final_lr_factor)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
        self.model = accelerator.unwrap_model(model)
        self.swa = WeightAveraging(self.model) if config.swa else None
        teacher = self._teacher(self.vocabulary)
        _, self.num_workers = self._loader(train_dataset, train=True)
        state = self._initial_state()
        loader, _ = self._loader(train_dataset, train=True, start_positions=state["positions"])
        self._start_logging(plan)

        step, history, self.checkpoint_pending = state["step"], [], False
        progress = tqdm(total=plan.total_steps, initial=step, desc="pre-training",
                        disable=not (self.is_main and config.progress_bar))
        running_loss = RunningMean()
        started = time.perf_counter()
        batches = iter(loader)
        model.train()
        while step < plan.stop_at:
            with accelerator.accumulate(model):
                batch = self._next_batch(batches, state, step)
                input_values = batch["input_values"].to(accelerator.device)
                targets = self._targets(batch, input_values, teacher)
                if config.mixup_alpha:
                    input_values, targets, _, _ = mixup(input_values, targets, config.mixup_alpha)
                distillation_labels = targets[1] if len(targets) > 1 else None
                loss = model(input_values, labels=targets[0], distillation_labels=distillation_labels).loss
                accelerator.backward(loss)
                if config.max_grad_norm and accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
                optimizer.step()
                if accelerator.sync_gradients:
                    scheduler.step()
                optimizer.zero_grad()
            running_loss.add(loss.detach().float().item())
            if not accelerator.sync_gradients:
                continue
            step = state["step"] = step + 1
            progress.update(1)
            if step % config.logging_steps == 0 or step == plan.stop_at:
                self._log_training(step, plan, running_loss.pop(), scheduler.get_last_lr()[0], progress)
            self._after_step(step, state, plan, model, validation_dataset, history)
        progress.close()
        return self._finish(state, history, plan, time.perf_counter() - started)

    def _log_training(self, step: int, plan: TrainingPlan, loss: float, learning_rate: float, progress) -> None:
        logs = {"train/loss": loss, "train/learning_rate": learning_rate, "train/epoch": step / plan.steps_per_epoch}
        self.accelerator.log(logs, step=step)
        progress.set_postfix(loss=f"{loss:.4f}", lr=f"{learning_rate:.2e}")

    def _finish(self, state: dict, history: list, plan: TrainingPlan, elapsed: float) -> Path | None:
        """Writes the data report and, when training is complete, exports the model."""
        counts = self._global_counts(state["counts"])
        if self.is_main:
            logger.info(f"data: {format_data_report(counts)}")
            (self.output_dir / "data_report.json").write_text(json.dumps(dict(counts), indent=1))
        export_dir = None
        if state["step"] >= plan.total_steps:
            export_dir = self._export(self.model, state, history, counts, plan.total_steps, elapsed)
        self.accelerator.end_training()
        return export_dir

    def _global_counts(self, per_worker: dict) -> Counter:
        counts = merge_counts(per_worker)
        if self.accelerator.num_processes > 1:
            total = Counter()
            for c in gather_object([dict(counts)]):
                total.update(c)
            counts = total
        return counts

    def _validate(self, model, dataset, step) -> dict:
        loader, _ = self._loader(dataset, train=False)
        result = {"step": step, "model": evaluate(self.accelerator, model, loader)}
        if self.swa is not None and self.swa.num_averaged > 0:
            loader, _ = self._loader(dataset, train=False)
            result["swa"] = evaluate(self.accelerator, self.swa.module, loader)
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
                    "mixed_precision": self.mixed_precision,
                },
                "data": format_data_report(counts),
                "wall_time_seconds": round(elapsed, 1),
            }
            if history and "model" in history[-1]:
                last = history[-1].get("swa" if use_swa else "model") or history[-1]["model"]
                summary["validation"] = {k: round(v, 4) for k, v in last.items() if isinstance(v, float)}
            (temporary / "training_summary.json").write_text(json.dumps({"summary": summary, "validation_history": history}, indent=1))
            if config.model_card:
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


class RunningMean:
    """The mean of the values added since the last `pop()`."""

    def __init__(self):
        self.total, self.count = 0.0, 0

    def add(self, value: float) -> None:
        self.total += value
        self.count += 1

    def pop(self) -> float:
        mean = self.total / max(1, self.count)
        self.total, self.count = 0.0, 0
        return mean


__all__ = ["PretrainConfig", "Pretrainer", "TrainingPlan", "list_checkpoints", "pretrain"]
