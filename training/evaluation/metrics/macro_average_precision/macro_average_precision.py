"""Macro average precision (mAP) as an `evaluate` module that loads offline:
`evaluate.load("<path>/macro_average_precision")`, or
`maest.training.evaluation.metrics.load_metric("macro_average_precision")`."""

import datasets
import evaluate

from maest.training.evaluation.metrics.ranking import average_precision


_DESCRIPTION = """
Macro average precision (mAP) of multi-label (or single-label, one-vs-rest) scores: the unweighted mean over labels of
sum_n (R_n - R_(n-1)) P_n, the precision at each distinct score threshold weighted by the recall it adds (tied scores
enter together; no interpolation).
Labels with only one class among the references (no positive or no negative example) are skipped, and their number is
reported as `num_labels_skipped`; if every label is skipped the value is NaN.
"""

_KWARGS_DESCRIPTION = """
Args:
    prediction_scores (`list` of `list` of `float`): `(num_examples, num_labels)` scores; only their order matters.
    references (`list` of `list` of `int`, or `list` of `int`): multi-hot `(num_examples, num_labels)` 0/1 labels, or
        class indices `(num_examples,)` of a single-label task.
    average (`str` or `None`, defaults to `"macro"`): `None` returns the per-label values (NaN for skipped labels).

Returns:
    average_precision (`float`, or `list` of `float` with `average=None`), num_labels_skipped (`int`).

Example:
    >>> metric = maest.training.evaluation.metrics.load_metric("macro_average_precision")
    >>> metric.compute(references=[[1, 0], [0, 1], [1, 1]], prediction_scores=[[0.9, 0.2], [0.1, 0.8], [0.7, 0.1]])
    {'average_precision': 0.9166666666666666, 'num_labels_skipped': 0}
"""

_CITATION = """
@book{manning2008introduction,
  title={Introduction to Information Retrieval},
  author={Manning, Christopher D and Raghavan, Prabhakar and Sch{\"u}tze, Hinrich},
  publisher={Cambridge University Press}, year={2008}, chapter={8.4}
}
"""


class MacroAveragePrecision(evaluate.Metric):
    def _info(self):
        scores = datasets.Sequence(datasets.Value("float64"))
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=[
                datasets.Features(
                    {"prediction_scores": scores, "references": datasets.Sequence(datasets.Value("int32"))}
                ),
                datasets.Features({"prediction_scores": scores, "references": datasets.Value("int32")}),
            ],
        )

    def _compute(self, prediction_scores, references, average="macro"):
        value, num_skipped = average_precision(references, prediction_scores, average=average)
        return {
            "average_precision": value if average is not None else value.tolist(),
            "num_labels_skipped": num_skipped,
        }
