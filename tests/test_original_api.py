"""The original MAEST API (`from maest import get_maest`): every input form, against the original implementation's
outputs (tests/fixtures/tiny_expected.npz) and the paper's embedding computed from the model's hidden states."""

import math

import numpy as np
import pytest
import torch
from conftest import FIXTURES, SAMPLING_RATE, SMALL_MODEL_LABELS, synthetic_music

from maest import MAESTFeatureExtractor, get_maest, load_original_checkpoint
from maest.inference.model import ModelNotAvailableError
from maest.modeling import PUBLISHED_CHECKPOINTS, UnknownCheckpointError
from maest.original import OriginalMAEST, OriginalSettingError
from maest.utils.errors import MAESTError


pytestmark = pytest.mark.usefixtures("single_torch_thread")


@pytest.fixture(scope="module")
def reference_model(tiny_config):
    """The reference checkpoint behind the original API (its length, 300 frames, is the segment length)."""
    model = load_original_checkpoint(FIXTURES / "tiny_native_state_dict.pt", config=tiny_config)
    return OriginalMAEST(model, MAESTFeatureExtractor(max_length=tiny_config.max_length))


@pytest.fixture(scope="module")
def small_model(small_model_dir):
    """A saved small MAEST (316-frame segments, 3 blocks, 7 named labels) through `get_maest(checkpoint=...)`."""
    return get_maest(checkpoint=str(small_model_dir))


def paper_embedding(model, input_values: torch.Tensor, block: int) -> torch.Tensor:
    """concat(cls, dist, mean of the patch tokens) of block `block`'s output, from the encoder's hidden states."""
    hidden = model.model.maest(input_values, output_hidden_states=True).hidden_states[block + 1]
    return torch.cat([hidden[:, 0], hidden[:, 1], hidden[:, 2:].mean(dim=1)], dim=-1)


def whole_clip_frames(model, audio: np.ndarray) -> torch.Tensor:
    """All frames of one clip, (frames, mel), unsegmented."""
    features = model.feature_extractor(audio, sampling_rate=SAMPLING_RATE, padding="longest", max_length=10**6)
    return features["input_values"][0]


def close(actual: torch.Tensor, expected, atol=1e-5):
    expected = torch.as_tensor(expected)
    torch.testing.assert_close(actual.detach().float(), expected.float(), atol=atol, rtol=1e-4)


# ---------------------------------------------------------------------------------------------- the original's outputs
@pytest.mark.parametrize("layout", ["3d", "4d"])
def test_mel_batches_give_the_original_logits_and_block_embeddings(reference_model, reference, layout):
    mel = torch.from_numpy(reference["input_b_f_t"])  # the original's (batch, mel, time)
    mel = mel[:, None] if layout == "4d" else mel
    with torch.no_grad():
        for block in range(reference_model.config.num_hidden_layers):
            logits, embeddings = reference_model(mel, transformer_block=block)
            close(logits, reference["logits"])
            close(embeddings, reference[f"block{block}_cls_dist_mean"])
        # transformer_block=-1 (the original's default): the pooled vector after the final norm.
        logits, pooled = reference_model(mel)
    close(logits, reference["logits"])
    close(pooled, reference["pooled_cls_dist_mean_after_norm"])


def test_2d_mel_is_one_clip_and_a_short_one_runs_at_its_length(reference_model, reference):
    mel = torch.from_numpy(reference["input_b_f_t"])
    with torch.no_grad():
        logits, embeddings = reference_model(mel[1], transformer_block=2, melspectrogram_input=True)
        close(logits, reference["logits"][1:])
        close(embeddings, reference["block2_cls_dist_mean"][1:])
        # 150 frames, shorter than one segment: the original's first time positions (`short150_logits`).
        short_logits, _ = reference_model(mel[0, :, :150], melspectrogram_input=True)
    close(short_logits, reference["short150_logits"][:1])


def test_inference_patchout_setting_gives_the_original_logits(reference, tiny_config):
    model = load_original_checkpoint(FIXTURES / "tiny_native_state_dict.pt", config=tiny_config)
    model.config.inference_patchout_time_stride = 2  # what get_maest(s_patchout_t_interleaved=2) sets
    wrapped = OriginalMAEST(model, MAESTFeatureExtractor(max_length=tiny_config.max_length))
    with torch.no_grad():
        logits, _ = wrapped(torch.from_numpy(reference["input_b_f_t"]))
    close(logits, reference["time_stride2_logits"])


# ---------------------------------------------------------------------------------------------- input forms
def test_1d_audio_is_split_into_segments_dropping_the_partial_last_one(small_model):
    audio = synthetic_music(12.0, seed=1)
    length = small_model.config.max_length
    frames = whole_clip_frames(small_model, audio)
    assert frames.shape[0] == 1 + math.ceil(audio.shape[0] / 256)  # Essentia's frame count
    num_segments = frames.shape[0] // length  # 751 // 316 = 2: the original drops the last 119 frames
    segments = frames[: num_segments * length].reshape(num_segments, length, -1)
    with torch.no_grad():
        logits, embeddings = small_model(torch.from_numpy(audio), transformer_block=1)
        close(logits, small_model.model(segments).logits)
        close(embeddings, paper_embedding(small_model, segments, block=1))
    assert embeddings.shape == (2, 3 * small_model.config.hidden_size)


def test_1d_audio_shorter_than_a_segment_is_one_segment_of_its_length(small_model):
    audio = synthetic_music(2.0, seed=2)
    frames = whole_clip_frames(small_model, audio)
    with torch.no_grad():
        logits, embeddings = small_model(torch.from_numpy(audio), transformer_block=0)
        close(logits, small_model.model(frames[None]).logits)
        close(embeddings, paper_embedding(small_model, frames[None], block=0))


def test_2d_audio_is_a_batch_of_clips(small_model):
    clips = np.stack([synthetic_music(3.0, seed=seed) for seed in (3, 4)])
    frames = torch.stack([whole_clip_frames(small_model, clip) for clip in clips])
    with torch.no_grad():
        logits, embeddings = small_model(torch.from_numpy(clips), transformer_block=2, melspectrogram_input=False)
        close(logits, small_model.model(frames).logits)
        close(embeddings, paper_embedding(small_model, frames, block=2))
    assert logits.shape == (2, len(SMALL_MODEL_LABELS))


def test_2d_mel_is_split_as_1d_audio_is(small_model):
    mel = torch.randn(96, 700, generator=torch.Generator().manual_seed(0))
    segments = mel[:, :632].T.reshape(2, 316, 96)
    with torch.no_grad():
        logits, embeddings = small_model(mel, transformer_block=1, melspectrogram_input=True)
        close(logits, small_model.model(segments).logits)
        close(embeddings, paper_embedding(small_model, segments, block=1))


def test_predict_labels_is_the_mean_sigmoid_over_segments(small_model):
    audio = torch.from_numpy(synthetic_music(12.0, seed=5))
    activations, labels = small_model.predict_labels(audio)
    with torch.no_grad():
        logits, _ = small_model(audio)
    assert isinstance(activations, np.ndarray) and activations.shape == (len(SMALL_MODEL_LABELS),)
    np.testing.assert_allclose(activations, torch.sigmoid(logits).mean(dim=0).numpy(), rtol=1e-6)
    assert labels == SMALL_MODEL_LABELS


# ---------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "make_input, options, message",
    [
        (lambda: np.zeros(16000, dtype=np.float32), {}, "must be a torch.Tensor, got numpy.ndarray"),
        (lambda: torch.empty([]), {}, "0-d tensor"),
        (lambda: torch.empty(0), {}, "empty"),
        (lambda: torch.zeros(16000, dtype=torch.int16), {}, "floating-point"),
        (lambda: torch.zeros(2, 6 * 16000), {}, "more than the model's 316"),
        (lambda: torch.zeros(2, 96, 400), {}, "more than the model's 316"),
        (lambda: torch.zeros(2, 128, 300), {}, "96 mel bands"),
        (lambda: torch.zeros(2, 2, 96, 300), {}, "(batch, 1, 96, time)"),
        (lambda: torch.zeros(96, 10), {"melspectrogram_input": True}, "at least 16"),
        (lambda: torch.zeros(16000), {"melspectrogram_input": True}, "1-D input is audio"),
        (lambda: torch.zeros(1, 1, 1, 96, 300), {}, "1 to 4 dimensions"),
        (lambda: torch.zeros(96, 300), {"melspectrogram_input": True, "transformer_block": 3}, "block must be in"),
        (lambda: torch.zeros(96, 300), {"melspectrogram_input": True, "transformer_block": -2}, "use -1"),
    ],
)
def test_bad_inputs_raise_one_line_errors(small_model, make_input, options, message):
    with pytest.raises(MAESTError) as error:
        small_model(make_input(), **options)
    assert message in str(error.value) and "\n" not in str(error.value)


# ---------------------------------------------------------------------------------------------- get_maest
def test_get_maest_is_a_lazy_public_name():
    import maest
    import maest.original

    # `import maest` stays cheap (tests/test_cli.py): the name resolves to maest.original on first use.
    assert "get_maest" in maest.__all__
    assert maest.get_maest is maest.original.get_maest is get_maest


def test_random_weights_have_the_published_shape_and_names():
    published = PUBLISHED_CHECKPOINTS["discogs-maest-5s-pw-129e"]
    model = get_maest(arch=published.checkpoint, pretrained=False)
    assert not model.training
    assert model.config.max_length == 316 and model.config.hidden_size == 768
    assert model.labels == published.label_names() and len(model.labels) == 400
    with torch.no_grad():
        logits, embeddings = model(torch.zeros(1, 96, 100), transformer_block=6)
    assert logits.shape == (1, 400) and embeddings.shape == (1, 2304)


def test_pretrained_weights_offline_and_not_cached_is_one_clear_line(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelNotAvailableError, match=r"mtg-upf/discogs-maest-10s-pw-129e\) are not in the local"):
        get_maest(arch="discogs-maest-10s-pw-129e")


def test_get_maest_refuses_what_it_cannot_honour(small_model_dir):
    with pytest.raises(UnknownCheckpointError, match="known: discogs-maest-5s-pw-129e"):
        get_maest(arch="discogs-maest-40s", pretrained=False)
    with pytest.raises(OriginalSettingError, match="input_t=1000"):
        get_maest(pretrained=False, input_t=1000)
    with pytest.raises(OriginalSettingError, match="has 7 outputs"):
        get_maest(checkpoint=str(small_model_dir), n_classes=400)
    with pytest.raises(OriginalSettingError, match="return_self_attention"):
        get_maest(checkpoint=str(small_model_dir))(torch.zeros(96, 300), return_self_attention=True)


def test_get_maest_maps_the_original_patchout_settings(small_model_dir):
    model = get_maest(checkpoint=str(small_model_dir), s_patchout_t_interleaved=2, s_patchout_t=3)
    assert model.config.inference_patchout_time_stride == 2 and model.config.train_patchout_time == 3
