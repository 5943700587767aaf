"""The HEAR 2021 API (`maest.hear`): shapes, segment embeddings and timestamps against the front-end's definition and
the model's hidden states, devices, the offline random-weights model, and the HEAR validator itself."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SAMPLING_RATE, synthetic_music

import maest.hear
from maest.hear import HEARInputError, get_scene_embeddings, get_timestamp_embeddings, load_model


pytestmark = pytest.mark.usefixtures("single_torch_thread")

# MAEST's normalization (docs/design.md, section 'Front-end'): padded frames are log10(1 + 0) normalized.
PADDED_FRAME = (0.0 - 2.06755686098554) / (2 * 1.268292820667291)
HOP_SECONDS = 256 / 16000
VALIDATOR = Path(sys.executable).with_name("hear-validator")
# A `tensorflow` module with only `Module` (the validator's one use of TensorFlow), seen by the validator alone.
TENSORFLOW_STAND_IN = Path(__file__).parent / "fixtures" / "hear_stand_in"


@pytest.fixture(scope="module")
def hear_model(small_model_dir):
    """The small saved MAEST (316-frame segments of 5.056 s, width 64, 3 blocks)."""
    return load_model(str(small_model_dir))


def expected_segment_embeddings(model, clip: np.ndarray) -> torch.Tensor:
    """The paper's embedding (block `embedding_block`: cls, dist, mean of the patch tokens) of each consecutive
    316-frame segment, the last kept and padded when it holds at least half a segment of frames."""
    length = model.model.config.max_length
    frames = model.feature_extractor(clip, sampling_rate=SAMPLING_RATE, padding="longest", max_length=10**6)
    frames = frames["input_values"][0]
    num_frames = frames.shape[0]
    starts = [start for start in range(0, num_frames, length) if num_frames - start >= length / 2 or start == 0]
    segments = torch.full((len(starts), length, frames.shape[1]), PADDED_FRAME)
    for index, start in enumerate(starts):
        part = frames[start : start + length]
        segments[index, : part.shape[0]] = part
    block = model.model.config.num_hidden_layers // 2  # the default embedding block
    with torch.no_grad():
        hidden = model.model.maest(segments, output_hidden_states=True).hidden_states[block + 1]
    return torch.cat([hidden[:, 0], hidden[:, 1], hidden[:, 2:].mean(dim=1)], dim=-1)


def test_model_attributes(hear_model):
    assert hear_model.sample_rate == 16000 and isinstance(hear_model.sample_rate, int)
    assert hear_model.scene_embedding_size == hear_model.timestamp_embedding_size == 3 * 64
    assert isinstance(hear_model, torch.nn.Module) and not hear_model.training


def test_timestamp_embeddings_are_the_segments_embeddings_at_their_centers(hear_model):
    # 14 s: 876 frames = 2 segments of 316 and 244 frames (at least half a segment: kept, padded).
    clips = np.stack([synthetic_music(14.0, seed=seed) for seed in (1, 2)])
    embeddings, timestamps = get_timestamp_embeddings(torch.from_numpy(clips), hear_model)
    assert embeddings.shape == (2, 3, hear_model.timestamp_embedding_size) and embeddings.dtype == torch.float32
    for clip, clip_embeddings in zip(clips, embeddings):
        torch.testing.assert_close(clip_embeddings, expected_segment_embeddings(hear_model, clip), atol=1e-5, rtol=1e-4)
    segment_ms = 1000 * 316 * HOP_SECONDS  # 5056 ms
    expected_ms = torch.tensor([(k + 0.5) * segment_ms for k in range(3)])
    assert timestamps.shape == (2, 3) and timestamps.dtype == torch.float32
    torch.testing.assert_close(timestamps, expected_ms.expand(2, 3), atol=1e-3, rtol=0)


def test_scene_embedding_is_the_mean_of_the_timestamp_embeddings(hear_model):
    audio = torch.from_numpy(np.stack([synthetic_music(8.0, seed=seed) for seed in (3, 4)]))
    embeddings, _ = get_timestamp_embeddings(audio, hear_model)
    scene = get_scene_embeddings(audio, hear_model)
    assert embeddings.shape[1] == 2 and scene.shape == (2, hear_model.scene_embedding_size)
    torch.testing.assert_close(scene, embeddings.mean(dim=1))


def test_a_clip_shorter_than_a_segment_is_one_padded_segment(hear_model):
    clip = synthetic_music(1.0, seed=6)
    embeddings, timestamps = get_timestamp_embeddings(torch.from_numpy(clip[None]), hear_model)
    assert embeddings.shape[:2] == (1, 1)
    torch.testing.assert_close(embeddings[0], expected_segment_embeddings(hear_model, clip), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(timestamps, torch.tensor([[2528.0]]), atol=1e-3, rtol=0)


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
def test_outputs_are_on_the_models_device(small_model_dir, device):
    model = load_model(str(small_model_dir)).to(device)
    audio = torch.from_numpy(np.stack([synthetic_music(2.0, seed=7)] * 2)).to(device)
    embeddings, timestamps = get_timestamp_embeddings(audio, model)
    scene = get_scene_embeddings(audio, model)
    assert embeddings.device.type == timestamps.device.type == scene.device.type == device


@pytest.mark.parametrize(
    "audio, message",
    [
        (np.zeros((1, 16000), dtype=np.float32), "must be a torch.Tensor"),
        (torch.zeros(16000), "(n_sounds, n_samples)"),
        (torch.zeros(0, 16000), "(n_sounds, n_samples)"),
        (torch.zeros(1, 16000, dtype=torch.int16), "floating-point"),
    ],
)
def test_bad_audio_raises_one_line_errors(hear_model, audio, message):
    with pytest.raises(HEARInputError) as error:
        get_timestamp_embeddings(audio, hear_model)
    assert message in str(error.value) and "\n" not in str(error.value)


@pytest.mark.slow  # two 87M-parameter models and one 30 s segment: 17 s on 2 busy cores
def test_without_a_model_file_random_weights_of_the_30s_shape_with_a_warning():
    with pytest.warns(UserWarning, match="RANDOM weights of the discogs-maest-30s-pw-129e shape"):
        model = load_model("")
    assert model.sample_rate == 16000 and model.scene_embedding_size == model.timestamp_embedding_size == 2304
    assert model.model.config.max_length == 1876
    with pytest.warns(UserWarning):
        again = maest.hear.load_model()
    # Seeded: the same random model every time (and the caller's random state untouched).
    for name, parameter in model.model.state_dict().items():
        assert torch.equal(parameter, again.model.state_dict()[name]), name
    scene = get_scene_embeddings(torch.from_numpy(synthetic_music(1.0, seed=8)[None]), model)
    assert scene.shape == (1, 2304) and torch.isfinite(scene).all()


def run_validator(*arguments) -> subprocess.CompletedProcess:
    if not VALIDATOR.exists():
        pytest.skip("hearvalidator is not installed (make setup installs it)")
    environment = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(TENSORFLOW_STAND_IN),
                                                                            os.environ.get("PYTHONPATH")])))
    return subprocess.run([str(VALIDATOR), "maest.hear", *arguments], capture_output=True, text=True, timeout=900,
                          env=environment)


@pytest.mark.slow
def test_hear_validator_accepts_a_model_directory(small_model_dir):
    result = run_validator("--model", str(small_model_dir), "--device", "cpu")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "Looks good!" in result.stdout
    assert "timestamp_embedding_size: 192" in result.stdout


@pytest.mark.slow
@pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="the random 30 s model on the validator's 24 clips (each a padded 30 s segment) takes minutes on a CPU "
    "(6 min on 2 busy cores); it runs where a GPU is",
)
def test_hear_validator_accepts_the_random_weights_model():
    result = run_validator("--device", "cuda")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "Looks good!" in result.stdout and "scene_embedding_size: 2304" in result.stdout
