"""`--backend` through `maest embed` / `maest tag`, the Python API and the collection job: an exported graph gives the
torch model's numbers (the torch model run by hand on the feature extractor's segments is the truth), `auto` passes
over a missing runtime with one warning, and wrong choices are one-line errors."""

import logging
import warnings

import numpy as np
import pytest
import torch

from conftest import synthetic_music, write_audio
from maest import MAESTFeatureExtractor, MAESTForAudioClassification
from maest.cli import collection as collection_cli
from maest.cli import main as maest_main
from maest.feature_extraction import load_audio
from maest.inference import backends, embed, load_model, read_output, tag
from maest.inference.backends import BackendError, ExportedInferenceModel
from maest.inference.job import CollectionSettings, model_settings
from maest.inference.store import table_metadata


SEGMENT_FRAMES = 316  # the small model's 5.056 s segments

pytestmark = pytest.mark.usefixtures("single_torch_thread")


def _needs(runtime: str):
    return pytest.mark.skipif(backends.runtime_version(runtime) is None, reason=f"{runtime} is not installed")


@pytest.fixture(scope="module", autouse=True)
def graph_cache(tmp_path_factory):
    """Every graph of this module is built into one temporary cache (`$MAEST_CACHE/graphs`)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MAEST_CACHE", str(tmp_path_factory.mktemp("maest-cache")))
        yield


@pytest.fixture(scope="module")
def tracks(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tracks")
    specs = [("a.wav", 7.0), ("b.flac", 11.0)]
    return [write_audio(directory / name, synthetic_music(length, seed=seed)) for seed, (name, length) in enumerate(specs)]


@pytest.fixture(scope="module")
def truth(small_model_dir, tracks):
    """Per track, the torch float32 model run by hand: segment logits and the mean block embedding."""
    model = MAESTForAudioClassification.from_pretrained(small_model_dir).eval()
    extractor = MAESTFeatureExtractor(max_length=SEGMENT_FRAMES)
    result = {}
    with torch.inference_mode():
        for path in tracks:
            segments = extractor(load_audio(path), sampling_rate=16000, return_segments=True)["input_values"]
            embedding = model.maest.embed(segments, block=model.config.embedding_block).mean(0)
            result[str(path)] = (model(segments).logits.double(), embedding.double())
    return result


def run_cli(argv, capsys):
    status = maest_main([str(arg) for arg in argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def _cosine(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


@pytest.mark.slow  # exports a graph
@_needs("onnxruntime")
def test_embed_cli_onnxruntime_gives_the_torch_models_embeddings(small_model_dir, tracks, truth, tmp_path, capsys):
    out = tmp_path / "ort.parquet"
    argv = ["embed", *tracks, "--model", small_model_dir, "--out", out, "-q"]
    status, _, err = run_cli([*argv, "--backend", "onnxruntime"], capsys)
    assert status == 0, err
    results = read_output(out)
    assert table_metadata(results)["backend"] == "onnxruntime"  # the graph ran, not torch
    rows = dict(zip(results.column("path").to_pylist(), results.column("embedding").to_pylist()))
    for path, (_, embedding) in truth.items():
        assert _cosine(rows[path], embedding) >= 0.99999
        assert np.abs(np.asarray(rows[path]) - embedding.numpy()).max() < 1e-4
    # A float32 graph computes torch's numbers: its output resumes (and adds to) a torch run's.
    status, _, err = run_cli([*argv, "--backend", "torch"], capsys)
    assert status == 0 and "(2 already done)" in err


@pytest.mark.slow
@_needs("onnxruntime")
def test_embed_devices_workers_run_the_backend(small_model_dir, tracks, truth, tmp_path, capsys):
    # A spawned worker loads the model through the same settings (its graph comes from the shared cache).
    out = tmp_path / "devices.parquet"
    argv = ["embed", *tracks, "--model", small_model_dir, "--out", out, "--backend", "onnxruntime", "-q"]
    status, _, err = run_cli([*argv, "--devices", "cpu,cpu"], capsys)
    assert status == 0 and "2 tracks processed by 2 processes" in err, err
    results = read_output(out)
    assert table_metadata(results)["backend"] == "onnxruntime"
    for path, embedding in zip(results.column("path").to_pylist(), results.column("embedding").to_pylist()):
        assert _cosine(embedding, truth[path][1]) >= 0.99999


@pytest.mark.slow  # exports a graph
@_needs("openvino")
def test_api_tag_openvino_gives_the_torch_models_logits(small_model_dir, tracks, truth):
    results = tag(tracks, model=str(small_model_dir), backend="openvino", num_workers=0, per_segment=True)
    assert results.metadata["backend"] == "openvino" and "backend" not in results.metadata["settings"]
    for path, scores in zip(results.paths, results.segment_scores):
        logits = torch.logit(torch.tensor(scores, dtype=torch.float64), eps=1e-12)
        assert (logits - truth[path][0]).abs().max() < 1e-4


@pytest.mark.slow  # exports a graph
@pytest.mark.skipif(not [name for name in ("onnxruntime", "openvino") if backends.runtime_version(name)], reason="no exported-graph runtime")
def test_embed_cli_auto_chooses_by_measurement_once_and_gives_the_torch_models_embeddings(small_model_dir, tracks, truth, tmp_path, capsys, caplog, monkeypatch):
    monkeypatch.setenv("MAEST_CACHE", str(tmp_path / "cache"))
    chosen = []
    for run in range(2):  # the second process reads the measurement
        out = tmp_path / f"auto{run}.parquet"
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="maest.inference.backends"):
            status, _, err = run_cli(["embed", *tracks, "--model", small_model_dir, "--out", out, "-q", "--backend", "auto"], capsys)
        assert status == 0, err
        results = read_output(out)
        chosen.append(table_metadata(results)["backend"])
        said = [record.getMessage() for record in caplog.records if record.getMessage().startswith("backend auto:")]
        assert len(said) == 1 and said[0].startswith(f"backend auto: {chosen[-1]} (")
        for path, embedding in zip(results.column("path").to_pylist(), results.column("embedding").to_pylist()):
            assert _cosine(embedding, truth[path][1]) >= 0.99999
    assert chosen[0] == chosen[1] and len(list((tmp_path / "cache" / "backend-choice").iterdir())) == 1


def test_auto_falls_back_to_torch_with_one_warning(small_model_dir, tracks, truth, monkeypatch):
    monkeypatch.setattr(backends, "runtime_version", lambda name: torch.__version__ if name == "torch" else None)
    monkeypatch.setattr(backends, "_fallbacks_reported", set())
    with pytest.warns(UserWarning, match="backend auto: onnxruntime and openvino not installed") as caught:
        model = load_model(str(small_model_dir), backend="auto")
    assert len([item for item in caught if "backend auto" in str(item.message)]) == 1
    assert model.backend == "torch" and not isinstance(model, ExportedInferenceModel)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="backend auto")  # said once per process
        results = embed(tracks[:1], model=str(small_model_dir), backend="auto", num_workers=0)
    assert _cosine(results.embeddings[0], truth[str(tracks[0])][1]) >= 0.99999


def test_unknown_backend_is_a_one_line_usage_error(small_model_dir, tracks, tmp_path, capsys):
    for command in (["embed", "--out", tmp_path / "x.parquet"], ["tag"]):
        status, _, err = run_cli([*command, tracks[0], "--model", small_model_dir, "--backend", "gpu"], capsys)
        assert status == 2
        assert err.strip() == "error: unknown backend 'gpu': choose one of auto, torch, onnxruntime, openvino"
    assert not (tmp_path / "x.parquet").exists()


def test_exported_backend_on_cuda_is_refused_before_loading(tmp_path):
    # The model path does not exist: the back-end is refused first, without touching a GPU or the weights.
    with pytest.raises(BackendError, match="backend 'onnxruntime' runs on CPU only, not on 'cuda'"):
        load_model(str(tmp_path / "no-model"), device="cuda", backend="onnxruntime")


def test_settings_record_the_backend_where_it_changes_the_numbers(small_model_dir):
    torch_model = load_model(str(small_model_dir))
    settings = CollectionSettings(model=torch_model, embedding=True, scores=False)
    reference = model_settings(torch_model, settings)
    assert "backend" not in reference
    for backend in [name for name in ("onnxruntime", "openvino") if backends.runtime_version(name) is not None]:
        # Built without exporting (graphs are built on first use).
        float32 = backends.load_backend(torch_model, backend, "float32")
        int8 = backends.load_backend(torch_model, backend, "int8")
        assert model_settings(float32, settings) == reference
        assert model_settings(int8, settings) == {**reference, "dtype": "int8", "backend": backend}
    torch_int8 = backends.load_backend(torch_model, "torch", "int8")
    assert "backend" not in model_settings(torch_int8, settings)


def test_cli_choices_are_the_librarys():
    assert collection_cli.BACKEND_CHOICES == backends.BACKEND_CHOICES
    from maest.inference.model import DEFAULT_BACKEND

    assert collection_cli.DEFAULT_BACKEND == DEFAULT_BACKEND


_EXPORT_COUNTING_EMBED = """
import sys
import maest.inference.backends as backends
from maest.cli import main

export = backends.export_graph
def counted(*args, **kwargs):
    print("exporting", flush=True)
    return export(*args, **kwargs)
backends.export_graph = counted
sys.exit(main(["embed", *sys.argv[2:], "--model", sys.argv[1], "-q", "--backend", "onnxruntime", "--num-workers", "0"]))
"""


@pytest.mark.slow  # two processes export at once
@_needs("onnxruntime")
def test_processes_that_need_one_graph_at_once_export_it_once(small_model_dir, tracks, truth, tmp_path, monkeypatch):
    # The per-graph lock: the second process waits for the first one's build and uses it, instead of exporting again
    # or reading a half-written file.
    import subprocess
    import sys

    monkeypatch.setenv("MAEST_CACHE", str(tmp_path / "cache"))
    runs = [
        subprocess.Popen(
            [sys.executable, "-c", _EXPORT_COUNTING_EMBED, str(small_model_dir), *map(str, tracks), "--out", str(tmp_path / f"o{run}.parquet")],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        for run in range(2)
    ]
    outputs = [run.communicate(timeout=300) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], [err[-2000:] for _, err in outputs]
    assert sum(out.count("exporting") for out, _ in outputs) == 1, outputs
    assert len(list((tmp_path / "cache" / "graphs").glob("*/model.onnx"))) == 1
    for run in range(2):
        results = read_output(tmp_path / f"o{run}.parquet")
        for path, embedding in zip(results.column("path").to_pylist(), results.column("embedding").to_pylist()):
            assert _cosine(embedding, truth[path][1]) >= 0.99999
