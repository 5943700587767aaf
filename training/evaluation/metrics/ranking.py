"""Ranking metrics of the paper's downstream protocol: macro ROC-AUC and macro average precision (mAP).

Plain numpy, so that the package does not depend on scikit-learn; the tests check these against scikit-learn.

Definitions (per label, then an unweighted mean over labels):

- ROC-AUC is the probability that a random positive example scores higher than a random negative one, ties counting
  one half (the Mann-Whitney U statistic divided by `num_positive * num_negative`). This equals the area under the
  ROC curve with linear interpolation between thresholds, as scikit-learn's `roc_auc_score`.
- Average precision is `sum_n (R_n - R_(n-1)) P_n` over the distinct score thresholds in decreasing order, where
  `P_n` and `R_n` are the precision and recall of predicting positive every example scoring at least the n-th
  threshold (examples with tied scores enter together; no interpolation), as scikit-learn's
  `average_precision_score`.
- A label with only one class among the references of the evaluated split (no positive, or no negative example)
  carries no ranking information: ROC-AUC is undefined for it, and its average precision would be undefined (no
  positive) or 1 whatever the scores (no negative). Such labels are **skipped** by both macro averages, which then
  average over the remaining labels and report how many were skipped. If every label is skipped, the macro value is
  NaN.
"""

import numpy as np


def _as_2d_inputs(references, prediction_scores) -> tuple[np.ndarray, np.ndarray]:
    """Validates and converts inputs to `(num_examples, num_labels)` arrays: references in {0, 1} (multi-hot), or
    class indices of shape `(num_examples,)` (one-hot encoded against the score columns)."""
    scores = np.asarray(prediction_scores, dtype=np.float64)
    references = np.asarray(references)
    if scores.ndim == 1:
        scores = scores[:, None]
    if scores.ndim != 2:
        raise ValueError(f"prediction_scores must have shape (num_examples, num_labels), got {scores.shape}")
    if references.ndim == 1 and scores.shape[1] > 1:
        # Class indices of a single-label (multiclass) task.
        if references.shape[0] and not np.issubdtype(references.dtype, np.integer):
            if not np.all(np.mod(references, 1) == 0):
                raise ValueError("1-D references must be integer class indices")
        indices = references.astype(np.int64)
        if indices.size and (indices.min() < 0 or indices.max() >= scores.shape[1]):
            raise ValueError(
                f"class indices must be in [0, {scores.shape[1]}), got values from {indices.min()} to {indices.max()}"
            )
        references = np.zeros(scores.shape, dtype=np.float64)
        references[np.arange(len(indices)), indices] = 1.0
    elif references.ndim == 1:
        references = references[:, None]
    references = references.astype(np.float64)
    if references.shape != scores.shape:
        raise ValueError(
            f"references have shape {references.shape} but prediction_scores have shape {scores.shape}; both must be "
            f"(num_examples, num_labels)"
        )
    if references.shape[0] == 0:
        raise ValueError("no examples to evaluate")
    if not np.isin(references, (0.0, 1.0)).all():
        raise ValueError("references must be 0/1 (multi-hot) values")
    if not np.isfinite(scores).all():
        raise ValueError("prediction_scores contain NaN or infinite values")
    return references, scores


def _tie_runs(sorted_scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For scores sorted along axis 0 (each column separately): the first and the last position of the run of equal
    values that each position belongs to, both of shape `(num_examples, num_labels)`."""
    num_examples = sorted_scores.shape[0]
    positions = np.broadcast_to(np.arange(num_examples)[:, None], sorted_scores.shape)
    changes = sorted_scores[1:] != sorted_scores[:-1]
    edge = np.ones((1, sorted_scores.shape[1]), dtype=bool)
    run_starts = np.maximum.accumulate(np.where(np.concatenate([edge, changes]), positions, 0), axis=0)
    is_run_end = np.concatenate([changes, edge])
    run_ends = np.minimum.accumulate(np.where(is_run_end, positions, num_examples)[::-1], axis=0)[::-1]
    return run_starts, run_ends


def _class_counts(references: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    num_positive = references.sum(axis=0)
    num_negative = references.shape[0] - num_positive
    return num_positive, num_negative, (num_positive > 0) & (num_negative > 0)


def roc_auc_per_label(references: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """ROC-AUC of each column of `(num_examples, num_labels)` 0/1 `references` and float `scores`, NaN for columns
    with only one class. Computed from average ranks (ties share the mean of their ranks), all columns at once."""
    order = np.argsort(scores, axis=0, kind="stable")
    run_starts, run_ends = _tie_runs(np.take_along_axis(scores, order, axis=0))
    ranks = np.empty_like(scores)
    np.put_along_axis(ranks, order, (run_starts + run_ends) / 2.0 + 1.0, axis=0)  # 1-based mean rank of each run
    num_positive, num_negative, defined = _class_counts(references)
    positive_rank_sums = (ranks * references).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        values = (positive_rank_sums - num_positive * (num_positive + 1) / 2.0) / (num_positive * num_negative)
    return np.where(defined, values, np.nan)


def average_precision_per_label(references: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Average precision of each column (see the module docstring), NaN for columns with only one class."""
    order = np.argsort(-scores, axis=0, kind="stable")
    run_starts, run_ends = _tie_runs(np.take_along_axis(-scores, order, axis=0))
    true_positives = np.cumsum(np.take_along_axis(references, order, axis=0), axis=0)
    positions = np.arange(scores.shape[0])[:, None]
    # Each threshold (run of tied scores) contributes at its last position: the positives it adds times its precision.
    is_threshold = positions == run_ends
    before_run = np.where(run_starts > 0, np.take_along_axis(true_positives, np.maximum(run_starts - 1, 0), axis=0), 0)
    added_positives = true_positives - before_run
    precision = true_positives / (positions + 1.0)
    num_positive, _, defined = _class_counts(references)
    with np.errstate(invalid="ignore", divide="ignore"):
        values = (is_threshold * added_positives * precision).sum(axis=0) / num_positive
    return np.where(defined, values, np.nan)


def binary_roc_auc(references, scores) -> float:
    """ROC-AUC of one label: `references` in {0, 1} and `scores` of shape `(num_examples,)`; NaN if the references
    have only one class."""
    return float(roc_auc_per_label(*_as_2d_inputs(references, scores))[0])


def binary_average_precision(references, scores) -> float:
    """Average precision of one label (see the module docstring); NaN if the references have only one class."""
    return float(average_precision_per_label(*_as_2d_inputs(references, scores))[0])


def _macro(per_label: np.ndarray, average: str | None):
    num_skipped = int(np.isnan(per_label).sum())
    if average is None:
        return per_label, num_skipped
    if average != "macro":
        raise ValueError(f"average must be 'macro' or None, got {average!r}")
    value = float(np.nanmean(per_label)) if num_skipped < len(per_label) else float("nan")
    return value, num_skipped


def roc_auc(references, prediction_scores, average: str | None = "macro"):
    """Macro ROC-AUC.

    Args:
        references: multi-hot `(num_examples, num_labels)` 0/1 values, or class indices `(num_examples,)` for a
            single-label task (one-vs-rest).
        prediction_scores: `(num_examples, num_labels)` scores (logits or probabilities; only their order counts).
        average: `"macro"` for the unweighted mean over labels with both classes present, `None` for the per-label
            values (NaN for skipped labels).

    Returns:
        `(value, num_labels_skipped)`: the macro value (a float, NaN if every label is skipped) or the per-label array,
        and how many labels had only one class in `references`.
    """
    references, scores = _as_2d_inputs(references, prediction_scores)
    per_label = roc_auc_per_label(references, scores)
    return _macro(per_label, average)


def average_precision(references, prediction_scores, average: str | None = "macro"):
    """Macro average precision (mAP); arguments and return value as [`roc_auc`]."""
    references, scores = _as_2d_inputs(references, prediction_scores)
    per_label = average_precision_per_label(references, scores)
    return _macro(per_label, average)


__all__ = [
    "average_precision",
    "average_precision_per_label",
    "binary_average_precision",
    "binary_roc_auc",
    "roc_auc",
    "roc_auc_per_label",
]
