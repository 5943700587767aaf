"""Downstream evaluation (the paper's protocol, docs/design.md, section 'Downstream protocol') and the `maest probe`
command.

Embeddings per segment are averaged per track (`maest.training.embeddings`); a probe, linear or an MLP with one hidden
layer of 512 units (ReLU, dropout 0.5), is trained with AdamW (lr 1e-4, weight decay 1e-3) for 60 epochs in batches of
128 on features standardized with the training split's statistics; the epoch with the best validation ROC-AUC is kept
and its macro ROC-AUC and macro average precision on the test split are reported. Multi-label tasks use a sigmoid and
BCE, single-label (multiclass) ones a softmax and cross-entropy, scored one-vs-rest.

The poster's sweep probes every block (1-based, as `hidden_states[block]`) with every token set: c(ls), d(ist),
a(verage of the patch tokens) and their concatenations cd, ca, da, cda.
"""

import copy
import functools
import logging
import math
import os
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from maest.inference.job import validate_device
from maest.utils.constants import MAX_SEED, PROBE_KINDS, PROBE_TASKS

from . import EvaluationError
from .embeddings import (
    POSTER_TOKEN_SETS,
    TrackEmbeddings,
    extract_track_embeddings,
    load_encoder,
    parse_blocks,
    token_set_name,
)
from .labeled_data import LabelEncoding, build_label_encoding, carve_split, load_labeled_splits
from .metrics import average_precision, load_metric, roc_auc
from .report import result_row, write_probe_report, write_results_json


logger = logging.getLogger(__name__)

TASKS = PROBE_TASKS  # (PROBE_KINDS, PROBE_TASKS and MAX_SEED come from `maest.utils.constants`, which the CLI reads too)
# What `maest probe --output-dir` writes; an earlier probe's are replaced only with `overwrite`.
PROBE_OUTPUT_FILES = {"json": "results.json", "markdown": "results.md", "heatmap": "heatmap.png"}


# ----------------------------------------------------------------------------------------------- the probe
class ProbeClassifier(nn.Module):
    """The paper's probes: `linear` (one Linear layer) or `mlp` (Linear -> ReLU -> Dropout -> Linear).

    Input `(batch_size, num_features)` standardized embeddings; output `(batch_size, num_labels)` logits.
    """

    def __init__(
        self, num_features: int, num_labels: int, kind: str = "mlp", hidden_size: int = 512, dropout: float = 0.5
    ):
        super().__init__()
        if kind not in PROBE_KINDS:
            raise EvaluationError(f"probe kind must be one of {PROBE_KINDS}, got {kind!r}")
        self.kind = kind
        if kind == "linear":
            self.layers = nn.Linear(num_features, num_labels)
        else:
            self.layers = nn.Sequential(
                nn.Linear(num_features, hidden_size), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden_size, num_labels)
            )
        # The output layer starts near zero (as MAE's linear-probe head): with the paper's small learning rate, a
        # default-initialized layer's random scores would outweigh what a few hundred steps on a small dataset learn.
        output_layer = self.layers if kind == "linear" else self.layers[-1]
        nn.init.normal_(output_layer.weight, std=0.01)
        nn.init.zeros_(output_layer.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.layers(features)


def _check_features(name: str, features) -> np.ndarray:
    features = np.asarray(features)
    if features.ndim != 2 or features.shape[0] == 0:
        raise EvaluationError(f"{name} must be a non-empty (num_examples, num_features) array, got shape {features.shape}")
    if not np.issubdtype(features.dtype, np.number) or not np.isfinite(features).all():
        raise EvaluationError(f"{name} must hold finite numbers")
    return features.astype(np.float32)


def _check_labels(name: str, labels, num_examples: int, task: str, num_classes: int | None) -> tuple[np.ndarray, str]:
    """Multi-hot `(N, C)` float32 labels (multilabel) or `(N,)` int64 class indices (multiclass)."""
    labels = np.asarray(labels)
    if labels.shape[:1] != (num_examples,):
        raise EvaluationError(f"{name} has {labels.shape[0] if labels.ndim else 0} rows, its features have {num_examples}")
    if task == "auto":
        task = "multiclass" if labels.ndim == 1 else "multilabel"
    if labels.ndim == 2 and not np.isin(labels, (0, 1)).all():
        raise EvaluationError(f"{name}: a 2-D label array must be multi-hot (0/1 values)")
    if task == "multiclass":
        if labels.ndim == 2:
            if not (labels.sum(axis=1) == 1).all():
                raise EvaluationError(f"{name}: multiclass labels given as a 2-D array must be one-hot (one 1 per row)")
            labels = labels.argmax(axis=1)
        if labels.ndim != 1 or not np.all(np.mod(labels, 1) == 0) or labels.min() < 0:
            raise EvaluationError(f"{name}: multiclass labels must be non-negative class indices of shape (num_examples,)")
        labels = labels.astype(np.int64)
        if num_classes is not None and labels.max() >= num_classes:
            raise EvaluationError(f"{name} has class index {labels.max()}, but there are only {num_classes} classes")
        return labels, task
    if labels.ndim != 2:
        raise EvaluationError(f"{name}: multilabel labels must be multi-hot of shape (num_examples, num_labels)")
    if num_classes is not None and labels.shape[1] != num_classes:
        raise EvaluationError(f"{name} has {labels.shape[1]} labels, the training labels have {num_classes}")
    return labels.astype(np.float32), task


def _scores(model: nn.Module, features: torch.Tensor, task: str) -> np.ndarray:
    """Per-label scores for ranking: sigmoid outputs (multilabel) or class probabilities (multiclass; one-vs-rest
    ranks must come from the softmax, not from the raw logits)."""
    model.eval()
    with torch.no_grad():
        logits = model(features)
    scores = torch.sigmoid(logits) if task == "multilabel" else torch.softmax(logits, dim=-1)
    return scores.double().cpu().numpy()


def _check_integer(name: str, value, minimum: int, maximum: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum or (
        maximum is not None and value > maximum
    ):
        bounds = f"in [{minimum}, {maximum}]" if maximum is not None else f"at least {minimum}"
        raise EvaluationError(f"{name} must be an integer {bounds}, got {value!r}")


def _check_number(name: str, value, minimum: float, minimum_allowed: bool, maximum: float | None = None) -> None:
    """A finite number above `minimum` (or equal to it when `minimum_allowed`) and below `maximum` (excluded)."""
    number = value if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool) else None
    if (
        number is None
        or not math.isfinite(number)
        or number < minimum
        or (number == minimum and not minimum_allowed)
        or (maximum is not None and number >= maximum)
    ):
        relation = f"{'at least' if minimum_allowed else 'greater than'} {minimum}"
        if maximum is not None:
            relation += f" and less than {maximum}"
        raise EvaluationError(f"{name} must be a finite number {relation}, got {value!r}")


# Each `train_probe` setting's check, in the order they are checked.
PROBE_SETTING_CHECKS = {
    "epochs": lambda value: _check_integer("epochs", value, 1),
    "batch_size": lambda value: _check_integer("batch_size", value, 1),
    "hidden_size": lambda value: _check_integer("hidden_size", value, 1),
    "seed": lambda value: _check_integer("seed", value, 0, MAX_SEED),
    "learning_rate": lambda value: _check_number("learning_rate", value, 0, False),
    "weight_decay": lambda value: _check_number("weight_decay", value, 0, True),
    "dropout": lambda value: _check_number("dropout", value, 0, True, maximum=1),
}


def check_probe_settings(kind: str = "mlp", **settings) -> None:
    """Refuses probe settings that cannot train (an `EvaluationError` naming the setting and its value), so that a
    run fails before any embedding is computed. `settings`: any of `PROBE_SETTING_CHECKS`' names, as given to
    `train_probe`."""
    unknown = set(settings) - set(PROBE_SETTING_CHECKS)
    if unknown:
        raise TypeError(f"check_probe_settings() got unknown settings: {', '.join(sorted(unknown))}")
    if kind not in PROBE_KINDS:
        raise EvaluationError(f"probe kind must be one of {PROBE_KINDS}, got {kind!r}")
    for name, check in PROBE_SETTING_CHECKS.items():
        if name in settings:
            check(settings[name])


@functools.cache
def _warn_once(message: str) -> None:
    logger.warning(message)  # a sweep meets the same split in every configuration


@functools.cache
def _test_metric(name: str):
    return load_metric(name)


@contextmanager
def _torch_threads(num_threads: int | None):
    previous = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def train_probe(
    train_features,
    train_labels,
    validation_features,
    validation_labels,
    test_features,
    test_labels,
    kind: str = "mlp",
    epochs: int = 60,
    batch_size: int = 128,
    learning_rate: float = 1e-4,
    weight_decay: float = 1e-3,
    seed: int = 0,
    task: str = "auto",
    hidden_size: int = 512,
    dropout: float = 0.5,
    device=None,
    num_threads: int | None = 1,
    return_scores: bool = False,
    label_names=None,
) -> dict:
    """Trains one probe with the paper's protocol and evaluates it on the test split.

    Args:
        *_features: `(num_examples, num_features)` float arrays (track embeddings) of each split.
        *_labels: multi-hot `(num_examples, num_labels)` 0/1 arrays (multi-label, BCE), or class indices
            `(num_examples,)` (single-label, cross-entropy).
        kind: `"mlp"` (hidden layer of `hidden_size`, ReLU, `dropout`) or `"linear"`.
        epochs, batch_size, learning_rate, weight_decay: AdamW training; the paper's values are the defaults.
        seed: seeds the initialization, the batch order and dropout (the global RNG state is left as it was).
        task: `"auto"` (from the label shape), `"multilabel"` or `"multiclass"` (2-D one-hot labels accepted).
        device: where to train (CPU by default: the probes are small).
        num_threads: CPU threads for torch while training (restored afterwards). One by default: the probe's
            matrices are so small that more threads mostly add synchronization, which on a busy machine costs 10 to
            30 times the work itself. `None` keeps torch's setting.
        return_scores: also return the best model's test scores (`test_scores`, `(num_test, num_labels)`).
        label_names: the labels' names, in output order, for the messages (a test label that training lacks).

    Returns:
        A dict with `roc_auc` and `average_precision` (macro, test split, best epoch), `best_epoch` (1-based epoch
        whose weights were kept: the first with the highest validation ROC-AUC), `validation_roc_auc`,
        `validation_average_precision`, `num_labels_skipped` (test labels with a single class, left out of the macro
        averages), `validation_num_labels_skipped`, `history` (per epoch: `epoch`, `train_loss`,
        `validation_roc_auc`) and the sizes and settings.
    """
    check_probe_settings(
        kind, epochs=epochs, batch_size=batch_size, hidden_size=hidden_size, seed=seed, learning_rate=learning_rate,
        weight_decay=weight_decay, dropout=dropout,
    )
    splits, task, num_labels = checked_splits(
        {"train": (train_features, train_labels), "validation": (validation_features, validation_labels),
         "test": (test_features, test_labels)},
        task,
        label_names,
    )
    device = torch.device(device) if device is not None else torch.device("cpu")
    tensors = standardized_tensors(splits, device)
    accelerators = [] if device.type == "cpu" else [device.index if device.index is not None else 0]
    with (
        torch.random.fork_rng(devices=accelerators, device_type=None if device.type == "cpu" else device.type),
        _torch_threads(num_threads),
    ):
        torch.manual_seed(seed)
        num_features = splits["train"][0].shape[1]
        model = ProbeClassifier(num_features, num_labels, kind, hidden_size, dropout).to(device)
        optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=weight_decay)
        best, history = fit_probe(model, optimizer, tensors, splits["validation"][1], task, epochs, batch_size, seed)
        model.load_state_dict(best["state"])
        test_scores = _scores(model, tensors["test"][0], task)
    test = score_test_split(splits["test"][1], test_scores, num_labels)
    result = {
        "roc_auc": test["roc_auc"],
        "average_precision": test["average_precision"],
        "best_epoch": best["epoch"],
        "validation_roc_auc": best["validation_roc_auc"],
        "validation_average_precision": best["validation_average_precision"],
        "num_labels_skipped": test["num_labels_skipped"],
        "validation_num_labels_skipped": best["validation_num_labels_skipped"],
        "num_labels": num_labels,
        "num_features": num_features,
        "num_examples": {split: len(features) for split, (features, _) in splits.items()},
        "kind": kind,
        "task": task,
        "epochs": epochs,
        "history": history,
    }
    if return_scores:
        result["test_scores"] = test_scores
    return result


def checked_splits(splits: dict, task: str, label_names=None) -> tuple[dict, str, int]:
    """Validated `{split: [features (N, F) float32, labels]}`, the task and the number of labels (see
    [`train_probe`]); refuses splits a probe cannot be selected or scored on (`label_names` name the labels in the
    messages)."""
    if task not in TASKS:
        raise EvaluationError(f"task must be one of {TASKS}, got {task!r}")
    checked = {split: [_check_features(f"{split}_features", features), labels] for split, (features, labels) in splits.items()}
    num_features = checked["train"][0].shape[1]
    for split, (features, _) in checked.items():
        if features.shape[1] != num_features:
            raise EvaluationError(f"{split}_features have {features.shape[1]} features, train_features have {num_features}")
    train_labels, task = _check_labels("train_labels", checked["train"][1], len(checked["train"][0]), task, None)
    if task == "multilabel":
        num_labels = train_labels.shape[1]
    else:  # every split's classes get an output, also a class the training split lacks (it is then never right)
        num_labels = 1 + max(
            int(np.max(_check_labels(split, labels, len(features), task, None)[0]))
            for split, (features, labels) in checked.items()
        )
    checked["train"][1] = train_labels
    for split in ("validation", "test"):
        checked[split][1], _ = _check_labels(f"{split}_labels", checked[split][1], len(checked[split][0]), task, num_labels)
    multi_hot = {
        split: labels if task == "multilabel" else np.eye(num_labels)[labels] for split, (_, labels) in checked.items()
    }
    if not _scorable_labels(multi_hot["validation"]).any():
        raise EvaluationError(
            "the validation split has no label with both positive and negative examples, so ROC-AUC model selection "
            "is impossible; use a larger or more varied validation split"
        )
    _check_test_labels_are_learnable(multi_hot["train"], multi_hot["test"], label_names)
    return checked, task, num_labels


def _scorable_labels(multi_hot: np.ndarray) -> np.ndarray:
    """Which labels have both positive and negative examples (only those have a ROC-AUC)."""
    positives = multi_hot.sum(axis=0)
    return (positives > 0) & (positives < len(multi_hot))


def _check_test_labels_are_learnable(train: np.ndarray, test: np.ndarray, label_names=None) -> None:
    """Refuses a test split with a scored label that never occurs in training: a probe cannot learn it, and its
    chance-level score would pull the macro averages down unnoticed."""
    scorable = _scorable_labels(test)
    if not scorable.any():
        raise EvaluationError(
            "the test split has no label with both positive and negative examples, so its ROC-AUC is undefined; use "
            "a larger or more varied test split"
        )
    unseen = np.flatnonzero(scorable & (train.sum(axis=0) == 0)).tolist()
    if unseen:
        shown = [repr(str(label_names[i])) for i in unseen[:10]] if label_names is not None else [str(i) for i in unseen[:10]]
        more = f" and {len(unseen) - 10} more" if len(unseen) > 10 else ""
        what = "labels" if label_names is not None else "label indices"
        raise EvaluationError(
            f"the test split has {len(unseen)} label(s) that never occur in the training split ({what} "
            f"{', '.join(shown)}{more}), so a probe cannot learn them; split the data so that the training split "
            f"covers every test label"
        )


def standardized_tensors(splits: dict, device: torch.device) -> dict:
    """`{split: (features, labels)}` tensors on `device`, features standardized with the training split's mean and
    standard deviation (constant features are left centered, not divided by 0)."""
    mean = splits["train"][0].mean(axis=0, dtype=np.float64)
    std = splits["train"][0].std(axis=0, dtype=np.float64)
    std = np.where(std > 1e-8, std, 1.0)
    return {
        split: (torch.from_numpy(((features - mean) / std).astype(np.float32)).to(device),
                torch.from_numpy(labels).to(device))
        for split, (features, labels) in splits.items()
    }


def fit_probe(model, optimizer, tensors: dict, validation_labels: np.ndarray, task: str, epochs: int, batch_size: int,
              seed: int) -> tuple[dict, list[dict]]:
    """Trains for `epochs` and keeps the first epoch with the highest validation ROC-AUC. Returns that epoch's
    `{"epoch", "state", "validation_roc_auc", "validation_average_precision", "validation_num_labels_skipped"}` and
    the per-epoch history."""
    loss_function = nn.BCEWithLogitsLoss() if task == "multilabel" else nn.CrossEntropyLoss()
    batch_order = torch.Generator(device="cpu").manual_seed(seed)
    history, best = [], {"validation_roc_auc": -math.inf}
    for epoch in range(1, epochs + 1):
        train_loss = train_epoch(model, optimizer, loss_function, *tensors["train"], batch_size, batch_order)
        validation_scores = _scores(model, tensors["validation"][0], task)
        validation_roc_auc, skipped = roc_auc(validation_labels, validation_scores)
        history.append({"epoch": epoch, "train_loss": train_loss, "validation_roc_auc": validation_roc_auc})
        if validation_roc_auc > best["validation_roc_auc"]:
            best = {
                "epoch": epoch,
                "state": copy.deepcopy(model.state_dict()),
                "validation_roc_auc": validation_roc_auc,
                "validation_average_precision": average_precision(validation_labels, validation_scores)[0],
                "validation_num_labels_skipped": skipped,
            }
    return best, history


def train_epoch(model, optimizer, loss_function, inputs, targets, batch_size: int, batch_order) -> float:
    """One pass over the training split in a random order; returns the mean loss. Full-batch tensors indexed in
    place: no DataLoader, which would dominate the time of such small models."""
    model.train()
    permutation = torch.randperm(len(inputs), generator=batch_order).to(inputs.device)
    total_loss = 0.0
    for start in range(0, len(inputs), batch_size):
        indices = permutation[start : start + batch_size]
        loss = loss_function(model(inputs[indices]), targets[indices])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total_loss += loss.item() * len(indices)
    return total_loss / len(inputs)


def score_test_split(test_labels: np.ndarray, test_scores: np.ndarray, num_labels: int) -> dict:
    """Test macro ROC-AUC and average precision through the project's `evaluate` modules (the same numbers as
    `roc_auc` and `average_precision`, which the per-epoch model selection calls directly to skip evaluate's Arrow
    round trip)."""
    metric_inputs = {"references": test_labels.astype(np.int64), "prediction_scores": test_scores}
    result = _test_metric("macro_roc_auc").compute(**metric_inputs)
    average = _test_metric("macro_average_precision").compute(**metric_inputs)["average_precision"]
    if result["num_labels_skipped"]:
        _warn_once(
            f"{result['num_labels_skipped']} of {num_labels} labels have a single class in the test split; "
            f"left out of the macro averages"
        )
    return {"roc_auc": result["roc_auc"], "average_precision": average,
            "num_labels_skipped": result["num_labels_skipped"]}


# ----------------------------------------------------------------------------------------------- sweeps
def _configurations(train_features, blocks, token_sets) -> list[tuple[int, str]]:
    if isinstance(train_features, TrackEmbeddings):
        blocks = train_features.blocks if blocks is None else parse_blocks(blocks, max(train_features.blocks))
        token_sets = POSTER_TOKEN_SETS if token_sets is None else token_sets
        names = [token_set_name(tokens) for tokens in ([token_sets] if isinstance(token_sets, str) else token_sets)]
        return [(block, name) for block in blocks for name in names]
    available = list(train_features)
    if blocks is not None:
        wanted = set(parse_blocks(blocks, max(block for block, _ in available)))
        available = [key for key in available if key[0] in wanted]
    if token_sets is not None:
        wanted = {token_set_name(tokens) for tokens in ([token_sets] if isinstance(token_sets, str) else token_sets)}
        available = [key for key in available if key[1] in wanted]
    if not available:
        raise EvaluationError("no (block, token set) configuration to probe")
    order = {name: i for i, name in enumerate(POSTER_TOKEN_SETS)}
    return sorted(available, key=lambda key: (key[0], order.get(key[1], len(order)), key[1]))


def _features(split_features, block: int, tokens: str) -> np.ndarray:
    if isinstance(split_features, TrackEmbeddings):
        return split_features.features(block, tokens)
    return split_features[(block, tokens)]


def probe_sweep(
    features: dict,
    labels: dict,
    blocks=None,
    token_sets=None,
    kind: str = "mlp",
    output_dir=None,
    settings: dict | None = None,
    title: str | None = None,
    progress: bool = True,
    **probe_kwargs,
) -> list[dict]:
    """Trains a probe for every (block, token set) and reports each one's test metrics.

    Args:
        features: `{"train": X, "validation": X, "test": X}`, each X either a [`TrackEmbeddings`] or a dict
            `{(block, token set): (num_tracks, dims) array}` as [`extract_embeddings`] returns.
        labels: `{"train": y, "validation": y, "test": y}`, multi-hot `(N, C)` or class indices `(N,)`.
        blocks, token_sets: the configurations (default: every one available; the poster's seven token sets for
            `TrackEmbeddings`).
        kind: `"mlp"` or `"linear"`.
        output_dir: when given, `results.json` is rewritten after every configuration (finished ones are never lost)
            and `results.md` and `heatmap.png` are written at the end.
        settings: recorded in `results.json`; title: of the table and the heatmap.
        **probe_kwargs: passed to [`train_probe`] (epochs, batch_size, learning_rate, weight_decay, seed...).

    Returns:
        One row per configuration: `block`, `tokens`, `roc_auc`, `average_precision`, `best_epoch`,
        `validation_roc_auc`, `validation_average_precision`, `num_labels_skipped`, `history`.
    """
    missing = [split for split in ("train", "validation", "test") if split not in features or split not in labels]
    if missing:
        raise EvaluationError(f"features and labels are needed for the splits {missing}")
    configurations = _configurations(features["train"], blocks, token_sets)
    recorded = {k: v for k, v in probe_kwargs.items() if k not in ("device", "label_names")}  # names: in `labels`
    settings = dict(settings or {}, probe=kind, **recorded)
    rows = []
    for block, tokens in tqdm(configurations, desc=f"{kind} probes", disable=not progress):
        result = train_probe(
            *(
                value
                for split in ("train", "validation", "test")
                for value in (_features(features[split], block, tokens), labels[split])
            ),
            kind=kind,
            **probe_kwargs,
        )
        rows.append(result_row(block, tokens, result))
        logger.info(
            f"block {block} {tokens}: test ROC-AUC {result['roc_auc']:.4f}, mAP {result['average_precision']:.4f}"
        )
        if output_dir is not None:
            write_results_json(output_dir, rows, settings)
    if output_dir is not None:
        write_probe_report(output_dir, rows, settings, title)
    return rows


def _default_label_column(columns) -> str:
    for name in ("tags", "labels", "label", "genre", "genres"):
        if name in (columns or ()):
            return name
    raise EvaluationError(f"name the label column with --label-column; the dataset's columns are {columns}")


def probe_dataset(
    model_or_path,
    data,
    *,
    blocks=None,
    token_sets=("cda",),
    kind: str = "mlp",
    label_column: str | None = None,
    audio_column: str = "audio",
    task: str = "auto",
    label_names=None,
    output_dir=None,
    cache_dir=None,
    validation_fraction: float = 0.15,
    test_fraction: float = 0.15,
    seed: int = 0,
    extraction_batch_size: int = 8,
    device=None,
    config_name: str | None = None,
    progress: bool = True,
    overwrite: bool = False,
    **probe_kwargs,
) -> dict:
    """Embeds a labeled dataset with a MAEST model and probes it (what `maest probe` runs).

    Args:
        model_or_path: a MAEST model object or anything `MAESTModel.from_pretrained` loads.
        data: a dataset source (see [`load_labeled_splits`]) or a dict of splits (`datasets` objects).
        blocks: 1-based blocks (`"1-12"`, `6`, ...); default the model's embedding block (`config.embedding_block`
            + 1: block 7 of 12, the paper's).
        token_sets: token sets to probe (`"cda"` ...; the poster's are c, d, a, cd, ca, da, cda).
        label_column: default the first of `tags`, `labels`, `label`, `genre`, `genres` that exists.
        output_dir: where `results.json`, `results.md` and `heatmap.png` go (none written without it). A folder
            that holds an earlier probe's files is refused unless `overwrite`, which deletes them before the new
            results are written (after the embeddings are computed).
        cache_dir: the embedding cache (see `maest.training.embeddings`); none without it.
        validation_fraction, test_fraction: for missing splits: a validation split (and, when the test split is
            missing too, a test split) is carved from the training split with `seed`, deterministically.

    Returns:
        `{"rows": [...], "settings": {...}, "paths": {...}}`; `settings` records the splits' sizes, any carved split,
        the tracks skipped (unreadable audio, missing labels) and the label vocabulary.
    """
    # Every setting is checked before the model is loaded and the dataset embedded, which can take hours.
    check_probe_settings(kind, **{k: v for k, v in probe_kwargs.items() if k in PROBE_SETTING_CHECKS})
    for name, fraction in (("validation_fraction", validation_fraction), ("test_fraction", test_fraction)):
        _check_number(name, fraction, 0, False, maximum=1)
    _check_integer("extraction_batch_size", extraction_batch_size, 1)
    _check_integer("seed", seed, 0, MAX_SEED)
    if device is not None:
        validate_device(device)
    token_sets = [token_set_name(tokens) for tokens in ([token_sets] if isinstance(token_sets, str) else token_sets)]
    if not token_sets:
        raise EvaluationError("no token sets given: use c, d, a or their combinations such as cda")
    if cache_dir is not None and Path(cache_dir).exists() and not Path(cache_dir).is_dir():
        raise EvaluationError(f"the embedding cache {cache_dir} is a file, not a folder")
    earlier_results = _earlier_results(output_dir, overwrite)
    encoder = load_encoder(model_or_path, device)
    num_blocks = encoder.config.num_hidden_layers
    blocks = parse_blocks(encoder.config.embedding_block % num_blocks + 1 if blocks is None else blocks, num_blocks)
    splits = dict(data) if isinstance(data, dict) else load_labeled_splits(str(data), config_name=config_name)
    if "train" not in splits:
        raise EvaluationError(f"the data needs a 'train' split; it has {sorted(splits)}")
    columns = splits["train"].column_names
    if columns is None:  # a streamed dataset whose columns are known only from its rows (CSV, JSON lines)
        columns = list(next(iter(splits["train"]), {}))
    label_column = label_column or _default_label_column(columns)
    train_features = getattr(splits["train"], "features", None) or {}
    label_feature = train_features.get(label_column) if hasattr(train_features, "get") else None

    embeddings = {
        split: extract_track_embeddings(
            encoder, dataset, cache_dir=cache_dir, cache_name=split, audio_column=audio_column,
            keep_columns=(label_column,), batch_size=extraction_batch_size, skip_bad_audio=True, progress=progress,
        )
        for split, dataset in splits.items()
    }
    skipped = {split: {"unreadable_audio": tracks.problems} for split, tracks in embeddings.items()}
    cache_counts = {split: {"cached": t.num_cached, "computed": t.num_computed} for split, t in embeddings.items()}
    encoding = build_label_encoding(
        {split: tracks.columns[label_column] for split, tracks in embeddings.items()},
        feature=label_feature, task=task, label_names=label_names,
    )
    labels = encode_split_labels(embeddings, encoding, label_column, skipped)
    carved = carve_missing_splits(embeddings, labels, {"validation": validation_fraction, "test": test_fraction}, seed)

    model_name = _model_name(model_or_path, encoder)
    settings = {
        "model": model_name,
        "data": str(data) if not isinstance(data, dict) else "in-memory splits",
        "label_column": label_column,
        "task": encoding.task,
        "labels": encoding.names,
        "num_tracks": {split: len(embeddings[split]) for split in ("train", "validation", "test")},
        "carved_splits": carved,
        "skipped_tracks": skipped,
        "cache": cache_counts,
        "seed": seed,
    }
    title = f"{Path(model_name).name}: {kind} probe on {Path(str(settings['data'])).name}"
    for path in earlier_results:  # `overwrite`: no file of the earlier probe stays next to this one's
        path.unlink(missing_ok=True)
    rows = probe_sweep(
        {split: embeddings[split] for split in ("train", "validation", "test")}, labels, blocks=blocks,
        token_sets=token_sets, kind=kind, output_dir=output_dir, settings=settings, title=title, progress=progress,
        seed=seed, task=encoding.task, label_names=encoding.names, **probe_kwargs,
    )
    paths = {}
    if output_dir is not None:
        paths = {what: Path(output_dir) / name for what, name in PROBE_OUTPUT_FILES.items()}
    return {"rows": rows, "settings": settings, "paths": paths, "title": title}


def _earlier_results(output_dir, overwrite: bool) -> list[Path]:
    """The files of an earlier probe in `output_dir`: refused unless `overwrite` (then the caller deletes them)."""
    if output_dir is None:
        return []
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise EvaluationError(f"the output directory {output_dir} is a file")
    found = [output_dir / name for name in PROBE_OUTPUT_FILES.values() if (output_dir / name).exists()]
    if found and not overwrite:
        raise EvaluationError(
            f"{output_dir} already holds the results of an earlier probe ({', '.join(path.name for path in found)}): "
            f"pass --overwrite to replace them, or choose another --output-dir"
        )
    return found


def encode_split_labels(embeddings: dict, encoding: LabelEncoding, label_column: str, skipped: dict) -> dict:
    """Each split's probe targets; tracks without a label value are left out of `embeddings` (in place) and
    counted in `skipped[split]["missing_labels"]`."""
    labels = {}
    for split in list(embeddings):
        targets, kept = encoding.encode(embeddings[split].columns[label_column])
        skipped[split]["missing_labels"] = len(embeddings[split]) - len(kept)
        if len(kept) < len(embeddings[split]):
            logger.warning(f"{split}: {len(embeddings[split]) - len(kept)} tracks have no label value; left out")
            embeddings[split] = embeddings[split].subset(kept)
        labels[split] = targets
    return labels


def carve_missing_splits(embeddings: dict, labels: dict, fractions: dict, seed: int) -> dict:
    """Carves each missing split (`{"validation": fraction, "test": fraction}`) from the training split, in place,
    deterministically for `seed`; returns a note per carved split."""
    carved = {}
    for missing_split, fraction in fractions.items():
        if missing_split in embeddings:
            continue
        kept, taken = carve_split(len(embeddings["train"]), fraction, seed)
        embeddings[missing_split] = embeddings["train"].subset(taken)
        labels[missing_split] = labels["train"][taken]
        embeddings["train"] = embeddings["train"].subset(kept)
        labels["train"] = labels["train"][kept]
        carved[missing_split] = f"{len(taken)} tracks carved from the training split ({fraction:.0%}, seed {seed})"
        logger.warning(f"no {missing_split} split: {carved[missing_split]}")
    return carved


def _model_name(model_or_path, encoder) -> str:
    if isinstance(model_or_path, (str, os.PathLike)):
        return str(model_or_path)
    name = getattr(encoder.config, "_name_or_path", None) or getattr(encoder.config, "name_or_path", None)
    return name or type(model_or_path).__name__


__all__ = [
    "PROBE_KINDS",
    "TASKS",
    "ProbeClassifier",
    "carve_missing_splits",
    "check_probe_settings",
    "checked_splits",
    "encode_split_labels",
    "fit_probe",
    "probe_dataset",
    "probe_sweep",
    "score_test_split",
    "standardized_tensors",
    "train_epoch",
    "train_probe",
]
