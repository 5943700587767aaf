"""MAEST model: configuration, PyTorch modules, the released checkpoints, label names and checkpoint conversion."""

from .configuration_maest import (
    MAEST_AUTO_MAP,
    MAEST_PRESETS,
    BlockIndexError,
    MAESTConfig,
    MAESTConfigError,
    validate_block_index,
)
from .conversion import CheckpointError, ModelNotAvailableError, load_maest, load_original_checkpoint
from .label_names import (
    DISCOGS_LABEL_SETS,
    LabelError,
    discogs_label_names,
    label_maps,
    read_label_file,
    set_label_names,
)
from .modeling_maest import (
    MAESTAudioClassifierOutput,
    MAESTForAudioClassification,
    MAESTModel,
    MAESTPreTrainedModel,
    parse_embedding_tokens,
    pool_embedding_tokens,
)
from .published import PUBLISHED_CHECKPOINTS, PublishedCheckpoint, UnknownCheckpointError, find_published, match_published
