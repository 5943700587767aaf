"""MAEST (Music Audio Efficient Spectrogram Transformer) on the Hugging Face stack.

`import maest` registers the MAEST classes with transformers' Auto classes, so `AutoModel.from_pretrained(DIR)`,
`AutoFeatureExtractor.from_pretrained(DIR)` and `pipeline("audio-classification", model=DIR)` work on MAEST
directories.
"""

from transformers import AutoConfig, AutoFeatureExtractor, AutoModel, AutoModelForAudioClassification

from .feature_extraction import MAESTFeatureExtractor
from .modeling import (
    MAEST_PRESETS,
    CheckpointError,
    MAESTConfig,
    MAESTForAudioClassification,
    MAESTModel,
    load_original_checkpoint,
    pool_embedding_tokens,
)

__version__ = "0.1.0"

AutoConfig.register(MAESTConfig.model_type, MAESTConfig, exist_ok=True)
AutoModel.register(MAESTConfig, MAESTModel, exist_ok=True)
AutoModelForAudioClassification.register(MAESTConfig, MAESTForAudioClassification, exist_ok=True)
AutoFeatureExtractor.register(MAESTConfig, MAESTFeatureExtractor, exist_ok=True)

# Saved objects record where their code lives (`auto_map`) for `trust_remote_code=True`.
MAESTConfig.register_for_auto_class()
MAESTModel.register_for_auto_class("AutoModel")
MAESTForAudioClassification.register_for_auto_class("AutoModelForAudioClassification")
MAESTFeatureExtractor.register_for_auto_class("AutoFeatureExtractor")

__all__ = [
    "MAEST_PRESETS",
    "CheckpointError",
    "MAESTConfig",
    "MAESTFeatureExtractor",
    "MAESTForAudioClassification",
    "MAESTModel",
    "load_original_checkpoint",
    "pool_embedding_tokens",
]
