"""MAEST model: configuration, PyTorch modules and checkpoint conversion."""

from .configuration_maest import MAEST_PRESETS, PUBLISHED_CHECKPOINTS, MAESTConfig
from .conversion import CheckpointError, load_original_checkpoint
from .modeling_maest import (
    MAESTAudioClassifierOutput,
    MAESTForAudioClassification,
    MAESTModel,
    MAESTPreTrainedModel,
    parse_embedding_tokens,
    pool_embedding_tokens,
)
