"""What a saved MAEST directory needs to load with `trust_remote_code=True` where this package is not installed:
the three self-contained source files, and an `auto_map` naming every Auto class (transformers records only the
saved object's own class)."""

import shutil
from contextlib import contextmanager
from pathlib import Path

from .feature_extraction import feature_extraction_maest
from .modeling import configuration_maest, modeling_maest

AUTO_MAP = {
    "AutoConfig": "configuration_maest.MAESTConfig",
    "AutoModel": "modeling_maest.MAESTModel",
    "AutoModelForAudioClassification": "modeling_maest.MAESTForAudioClassification",
    "AutoFeatureExtractor": "feature_extraction_maest.MAESTFeatureExtractor",
}
REMOTE_CODE_MODULES = (configuration_maest, modeling_maest, feature_extraction_maest)


@contextmanager
def complete_auto_map(config):
    """Sets the full `auto_map` on `config` while it is saved."""
    previous = getattr(config, "auto_map", None)
    config.auto_map = dict(AUTO_MAP)
    try:
        yield
    finally:
        config.auto_map = previous


def copy_remote_code(save_directory) -> list[Path]:
    """Copies the model, configuration and feature-extractor sources into `save_directory`."""
    copied = []
    for module in REMOTE_CODE_MODULES:
        source = Path(module.__file__)
        target = Path(save_directory) / source.name
        shutil.copyfile(source, target)
        copied.append(target)
    return copied
