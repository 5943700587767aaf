"""Inference at scale: whole-track tags and embeddings of music collections (`maest tag`, `maest embed`), the same
as a Python API, and ONNX export. One collection run is one job (`maest.inference.job`) whether one process, several
`--devices` or a launcher's processes share it (`maest.inference.distributed`)."""

from .api import analyze, embed, tag
from .distributed import DistributedResults, analyze_distributed
from .job import CollectionError, CollectionSettings, InferenceResults
from .loading import load_model
from .model import DEFAULT_MODEL, InferenceModel, ModelNotAvailableError
from .store import (
    OutputLockedError,
    SettingsMismatchError,
    StoreWriteError,
    TrackResult,
    finalize_output,
    read_failures,
    read_output,
)


__all__ = [
    "DEFAULT_MODEL",
    "CollectionError",
    "CollectionSettings",
    "DistributedResults",
    "InferenceModel",
    "InferenceResults",
    "ModelNotAvailableError",
    "OutputLockedError",
    "SettingsMismatchError",
    "StoreWriteError",
    "TrackResult",
    "analyze",
    "analyze_distributed",
    "embed",
    "finalize_output",
    "load_model",
    "read_failures",
    "read_output",
    "tag",
]
