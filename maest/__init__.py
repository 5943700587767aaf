"""MAEST (Music Audio Efficient Spectrogram Transformer) on the Hugging Face stack.

`import maest` registers the MAEST classes with transformers' Auto classes, so `AutoModel.from_pretrained(DIR)`,
`AutoFeatureExtractor.from_pretrained(DIR)` and `pipeline("audio-classification", model=DIR)` work on MAEST
directories.

Importing this package is cheap on purpose: `maest --help` must not pay for torch and transformers (seconds). The
public names below load on first use, and the Auto registration runs as soon as transformers is imported (at once
when it already is, otherwise right after `import transformers` finishes, whoever imports it).
"""

import importlib
import importlib.abc
import importlib.util
import os
import sys

# In a source checkout, maest/modeling, maest/utils, ... are symbolic links to the top-level folders. A checkout made
# without symbolic links (git's core.symlinks=false, the default on Windows) has small text files there instead.
if os.path.isfile(os.path.join(os.path.dirname(__file__), "utils")):
    raise ImportError(
        "maest: this checkout has a file where the link maest/utils -> ../utils should be (git without symbolic "
        "links, e.g. core.symlinks=false on Windows): clone with symbolic links enabled, or install the package"
    )

from maest.utils.constants import __version__  # noqa: E402

# Public name -> the module that defines it (loaded on first access).
_EXPORTS = {
    "MAEST_PRESETS": "maest.modeling",
    "CheckpointError": "maest.modeling",
    "MAESTConfig": "maest.modeling",
    "MAESTForAudioClassification": "maest.modeling",
    "MAESTModel": "maest.modeling",
    "load_maest": "maest.modeling",
    "load_original_checkpoint": "maest.modeling",
    "pool_embedding_tokens": "maest.modeling",
    "MAESTFeatureExtractor": "maest.feature_extraction",
    # The original research code's entry point (palonso/MAEST), on this package's classes.
    "get_maest": "maest.original",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'maest' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))


def register_auto_classes() -> None:
    """Registers MAEST with transformers' Auto classes and records `auto_map` for saved objects (idempotent)."""
    from transformers import AutoConfig, AutoFeatureExtractor, AutoModel, AutoModelForAudioClassification

    from .feature_extraction import MAESTFeatureExtractor
    from .modeling import MAESTConfig, MAESTForAudioClassification, MAESTModel

    AutoConfig.register(MAESTConfig.model_type, MAESTConfig, exist_ok=True)
    AutoModel.register(MAESTConfig, MAESTModel, exist_ok=True)
    AutoModelForAudioClassification.register(MAESTConfig, MAESTForAudioClassification, exist_ok=True)
    AutoFeatureExtractor.register(MAESTConfig, MAESTFeatureExtractor, exist_ok=True)
    MAESTConfig.register_for_auto_class()
    MAESTModel.register_for_auto_class("AutoModel")
    MAESTForAudioClassification.register_for_auto_class("AutoModelForAudioClassification")
    MAESTFeatureExtractor.register_for_auto_class("AutoFeatureExtractor")


# Modules whose import must have finished before registering: transformers, and the two that define the classes.
_REGISTRATION_NEEDS = ("transformers", "maest.modeling", "maest.feature_extraction")


def _initializing(name: str) -> bool:
    module = sys.modules.get(name)
    return module is not None and getattr(getattr(module, "__spec__", None), "_initializing", False)


class _RegisterAfterImports(importlib.abc.MetaPathFinder):
    """Finds the modules of `_REGISTRATION_NEEDS` as the other finders do, and once one has loaded, registers MAEST
    if transformers is loaded and none of them is still half-imported (registering imports the other two)."""

    def __init__(self):
        self.finding = False
        self.registered = False

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in _REGISTRATION_NEEDS or self.finding or self.registered:
            return None
        self.finding = True
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            self.finding = False
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        load = spec.loader.exec_module

        def exec_module(module):
            load(module)
            self.register_when_ready(exclude=fullname)

        spec.loader.exec_module = exec_module
        return spec

    def register_when_ready(self, exclude: str) -> None:
        others = [name for name in _REGISTRATION_NEEDS if name != exclude]
        if self.registered or "transformers" not in sys.modules or any(_initializing(name) for name in others):
            return
        self.registered = True
        register_auto_classes()


if "transformers" in sys.modules:
    register_auto_classes()
elif not any(isinstance(finder, _RegisterAfterImports) for finder in sys.meta_path):
    sys.meta_path.insert(0, _RegisterAfterImports())
