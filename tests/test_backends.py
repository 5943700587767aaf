"""Back-ends (`maest.inference.backends`): exported graphs under ONNX Runtime and OpenVINO give torch float32's
results through the same `run` contract; int8 stays close; the graph cache; `auto` and its fallback."""

import warnings

import pytest
import torch

from maest import MAESTFeatureExtractor, MAESTForAudioClassification
from maest.inference import backends
from maest.inference.backends import BackendError, ExportedInferenceModel, load_backend, resolve_backend
from maest.inference.model import InferenceModel


INSTALLED = [name for name in ("onnxruntime", "openvino") if backends.runtime_version(name) is not None]


@pytest.fixture(scope="module")
def torch_model(tiny_config):
    torch.manual_seed(0)
    model = MAESTForAudioClassification(tiny_config).eval()
    extractor = MAESTFeatureExtractor(max_length=tiny_config.max_length)
    return InferenceModel(model, extractor, "tiny", torch.device("cpu"), "float32")


@pytest.fixture(scope="module")
def segments(tiny_config):
    from maest.benchmarks.measure import music_features  # the benchmark's music-like inputs

    return music_features(tiny_config, batch_size=3, seed=5)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("graphs")


def _cosine(a, b):
    return torch.nn.functional.cosine_similarity(a, b, dim=-1)


@pytest.mark.parametrize("backend", INSTALLED)
def test_float32_matches_torch(torch_model, segments, cache_dir, backend):
    exported = load_backend(torch_model, backend, "float32", cache_dir=cache_dir)
    assert isinstance(exported, ExportedInferenceModel) and exported.labels == torch_model.labels
    block = torch_model.config.num_hidden_layers - 1
    expected = torch_model.run(segments, scores=True, embedding=True, block=block)
    result = exported.run(segments, scores=True, embedding=True, block=block)
    assert set(result) == {"scores", "embedding"}
    assert result["scores"].dtype == torch.float32 and result["scores"].shape == expected["scores"].shape
    logits = torch.logit(result["scores"].double(), eps=1e-12)
    expected_logits = torch.logit(expected["scores"].double(), eps=1e-12)
    assert (logits - expected_logits).abs().max() < 1e-4
    assert _cosine(result["embedding"], expected["embedding"]).min() >= 0.99999
    # Dynamic batch and frames; an embedding-only graph (the blocks up to the embedding's only).
    short = segments[:1, :200]
    embedding = exported.run(short, scores=False, embedding=True, block=1, tokens="cls,mean")["embedding"]
    reference = torch_model.run(short, scores=False, embedding=True, block=1, tokens="cls,mean")["embedding"]
    assert embedding.shape == (1, 2 * torch_model.config.hidden_size)
    assert _cosine(embedding, reference).min() >= 0.99999


@pytest.mark.slow
@pytest.mark.parametrize("backend", INSTALLED)
def test_int8_stays_close_to_float32(torch_model, segments, cache_dir, backend):
    exported = load_backend(torch_model, backend, "int8", cache_dir=cache_dir)
    expected = torch_model.run(segments, scores=True, embedding=True)
    result = exported.run(segments, scores=True, embedding=True)
    assert _cosine(result["embedding"], expected["embedding"]).min() >= 0.998
    # int8 is not float32: the graph really is quantized.
    assert (result["scores"] - expected["scores"]).abs().max() > 1e-6
    top5 = [set(row) for row in expected["scores"].topk(5).indices.tolist()]
    assert [set(row) for row in result["scores"].topk(5).indices.tolist()] == top5


@pytest.mark.slow
@pytest.mark.parametrize("stride", [2, 3])
def test_graphs_keep_inference_patchout(tiny_config, segments, cache_dir, stride):
    if not INSTALLED:
        pytest.skip("no exported-graph runtime installed")
    torch.manual_seed(0)
    model = MAESTForAudioClassification(tiny_config).eval()
    model.config.inference_patchout_time_stride = stride
    inference_model = InferenceModel(model, MAESTFeatureExtractor(max_length=tiny_config.max_length), "tiny", torch.device("cpu"), "float32")
    exported = load_backend(inference_model, INSTALLED[0], "float32", cache_dir=cache_dir)
    expected = inference_model.run(segments, scores=True)["scores"]
    torch.testing.assert_close(exported.run(segments, scores=True)["scores"], expected, atol=1e-5, rtol=1e-4)
    model.config.inference_patchout_time_stride = 1
    unstrided = inference_model.run(segments, scores=True)["scores"]
    assert not torch.allclose(expected, unstrided, atol=1e-5)  # the stride changes the result: it is in the graph


def test_graph_cache_is_reused_and_keyed_by_settings(torch_model, segments, cache_dir):
    if not INSTALLED:
        pytest.skip("no exported-graph runtime installed")
    first = load_backend(torch_model, INSTALLED[0], "float32", cache_dir=cache_dir)
    first.run(segments, scores=True)
    folders = {path.name for path in cache_dir.iterdir()}
    second = load_backend(torch_model, INSTALLED[0], "float32", cache_dir=cache_dir)
    second.run(segments, scores=True)
    assert {path.name for path in cache_dir.iterdir()} == folders  # read from the cache, not rebuilt
    assert not any(name.startswith(".") for name in folders)  # no half-built folder left behind
    key = next(iter(second.sessions))
    assert key.outputs == "scores" and key.runtime.startswith(INSTALLED[0])
    changed = backends.GraphKey(**{**key.__dict__, "time_stride": 2})
    assert changed.folder_name() != key.folder_name()


def test_auto_and_fallback(monkeypatch):
    assert resolve_backend("auto", "float32", "cuda") == "torch"
    assert resolve_backend("auto", "bfloat16", "cpu") in ("openvino", "torch")
    with pytest.raises(BackendError, match="backend 'gpu'"):
        resolve_backend("gpu")
    with pytest.raises(BackendError, match="does not run dtype 'bfloat16'"):
        resolve_backend("onnxruntime", "bfloat16")
    monkeypatch.setattr(backends, "runtime_version", lambda name: torch.__version__ if name == "torch" else None)
    monkeypatch.setattr(backends, "_fallbacks_reported", set())
    with pytest.warns(UserWarning, match="onnxruntime is not installed"):
        assert resolve_backend("onnxruntime", "float32") == "torch"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once only
        assert resolve_backend("onnxruntime", "float32") == "torch"


def test_torch_backend_is_the_model_itself(torch_model):
    assert load_backend(torch_model, "torch") is torch_model
    int8 = load_backend(torch_model, "torch", "int8")
    assert int8.dtype == "int8" and int8.model is not torch_model.model
