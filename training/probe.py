"""Downstream evaluation (the paper's protocol, DESIGN.md section 6) and the `maest probe` command.

Embeddings per segment are averaged per track (`maest.training.embeddings`); a probe, linear or an MLP with one hidden
layer of 512 units (ReLU, dropout 0.5), is trained with AdamW (lr 1e-4, weight decay 1e-3) for 60 epochs in batches of
128 on features standardized with the training split's statistics; the epoch with the best validation ROC-AUC is kept
and its macro ROC-AUC and macro average precision on the test split are reported. Multi-label tasks use a sigmoid and
BCE, single-label (multiclass) ones a softmax and cross-entropy, scored one-vs-rest.

The poster's sweep probes every block (1-based, as `hidden_states[block]`) with every token set: c(ls), d(ist),
a(verage of the patch tokens) and their concatenations cd, ca, da, cda.
"""

import copy
from contextlib import contextmanager
import json
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .embeddings import POSTER_TOKEN_SETS
from .metrics import average_precision, roc_auc


logger = logging.getLogger(__name__)

PROBE_KINDS = ("mlp", "linear")
TASKS = ("auto", "multilabel", "multiclass")


# ----------------------------------------------------------------------------------------------- the probe
class ProbeClassifier(nn.Module):
    """The paper's probes: `linear` (one Linear layer) or `mlp` (Linear -> ReLU -> Dropout -> Linear).

    Input `(batch_size, num_features)` standardized embeddings; output `(batch_size, num_labels)` logits.
    """

    def __init__(self, num_features: int, num_labels: int, kind: str = "mlp", hidden_size: int = 512, dropout: float = 0.5):
        super().__init__()
        if kind not in PROBE_KINDS:
            raise ValueError(f"probe kind must be one of {PROBE_KINDS}, got {kind!r}")
        self.kind = kind
        if kind == "linear":
            self.layers = nn.Linear(num_features, num_labels)
        else:
            self.layers = nn.Sequential(
                nn.Linear(num_features, hidden_size), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden_size, num_labels)
            )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.layers(features)


def _check_features(name: str, features) -> np.ndarray:
    features = np.asarray(features)
    if features.ndim != 2 or features.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty (num_examples, num_features) array, got shape {features.shape}")
    if not np.issubdtype(features.dtype, np.number) or not np.isfinite(features).all():
        raise ValueError(f"{name} must hold finite numbers")
    return features.astype(np.float32)


def _check_labels(name: str, labels, num_examples: int, task: str, num_classes: int | None) -> tuple[np.ndarray, str]:
    """Multi-hot `(N, C)` float32 labels (multilabel) or `(N,)` int64 class indices (multiclass)."""
    labels = np.asarray(labels)
    if labels.shape[:1] != (num_examples,):
        raise ValueError(f"{name} has {labels.shape[0] if labels.ndim else 0} rows, its features have {num_examples}")
    if task == "auto":
        task = "multiclass" if labels.ndim == 1 else "multilabel"
    if labels.ndim == 2 and not np.isin(labels, (0, 1)).all():
        raise ValueError(f"{name}: a 2-D label array must be multi-hot (0/1 values)")
    if task == "multiclass":
        if labels.ndim == 2:
            if not (labels.sum(axis=1) == 1).all():
                raise ValueError(f"{name}: multiclass labels given as a 2-D array must be one-hot (one 1 per row)")
            labels = labels.argmax(axis=1)
        if labels.ndim != 1 or not np.all(np.mod(labels, 1) == 0) or labels.min() < 0:
            raise ValueError(f"{name}: multiclass labels must be non-negative class indices of shape (num_examples,)")
        labels = labels.astype(np.int64)
        if num_classes is not None and labels.max() >= num_classes:
            raise ValueError(f"{name} has class index {labels.max()}, but there are only {num_classes} classes")
        return labels, task
    if labels.ndim != 2:
        raise ValueError(f"{name}: multilabel labels must be multi-hot of shape (num_examples, num_labels)")
    if num_classes is not None and labels.shape[1] != num_classes:
        raise ValueError(f"{name} has {labels.shape[1]} labels, the training labels have {num_classes}")
    return labels.astype(np.float32), task


def _scores(model: nn.Module, features: torch.Tensor, task: str) -> np.ndarray:
    """Per-label scores for ranking: sigmoid outputs (multilabel) or class probabilities (multiclass; one-vs-rest
    ranks must come from the softmax, not from the raw logits)."""
    model.eval()
    with torch.no_grad():
        logits = model(features)
    scores = torch.sigmoid(logits) if task == "multilabel" else torch.softmax(logits, dim=-1)
    return scores.double().cpu().numpy()


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

    Returns:
        A dict with `roc_auc` and `average_precision` (macro, test split, best epoch), `best_epoch` (1-based epoch
        whose weights were kept: the first with the highest validation ROC-AUC), `validation_roc_auc`,
        `validation_average_precision`, `num_labels_skipped` (test labels with a single class, left out of the macro
        averages), `validation_num_labels_skipped`, `history` (per epoch: `epoch`, `train_loss`,
        `validation_roc_auc`) and the sizes and settings.
    """
    if kind not in PROBE_KINDS:
        raise ValueError(f"probe kind must be one of {PROBE_KINDS}, got {kind!r}")
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs and batch_size must be positive, got {epochs} and {batch_size}")
    splits = {}
    for split, features, labels in [
        ("train", train_features, train_labels),
        ("validation", validation_features, validation_labels),
        ("test", test_features, test_labels),
    ]:
        splits[split] = [_check_features(f"{split}_features", features), labels]
    num_features = splits["train"][0].shape[1]
    for split, (features, _) in splits.items():
        if features.shape[1] != num_features:
            raise ValueError(f"{split}_features have {features.shape[1]} features, train_features have {num_features}")

    train_labels, task = _check_labels("train_labels", splits["train"][1], len(splits["train"][0]), task, None)
    if task == "multilabel":
        num_labels = train_labels.shape[1]
    else:  # every split's classes get an output, also a class the training split lacks (it is then never right)
        num_labels = 1 + max(int(np.max(_check_labels(split, labels, len(features), task, None)[0]))
                             for split, (features, labels) in splits.items())
    splits["train"][1] = train_labels
    for split in ("validation", "test"):
        splits[split][1], _ = _check_labels(f"{split}_labels", splits[split][1], len(splits[split][0]), task, num_labels)
    validation_multi_hot = splits["validation"][1] if task == "multilabel" else np.eye(num_labels)[splits["validation"][1]]
    positives = validation_multi_hot.sum(axis=0)
    if not ((positives > 0) & (positives < len(validation_multi_hot))).any():
        raise ValueError(
            "the validation split has no label with both positive and negative examples, so ROC-AUC model selection "
            "is impossible; use a larger or more varied validation split"
        )

    # Standardize with the training split's statistics (constant features are left centered, not divided by 0).
    mean = splits["train"][0].mean(axis=0, dtype=np.float64)
    std = splits["train"][0].std(axis=0, dtype=np.float64)
    std = np.where(std > 1e-8, std, 1.0)
    device = torch.device(device) if device is not None else torch.device("cpu")
    tensors = {}
    for split, (features, labels) in splits.items():
        standardized = torch.from_numpy(((features - mean) / std).astype(np.float32)).to(device)
        tensors[split] = (standardized, torch.from_numpy(labels).to(device))

    train_inputs, train_targets = tensors["train"]
    num_train = len(train_inputs)
    loss_function = nn.BCEWithLogitsLoss() if task == "multilabel" else nn.CrossEntropyLoss()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), _torch_threads(num_threads):
        torch.manual_seed(seed)
        model = ProbeClassifier(num_features, num_labels, kind, hidden_size, dropout).to(device)
        optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=weight_decay)
        batch_order = torch.Generator(device="cpu").manual_seed(seed)

        history = []
        best = {"validation_roc_auc": -math.inf}
        for epoch in range(1, epochs + 1):
            model.train()
            permutation = torch.randperm(num_train, generator=batch_order).to(device)
            total_loss = 0.0
            # Full-batch tensors indexed in place: no DataLoader, which would dominate the time of such small models.
            for start in range(0, num_train, batch_size):
                indices = permutation[start : start + batch_size]
                loss = loss_function(model(train_inputs[indices]), train_targets[indices])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total_loss += loss.item() * len(indices)
            validation_scores = _scores(model, tensors["validation"][0], task)
            validation_roc_auc, validation_skipped = roc_auc(splits["validation"][1], validation_scores)
            history.append({"epoch": epoch, "train_loss": total_loss / num_train, "validation_roc_auc": validation_roc_auc})
            if validation_roc_auc > best["validation_roc_auc"]:
                best = {"validation_roc_auc": validation_roc_auc, "epoch": epoch, "state": copy.deepcopy(model.state_dict())}
                best["validation_average_precision"], _ = average_precision(splits["validation"][1], validation_scores)

        model.load_state_dict(best["state"])
        test_scores = _scores(model, tensors["test"][0], task)
    test_roc_auc, test_skipped = roc_auc(splits["test"][1], test_scores)
    test_average_precision, _ = average_precision(splits["test"][1], test_scores)
    if test_skipped:
        logger.warning(f"{test_skipped} of {num_labels} labels have a single class in the test split; left out of the macro averages")
    result = {
        "roc_auc": test_roc_auc,
        "average_precision": test_average_precision,
        "best_epoch": best["epoch"],
        "validation_roc_auc": best["validation_roc_auc"],
        "validation_average_precision": best["validation_average_precision"],
        "num_labels_skipped": test_skipped,
        "validation_num_labels_skipped": validation_skipped,
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


def register(subparsers) -> None:
    pass
