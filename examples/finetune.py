"""Fine-tune MAEST for audio classification with transformers' `Trainer`.

Works for both kinds of task on any `datasets` dataset with an audio column:

- multi-label tagging (sigmoid + binary cross-entropy, like MAEST's own Discogs styles): the label column holds a
  list of tags per example (a `Sequence`/`List` of `ClassLabel` or of strings);
- single-label classification (softmax + cross-entropy): the label column is a `ClassLabel` or a string.

The audio is decoded by `datasets` (torchcodec) at 16 kHz mono, cropped to the model's segment length (a random crop
for training, the central one for evaluation) and turned into MAEST's log-mel input by `MAESTFeatureExtractor`
inside `set_transform`, so nothing is precomputed. When the labels differ from the base model's, the classification
head is replaced by a new one sized for them (the encoder keeps its pre-trained weights). At the end the model, its
feature extractor and code are saved with a model card (`README.md`) that records the run and its evaluation, and,
with `--push-to-hub`, uploaded to the Hub in one commit.

Examples:

    # GTZAN-style single-label genre classification from a Hub dataset (its "genre" column is a ClassLabel)
    python examples/finetune.py --model my-org/maest-30s --dataset marsyas/gtzan --label-column genre \\
        --output-dir runs/maest-gtzan --epochs 10

    # multi-label tagging from a dataset saved with `save_to_disk` (a "tags" column of string lists)
    python examples/finetune.py --model runs/maest-pretrained --dataset data/my_tags --label-column tags \\
        --output-dir runs/maest-tags --push-to-hub my-org/maest-tags

Metrics: the project's macro ROC-AUC and macro average precision (`maest.training.evaluation.metrics`, `evaluate` modules that
work offline) over sigmoid scores for multi-label tasks, and over one-vs-rest softmax scores plus accuracy for
single-label ones. With checkpoints on (the default), `load_best_model_at_end` keeps the best epoch by ROC-AUC
(multi-label) or accuracy (single-label).
"""

import argparse
import copy
import json
import random
import sys
from pathlib import Path

import numpy as np
import torch
from datasets import Audio, ClassLabel, Dataset, DatasetDict, Value, load_dataset, load_from_disk
from transformers import Trainer, TrainingArguments, set_seed

from maest import MAESTFeatureExtractor, MAESTForAudioClassification
from maest.hub import push_to_hub as push_directory_to_hub  # `push_to_hub` is finetune()'s repo-id argument
from maest.model_cards import write_model_card
from maest.modeling import label_maps, load_maest
from maest.training.evaluation.metrics import load_metric


SAMPLING_RATE = 16000
HOP_SIZE = 256


# ---------------------------------------------------------------------------------------------------------------------
# Data


def load_audio_dataset(name_or_path: str, config_name: str | None = None) -> DatasetDict:
    """A `DatasetDict` from a directory written by `save_to_disk`, a local audio folder, or a Hub dataset."""
    path = Path(name_or_path)
    if path.is_dir() and any((path / name).exists() for name in ("dataset_dict.json", "state.json")):
        dataset = load_from_disk(str(path))
    elif path.is_dir():
        dataset = load_dataset("audiofolder", data_dir=str(path))
    else:
        dataset = load_dataset(name_or_path, config_name)
    return dataset if isinstance(dataset, DatasetDict) else DatasetDict({"train": dataset})


def train_eval_splits(dataset: DatasetDict, eval_split: str | None, eval_fraction: float, seed: int):
    """(train, eval, eval split name): the named split, else `validation`/`test`, else a held-out part of train."""
    if "train" not in dataset:
        raise ValueError(f"the dataset has no 'train' split (splits: {list(dataset)})")
    for name in ([eval_split] if eval_split else ["validation", "valid", "test"]):
        if name in dataset:
            return dataset["train"], dataset[name], name
    if eval_split:
        raise ValueError(f"no split {eval_split!r} in the dataset (splits: {list(dataset)})")
    held_out = dataset["train"].train_test_split(test_size=eval_fraction, seed=seed)
    return held_out["train"], held_out["test"], f"{eval_fraction:.0%} of train"


def label_names_and_problem(dataset: Dataset, label_column: str) -> tuple[list[str], bool]:
    """The label names and whether the task is multi-label, from the label column's feature type."""
    if label_column not in dataset.column_names:
        raise ValueError(f"no label column {label_column!r}; columns: {dataset.column_names}")
    feature = dataset.features[label_column]
    inner = getattr(feature, "feature", None)  # `Sequence` / `List` features hold their item type here
    if isinstance(feature, ClassLabel):
        return list(feature.names), False
    if isinstance(inner, ClassLabel):
        return list(inner.names), True
    if isinstance(feature, Value) and feature.dtype in ("string", "large_string"):
        return sorted(set(dataset[label_column])), False
    if isinstance(inner, Value) and inner.dtype in ("string", "large_string"):
        return sorted({tag for tags in dataset[label_column] for tag in tags}), True
    raise ValueError(
        f"label column {label_column!r} has type {feature}; expected a ClassLabel or string (single-label) or a list "
        f"of ClassLabel or strings (multi-label)"
    )


def _clip_samples(audio) -> np.ndarray:
    """Mono float32 samples of a decoded `datasets` audio value (a torchcodec decoder or an `{"array": ...}` dict)."""
    if isinstance(audio, dict):
        samples, rate = np.asarray(audio["array"], dtype=np.float32), audio["sampling_rate"]
    else:
        decoded = audio.get_all_samples()
        samples, rate = decoded.data.numpy(), decoded.sample_rate
    if rate != SAMPLING_RATE:
        raise ValueError(f"audio decoded at {rate} Hz; cast the column to Audio(sampling_rate={SAMPLING_RATE})")
    return samples.mean(axis=0) if samples.ndim == 2 else samples


def make_transform(feature_extractor, num_frames: int, label_names, multi_label: bool, audio_column: str,
                   label_column: str, train: bool, seed: int = 0):
    """A `set_transform` function: audio -> `input_values` (batch, num_frames, 96), labels -> `labels` (multi-hot
    float32 `(batch, num_labels)` or class indices `(batch,)`)."""
    segment_samples = (num_frames - 1) * HOP_SIZE  # Essentia framing: 1 + ceil(n / 256) frames
    label_index = {str(name): index for index, name in enumerate(label_names)}
    rng = random.Random(seed)

    def to_index(label):
        # ClassLabel columns hold indices; string columns hold names.
        if isinstance(label, (int, np.integer)):
            return int(label)
        if str(label) not in label_index:
            raise ValueError(f"label {label!r} in column {label_column!r} is not among the training labels {label_names}")
        return label_index[str(label)]

    def transform(batch):
        clips = []
        for audio in batch[audio_column]:
            samples = _clip_samples(audio)
            excess = samples.shape[0] - segment_samples
            if excess > 0:
                start = rng.randint(0, excess) if train else excess // 2
                samples = samples[start : start + segment_samples]
            clips.append(samples)
        features = feature_extractor(clips, sampling_rate=SAMPLING_RATE, max_length=num_frames, return_tensors="pt")
        if multi_label:
            labels = torch.zeros(len(clips), len(label_names))
            for row, tags in enumerate(batch[label_column]):
                labels[row, [to_index(tag) for tag in tags]] = 1.0
        else:
            labels = torch.tensor([to_index(label) for label in batch[label_column]], dtype=torch.long)
        return {"input_values": features["input_values"], "labels": labels}

    return transform


# ---------------------------------------------------------------------------------------------------------------------
# Model and metrics


def load_model_for_labels(model_name_or_path: str, label_names: list[str], multi_label: bool, **config_overrides):
    """The base model with a head for `label_names`.

    The head is kept only when the labels are the base model's own (continued training); otherwise a new head is
    made for the new labels while the encoder keeps its weights. This is what `ignore_mismatched_sizes=True` does for
    MAEST-format directories, done here for every source `maest.modeling.load_maest` reads (also the original
    checkpoints and the AST-format Hub repos, whose loaders keep their own head) and also when only the label names
    change.
    `config_overrides` set training-time options such as `train_patchout_time`.
    """
    base = load_maest(model_name_or_path)
    for name, value in config_overrides.items():
        setattr(base.config, name, value)
    problem_type = "multi_label_classification" if multi_label else "single_label_classification"
    base_labels = [base.config.id2label[index] for index in range(base.config.num_labels)]
    if base_labels == list(label_names):
        base.config.problem_type = problem_type
        return base
    config = copy.deepcopy(base.config)
    config.num_labels = len(label_names)
    config.id2label, config.label2id = label_maps(label_names)
    config.problem_type = problem_type
    model = MAESTForAudioClassification(config)
    model.maest.load_state_dict(base.maest.state_dict())
    return model


def make_compute_metrics(multi_label: bool):
    """`compute_metrics` for the Trainer: the project's macro ROC-AUC and macro average precision (`evaluate` modules
    that load offline) over sigmoid (multi-label) or softmax (single-label, one-vs-rest) scores, and accuracy for
    single-label tasks."""
    roc_auc = load_metric("macro_roc_auc")
    average_precision = load_metric("macro_average_precision")

    def compute_metrics(evaluation) -> dict:
        logits = evaluation.predictions[0] if isinstance(evaluation.predictions, tuple) else evaluation.predictions
        logits = torch.as_tensor(logits, dtype=torch.float32)
        references = np.asarray(evaluation.label_ids).astype(np.int64)  # multi-hot rows, or class indices
        scores = (logits.sigmoid() if multi_label else logits.softmax(-1)).numpy()
        metrics = {
            "roc_auc": roc_auc.compute(prediction_scores=scores, references=references)["roc_auc"],
            "average_precision": average_precision.compute(prediction_scores=scores, references=references)[
                "average_precision"
            ],
        }
        if not multi_label:
            metrics["accuracy"] = float((scores.argmax(-1) == references).mean())
        return metrics

    return compute_metrics


# ---------------------------------------------------------------------------------------------------------------------
# Fine-tuning


def finetune(
    model_name_or_path: str,
    train_dataset: Dataset,
    eval_dataset: Dataset,
    output_dir: str,
    *,
    label_column: str = "label",
    audio_column: str = "audio",
    num_frames: int | None = None,
    epochs: float = 10,
    learning_rate: float = 3e-5,
    weight_decay: float = 1e-4,
    warmup: float = 0.1,
    batch_size: int = 8,
    gradient_accumulation_steps: int = 1,
    train_patchout_time: int | None = None,
    bf16: bool = False,
    seed: int = 0,
    dataset_name: str | None = None,
    eval_split_name: str = "validation",
    push_to_hub: str | None = None,
    report_to: str = "none",
    save_checkpoints: bool = True,
    evaluate_before: bool = False,
    logging_steps: int = 10,
) -> dict:
    """Fine-tunes `model_name_or_path` on `train_dataset`, evaluates on `eval_dataset`, saves the result (model,
    feature extractor, code, `README.md` card) to `output_dir` and optionally pushes it. Returns the final metrics.

    `num_frames` is the training crop length (the model's `max_length` by default; shorter crops train faster).
    With `evaluate_before`, the eval set is also scored before training (`initial_*` metrics), as a baseline.
    """
    set_seed(seed)
    label_names, multi_label = label_names_and_problem(train_dataset, label_column)
    overrides = {} if train_patchout_time is None else {"train_patchout_time": train_patchout_time}
    model = load_model_for_labels(model_name_or_path, label_names, multi_label, **overrides)
    num_frames = num_frames or model.config.max_length
    feature_extractor = MAESTFeatureExtractor(max_length=model.config.max_length)

    def prepare(dataset: Dataset, train: bool) -> Dataset:
        dataset = dataset.cast_column(audio_column, Audio(sampling_rate=SAMPLING_RATE, num_channels=1))
        dataset.set_transform(
            make_transform(feature_extractor, num_frames, label_names, multi_label, audio_column, label_column,
                           train=train, seed=seed)
        )
        return dataset

    best_metric = "roc_auc" if multi_label else "accuracy"
    arguments = TrainingArguments(
        output_dir=output_dir,
        num_train_epochs=epochs,
        learning_rate=learning_rate,
        weight_decay=weight_decay,
        warmup_steps=warmup,
        per_device_train_batch_size=batch_size,
        per_device_eval_batch_size=batch_size,
        gradient_accumulation_steps=gradient_accumulation_steps,
        eval_strategy="epoch",
        save_strategy="epoch" if save_checkpoints else "no",
        save_total_limit=2 if save_checkpoints else None,
        load_best_model_at_end=save_checkpoints,
        metric_for_best_model=best_metric,
        greater_is_better=True,
        logging_strategy="steps",
        logging_steps=logging_steps,
        bf16=bf16,
        seed=seed,
        report_to=report_to,
        remove_unused_columns=False,  # the transform needs the audio and label columns
        dataloader_pin_memory=torch.cuda.is_available(),  # (pinning has nothing to speed up without a GPU)
        label_names=["labels"],  # no teacher here: a distillation head, if the base has one, trains on the labels
    )
    trainer = Trainer(
        model=model,
        args=arguments,
        train_dataset=prepare(train_dataset, train=True),
        eval_dataset=prepare(eval_dataset, train=False),
        compute_metrics=make_compute_metrics(multi_label),
    )
    initial = trainer.evaluate(metric_key_prefix="initial") if evaluate_before else {}
    train_result = trainer.train()
    metrics = trainer.evaluate()

    output_dir = Path(output_dir)
    trainer.save_model(str(output_dir))  # model.save_pretrained: weights, config with auto_map, code
    feature_extractor.save_pretrained(output_dir)
    evaluation = {key.removeprefix("eval_"): value for key, value in metrics.items()}
    summary = {
        "dataset": dataset_name or "(in-memory dataset)",
        "task": f"{'multi' if multi_label else 'single'}-label, {len(label_names)} labels from column '{label_column}'",
        "train examples": len(train_dataset),
        "eval examples": f"{len(eval_dataset)} ({eval_split_name})",
        "epochs": epochs,
        "steps": train_result.global_step,
        "training loss (mean)": round(train_result.training_loss, 4),
        "eval loss before / after": (
            f"{initial['initial_loss']:.4f} / {metrics['eval_loss']:.4f}" if initial else f"{metrics['eval_loss']:.4f}"
        ),
        "recipe": {
            "optimizer": "AdamW",
            "learning_rate": learning_rate,
            "weight_decay": weight_decay,
            "warmup": warmup,
            "batch_size": batch_size * gradient_accumulation_steps,
            "crop_frames": num_frames,
            "train_patchout_time": model.config.train_patchout_time,
            "bf16": bf16,
            "seed": seed,
        },
    }
    # NaN when the eval split has a label with one class only: such values are not scores to publish.
    scores = {
        key: value for key, value in evaluation.items()
        if key in ("roc_auc", "average_precision", "accuracy") and np.isfinite(value)
    }
    write_model_card(
        output_dir,
        base_model=model_name_or_path,
        training_summary=summary,
        evaluation_results={"task": dataset_name or "evaluation", "split": eval_split_name, **scores} if scores else None,
        datasets=[dataset_name] if dataset_name and "/" in dataset_name and not Path(dataset_name).exists() else None,
        repo_id=push_to_hub,
    )
    recorded = {"initial": initial, "train": train_result.metrics, "eval": metrics}
    (output_dir / "finetune_metrics.json").write_text(json.dumps(recorded, indent=2))
    if push_to_hub:
        push_directory_to_hub(
            output_dir, push_to_hub, commit_message=f"Fine-tuned MAEST ({dataset_name or 'custom data'})"
        )
    return {**initial, **metrics}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="base model: MAEST directory, Hub repo or original checkpoint")
    parser.add_argument("--dataset", required=True, help="Hub dataset, save_to_disk directory or audio folder")
    parser.add_argument("--dataset-config", help="dataset configuration name")
    parser.add_argument("--audio-column", default="audio")
    parser.add_argument("--label-column", default="label")
    parser.add_argument("--eval-split", help="evaluation split (default: validation, valid or test, else 10%% of train)")
    parser.add_argument("--eval-fraction", type=float, default=0.1, help="held-out part of train without an eval split")
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--epochs", type=float, default=10)
    parser.add_argument("--learning-rate", type=float, default=3e-5)
    parser.add_argument("--weight-decay", type=float, default=1e-4)
    parser.add_argument("--warmup", type=float, default=0.1, help="warm-up: a fraction of the steps, or a step count")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--gradient-accumulation-steps", type=int, default=1)
    parser.add_argument("--num-frames", type=int, help="training crop length in frames (default: the model's)")
    parser.add_argument("--train-patchout-time", type=int, help="time columns dropped in training (paper: 90 at 30 s)")
    parser.add_argument("--bf16", action="store_true", help="bfloat16 mixed precision (GPUs, AMX CPUs)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--report-to", default="none", help="tensorboard, wandb, ... (default: none)")
    parser.add_argument("--no-checkpoints", action="store_true", help="save only the final model")
    parser.add_argument("--evaluate-before", action="store_true", help="also score the eval set before training")
    parser.add_argument("--push-to-hub", metavar="REPO_ID", help="upload the result to this Hub repo")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    dataset = load_audio_dataset(args.dataset, args.dataset_config)
    train, evaluation, eval_split_name = train_eval_splits(dataset, args.eval_split, args.eval_fraction, args.seed)
    metrics = finetune(
        args.model,
        train,
        evaluation,
        args.output_dir,
        label_column=args.label_column,
        audio_column=args.audio_column,
        num_frames=args.num_frames,
        epochs=args.epochs,
        learning_rate=args.learning_rate,
        weight_decay=args.weight_decay,
        warmup=args.warmup if args.warmup < 1 else int(args.warmup),
        batch_size=args.batch_size,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        train_patchout_time=args.train_patchout_time,
        bf16=args.bf16,
        seed=args.seed,
        dataset_name=args.dataset,
        eval_split_name=eval_split_name,
        push_to_hub=args.push_to_hub,
        report_to=args.report_to,
        save_checkpoints=not args.no_checkpoints,
        evaluate_before=args.evaluate_before,
    )
    print(json.dumps(metrics, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
