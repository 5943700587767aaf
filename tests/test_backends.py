"""Back-ends (`maest.inference.backends`): exported graphs under ONNX Runtime and OpenVINO give torch float32's
results through the same `run` contract; int8 stays close; the graph cache; `auto` and its fallback."""

import copy
import json
import logging
import os
import warnings
from pathlib import Path

import numpy as np
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


def test_graph_cache_is_reused_and_keyed_by_settings(torch_model, segments, built_cache):
    cache_dir = built_cache  # (its fixture built the scores graph)
    folders = {path.name for path in cache_dir.iterdir()}
    second = load_backend(torch_model, INSTALLED[0], "float32", cache_dir=cache_dir)
    second.run(segments, scores=True)
    assert {path.name for path in cache_dir.iterdir()} == folders  # read from the cache, not rebuilt
    assert not [name for name in folders if "building" in name]  # no half-built folder left behind
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


def test_auto_measures_among_the_installed_runtimes(monkeypatch):
    installed = {"torch", "onnxruntime", "openvino"}
    monkeypatch.setattr(backends, "runtime_version", lambda name: "1" if name in installed else None)
    monkeypatch.setattr(backends, "_fallbacks_reported", set())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing passed over, nothing said
        assert resolve_backend("auto", "float32") == "auto"  # decided on the loaded model, by measurement
        assert backends.auto_candidates("float32") == ["onnxruntime", "openvino", "torch"]
    installed.discard("openvino")
    with pytest.warns(UserWarning, match="backend auto: openvino not installed .* choosing among onnxruntime, torch"):
        assert backends.auto_candidates("int8") == ["onnxruntime", "torch"]
    assert backends.auto_candidates("bfloat16") == ["torch"] and backends.auto_candidates("float32", "cuda") == ["torch"]


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


# ---------------------------------------------------------------------------------------------------- identity
def test_weights_digest_is_the_content_not_the_path(small_model_dir, tmp_path):
    import shutil

    first = MAESTForAudioClassification.from_pretrained(small_model_dir)
    shutil.copytree(small_model_dir, tmp_path / "copy")
    copied = MAESTForAudioClassification.from_pretrained(tmp_path / "copy")  # another path, the same model
    assert backends.weights_digest(first) == backends.weights_digest(copied)
    with torch.no_grad():
        copied.maest.layers[0].attention.q_proj.weight[0, 0] += 1e-3  # one weight changed in place
    assert backends.weights_digest(first) != backends.weights_digest(copied)
    # torch's int8 model has a digest too (of its quantized weights), stable across calls.
    int8 = load_backend(InferenceModel(first, None, "m", torch.device("cpu"), "float32"), "torch", "int8").model
    assert backends.weights_digest(int8) == backends.weights_digest(int8) != backends.weights_digest(first)


# ---------------------------------------------------------------------------------------------------- graph cache
@pytest.fixture(scope="module")
def built_cache(torch_model, tmp_path_factory):
    """A cache holding the scores graph of `torch_model` (tests copy it, then damage their copy)."""
    if not INSTALLED:
        pytest.skip("no exported-graph runtime installed")
    directory = tmp_path_factory.mktemp("built")
    load_backend(torch_model, INSTALLED[0], "float32", cache_dir=directory).prepare(scores=True)
    return directory


def _copy_cache(built_cache, tmp_path):
    import shutil

    return Path(shutil.copytree(built_cache, tmp_path / "graphs"))


@pytest.fixture
def exports(built_cache, monkeypatch):
    """Rebuilds counted, and made by copying the pristine graph of `torch_model` (exporting is tested above; here
    what is tested is that the cache notices and rebuilds, and that the runtimes then run the rebuilt graph)."""
    import shutil

    pristine = _entry(built_cache) / "model.onnx"
    calls = []

    def export(model, out, *args, **kwargs):
        calls.append(out)
        shutil.copyfile(pristine, out)

    monkeypatch.setattr(backends, "export_graph", export)
    return calls


def _entry(cache):
    return next(path for path in cache.iterdir() if not path.name.startswith("."))


def _damage(graph, damage: str) -> None:
    data = graph.read_bytes()
    graph.write_bytes({"truncated": data[: len(data) // 2], "garbage": os.urandom(len(data)), "empty": b""}[damage])


def _assert_torchs_scores(exported, torch_model, segments):
    logits = torch.logit(exported.run(segments, scores=True)["scores"].double(), eps=1e-12)
    expected = torch.logit(torch_model.run(segments, scores=True)["scores"].double(), eps=1e-12)
    assert (logits - expected).abs().max() < 1e-4


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_a_damaged_cached_graph_is_rebuilt_by_itself(torch_model, segments, built_cache, exports, tmp_path, caplog, backend, damage):
    if backend not in INSTALLED:
        pytest.skip(f"{backend} is not installed")
    cache = _copy_cache(built_cache, tmp_path)
    entry = _entry(cache)
    _damage(entry / "model.onnx", damage)
    with caplog.at_level(logging.WARNING, logger="maest.inference.backends"):
        exported = load_backend(torch_model, backend, "float32", cache_dir=cache)
        _assert_torchs_scores(exported, torch_model, segments)
    assert f"{entry} is not usable" in caplog.text and "rebuilding it" in caplog.text and len(exports) == 1
    assert backends.GraphCache(cache).check(next(iter(exported.sessions))) is None  # rebuilt in place, checked
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="maest.inference.backends"):  # the next process: no more repairs
        _assert_torchs_scores(load_backend(torch_model, backend, "float32", cache_dir=cache), torch_model, segments)
    assert "not usable" not in caplog.text and len(exports) == 1


@pytest.fixture(scope="module")
def foreign_cache(torch_model, tiny_config, tmp_path_factory):
    """The cache of another model of the same shape (its graph has the same size as `torch_model`'s)."""
    if not INSTALLED:
        pytest.skip("no exported-graph runtime installed")
    torch.manual_seed(1)
    other = MAESTForAudioClassification(copy.deepcopy(tiny_config)).eval()
    other = InferenceModel(other, torch_model.feature_extractor, "other", torch.device("cpu"), "float32")
    directory = tmp_path_factory.mktemp("foreign")
    load_backend(other, INSTALLED[0], "float32", cache_dir=directory).prepare(scores=True)
    return directory


@pytest.mark.parametrize("copied", ["entry", "graph file"])
def test_a_foreign_graph_copied_over_an_entry_is_detected_and_rebuilt(torch_model, segments, built_cache, foreign_cache, exports, tmp_path, caplog, copied):
    import shutil

    cache = _copy_cache(built_cache, tmp_path)
    entry = _entry(cache)
    foreign = _entry(foreign_cache)
    if copied == "entry":  # the whole folder, key file included
        shutil.rmtree(entry)
        shutil.copytree(foreign, entry)
    else:
        shutil.copyfile(foreign / "model.onnx", entry / "model.onnx")
    assert (entry / "model.onnx").stat().st_size == (foreign / "model.onnx").stat().st_size
    with caplog.at_level(logging.WARNING, logger="maest.inference.backends"):
        exported = load_backend(torch_model, INSTALLED[0], "float32", cache_dir=cache)
        _assert_torchs_scores(exported, torch_model, segments)  # this model's numbers, not the other's
    expected = "names another graph" if copied == "entry" else "SHA-256 differs"
    assert expected in caplog.text and "rebuilding it" in caplog.text and len(exports) == 1


def test_the_temporary_folder_of_a_killed_build_is_removed(torch_model, segments, built_cache, exports, tmp_path):
    import fcntl

    cache = _copy_cache(built_cache, tmp_path)
    name = _entry(cache).name
    killed = cache / f".{name}.building-x1"  # what a build killed mid-export leaves
    killed.mkdir()
    (killed / "model.onnx").write_bytes(b"half a graph")
    running = cache / ".another.building-x2"  # a build that is still running (its lock is held)
    running.mkdir()
    with open(cache / ".another.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        _assert_torchs_scores(load_backend(torch_model, INSTALLED[0], "float32", cache_dir=cache), torch_model, segments)
        assert not killed.exists() and running.exists()
    assert backends.GraphCache(cache).remove_stale_builds() == [running]  # once its build is gone


def test_a_cache_that_cannot_be_written_falls_back_to_a_temporary_one(torch_model, segments, exports, tmp_path, caplog):
    not_a_folder = tmp_path / "cache-file"
    not_a_folder.write_text("a file where the cache folder should be")
    with caplog.at_level(logging.WARNING, logger="maest.inference.backends"):
        exported = load_backend(torch_model, INSTALLED[0], "float32", cache_dir=not_a_folder / "graphs")
        _assert_torchs_scores(exported, torch_model, segments)
    warnings_ = [record.getMessage() for record in caplog.records if "cannot be written" in record.getMessage()]
    assert len(warnings_) == 1 and "using a temporary cache for this process" in warnings_[0]
    assert exported.graph_cache.directory == backends._temporary_cache()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_cache_falls_back_to_a_temporary_one(torch_model, segments, exports, tmp_path, caplog):
    cache = tmp_path / "read-only"
    cache.mkdir()
    cache.chmod(0o555)
    with caplog.at_level(logging.WARNING, logger="maest.inference.backends"):
        _assert_torchs_scores(load_backend(torch_model, INSTALLED[0], "float32", cache_dir=cache), torch_model, segments)
    assert "cannot be written" in caplog.text and not list(cache.iterdir())


@pytest.mark.skipif("onnxruntime" not in INSTALLED, reason="onnxruntime is not installed")
def test_onnxruntimes_optimized_model_is_cached_and_checked(built_cache, tmp_path, monkeypatch, caplog):
    import onnxruntime

    cache = _copy_cache(built_cache, tmp_path)
    graph = _entry(cache) / "model.onnx"
    backends.OnnxRuntimeSession(graph, 1)
    optimized = [path for path in graph.parent.iterdir() if path.name.startswith("onnxruntime-")]
    assert sorted(path.suffix for path in optimized) == [".json", ".onnx"]
    opened = []
    original = onnxruntime.InferenceSession
    monkeypatch.setattr(onnxruntime, "InferenceSession", lambda path, *args, **kwargs: opened.append(Path(path).name) or original(path, *args, **kwargs))
    backends.OnnxRuntimeSession(graph, 1)  # a second process: the optimized model, not the graph
    assert opened == [next(path.name for path in optimized if path.suffix == ".onnx")]
    _damage(next(path for path in optimized if path.suffix == ".onnx"), "garbage")
    with caplog.at_level(logging.WARNING, logger="maest.inference.backends"):
        session = backends.OnnxRuntimeSession(graph, 1)
    assert "is not usable" in caplog.text and "optimizing again" in caplog.text
    assert session(np.zeros((1, 100, 96), np.float32))[0].shape[0] == 1  # the re-optimized model runs


# ---------------------------------------------------------------------------------------------------- auto
def test_auto_measures_once_per_machine_and_model_then_reads_its_choice(torch_model, segments, built_cache, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("MAEST_CACHE", str(tmp_path / "maest-cache"))
    cache = _copy_cache(built_cache, tmp_path)
    with caplog.at_level(logging.WARNING, logger="maest.inference.backends"):
        chosen = load_backend(torch_model, "auto", "float32", cache_dir=cache)
        assert chosen.backend == "auto"  # until its first graph
        _assert_torchs_scores(chosen, torch_model, segments)
    assert chosen.backend in backends.auto_candidates("float32")
    said = [record.getMessage() for record in caplog.records if record.getMessage().startswith("backend auto:")]
    assert len(said) == 1 and said[0].startswith(f"backend auto: {chosen.backend} (") and "per segment, measured here" in said[0]
    choices = list((tmp_path / "maest-cache" / "backend-choice").iterdir())
    record = json.loads(choices[0].read_text())
    assert len(choices) == 1 and record["choice"] == chosen.backend
    assert set(record["seconds"]) == set(backends.auto_candidates("float32"))
    assert record["seconds"][chosen.backend] == min(record["seconds"].values())
    # The next process reads the choice instead of measuring.
    monkeypatch.setattr(ExportedInferenceModel, "_measure", lambda *args: pytest.fail("measured again"))
    again = load_backend(torch_model, "auto", "float32", cache_dir=cache)
    _assert_torchs_scores(again, torch_model, segments)
    assert again.backend == chosen.backend


def test_auto_takes_the_fixed_order_when_it_cannot_measure(torch_model, segments, built_cache, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("MAEST_CACHE", str(tmp_path / "maest-cache"))

    def cannot_measure(*args):
        raise RuntimeError("no timer")

    monkeypatch.setattr(ExportedInferenceModel, "_measure", cannot_measure)
    with caplog.at_level(logging.WARNING, logger="maest.inference.backends"):
        chosen = load_backend(torch_model, "auto", "float32", cache_dir=_copy_cache(built_cache, tmp_path))
        _assert_torchs_scores(chosen, torch_model, segments)
    assert chosen.backend == backends.auto_candidates("float32")[0]
    assert f"could not measure the back-ends here (no timer); running on {chosen.backend}" in caplog.text


_SIGNAL_AFTER_OPENVINO = """
import ctypes, faulthandler, gc, os, signal, sys, tempfile
import torch
from maest import MAESTConfig, MAESTFeatureExtractor, MAESTForAudioClassification
from maest.inference.backends import load_backend
from maest.inference.model import InferenceModel

class Stack(ctypes.Structure):
    _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int), ("ss_size", ctypes.c_size_t)]

def alternate_stack():
    stack = Stack()
    assert ctypes.CDLL(None).sigaltstack(None, ctypes.byref(stack)) == 0
    return stack.ss_sp, stack.ss_size

faulthandler.enable()  # as pytest and `python -X faulthandler` do: the thread gets an alternate signal stack
before = alternate_stack()
config = MAESTConfig.from_preset("maest-tiny")
model = InferenceModel(MAESTForAudioClassification(config).eval(), MAESTFeatureExtractor(max_length=config.max_length), "tiny", torch.device("cpu"), "float32")
exported = load_backend(model, "openvino", "float32", cache_dir=sys.argv[1])
segments = torch.randn(2, config.max_length, 96)
exported.run(segments, scores=True, embedding=True, block=1)  # two compiled graphs
exported.run(segments[:1, :200], scores=False, embedding=True, block=1, tokens="cls,mean")
del exported
gc.collect()
received = []
signal.signal(signal.SIGUSR1, lambda number, frame: received.append(number))  # a Python handler: on the alternate stack
os.kill(os.getpid(), signal.SIGUSR1)
print("handled", received)
assert alternate_stack() == before, (alternate_stack(), before)
"""


@pytest.mark.skipif("openvino" not in INSTALLED or os.name != "posix", reason="needs OpenVINO on a POSIX system")
def test_a_signal_after_openvinos_models_are_gone_is_handled_not_a_crash(tmp_path):
    # OpenVINO's CPU plugin leaves the compiling thread's alternate signal stack in memory it has freed; the next
    # Python signal handler (Ctrl-C's, the DataLoader's SIGCHLD) then crashed the process with SIGSEGV.
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", _SIGNAL_AFTER_OPENVINO, str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "handled [10]" in done.stdout, (done.returncode, done.stderr[-2000:])
