"""Back-ends (`maest.inference.backends`): exported graphs under ONNX Runtime and OpenVINO give torch float32's
results through the same `run` contract; int8 stays close; the graph cache; `auto` and its fallback."""

import copy
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
    model = MAESTForAudioClassification(copy.deepcopy(tiny_config)).eval()  # not torch_model's config
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
    assert key.outputs == "scores" and key.quantizer == "" and key.torch == torch.__version__
    changed = backends.GraphKey(**{**key.__dict__, "time_stride": 2})
    assert changed.folder_name() != key.folder_name()
    # The other runtime reads the same .onnx file (a graph does not depend on what runs it).
    if len(INSTALLED) == 2:
        other = load_backend(torch_model, INSTALLED[1], "float32", cache_dir=cache_dir)
        other.run(segments, scores=True)
        assert {path.name for path in cache_dir.iterdir()} == folders


def test_auto_rule_and_fallback(monkeypatch):
    assert resolve_backend("auto", "float32", "cuda") == "torch"
    assert resolve_backend("auto", "bfloat16", "cpu") == "torch"
    with pytest.raises(BackendError, match="backend 'gpu'"):
        resolve_backend("gpu")
    with pytest.raises(BackendError, match="does not run dtype 'bfloat16'"):
        resolve_backend("onnxruntime", "bfloat16")
    with pytest.raises(BackendError, match="runs on CPU only"):
        resolve_backend("openvino", "float32", "cuda")
    monkeypatch.setattr(backends, "runtime_version", lambda name: torch.__version__ if name == "torch" else None)
    monkeypatch.setattr(backends, "_fallbacks_reported", set())
    # A named runtime that is missing is an error (never replaced); auto passes over it, saying so once.
    with pytest.raises(BackendError, match="'onnxruntime' is not installed: pip install 'maest\\[onnx\\]'"):
        resolve_backend("onnxruntime", "float32")
    with pytest.warns(UserWarning, match="onnxruntime and openvino not installed .* running on torch") as caught:
        assert resolve_backend("auto", "float32") == "torch"
    assert len(caught) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once only
        assert resolve_backend("auto", "int8") == "torch"


def test_auto_follows_the_measured_order_per_dtype(monkeypatch):
    # maest bench (README "Speed"): OpenVINO is the faster float32 runtime, ONNX Runtime the faster int8 one.
    installed = {"torch", "onnxruntime", "openvino"}
    monkeypatch.setattr(backends, "runtime_version", lambda name: "1" if name in installed else None)
    monkeypatch.setattr(backends, "_fallbacks_reported", set())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing passed over, nothing said
        assert resolve_backend("auto", "float32") == "openvino"
        assert resolve_backend("auto", "int8") == "onnxruntime"
    installed.discard("openvino")
    with pytest.warns(UserWarning, match="backend auto: openvino not installed .* running on onnxruntime"):
        assert resolve_backend("auto", "float32") == "onnxruntime"
    assert resolve_backend("auto", "int8") == "onnxruntime"


def test_torch_backend_is_the_model_itself(torch_model):
    assert load_backend(torch_model, "torch") is torch_model
    int8 = load_backend(torch_model, "torch", "int8")
    assert int8.dtype == "int8" and int8.model is not torch_model.model


def test_bench_fastest_paths_pick_by_speed_and_accuracy():
    from maest.benchmarks.measure import fastest_paths

    ratios = {"stride2_over_none": 2.5, "stride3_over_none": 4.2, "onnxruntime-float32_over_float32": 1.4,
              "onnxruntime-int8-stride2_over_float32": 3.9, "ast_over_float32": 1.1}  # fmt: skip
    accuracy = {
        "stride2": {"embedding_cosine_min": 0.9992},
        "stride3": {"embedding_cosine_min": 0.9979},  # faster, but below the accuracy bar
        "onnxruntime-float32": {"embedding_cosine_min": 1.0},
        "onnxruntime-int8-stride2": {"embedding_cosine_min": 0.9985},
        "ast": {"top5_agreement": 1.0},  # no embedding: never "accurate"
    }
    fastest = fastest_paths(ratios, accuracy)
    assert fastest["float32"] == {"variant": "onnxruntime-float32", "over_torch": 1.4}
    assert fastest["accurate"] == {"variant": "onnxruntime-int8-stride2", "over_torch": 3.9}
