"""The published models under their real Hub ids and in their published layouts (tests/hub_fixture.py), through
every path a user takes with the defaults. The truth is transformers' stock `ASTForAudioClassification` on the same
files and the same features: a path that loaded random weights (even partly) would differ by far more than the
tolerance."""

import json
import logging
import os
import shutil
import subprocess
import sys
import wave

import numpy as np
import pytest
import torch
from conftest import synthetic_music
from hub_fixture import HUB_ORGANIZATION, label_names
from safetensors.torch import load_file, save_file
from transformers import (
    ASTConfig,
    ASTForAudioClassification,
    AutoConfig,
    AutoFeatureExtractor,
    AutoModel,
    AutoModelForAudioClassification,
    pipeline,
)

import maest.hear
from maest import CheckpointError, MAESTConfig, MAESTFeatureExtractor, MAESTForAudioClassification, MAESTModel, get_maest, load_maest
from maest.cli import main as maest_main
from maest.feature_extraction import load_audio
from maest.inference import DEFAULT_MODEL, embed, load_model, read_output
from maest.inference.store import table_metadata
from maest.modeling import PUBLISHED_CHECKPOINTS, pool_embedding_tokens


pytestmark = pytest.mark.usefixtures("published_hub_cache")

TOLERANCE = 2e-4
PUBLISHED_IDS = [f"{HUB_ORGANIZATION}/{name}" for name in PUBLISHED_CHECKPOINTS]
GET_MAEST_DEFAULT = f"{HUB_ORGANIZATION}/discogs-maest-30s-pw-129e"


def close(actual, expected, tolerance=TOLERANCE):
    actual, expected = np.asarray(actual, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape
    difference = float(np.abs(actual - expected).max())
    assert difference <= tolerance, f"max abs difference {difference:.3g} > {tolerance}"


@pytest.fixture(scope="module")
def stock_ast(published_hub):
    """transformers' own AST on a repo's files, one per repo for the module."""
    models = {}

    def get(repo_id):
        if repo_id not in models:
            models[repo_id] = published_hub.stock_ast(repo_id)
        return models[repo_id]

    return get


@pytest.fixture(scope="module")
def song(tmp_path_factory):
    """45 s of music (a 5 s phrase, repeated) as a 16-bit 16 kHz WAV file: one full 30 s segment and a partial one
    that `last_segment="auto"` keeps."""
    samples = np.round(np.tile(synthetic_music(5.0, seed=7), 9) * 32767).astype("<i2")
    path = tmp_path_factory.mktemp("audio") / "song.wav"
    with wave.open(str(path), "wb") as file:
        file.setnchannels(1)
        file.setsampwidth(2)
        file.setframerate(16000)
        file.writeframes(samples.tobytes())
    return path


def ast_track_outputs(ast, path, block: int):
    """Stock AST on the segments of a track as the collection job cuts them: the mean sigmoid scores and the mean of
    the paper's embedding of `block` (cls, dist, mean of the patch tokens)."""
    extractor = MAESTFeatureExtractor(max_length=ast.config.max_length)
    segments = extractor(load_audio(path), sampling_rate=16000, return_segments=True)["input_values"]
    with torch.no_grad():
        outputs = ast(segments, output_hidden_states=True)
    embedding = pool_embedding_tokens(outputs.hidden_states[block + 1], ("cls", "dist", "mean"))
    return outputs.logits.sigmoid().mean(0).numpy(), embedding.mean(0).numpy(), len(segments)


# ---------------------------------------------------------------------------------------------- plain transformers
@pytest.mark.parametrize("repo_id", PUBLISHED_IDS)
def test_from_pretrained_reads_every_published_repo(repo_id, published_hub, stock_ast):
    repo = published_hub.repos[repo_id]
    ast = stock_ast(repo_id)
    model = MAESTForAudioClassification.from_pretrained(repo_id).eval()
    config = model.config
    assert config.model_type == "maest" and config.max_length == repo.max_length
    assert [config.id2label[index] for index in range(config.num_labels)] == repo.labels
    assert config.problem_type == "multi_label_classification"
    inputs = torch.randn(2, repo.max_length, 96, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours, theirs = model(inputs, output_hidden_states=True), ast(inputs, output_hidden_states=True)
    close(ours.logits, theirs.logits)
    assert len(ours.hidden_states) == len(theirs.hidden_states)
    for our_state, their_state in zip(ours.hidden_states, theirs.hidden_states):
        close(our_state, their_state)


def test_both_published_weight_files_are_served(published_hub):
    assert {repo.weights_file for repo in published_hub.repos.values()} == {"pytorch_model.bin", "model.safetensors"}
    assert published_hub.repos[DEFAULT_MODEL].weights_file == "pytorch_model.bin"


def test_hub_layout_checks(published_hub, stock_ast, tmp_path):
    """Direct from_pretrained of the bare encoder, saving (MAEST's own layout), labels, short inputs."""
    repo_id = GET_MAEST_DEFAULT
    repo = published_hub.repos[repo_id]
    ast = stock_ast(repo_id)
    inputs = torch.randn(1, repo.max_length, 96, generator=torch.Generator().manual_seed(2))
    encoder = MAESTModel.from_pretrained(repo_id).eval()
    with torch.no_grad():
        close(encoder(inputs).last_hidden_state, ast.audio_spectrogram_transformer(inputs).last_hidden_state)

    model = MAESTForAudioClassification.from_pretrained(repo_id).eval()
    model.save_pretrained(tmp_path / "saved")
    saved = json.loads((tmp_path / "saved" / "config.json").read_text())
    assert saved["model_type"] == "maest" and saved["id2label"]["0"] == label_names("discogs400")[0]
    weights = load_file(tmp_path / "saved" / "model.safetensors")
    assert "maest.embeddings.time_position_embeddings" in weights and not any("audio_spectrogram" in k for k in weights)
    reloaded = MAESTForAudioClassification.from_pretrained(tmp_path / "saved").eval()

    # Short inputs, which stock AST cannot run: the first time positions, as the original checkpoint of the same
    # weights gives them (loaded from the original layout, another path).
    original = load_maest(repo.original_checkpoint)
    short = inputs[:, :500]
    with torch.no_grad():
        close(reloaded(inputs).logits, ast(inputs).logits)
        for ours, theirs in zip(model(short, output_hidden_states=True).hidden_states,
                                original(short, output_hidden_states=True).hidden_states):
            close(ours, theirs, 1e-5)


def test_auto_classes_after_import_maest(stock_ast):
    # The repo says it is AST: the Auto classes give transformers' AST, which MAEST equals; its published
    # preprocessor_config.json (AST-style settings, naming MAESTFeatureExtractor) gives this package's front-end.
    repo_id = DEFAULT_MODEL
    assert isinstance(AutoConfig.from_pretrained(repo_id), ASTConfig)
    assert isinstance(AutoModel.from_pretrained(repo_id).config, ASTConfig)
    auto = AutoModelForAudioClassification.from_pretrained(repo_id).eval()
    assert isinstance(auto, ASTForAudioClassification)
    extractor = AutoFeatureExtractor.from_pretrained(repo_id)
    assert isinstance(extractor, MAESTFeatureExtractor)
    assert (extractor.feature_size, extractor.max_length) == (96, 1876)
    audio = synthetic_music(3.0, seed=3)
    features = extractor(audio, sampling_rate=16000)["input_values"]
    np.testing.assert_array_equal(features, MAESTFeatureExtractor(max_length=1876)(audio, sampling_rate=16000)["input_values"])
    assert features[0, -1, 0] == pytest.approx(-0.8151, abs=1e-4)  # padded in the log-mel domain
    with torch.no_grad():
        close(MAESTForAudioClassification.from_pretrained(repo_id)(features).logits, auto(features).logits)


# ---------------------------------------------------------------------------------------------- load_maest
def test_load_maest_reads_every_layout_of_a_published_model(published_hub, stock_ast):
    repo = published_hub.repos[DEFAULT_MODEL]
    ast = stock_ast(DEFAULT_MODEL)
    inputs = torch.randn(1, repo.max_length, 96, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        expected = ast(inputs).logits
        for source in (DEFAULT_MODEL, repo.snapshot, repo.original_checkpoint, repo.training_checkpoint):
            model = load_maest(source)
            assert model.config.num_labels == 519 and model.config.id2label[518] == repo.labels[518]
            # The original head's LayerNorm eps (1e-5) differs from the Hub conversion's (1e-6): well within 2e-4.
            close(model(inputs).logits, expected)
        last = load_maest(repo.training_checkpoint, use_swa=False)(inputs).logits
    assert (last - expected).abs().max() > 0.1  # the training checkpoint's last weights are other weights


@pytest.fixture
def damaged_repo(published_hub, tmp_path):
    """A copy of a published AST-format directory whose weights file can be edited."""
    directory = tmp_path / "ast-repo"
    shutil.copytree(published_hub.repos[GET_MAEST_DEFAULT].snapshot, directory)
    return directory


def test_never_silently_random(damaged_repo, caplog, capsys, song):
    weights_file = damaged_repo / "model.safetensors"
    weights = load_file(weights_file)
    missing = "audio_spectrogram_transformer.encoder.layer.1.output.dense.weight"
    save_file({k: v for k, v in weights.items() if k != missing}, str(weights_file))
    with pytest.raises(CheckpointError, match=r"missing \(they would be random\): maest\.layers\.1\.mlp\.fc2\.weight"):
        load_maest(damaged_repo)
    # The same through a command: one line, exit status 2, no table.
    assert maest_main(["tag", str(song), "--model", str(damaged_repo), "-q"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "maest.layers.1.mlp.fc2.weight" in err and "MISSING" not in err, err

    save_file({**weights, "audio_spectrogram_transformer.extra.weight": torch.zeros(3)}, str(weights_file))
    with pytest.raises(CheckpointError, match=r"not used by MAESTForAudioClassification: maest\.extra\.weight"):
        load_maest(damaged_repo)

    # The one exception: a new head for other labels, asked for, and logged.
    save_file(weights, str(weights_file))
    with caplog.at_level(logging.WARNING, logger="maest.modeling.conversion"):
        model = load_maest(damaged_repo, num_labels=3, ignore_mismatched_sizes=True)
    assert model.classifier.dense.out_features == 3 and "new classification head for 3 labels" in caplog.text
    with pytest.raises(CheckpointError, match=r"of another shape: classifier\.dense\.bias \(400,\)"):
        load_maest(damaged_repo, num_labels=3)


def test_ast_weights_under_transformers_5_names_load_too(damaged_repo, stock_ast):
    # transformers 5 writes AST checkpoints under the 4.x names the Hub has; its own module names are others.
    ast = stock_ast(GET_MAEST_DEFAULT)
    state_dict = {key: tensor.contiguous() for key, tensor in ast.state_dict().items()}
    assert "audio_spectrogram_transformer.layers.0.attention.q_proj.weight" in state_dict
    save_file(state_dict, str(damaged_repo / "model.safetensors"))
    inputs = torch.randn(1, 1876, 96, generator=torch.Generator().manual_seed(10))
    with torch.no_grad():
        close(MAESTForAudioClassification.from_pretrained(damaged_repo)(inputs).logits, ast(inputs).logits)


class NotATensor:
    pass


def test_damaged_hub_layouts_are_one_line_errors(damaged_repo):
    config = json.loads((damaged_repo / "config.json").read_text())
    (damaged_repo / "model.safetensors").write_bytes(b"not safetensors" * 10)
    with pytest.raises(CheckpointError, match="ast-repo: cannot read its weights"):
        load_maest(damaged_repo)
    (damaged_repo / "model.safetensors").unlink()
    torch.save({"weights": NotATensor()}, damaged_repo / "pytorch_model.bin")  # never unpickled
    with pytest.raises(CheckpointError, match=r"objects other than tensors \(test_published_hub.NotATensor\)"):
        load_maest(damaged_repo)
    # A real AST (AudioSet's 128 mel bands) is no MAEST conversion: its position grid is not a sum to split.
    (damaged_repo / "config.json").write_text(json.dumps({**config, "num_mel_bins": 128}))
    with pytest.raises(CheckpointError, match="not a MAEST conversion \\(num_mel_bins=128"):
        load_maest(damaged_repo)


# ---------------------------------------------------------------------------------------------- the defaults
def _run_maest(args, published_hub, cwd):
    return subprocess.run(
        [sys.executable, "-m", "maest", *map(str, args)], capture_output=True, text=True, cwd=cwd,
        env=published_hub.env(), timeout=600,
    )


@pytest.mark.slow
def test_tag_and_embed_commands_without_model(published_hub, stock_ast, song, tmp_path):
    """`maest tag FILE` and `maest embed FILE` as a new user runs them: the default model, from the Hub cache."""
    scores, embedding, num_segments = ast_track_outputs(stock_ast(DEFAULT_MODEL), song, block=1)
    assert num_segments == 2

    tag_run = _run_maest(["tag", song, "--out", tmp_path / "tags.npz"], published_hub, tmp_path)
    assert tag_run.returncode == 0, tag_run.stderr
    assert "MISSING" not in tag_run.stdout + tag_run.stderr and "UNEXPECTED" not in tag_run.stderr
    table = read_output(tmp_path / "tags.npz")
    assert table_metadata(table)["settings"]["model"] == DEFAULT_MODEL
    close(np.asarray(table["scores"].to_pylist()[0]), scores)
    best_label = label_names("discogs519")[int(scores.argmax())]
    assert f"{scores.max():.3f}  {best_label}" in tag_run.stdout, tag_run.stdout

    embed_run = _run_maest(["embed", song, "--out", tmp_path / "emb.npz"], published_hub, tmp_path)
    assert embed_run.returncode == 0, embed_run.stderr
    assert "MISSING" not in embed_run.stdout + embed_run.stderr
    close(np.asarray(read_output(tmp_path / "emb.npz")["embedding"].to_pylist()[0]), embedding)


def test_python_entry_points_with_defaults(published_hub, stock_ast, song):
    default_ast = stock_ast(DEFAULT_MODEL)
    scores, embedding, _ = ast_track_outputs(default_ast, song, block=1)
    inference_model = load_model()
    assert inference_model.config.num_labels == 519
    results = embed([song], model=inference_model)
    close(results.embeddings[0], embedding)

    # get_maest: the original API, pretrained weights of its default name; mel input of one full segment.
    original_api = get_maest()
    ast = stock_ast(GET_MAEST_DEFAULT)
    mel = torch.randn(96, 1876, generator=torch.Generator().manual_seed(5))
    logits, _ = original_api(mel, melspectrogram_input=True, transformer_block=1)
    with torch.no_grad():
        close(logits, ast(mel.T[None]).logits)

    # maest probe's encoder, by Hub id.
    from maest.training.evaluation.embeddings import load_encoder

    with torch.no_grad():
        close(load_encoder(GET_MAEST_DEFAULT, device="cpu")(mel.T[None]).last_hidden_state,
              ast.audio_spectrogram_transformer(mel.T[None]).last_hidden_state)

    # The HEAR module on a Hub id.
    hear_model = maest.hear.load_model(DEFAULT_MODEL)
    audio = load_audio(song)[None]
    timestamp_embeddings, _ = maest.hear.get_timestamp_embeddings(audio, hear_model)
    _, per_segment, _ = ast_track_outputs(default_ast, song, block=1)
    close(timestamp_embeddings[0].mean(0), per_segment)


def test_similar_uses_the_model_its_index_was_built_with(published_hub, song, tmp_path):
    pytest.importorskip("faiss")
    from maest.similarity import SimilarityIndex, build_index

    embed([song], out=tmp_path / "emb.parquet")  # the default model
    build_index(tmp_path / "emb.parquet", tmp_path / "music.index")
    index = SimilarityIndex.open(tmp_path / "music.index")
    assert index.settings["model"] == DEFAULT_MODEL
    [[neighbour]] = index.search_audio([str(song)], k=1)  # the index's model, loaded again
    assert neighbour.path == os.path.abspath(song) and neighbour.score > 0.9999


def test_app_without_model_or_index_analyzes_with_the_default_model(stock_ast, song):
    from maest.app import TrackAnalyzer

    scores, _, _ = ast_track_outputs(stock_ast(DEFAULT_MODEL), song, block=1)
    analysis = TrackAnalyzer().analyze(str(song))
    labels = label_names("discogs519")
    top = np.argsort(-scores)[:5]
    assert [label for label, _ in analysis.styles] == [labels[index] for index in top]
    close([score for _, score in analysis.styles], scores[top])


def test_convert_a_published_repo(published_hub, stock_ast, tmp_path, capsys):
    repo = published_hub.repos[f"{HUB_ORGANIZATION}/discogs-maest-10s-dw-75e"]
    assert maest_main(["convert", repo.repo_id, str(tmp_path / "maest-10s-dw")]) == 0
    capsys.readouterr()
    model = MAESTForAudioClassification.from_pretrained(tmp_path / "maest-10s-dw").eval()
    assert MAESTFeatureExtractor.from_pretrained(tmp_path / "maest-10s-dw").max_length == 626
    assert model.config.id2label[399] == repo.labels[399]
    inputs = torch.randn(1, 626, 96, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        close(model(inputs).logits, stock_ast(repo.repo_id)(inputs).logits)


# ---------------------------------------------------------------------------------------------- the pipeline
def test_pipeline_on_a_published_id(stock_ast):
    repo_id = DEFAULT_MODEL
    ast = stock_ast(repo_id)
    audio = synthetic_music(8.0, seed=8)
    features = MAESTFeatureExtractor(max_length=1876)(audio, sampling_rate=16000)["input_values"]
    with torch.no_grad():
        logits = ast(features).logits[0]
    top = logits.argsort(descending=True)[:3]

    def as_scores(predictions):
        return [prediction["score"] for prediction in predictions], [prediction["label"] for prediction in predictions]

    labels = [ast.config.id2label[int(index)] for index in top]
    # The plain id: the repo's own classes (AST, whose config names no problem type: softmax) on MAEST's front-end.
    tagger = pipeline("audio-classification", model=repo_id)
    scores, names = as_scores(tagger(audio, top_k=3))
    assert names == labels
    close(scores, logits.softmax(-1)[top])
    # The one line for the scores MAEST was trained for: sigmoid, multi-label.
    tagger = pipeline("audio-classification", model=repo_id, function_to_apply="sigmoid")
    scores, names = as_scores(tagger(audio, top_k=3))
    assert names == labels
    close(scores, logits.sigmoid()[top])
    # A MAEST model object: its config is multi-label, the sigmoid is the default.
    model = MAESTForAudioClassification.from_pretrained(repo_id)
    tagger = pipeline("audio-classification", model=model, feature_extractor=MAESTFeatureExtractor.from_pretrained(repo_id))
    scores, names = as_scores(tagger(audio, top_k=3))
    assert names == labels
    close(scores, logits.sigmoid()[top])


# ---------------------------------------------------------------------------------------------- ONNX
@pytest.mark.slow
def test_export_onnx_of_a_published_id(published_hub, stock_ast, tmp_path):
    pytest.importorskip("onnxruntime")  # the `onnx` extra
    repo_id = f"{HUB_ORGANIZATION}/discogs-maest-5s-pw-129e"
    run = _run_maest(["export-onnx", repo_id, tmp_path / "maest-5s.onnx"], published_hub, tmp_path)
    assert run.returncode == 0, run.stderr
    inputs = np.random.default_rng(9).standard_normal((1, 316, 96)).astype(np.float32)
    np.save(tmp_path / "inputs.npy", inputs)
    # ONNX Runtime runs in a subprocess: sessions alive in the test process crash later subprocesses (conftest).
    script = (
        "import sys, numpy as np, onnxruntime as ort\n"
        "session = ort.InferenceSession(sys.argv[1], providers=['CPUExecutionProvider'])\n"
        "name = session.get_inputs()[0].name\n"
        "np.save(sys.argv[3], session.run(['logits'], {name: np.load(sys.argv[2])})[0])\n"
    )
    subprocess.run([sys.executable, "-c", script, tmp_path / "maest-5s.onnx", tmp_path / "inputs.npy",
                    tmp_path / "logits.npy"], check=True, timeout=300)
    with torch.no_grad():
        close(np.load(tmp_path / "logits.npy"), stock_ast(repo_id)(torch.from_numpy(inputs)).logits)
