"""transformers' audio-classification pipeline on a MAEST directory: files, arrays, other sampling rates."""

import numpy as np
import pytest
import torch
from conftest import synthetic_music, write_audio
from transformers import pipeline

from maest import MAESTFeatureExtractor, MAESTForAudioClassification


@pytest.fixture(scope="module")
def classifier(small_model_dir):
    return pipeline("audio-classification", model=str(small_model_dir))


def expected_scores(model_dir, audio, sampling_rate):
    model = MAESTForAudioClassification.from_pretrained(model_dir).eval()
    extractor = MAESTFeatureExtractor.from_pretrained(model_dir)
    with torch.no_grad():
        logits = model(**extractor(audio, sampling_rate=sampling_rate).data).logits[0]
    scores = torch.sigmoid(logits)
    order = scores.argsort(descending=True)
    return [(model.config.id2label[int(i)], float(scores[i])) for i in order]


def as_pairs(predictions):
    return [(p["label"], p["score"]) for p in predictions]


def test_array_input_gives_sigmoid_scores(classifier, small_model_dir):
    audio = synthetic_music(4.0, seed=1)
    predictions = classifier(audio, top_k=7)
    expected = expected_scores(small_model_dir, audio, 16000)
    assert [label for label, _ in as_pairs(predictions)] == [label for label, _ in expected]
    np.testing.assert_allclose([s for _, s in as_pairs(predictions)], [s for _, s in expected], atol=1e-5)
    # Multi-label: independent sigmoids, not a softmax over the labels.
    assert abs(sum(p["score"] for p in predictions) - 1.0) > 0.1


def test_dict_input_at_44k_is_resampled(classifier, small_model_dir):
    t = np.arange(int(44100 * 3)) / 44100
    audio = (0.3 * np.sin(2 * np.pi * 330 * t) * (1 + np.sin(2 * np.pi * 2 * t))).astype(np.float32)
    predictions = classifier({"raw": audio, "sampling_rate": 44100}, top_k=3)
    expected = expected_scores(small_model_dir, audio, 44100)[:3]
    np.testing.assert_allclose([s for _, s in as_pairs(predictions)], [s for _, s in expected], atol=2e-3)


def test_file_path_input(classifier, small_model_dir, tmp_path):
    audio = synthetic_music(3.0, seed=2)
    path = write_audio(tmp_path / "clip.flac", audio)
    predictions = classifier(str(path), top_k=2)
    expected = expected_scores(small_model_dir, audio, 16000)[:2]
    assert [p["label"] for p in predictions] == [label for label, _ in expected]
    np.testing.assert_allclose([p["score"] for p in predictions], [s for _, s in expected], atol=1e-3)
