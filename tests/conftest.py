"""Shared test fixtures. Everything runs offline on small models and audio that the tests make."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path

import numpy as np
import pytest
import torch

from maest.synthetic import synthetic_music  # noqa: F401 (the tests' music, imported from here)


FIXTURES = Path(__file__).parent / "fixtures"

SAMPLING_RATE = 16000

# A small MAEST for file-level tests: 5 s segments (316 frames), width 64, 3 blocks.
SMALL_MODEL_KWARGS = dict(
    max_length=316, hidden_size=64, num_hidden_layers=3, num_attention_heads=4, intermediate_size=128
)
SMALL_MODEL_LABELS = ["rock", "jazz", "techno", "ambient", "hip hop", "folk", "classical"]


def write_audio(path, audio: np.ndarray, sampling_rate: int = SAMPLING_RATE) -> Path:
    """Encodes audio (mono `(samples,)` or `(channels, samples)`) by the file's extension, with the package's own
    encoder (PyAV's FFmpeg: no system FFmpeg needed)."""
    from maest.feature_extraction.audio import encode_audio

    encode_audio(path, audio, sampling_rate)
    return Path(path)


@pytest.fixture(scope="session")
def reference():
    """Outputs of the original MAEST implementation on the tiny reference checkpoint."""
    return dict(np.load(FIXTURES / "tiny_expected.npz"))


@pytest.fixture(scope="module")
def tiny_config():
    """The shape of the reference checkpoint (tests/fixtures/tiny_config.json). A model built from it shares the
    object (as in transformers): a new one per module, so a test module that changes it cannot reach another."""
    from maest import MAESTConfig

    return MAESTConfig.from_preset("maest-tiny")


@pytest.fixture(scope="session")
def small_model_dir(tmp_path_factory):
    """A saved, randomly initialized small MAEST (model, feature extractor, code) with named labels."""
    from maest import MAESTConfig, MAESTFeatureExtractor, MAESTForAudioClassification

    torch.manual_seed(0)
    config = MAESTConfig(
        **SMALL_MODEL_KWARGS,
        problem_type="multi_label_classification",  # a tagger, as the released models: the pipeline gives sigmoids
        id2label=dict(enumerate(SMALL_MODEL_LABELS)),
        label2id={label: i for i, label in enumerate(SMALL_MODEL_LABELS)},
    )
    directory = tmp_path_factory.mktemp("small_maest")
    MAESTForAudioClassification(config).eval().save_pretrained(directory)
    MAESTFeatureExtractor(max_length=config.max_length).save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def published_hub(tmp_path_factory):
    """The eight published repos (`mtg-upf/discogs-maest-*`) in their published layouts with tiny weights, in a
    Hugging Face cache of their own, plus original checkpoint files of the same weights (tests/hub_fixture.py)."""
    from hub_fixture import build_published_hub

    return build_published_hub(tmp_path_factory.mktemp("published_hub"))


@pytest.fixture
def published_hub_cache(published_hub, monkeypatch):
    """Serves `published_hub` offline as the Hugging Face cache of this test (and of the subprocesses it starts)."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_CACHE", str(published_hub.cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(published_hub.cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return published_hub


@pytest.fixture(scope="module")
def single_torch_thread():
    """Small tensors on a loaded 2-core machine: one torch thread avoids OpenMP contention (a 5 s chunk's check took
    50 ms with two). Modules opt in with `pytestmark = pytest.mark.usefixtures("single_torch_thread")`."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
