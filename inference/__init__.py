"""Inference at scale: whole-track tags and embeddings of music collections (`maest tag`, `maest embed`), the same
as a Python API, and ONNX export."""

from .api import InferenceResults, analyze, embed, process_tracks, tag
from .distributed import DistributedResults, analyze_distributed
from .model import DEFAULT_MODEL, InferenceModel, ModelNotAvailableError, load_model
from .store import SettingsMismatchError, finalize_output, read_output


__all__ = [
    "DEFAULT_MODEL",
    "DistributedResults",
    "InferenceModel",
    "InferenceResults",
    "ModelNotAvailableError",
    "SettingsMismatchError",
    "analyze",
    "analyze_distributed",
    "embed",
    "finalize_output",
    "load_model",
    "process_tracks",
    "read_output",
    "tag",
]
