"""`maest tag` / `maest embed` and the `maest.inference` API on generated audio files: whole-track results equal the
model run by hand on the feature extractor's segments; outputs, resumption, bad files, plots, offline errors."""

import json
import os
import subprocess
import sys
import time

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from conftest import SMALL_MODEL_LABELS, synthetic_music, write_audio
from maest import MAESTFeatureExtractor, MAESTForAudioClassification
from maest.cli import main as maest_main
from maest.feature_extraction import load_audio
from maest.inference import (
    ModelNotAvailableError,
    embed,
    load_model,
    read_output,
    tag,
)
from maest.inference import store as store_module


SEGMENT_FRAMES = 316


pytestmark = pytest.mark.usefixtures("single_torch_thread")


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    """Tracks in several formats and lengths (5.056 s segments): shorter than one segment, an exact multiple of the
    hop count, partial last segments below and above half a segment, resampled from 44.1 and 22.05 kHz, stereo."""
    directory = tmp_path_factory.mktemp("collection")
    (directory / "sub").mkdir()
    specs = [
        ("short.wav", 3.0, 16000, 1),
        ("exact.flac", 10.0, 16000, 1),
        ("sub/partial.mp3", 12.4, 44100, 2),
        ("sub/longer.ogg", 13.1, 22050, 1),
    ]
    for seed, (name, seconds, rate, channels) in enumerate(specs):
        audio = synthetic_music(seconds, sampling_rate=rate, seed=seed)
        if channels == 2:
            audio = np.stack([audio, np.roll(audio, 300) * 0.7])
        write_audio(directory / name, audio, rate)
    return directory


@pytest.fixture(scope="module")
def model(small_model_dir):
    return load_model(str(small_model_dir))


@pytest.fixture(scope="module")
def reference_model(small_model_dir):
    return MAESTForAudioClassification.from_pretrained(small_model_dir).eval()


def file_segments(path, last_segment="auto"):
    """The feature extractor's segments of a decoded file, as a user would make them by hand."""
    feature_extractor = MAESTFeatureExtractor(max_length=SEGMENT_FRAMES)
    return feature_extractor(load_audio(path), sampling_rate=16000, return_segments=True, last_segment=last_segment)["input_values"]


def run_cli(argv, capsys):
    status = maest_main([str(arg) for arg in argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def bad_files(directory):
    """A collection's usual suspects: corrupt, empty, non-audio, too short."""
    (directory / "corrupt.mp3").write_bytes(b"ID3\x03\x00\x00\x00" + os.urandom(2000))
    (directory / "empty.wav").write_bytes(b"")
    (directory / "notes.flac").write_text("these are not audio samples\n" * 20)
    write_audio(directory / "blip.wav", synthetic_music(0.4, seed=9))
    return {"corrupt.mp3", "empty.wav", "notes.flac", "blip.wav"}


# ------------------------------------------------------------------------------------------------- whole-track math
@pytest.mark.parametrize("last_segment", ["auto", "drop"])
def test_tag_scores_are_the_mean_of_segment_activations(collection, model, reference_model, last_segment):
    results = tag([collection], model=model, last_segment=last_segment, batch_size=3)
    assert sorted(os.path.basename(path) for path in results.paths) == ["exact.flac", "longer.ogg", "partial.mp3", "short.wav"]
    assert results.labels == SMALL_MODEL_LABELS
    for path, duration, num_segments, scores, segment_scores in zip(
        results.paths, results.durations, results.num_segments, results.scores, results.segment_scores
    ):
        segments = file_segments(path, last_segment)
        with torch.no_grad():
            expected_segments = torch.sigmoid(reference_model(segments).logits).numpy()
        assert num_segments == len(segments)
        np.testing.assert_allclose(segment_scores, expected_segments, atol=1e-5)
        np.testing.assert_allclose(scores, expected_segments.mean(axis=0), atol=1e-5)
        assert duration == pytest.approx(len(load_audio(path)) / 16000)
    counts = dict(zip((os.path.basename(p) for p in results.paths), results.num_segments.tolist()))
    # 3 s: one padded segment; 10 s = 626 frames: 316 + 310 (kept by auto); 12.4 s: 2 + 143 frames (< half: dropped);
    # 13.1 s: 2 + 188 frames (kept by auto).
    assert counts == ({"short.wav": 1, "exact.flac": 2, "partial.mp3": 2, "longer.ogg": 3} if last_segment == "auto" else
                      {"short.wav": 1, "exact.flac": 1, "partial.mp3": 2, "longer.ogg": 2})
    best = [labels[0][0] for labels in results.top(3)]
    assert best == [SMALL_MODEL_LABELS[int(np.argmax(row))] for row in results.scores]


def test_embed_is_the_mean_of_block_embeddings_with_patchout(collection, small_model_dir, reference_model):
    path = str(collection / "sub" / "longer.ogg")
    segments = file_segments(path)
    stride_model = MAESTForAudioClassification.from_pretrained(small_model_dir, inference_patchout_time_stride=2).eval()
    with torch.no_grad():
        expected = reference_model.maest.embed(segments, block=1, tokens=("cls", "mean")).numpy()
        expected_stride = stride_model.maest.embed(segments, block=1, tokens=("cls", "mean")).numpy()
    results = embed([path], model=str(small_model_dir), block=1, tokens="cls,mean", per_segment=True)
    assert results.embeddings.shape == (1, 2 * 64)
    np.testing.assert_allclose(results.segment_embeddings[0], expected, atol=1e-5)
    np.testing.assert_allclose(results.embeddings[0], expected.mean(axis=0), atol=1e-5)
    strided = embed([path], model=str(small_model_dir), block=1, tokens="ca", inference_patchout_time_stride=2)
    np.testing.assert_allclose(strided.embeddings[0], expected_stride.mean(axis=0), atol=1e-5)
    assert np.abs(expected_stride - expected).max() > 1e-3  # patchout changes the numbers
    assert strided.metadata["settings"]["inference_patchout_time_stride"] == 2


def test_arrays_with_a_sampling_rate(model, reference_model):
    clip = synthetic_music(8.0, sampling_rate=44100, seed=11)
    results = tag([clip, clip[:44100 * 2]], model=model, sampling_rate=44100)
    feature_extractor = MAESTFeatureExtractor(max_length=SEGMENT_FRAMES)
    segments = feature_extractor(clip, sampling_rate=44100, return_segments=True)["input_values"]
    with torch.no_grad():
        expected = torch.sigmoid(reference_model(segments).logits).mean(dim=0).numpy()
    assert results.paths == ["array 0", "array 1"] and results.num_segments.tolist() == [2, 1]
    np.testing.assert_allclose(results.scores[0], expected, atol=1e-5)
    with pytest.raises(ValueError, match="sampling_rate"):
        tag([clip], model=model)
    with pytest.raises(ValueError, match="files"):
        embed([clip], out="x.parquet", model=model, sampling_rate=44100)


def test_loader_workers_and_batching_do_not_change_results(collection, model):
    in_process = embed([collection], model=model, num_workers=0, batch_size=1, per_segment=True)
    parallel = embed([collection], model=model, num_workers=2, batch_size=3, per_segment=True)
    assert parallel.paths == in_process.paths
    np.testing.assert_allclose(parallel.embeddings, in_process.embeddings, atol=1e-5)
    for a, b in zip(parallel.segment_embeddings, in_process.segment_embeddings):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_int8_embeddings_stay_close_to_float32(collection, small_model_dir):
    path = [collection / "exact.flac"]
    reference = embed(path, model=str(small_model_dir)).embeddings[0]
    quantized = embed(path, model=str(small_model_dir), dtype="int8").embeddings[0]
    assert np.dot(reference, quantized) / np.linalg.norm(reference) / np.linalg.norm(quantized) > 0.99


# ------------------------------------------------------------------------------------------------- output files
def test_parquet_schema_and_metadata(collection, small_model_dir, tmp_path, capsys):
    out = tmp_path / "emb.parquet"
    status, _, err = run_cli(["embed", collection, "--out", out, "--model", small_model_dir, "--per-segment", "--block", "2", "-q", "--num-workers", "0"], capsys)
    assert status == 0, err
    assert "4 tracks ok, 0 failed" in err
    table = pq.read_table(out)
    assert table.column_names == [
        "path", "path_bytes", "duration", "num_segments", "embedding", "segment_embeddings", "model", "block", "tokens",
        "inference_patchout_time_stride", "dtype",
    ]
    assert str(table.schema.field("embedding").type) == "fixed_size_list<element: float>[192]"
    assert table["block"].to_pylist() == [2] * 4 and table["tokens"].to_pylist() == ["cls,dist,mean"] * 4
    assert table["model"].to_pylist() == [str(small_model_dir)] * 4
    assert all(os.path.isabs(path) for path in table["path"].to_pylist())
    metadata = json.loads(table.schema.metadata[b"maest"])
    assert metadata["settings"]["block"] == 2 and metadata["settings"]["dtype"] == "float32"
    assert metadata["settings"]["per_segment"] is True and metadata["failed"] == []
    assert metadata["segment_seconds"] == pytest.approx(316 * 256 / 16000)
    segment_rows = table["segment_embeddings"].to_pylist()
    assert [len(rows) for rows in segment_rows] == table["num_segments"].to_pylist()
    # The track vector is the mean of its segment vectors.
    for track, rows in zip(table["embedding"].to_pylist(), segment_rows):
        np.testing.assert_allclose(track, np.mean(rows, axis=0), atol=1e-6)
    assert not (tmp_path / "emb.parquet.partial").exists() and not (tmp_path / "emb.parquet.failed.tsv").exists()


def test_npz_output_matches_in_memory_results(collection, model, tmp_path):
    out = tmp_path / "emb.npz"
    written = embed([collection], out=out, model=model, per_segment=True)
    in_memory = embed([collection], model=model, per_segment=True)
    with np.load(out, allow_pickle=False) as data:
        assert data["path"].tolist() == in_memory.paths
        np.testing.assert_allclose(data["embedding"], in_memory.embeddings, atol=1e-6)
        assert data["segment_embeddings"].shape == (int(in_memory.num_segments.sum()), 192)
        np.testing.assert_array_equal(np.bincount(data["segment_track"]), in_memory.num_segments)
        first_track = data["segment_embeddings"][data["segment_track"] == 0]
        np.testing.assert_allclose(first_track, in_memory.segment_embeddings[0], atol=1e-6)
        assert json.loads(str(data["metadata"]))["settings"]["tokens"] == ["cls", "dist", "mean"]
    np.testing.assert_allclose(read_output(out)["embedding"].to_pylist(), written.embeddings, atol=1e-6)


# ------------------------------------------------------------------------------------------------- bad inputs
def test_bad_files_are_reported_and_skipped(collection, small_model_dir, tmp_path, capsys):
    directory = tmp_path / "mixed"
    directory.mkdir()
    for path in [collection / "short.wav", collection / "exact.flac"]:
        (directory / path.name).write_bytes(path.read_bytes())
    bad = bad_files(directory)
    out = tmp_path / "out.parquet"
    status, _, err = run_cli(["embed", directory, "--out", out, "--model", small_model_dir, "-q"], capsys)
    assert status == 1
    assert "2 tracks ok, 4 failed" in err
    for name in bad:
        assert f"failed: {directory / name}:" in err
    assert "too short (0.40 s" in err and "empty file" in err and "not a decodable audio file" in err
    assert sorted(os.path.basename(p) for p in pq.read_table(out)["path"].to_pylist()) == ["exact.flac", "short.wav"]
    lines = (tmp_path / "out.parquet.failed.tsv").read_text().splitlines()
    assert lines[0] == "path\treason" and sorted(os.path.basename(line.split("\t")[0]) for line in lines[1:]) == sorted(bad)
    assert {item["path"] for item in json.loads(pq.read_table(out).schema.metadata[b"maest"])["failed"]} == {
        str(directory / name) for name in bad
    }
    # The tag command reports the same, without an output file.
    status, out_text, err = run_cli(["tag", directory, "--model", small_model_dir, "-q"], capsys)
    assert status == 1 and "2 tracks ok, 4 failed" in err and "short.wav" in out_text
    # Fixing the files and rerunning retries only the failed ones, and clears the failure list.
    for name in bad:
        (directory / name).unlink()
    status, _, err = run_cli(["embed", directory, "--out", out, "--model", small_model_dir, "-q"], capsys)
    assert status == 0 and "2 tracks ok (2 already done), 0 failed" in err
    assert not (tmp_path / "out.parquet.failed.tsv").exists()


def test_unknown_paths_and_options_are_usage_errors(small_model_dir, tmp_path, capsys):
    status, _, err = run_cli(["tag", tmp_path / "nothing-here", "--model", small_model_dir], capsys)
    assert status == 2 and "nothing-here: no such file or directory" in err
    (tmp_path / "empty_dir").mkdir()
    status, _, err = run_cli(["tag", tmp_path / "empty_dir", "--model", small_model_dir], capsys)
    assert status == 2 and "no audio files found" in err
    status, _, err = run_cli(["embed", tmp_path, "--out", tmp_path / "x.csv", "--model", small_model_dir], capsys)
    assert status == 2 and ".parquet or .npz" in err


# ------------------------------------------------------------------------------------------------- resumption
def _interrupt_after(monkeypatch, tracks: int):
    """Makes the run stop like Ctrl-C right after `tracks` tracks were handed to the progress store."""
    original_add = store_module.ProgressStore.add
    calls = {"count": 0}

    def add(self, row):
        original_add(self, row)
        calls["count"] += 1
        if calls["count"] == tracks:
            raise KeyboardInterrupt

    monkeypatch.setattr(store_module.ProgressStore, "add", add)
    return calls


def test_interrupted_run_resumes_and_skips_finished_tracks(collection, model, tmp_path, monkeypatch):
    reference = embed([collection], out=tmp_path / "reference.parquet", model=model, per_segment=True)
    out = tmp_path / "emb.parquet"
    with monkeypatch.context() as patch:
        _interrupt_after(patch, 2)
        with pytest.raises(KeyboardInterrupt):
            embed([collection], out=out, model=model, per_segment=True, flush_every_tracks=100)
    # Nothing final was written, but the two finished tracks are in the progress store (flushed on interruption).
    assert not out.exists()
    partial = tmp_path / "emb.parquet.partial"
    assert (partial / "manifest.json").is_file()
    stored = [path for file in sorted(partial.glob("part-*.parquet")) for path in pq.read_table(file)["path"].to_pylist()]
    assert len(stored) == 2

    processed = []
    from maest.inference import engine

    original_run = engine.CollectionRunner.run

    def run(self, tracks, on_result, on_failure):
        processed.extend(track.name for track in tracks)
        return original_run(self, tracks, on_result, on_failure)

    monkeypatch.setattr(engine.CollectionRunner, "run", run)
    resumed = embed([collection], out=out, model=model, per_segment=True)
    assert sorted(processed) == sorted(set(reference.paths) - set(stored))
    assert resumed.skipped == 2 and resumed.paths == reference.paths
    np.testing.assert_allclose(resumed.embeddings, reference.embeddings, atol=1e-6)
    assert not partial.exists()
    # A finished output: rerunning does no work; a new track is added to it.
    processed.clear()
    again = embed([collection], out=out, model=model, per_segment=True)
    assert processed == [] and again.skipped == 4 and again.paths == reference.paths
    extra = tmp_path / "extra.wav"
    write_audio(extra, synthetic_music(6.0, seed=20))
    grown = embed([collection, extra], out=out, model=model, per_segment=True)
    assert processed == [str(extra)] and grown.paths == reference.paths + [str(extra)]


def test_other_settings_are_refused_unless_overwrite(collection, small_model_dir, tmp_path, monkeypatch, capsys):
    out = tmp_path / "emb.npz"
    track = collection / "short.wav"
    base = ["embed", track, collection / "exact.flac", "--out", out, "--model", small_model_dir, "-q"]
    # An interrupted run leaves a progress store; a rerun with another block must not mix its rows in.
    with monkeypatch.context() as patch:
        _interrupt_after(patch, 1)
        status, _, err = run_cli(base + ["--block", "0"], capsys)
    assert status == 130 and "rerun the same command to continue" in err
    status, _, err = run_cli(base + ["--block", "1"], capsys)
    assert status == 2 and "other settings" in err and "block: 0 there, 1 now" in err and "--overwrite" in err
    status, _, err = run_cli(base + ["--block", "1", "--overwrite"], capsys)
    assert status == 0 and "2 tracks ok, 0 failed" in err
    # A finished output with other settings is refused too, and replaced with --overwrite.
    status, _, err = run_cli(base + ["--block", "2"], capsys)
    assert status == 2 and "was written with other settings" in err
    assert json.loads(str(np.load(out)["metadata"]))["settings"]["block"] == 1
    status, _, err = run_cli(base + ["--block", "2", "--overwrite"], capsys)
    assert status == 0 and json.loads(str(np.load(out)["metadata"]))["settings"]["block"] == 2


@pytest.mark.slow
def test_killed_process_resumes(collection, small_model_dir, tmp_path):
    """A real `kill` (SIGTERM) of a running `maest embed`: the rerun finishes and equals an uninterrupted run."""
    directory = tmp_path / "many"
    directory.mkdir()
    for index in range(8):
        write_audio(directory / f"track{index:02d}.wav", synthetic_music(6.0, seed=100 + index))
    command = [sys.executable, "-m", "maest", "embed", str(directory), "--model", str(small_model_dir), "-q", "--num-workers", "0"]
    out = tmp_path / "emb.parquet"
    process = subprocess.Popen(command + ["--out", str(out), "--flush-every", "1"], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list((tmp_path / "emb.parquet.partial").glob("part-*.parquet")) and time.monotonic() < deadline:
        time.sleep(0.02)
    process.terminate()
    _, err = process.communicate(timeout=120)
    assert process.returncode in (0, 130), err
    assert not out.exists() or process.returncode == 0
    finished = subprocess.run(command + ["--out", str(out)], capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr
    assert "8 tracks ok" in finished.stderr
    if process.returncode == 130:  # killed mid-run (not after it finished): the rerun skipped the finished tracks
        assert "interrupted: finished tracks are kept" in err and "already done" in finished.stderr
    reference = embed([directory], model=str(small_model_dir))
    resumed_table = pq.read_table(out)
    assert resumed_table["path"].to_pylist() == reference.paths
    np.testing.assert_allclose(resumed_table["embedding"].to_pylist(), reference.embeddings, atol=1e-5)


# ------------------------------------------------------------------------------------------------- tag command
def test_tag_formats(collection, small_model_dir, model, capsys):
    results = tag([collection], model=model)
    top = results.top(2)
    status, out, _ = run_cli(["tag", collection, "--model", small_model_dir, "--format", "json", "--top-k", "2", "-q"], capsys)
    assert status == 0
    items = json.loads(out)
    assert [item["path"] for item in items] == results.paths
    for item, expected in zip(items, top):
        assert [tag_["label"] for tag_ in item["tags"]] == [label for label, _ in expected]
        assert [tag_["score"] for tag_ in item["tags"]] == pytest.approx([score for _, score in expected], abs=2e-6)
    status, out, _ = run_cli(["tag", collection, "--model", small_model_dir, "--format", "csv", "--top-k", "2", "-q"], capsys)
    lines = out.strip().splitlines()
    assert lines[0] == "path,duration,num_segments,rank,label,score" and len(lines) == 1 + 2 * 4
    status, out, _ = run_cli(["tag", collection / "exact.flac", "--model", small_model_dir, "-q"], capsys)
    assert "exact.flac  (0:10, 2 segments)" in out and out.count("\n") == 6
    assert f"{results.scores[0].max():.3f}  {top[0][0][0]}" in out


def test_tag_plot_timeline(collection, small_model_dir, tmp_path, capsys):
    plot = tmp_path / "plots" / "timeline.png"
    status, _, err = run_cli(["tag", collection / "sub" / "longer.ogg", "--model", small_model_dir, "--plot", plot, "--top-k", "3", "-q"], capsys)
    assert status == 0 and f"wrote {plot}" in err
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 5000
    status, _, err = run_cli(["tag", collection, "--model", small_model_dir, "--plot", plot], capsys)
    assert status == 2 and "one track" in err


# ------------------------------------------------------------------------------------------------- model loading
def test_default_model_offline_error_names_the_fix(tmp_path, monkeypatch, capsys):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(ModelNotAvailableError, match="not available offline.*--model DIR"):
        load_model()
    track = write_audio(tmp_path / "clip.wav", synthetic_music(2.0))
    status, _, err = run_cli(["tag", track], capsys)
    assert status == 2 and "mtg-upf/discogs-maest-30s-pw-129e-519l" in err and "--model DIR" in err
    with pytest.raises(FileNotFoundError, match="no-model-here: no such file or directory"):
        load_model(str(tmp_path / "no-model-here"))


def test_integer_pcm_arrays_give_their_float_reading(model):
    # `maest.inference` arrays go through `audio_to_mono`, as training's do: int16 is scaled by 2^15, not fed as
    # +-32768; an integer type without a PCM full scale is a one-line failure of that track.
    clip = synthetic_music(3.0, sampling_rate=22050, seed=5)
    pcm = np.round(clip * 32767).astype(np.int16)
    results = tag([pcm, pcm.astype(np.float32) / 32768, pcm.astype(np.int64)], model=model, sampling_rate=22050)
    np.testing.assert_allclose(results.scores[0], results.scores[1], atol=1e-6)
    assert results.paths == ["array 0", "array 1"]
    assert results.failed == [
        {"path": "array 2", "reason": "array 2 has dtype int64; pass floating-point audio in [-1, 1] or integer PCM (int16, int32, uint8)"}
    ]
