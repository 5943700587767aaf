"""MAEST front-end: Essentia-exact log-mel features, and audio file decoding."""

from .feature_extraction_maest import MAESTFeatureExtractor, slaney_mel_filter_bank
