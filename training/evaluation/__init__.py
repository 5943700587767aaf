"""Downstream evaluation of MAEST embeddings (docs/design.md, section 'Downstream protocol'): per-track embeddings
with an on-disk cache (`embeddings`), labeled datasets (`labeled_data`), the paper's probes and the blocks x token
sets sweep (`probe`), the metrics as `evaluate` modules (`metrics`) and the result files and heatmap (`report`)."""

from maest.utils.errors import MAESTError


class EvaluationError(MAESTError, ValueError):
    """Evaluation input that cannot be used: a dataset, label column, split, block or probe setting (the message
    names it)."""


__all__ = ["EvaluationError"]
