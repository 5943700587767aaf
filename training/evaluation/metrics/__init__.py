"""The downstream protocol's metrics (macro ROC-AUC, macro average precision) as `evaluate` modules inside the
project, loadable offline.

```python
from maest.training.evaluation.metrics import load_metric

metric = load_metric("macro_roc_auc")  # = evaluate.load(<this folder>/macro_roc_auc)
metric.compute(references=multi_hot, prediction_scores=scores)  # {"roc_auc": ..., "num_labels_skipped": ...}
```

The math lives in `ranking.py` (numpy; see its docstring for the definitions and how labels with a single class are
skipped); the probe calls it directly for per-epoch model selection, which avoids `evaluate`'s Arrow round trip.
"""

from pathlib import Path

from .ranking import average_precision, binary_average_precision, binary_roc_auc, roc_auc


METRICS_DIRECTORY = Path(__file__).resolve().parent
METRIC_NAMES = ("macro_roc_auc", "macro_average_precision")


def metric_path(name: str) -> Path:
    """The folder of one of the project's `evaluate` modules (what `evaluate.load` takes)."""
    if name not in METRIC_NAMES:
        raise ValueError(f"unknown metric {name!r}; the project's metrics are {', '.join(METRIC_NAMES)}")
    return METRICS_DIRECTORY / name


def load_metric(name: str, **kwargs):
    """`evaluate.load` of one of the project's metrics from its local folder (no network). Keeps the predictions in
    memory (`keep_in_memory=True`) unless told otherwise; other keyword arguments go to `evaluate.load`."""
    # imported here: `evaluate` imports transformers' pipelines (seconds), which the users of `ranking` alone (the
    # pre-training validation, the probe's per-epoch model selection) do not need
    import evaluate

    kwargs.setdefault("keep_in_memory", True)
    return evaluate.load(str(metric_path(name)), **kwargs)


__all__ = [
    "METRIC_NAMES",
    "average_precision",
    "binary_average_precision",
    "binary_roc_auc",
    "load_metric",
    "metric_path",
    "roc_auc",
]
