"""Model cards for MAEST checkpoints: the released models (`maest-5s` ... `maest-30s`, `maest-30s-519l`) and models
fine-tuned or pre-trained with this package, with Hub metadata (`model-index`) that `huggingface_hub` parses back.

    from maest.model_cards import write_model_card
    write_model_card("runs/maest-genre", base_model="mtg-upf/maest-30s", training_summary={...}, probe_results=[...])
"""

from .cards import (
    CARD_NAME,
    DEFAULT_LICENSE,
    METRICS,
    ModelCardError,
    build_model_card,
    count_parameters,
    read_results,
    results_table,
    write_model_card,
)
from .published import CITATION_BIBTEX, PAPER_DOWNSTREAM_RESULTS, DownstreamResult

__all__ = [
    "CARD_NAME",
    "CITATION_BIBTEX",
    "DEFAULT_LICENSE",
    "METRICS",
    "ModelCardError",
    "PAPER_DOWNSTREAM_RESULTS",
    "DownstreamResult",
    "build_model_card",
    "count_parameters",
    "read_results",
    "results_table",
    "write_model_card",
]
