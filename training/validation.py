"""Validation during pre-training: macro ROC-AUC and macro average precision of a model over a validation stream,
gathered from every process."""

import numpy as np
import torch
from accelerate.utils import gather_object

from .evaluation.metrics import average_precision, roc_auc


def macro_roc_auc_and_map(scores: np.ndarray, targets: np.ndarray) -> dict:
    """Macro ROC-AUC and macro average precision (`maest.training.evaluation.metrics`) of `scores` against the
    multi-hot `targets`, both `(examples, labels)`, over the labels with both positives and negatives."""
    value, skipped = roc_auc(targets, scores)
    precision, _ = average_precision(targets, scores)
    return {"roc_auc": value, "average_precision": precision, "num_classes": int(targets.shape[1] - skipped)}


@torch.no_grad()
def evaluate(accelerator, model, loader) -> dict:
    """The metrics of `model` over every batch of `loader` (each process its share), or `{}` without examples."""
    was_training = model.training
    model.eval()
    scores, targets = [], []
    for batch in loader:
        logits = model(batch["input_values"].to(accelerator.device)).logits
        scores.append(torch.sigmoid(logits.float()).cpu().numpy())
        targets.append(batch["labels"].numpy())
    model.train(was_training)
    local = [(np.concatenate(scores), np.concatenate(targets))] if scores else []
    gathered = gather_object(local) if accelerator.num_processes > 1 else local
    if not gathered:
        return {}
    all_scores = np.concatenate([s for s, _ in gathered])
    all_targets = np.concatenate([t for _, t in gathered])
    result = macro_roc_auc_and_map(all_scores, all_targets)
    result["num_examples"] = int(len(all_scores))
    return result


__all__ = ["evaluate", "macro_roc_auc_and_map"]
