"""Macro ROC-AUC as an `evaluate` module that loads offline: `evaluate.load("<path>/macro_roc_auc")`, or
`maest.training.evaluation.metrics.load_metric("macro_roc_auc")`."""

import datasets
import evaluate

from maest.training.evaluation.metrics.ranking import roc_auc


_DESCRIPTION = """
Macro ROC-AUC of multi-label (or single-label, one-vs-rest) scores: the unweighted mean over labels of the probability
that a positive example scores above a negative one (ties count one half; equal to the area under the ROC curve).
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
    roc_auc (`float`, or `list` of `float` with `average=None`), num_labels_skipped (`int`).

Example:
    >>> metric = maest.training.evaluation.metrics.load_metric("macro_roc_auc")
    >>> metric.compute(references=[[1, 0], [0, 1], [1, 1]], prediction_scores=[[0.9, 0.2], [0.1, 0.8], [0.7, 0.1]])
    {'roc_auc': 0.75, 'num_labels_skipped': 0}
"""

_CITATION = """
@article{hanley1982meaning,
  title={The meaning and use of the area under a receiver operating characteristic (ROC) curve},
  author={Hanley, James A and McNeil, Barbara J},
  journal={Radiology}, volume={143}, number={1}, pages={29--36}, year={1982}
}
"""


class MacroRocAuc(evaluate.Metric):
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
        value, num_skipped = roc_auc(references, prediction_scores, average=average)
        return {"roc_auc": value if average is not None else value.tolist(), "num_labels_skipped": num_skipped}
