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


def _average_ranks(scores: np.ndarray) -> np.ndarray:
    """1-based ranks of a 1-D array in increasing order, tied values sharing the mean of their ranks."""
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    # Boundaries of runs of equal values in the sorted order.
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    ends = np.r_[starts[1:], len(scores)]
    mean_rank_of_run = (starts + 1 + ends) / 2.0  # mean of the ranks starts+1 .. ends
    ranks = np.empty(len(scores))
    ranks[order] = np.repeat(mean_rank_of_run, ends - starts)
    return ranks


def binary_roc_auc(references: np.ndarray, scores: np.ndarray) -> float:
    """ROC-AUC of one label: `references` in {0, 1} and `scores` of shape `(num_examples,)`; NaN if the references
    have only one class."""
    positive = references > 0.5
    num_positive = int(positive.sum())
    num_negative = len(references) - num_positive
    if num_positive == 0 or num_negative == 0:
        return float("nan")
    rank_sum = _average_ranks(scores)[positive].sum()
    return float((rank_sum - num_positive * (num_positive + 1) / 2.0) / (num_positive * num_negative))


def binary_average_precision(references: np.ndarray, scores: np.ndarray) -> float:
    """Average precision of one label (see the module docstring); NaN if the references have only one class."""
    positive = references > 0.5
    num_positive = int(positive.sum())
    if num_positive == 0 or num_positive == len(references):
        return float("nan")
    order = np.argsort(-scores, kind="mergesort")
    sorted_scores = scores[order]
    true_positives = np.cumsum(positive[order])
    # The last example of each run of tied scores is where that threshold's counts are complete.
    threshold_ends = np.flatnonzero(np.r_[sorted_scores[1:] != sorted_scores[:-1], True])
    true_positives = true_positives[threshold_ends]
    predicted_positives = threshold_ends + 1
    precision = true_positives / predicted_positives
    recall = true_positives / num_positive
    recall_steps = np.diff(np.r_[0.0, recall])
    return float(np.sum(recall_steps * precision))


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
    per_label = np.array([binary_roc_auc(references[:, c], scores[:, c]) for c in range(scores.shape[1])])
    return _macro(per_label, average)


def average_precision(references, prediction_scores, average: str | None = "macro"):
    """Macro average precision (mAP); arguments and return value as [`roc_auc`]."""
    references, scores = _as_2d_inputs(references, prediction_scores)
    per_label = np.array([binary_average_precision(references[:, c], scores[:, c]) for c in range(scores.shape[1])])
    return _macro(per_label, average)


__all__ = ["average_precision", "binary_average_precision", "binary_roc_auc", "roc_auc"]
