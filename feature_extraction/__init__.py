"""MAEST front-end: Essentia-exact log-mel features, and audio file decoding."""

from .feature_extraction_maest import (
    AudioInputError,
    AudioTypeError,
    FeatureExtractorConfigError,
    MAESTFeatureExtractor,
    audio_to_mono,
    max_length_mismatch,
    resample_audio,
    sinc_resample,
)
from .audio import (
    AUDIO_EXTENSIONS,
    AudioDecodingError,
    audio_info,
    find_audio_files,
    load_audio,
    stream_segment_features,
    track_segment_features,
)
