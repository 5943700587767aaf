"""A collection run never stops on one bad input and never loses finished work: concurrent runs on one output, huge
or non-finite audio, all inputs failing, non-UTF-8 file names, a deleted manifest, a double Ctrl-C, unwritable or
unreadable folders, a full disk. Each test states the user-visible promise (rows kept, failures named, exit status)."""

import errno
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from conftest import synthetic_music, write_audio
from maest.cli import main as maest_main
from maest.inference import CollectionError, embed, load_model, read_failures, read_output, tag
from maest.inference import store as store_module
from maest.inference.store import OutputLock, table_paths


pytestmark = pytest.mark.usefixtures("single_torch_thread")


@pytest.fixture(scope="module")
def model(small_model_dir):
    return load_model(str(small_model_dir))


@pytest.fixture(scope="module")
def good_wav(tmp_path_factory):
    return write_audio(tmp_path_factory.mktemp("good") / "good.wav", synthetic_music(6.0, seed=3))


def run_cli(argv, capsys):
    status = maest_main([os.fsdecode(arg) if isinstance(arg, bytes) else str(arg) for arg in argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def write_float_wav(path, samples: np.ndarray, sampling_rate: int = 16000) -> None:
    """A mono 32-bit IEEE-float WAV (format 3), written by hand: it can hold samples far outside [-1, 1]."""
    data = np.asarray(samples, dtype="<f4").tobytes()
    header = b"RIFF" + struct.pack("<I", 36 + len(data)) + b"WAVE"
    header += b"fmt " + struct.pack("<IHHIIHH", 16, 3, 1, sampling_rate, sampling_rate * 4, 4, 32)
    header += b"data" + struct.pack("<I", len(data))
    with open(path, "wb") as file:
        file.write(header + data)


def copy_collection(directory, good_wav, names):
    directory.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copy(good_wav, os.path.join(os.fsencode(directory), os.fsencode(name)) if isinstance(name, bytes) else directory / name)


# ------------------------------------------------------------------------------------------------- 1. concurrent runs
def test_a_second_run_on_the_same_output_is_refused_while_the_first_holds_it(good_wav, small_model_dir, tmp_path, capsys):
    out = tmp_path / "m.parquet"
    with OutputLock(out):  # a first run, writing
        status, _, err = run_cli(["embed", good_wav, "--out", out, "--model", small_model_dir, "-q"], capsys)
    assert status == 2
    assert err.count("\n") == 1 and "is being written by another run (pid" in err and str(os.getpid()) in err
    assert not out.exists()
    status, _, err = run_cli(["embed", good_wav, "--out", out, "--model", small_model_dir, "-q"], capsys)
    assert status == 0 and "1 tracks ok" in err
    assert not (tmp_path / "m.parquet.lock").exists()


def test_the_lock_of_a_killed_run_is_taken_over(good_wav, small_model_dir, tmp_path, capsys):
    out = tmp_path / "m.parquet"
    holder = subprocess.Popen(
        [sys.executable, "-c", f"from maest.inference.store import OutputLock; import time; OutputLock({str(out)!r}).acquire(); print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(Exception, match="being written by another run"):
        OutputLock(out).acquire()
    holder.kill()
    holder.wait()
    assert (tmp_path / "m.parquet.lock").exists()  # the killed run left its lock file
    status, _, err = run_cli(["embed", good_wav, "--out", out, "--model", small_model_dir, "-q"], capsys)
    assert status == 0, err
    assert len(read_output(out)) == 1


def test_a_killed_runs_forked_workers_do_not_keep_its_lock(tmp_path):
    # The holder forks a child (as the DataLoader forks its decoding workers) that outlives it: once the holder is
    # killed, the next run takes the lock at once, while the orphaned child still lives.
    out = tmp_path / "m.parquet"
    script = (
        f"import os, time; from maest.inference.store import OutputLock; OutputLock({str(out)!r}).acquire()\n"
        "child = os.fork()\n"
        "if child == 0:\n    time.sleep(60); os._exit(0)\n"
        "print(child, flush=True); time.sleep(60)"
    )
    holder = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    child = int(holder.stdout.readline())
    try:
        holder.kill()
        holder.wait()
        os.kill(child, 0)  # the orphan is alive
        OutputLock(out).acquire().release()
    finally:
        os.kill(child, signal.SIGKILL)


# ------------------------------------------------------------------------------------------------- 2. non-finite
@pytest.fixture
def nan_features_for_loud_audio(monkeypatch):
    """A front-end that returns NaN features for audio louder than 1e10 (whatever the feature extractor does with
    such audio, the job must fail that track only)."""
    from maest import MAESTFeatureExtractor

    original = MAESTFeatureExtractor.__call__

    def call(self, audio, *args, **kwargs):
        features = original(self, audio, *args, **kwargs)
        if np.abs(np.asarray(audio)).max() > 1e10:
            features["input_values"] = features["input_values"] * float("nan")
        return features

    monkeypatch.setattr(MAESTFeatureExtractor, "__call__", call)


def test_a_track_with_non_finite_features_fails_alone(good_wav, small_model_dir, tmp_path, capsys, nan_features_for_loud_audio):
    directory = tmp_path / "mixed"
    copy_collection(directory, good_wav, ["a.wav", "c.wav"])
    write_float_wav(directory / "b_huge.wav", synthetic_music(6.0, seed=4) * 1e20)
    out = tmp_path / "out.parquet"
    status, _, err = run_cli(["embed", directory, "--out", out, "--model", small_model_dir, "-q", "--num-workers", "0"], capsys)
    assert status == 1, err
    assert "2 tracks ok, 1 failed" in err
    assert sorted(os.path.basename(path) for path in read_output(out)["path"].to_pylist()) == ["a.wav", "c.wav"]
    [failure] = read_failures(tmp_path / "out.parquet.failed.tsv")
    assert failure["path"] == str(directory / "b_huge.wav") and "NaN or infinite" in failure["reason"]


def test_the_python_api_fails_only_the_array_with_non_finite_features(model, nan_features_for_loud_audio):
    clip = synthetic_music(6.0, seed=5)
    results = tag([clip, clip * 1e20, clip], model=model, sampling_rate=16000)
    assert results.paths == ["array 0", "array 2"]
    assert [item["path"] for item in results.failed] == ["array 1"]
    assert "array 1: its features contain NaN or infinite values" in results.failed[0]["reason"]
    np.testing.assert_allclose(results.scores[0], results.scores[1], atol=1e-6)


def test_huge_samples_never_stop_a_run(good_wav, small_model_dir, tmp_path, capsys):
    """Without the patch: the feature extractor handles 1e20 itself (finite features) or refuses it; either way the
    run ends normally, every track is accounted for and no score is NaN."""
    directory = tmp_path / "mixed"
    copy_collection(directory, good_wav, ["a.wav"])
    write_float_wav(directory / "b_huge.wav", synthetic_music(6.0, seed=4) * 1e20)
    out = tmp_path / "out.npz"
    status, _, err = run_cli(["tag", directory, "--out", out, "--model", small_model_dir, "-q", "--num-workers", "0"], capsys)
    assert status in (0, 1), err
    table = read_output(out)
    failed = read_failures(str(out) + ".failed.tsv") if status == 1 else []
    assert table.num_rows + len(failed) == 2 and np.isfinite(np.stack(table["scores"].to_numpy(zero_copy_only=False))).all()


# ------------------------------------------------------------------------------------------------- 3. all inputs fail
@pytest.mark.parametrize("suffix", [".parquet", ".npz"])
def test_when_every_input_fails_an_empty_output_with_the_schema_is_written(small_model_dir, tmp_path, capsys, suffix):
    (tmp_path / "empty.wav").write_bytes(b"")
    out = tmp_path / f"e{suffix}"
    status, _, err = run_cli(["embed", tmp_path / "empty.wav", "--out", out, "--model", small_model_dir, "-q", "--per-segment"], capsys)
    assert status == 1, err
    assert "0 tracks ok, 1 failed" in err
    table = read_output(out)
    assert table.num_rows == 0
    assert table.schema.field("embedding").type.list_size == 192
    assert "segment_embeddings" in table.column_names
    assert [item["path"] for item in read_failures(str(out) + ".failed.tsv")] == [str(tmp_path / "empty.wav")]
    assert not (tmp_path / f"e{suffix}.partial").exists()


# ------------------------------------------------------------------------------------------------- 4. file names
def test_non_utf8_file_names_are_analyzed_and_kept_exactly(good_wav, small_model_dir, model, tmp_path, capsys):
    directory = tmp_path / "names"
    latin1 = b"latin1_\xe9.wav"
    copy_collection(directory, good_wav, [latin1, "plain.wav"])
    with open(os.path.join(os.fsencode(directory), b"broken_\xff.mp3"), "wb") as file:
        file.write(b"ID3 not an mp3" * 20)
    exact = os.fsdecode(os.path.join(os.fsencode(directory), latin1))
    broken = os.fsdecode(os.path.join(os.fsencode(directory), b"broken_\xff.mp3"))
    for suffix in (".parquet", ".npz"):
        out = tmp_path / f"names{suffix}"
        status, _, err = run_cli(["embed", directory, "--out", out, "--model", small_model_dir, "-q"], capsys)
        assert status == 1 and "2 tracks ok, 1 failed" in err, err
        assert exact in table_paths(read_output(out))
        assert [item["path"] for item in read_failures(str(out) + ".failed.tsv")] == [broken]
    assert b"broken_\xff.mp3\t" in (tmp_path / "names.parquet.failed.tsv").read_bytes()  # the name's own bytes
    with np.load(tmp_path / "names.npz") as data:
        assert exact in data["path"].tolist() and data["failed_path"].tolist() == [broken]
    status, out_text, _ = run_cli(["tag", directory / "plain.wav", exact, "--model", small_model_dir, "--format", "json", "-q"], capsys)
    assert status == 0 and [item["path"] for item in json.loads(out_text)][1] == exact
    assert embed([exact], model=model).paths == [exact]


# ------------------------------------------------------------------------------------------------- 5. manifest
def _interrupt_after_first_track(monkeypatch):
    original_add = store_module.ProgressStore.add

    def add(self, row):
        original_add(self, row)
        raise KeyboardInterrupt

    monkeypatch.setattr(store_module.ProgressStore, "add", add)


@pytest.mark.parametrize("damage", ["delete", "garble"])
def test_a_lost_manifest_cannot_mix_rows_of_other_settings(good_wav, small_model_dir, tmp_path, capsys, monkeypatch, damage):
    directory = tmp_path / "tracks"
    copy_collection(directory, good_wav, ["a.wav", "b.wav"])
    out = tmp_path / "emb.parquet"
    base = ["embed", directory, "--out", out, "--model", small_model_dir, "-q", "--num-workers", "0"]
    with monkeypatch.context() as patch:
        _interrupt_after_first_track(patch)
        status, _, err = run_cli(base + ["--block", "1"], capsys)
    assert status == 130, err
    manifest = tmp_path / "emb.parquet.partial" / "manifest.json"
    manifest.unlink() if damage == "delete" else manifest.write_text("{not json")
    status, _, err = run_cli(base + ["--block", "0"], capsys)
    assert status == 2 and "other settings" in err and "block: 1 there, 0 now" in err, err
    assert not out.exists()
    # Its own settings continue the run; the output is labelled with them and holds no row of another block.
    status, _, err = run_cli(base + ["--block", "1"], capsys)
    assert status == 0 and "(1 already done)" in err, err
    assert json.loads(pq.read_table(out).schema.metadata[b"maest"])["settings"]["block"] == 1
    reference = embed([directory], model=str(small_model_dir), block=1)
    np.testing.assert_allclose(np.stack(read_output(out)["embedding"].to_numpy(zero_copy_only=False)), reference.embeddings, atol=1e-5)


# ------------------------------------------------------------------------------------------------- 6. double Ctrl-C
@pytest.mark.slow
def test_a_double_ctrl_c_keeps_the_buffered_finished_tracks(small_model_dir, tmp_path):
    directory = tmp_path / "many"
    directory.mkdir()
    for index in range(24):
        write_audio(directory / f"track{index:02d}.wav", synthetic_music(6.0, seed=200 + index))
    out = tmp_path / "emb.parquet"
    command = [sys.executable, "-m", "maest", "embed", str(directory), "--model", str(small_model_dir), "--out", str(out),
               "--num-workers", "0", "--flush-every", "1000"]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, env=dict(os.environ, OMP_NUM_THREADS="1"))
    err = bytearray()

    def read_stderr():
        for chunk in iter(lambda: process.stderr.read1(256), b""):
            err.extend(chunk)

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    deadline = time.monotonic() + 120
    # The progress bar (stderr) says when at least 3 tracks are finished (and held in the store's buffer).
    while not re.search(rb" ([3-9]|1[0-9])/24 ", bytes(err)) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert process.poll() is None, err.decode()
    process.send_signal(signal.SIGINT)
    time.sleep(0.1)
    process.send_signal(signal.SIGINT)
    process.wait(timeout=120)
    reader.join(timeout=10)
    text = err.decode(errors="replace")
    assert process.returncode == 130, text
    assert "Traceback" not in text and "interrupted: finished tracks are kept" in text
    parts = sorted((tmp_path / "emb.parquet.partial").glob("part-*.parquet"))
    kept = {path for part in parts for path in pq.read_table(part)["path"].to_pylist()}
    assert len(kept) >= 3  # every track finished before the first Ctrl-C
    finished = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0 and f"({len(kept)} already done)" in finished.stderr, finished.stderr


# ------------------------------------------------------------------------------------------------- 7. set-up errors
def test_a_ctrl_c_during_the_last_save_does_not_cut_it_short(good_wav, small_model_dir, tmp_path, capsys, monkeypatch):
    """The first Ctrl-C can land while the finished tracks are being saved (a fast run ends with one save of every
    buffered track): the save completes, then the run stops as interrupted, and the next run skips those tracks."""
    directory = tmp_path / "tracks"
    copy_collection(directory, good_wav, ["a.wav", "b.wav", "c.wav"])
    original = store_module.ProgressStore.flush

    def flush_while_interrupted(store):
        if store._rows:  # the save of the finished tracks: a Ctrl-C arrives as it starts
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)  # (the handler runs in the middle of the save)
        return original(store)

    monkeypatch.setattr(store_module.ProgressStore, "flush", flush_while_interrupted)
    out = tmp_path / "emb.parquet"
    command = ["embed", directory, "--out", out, "--model", small_model_dir, "-q", "--flush-every", "1000", "--num-workers", "0"]
    status, _, err = run_cli(command, capsys)
    assert status == 130 and "interrupted: finished tracks are kept" in err, err
    parts = sorted((tmp_path / "emb.parquet.partial").glob("part-*.parquet"))
    assert {os.path.basename(path) for part in parts for path in pq.read_table(part)["path"].to_pylist()} == {"a.wav", "b.wav", "c.wav"}
    monkeypatch.setattr(store_module.ProgressStore, "flush", original)
    status, _, err = run_cli(command, capsys)
    assert status == 0 and "(3 already done)" in err, err


def test_an_output_folder_that_cannot_be_written_is_one_line(good_wav, small_model_dir, tmp_path, capsys):
    (tmp_path / "a_file").write_text("x")
    status, _, err = run_cli(["embed", good_wav, "--out", tmp_path / "a_file" / "o.parquet", "--model", small_model_dir, "-q"], capsys)
    assert status == 2 and err.count("\n") == 1 and "cannot write" in err and "a_file" in err, err


def test_a_full_disk_stops_with_one_line_and_keeps_saved_parts(good_wav, small_model_dir, tmp_path, capsys, monkeypatch):
    directory = tmp_path / "tracks"
    copy_collection(directory, good_wav, ["a.wav", "b.wav", "c.wav"])
    original = store_module.pq.write_table
    calls = []

    def write_table(table, where, *args, **kwargs):
        calls.append(where)
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(table, where, *args, **kwargs)

    monkeypatch.setattr(store_module.pq, "write_table", write_table)
    out = tmp_path / "emb.parquet"
    command = ["embed", directory, "--out", out, "--model", small_model_dir, "-q", "--flush-every", "1", "--num-workers", "0"]
    status, _, err = run_cli(command, capsys)
    assert status == 2, err
    assert err.count("\n") == 1 and "No space left on device" in err and "saved before are kept" in err
    monkeypatch.setattr(store_module.pq, "write_table", original)
    status, _, err = run_cli(command, capsys)
    assert status == 0 and "(1 already done)" in err, err


def test_an_unreadable_subfolder_is_reported_and_the_run_goes_on(good_wav, small_model_dir, tmp_path, capsys, monkeypatch):
    directory = tmp_path / "music"
    copy_collection(directory / "open", good_wav, ["a.wav"])
    copy_collection(directory / "locked", good_wav, ["b.wav"])
    locked = str(directory / "locked")
    scandir = os.scandir

    def guarded_scandir(path="."):
        if isinstance(path, str) and path == locked:  # root can read anything: simulate `chmod 000`
            raise PermissionError(errno.EACCES, "Permission denied", locked)
        return scandir(path)

    monkeypatch.setattr(os, "scandir", guarded_scandir)
    out = tmp_path / "emb.parquet"
    status, _, err = run_cli(["embed", directory, "--out", out, "--model", small_model_dir, "-q"], capsys)
    assert status == 1, err
    assert "1 tracks ok, 1 failed" in err
    assert [os.path.basename(path) for path in read_output(out)["path"].to_pylist()] == ["a.wav"]
    [failure] = read_failures(tmp_path / "emb.parquet.failed.tsv")
    assert failure["path"] == locked and "permission denied" in failure["reason"].lower()


def test_models_that_are_not_model_directories_are_one_line_errors(good_wav, small_model_dir, tmp_path, capsys):
    # "folder/" is no Hub id; an audio file is no model directory; a token typo of export-onnx fails before loading.
    for model_argument, message in [(tmp_path / "nosuchdir", "nosuchdir/: no such file or directory"), (good_wav, "not a checkpoint file")]:
        status, _, err = run_cli(["tag", good_wav, "--model", f"{model_argument}/" if "nosuch" in str(model_argument) else model_argument, "-q"], capsys)
        assert status == 2 and err.count("\n") == 1 and message in err, err
    pickled = tmp_path / "pickled"
    shutil.copytree(small_model_dir, pickled)
    (pickled / "model.safetensors").unlink()
    torch.save({"weights": threading.Lock}, pickled / "pytorch_model.bin")  # not only tensors: never unpickled
    status, _, err = run_cli(["tag", good_wav, "--model", pickled, "-q"], capsys)
    assert status == 2 and err.count("\n") == 1 and "loaded from safetensors only" in err, err
    status, _, err = run_cli(["export-onnx", small_model_dir, tmp_path / "m.onnx", "--tokens", "zz"], capsys)
    assert status == 2 and err.count("\n") == 1 and "Unknown embedding token" in err, err


def test_bad_options_are_one_line_usage_errors(good_wav, small_model_dir, model, capsys):
    status, _, err = run_cli(["tag", good_wav, "--model", small_model_dir, "--batch-size", "0", "-q"], capsys)
    assert status == 2 and err.count("\n") == 1 and "batch_size must be an integer >= 1, got 0" in err
    status, _, err = run_cli(["tag", good_wav, "--model", small_model_dir, "--device", "gpu7", "-q"], capsys)
    assert status == 2 and "unknown device 'gpu7'" in err
    results = tag([good_wav], model=model)
    with pytest.raises(CollectionError, match="k must be an integer >= 1"):
        results.top(-1)
    assert len(results.top(None)[0]) == len(results.labels)
    with pytest.raises(CollectionError, match="unknown option"):
        tag([good_wav], model=model, batchsize=4)


# ------------------------------------------------------------------------------------------------- 9. minor
def test_failed_tsv_keeps_tabs_and_newlines_in_names(small_model_dir, tmp_path, capsys):
    directory = tmp_path / "odd"
    directory.mkdir()
    names = ["a\tb.mp3", "line\nbreak.mp3", 'quote".mp3']
    for name in names:
        (directory / name).write_bytes(b"ID3 not an mp3" * 20)
    out = tmp_path / "o.parquet"
    status, _, err = run_cli(["embed", directory, "--out", out, "--model", small_model_dir, "-q"], capsys)
    assert status == 1, err
    assert sorted(item["path"] for item in read_failures(str(out) + ".failed.tsv")) == sorted(str(directory / n) for n in names)


def test_failures_are_listed_in_input_order_whatever_order_they_were_saved_in(model, tmp_path):
    from maest.inference.store import ProgressStore, finalize_output

    store = ProgressStore(tmp_path / "o.parquet", {"x": 1}, {"scores": 7})
    store.open()
    for name in ("c", "a", "b"):  # as two processes may save them
        store.add_failure(name, f"{name}: bad")
        store.flush()
    _, failures = finalize_output(tmp_path / "o.parquet", store, {}, order=["a", "b", "c"])
    assert [item["path"] for item in failures] == ["a", "b", "c"]
    assert [item["path"] for item in read_failures(tmp_path / "o.parquet.failed.tsv")] == ["a", "b", "c"]


def test_results_follow_the_input_order_of_paths_and_arrays(good_wav, model):
    clip = synthetic_music(3.0, seed=8)
    results = tag([str(good_wav), clip, str(good_wav)], model=model, sampling_rate=16000)
    assert results.paths == [str(good_wav), "array 1"]


def test_files_are_written_with_the_umask_mode(good_wav, model, tmp_path):
    previous = os.umask(0o022)
    try:
        out = tmp_path / "o.parquet"
        embed([good_wav], out=out, model=model)
        assert out.stat().st_mode & 0o777 == 0o644
    finally:
        os.umask(previous)


def test_cli_default_model_matches_the_library(small_model_dir):
    from maest.cli import collection
    from maest.inference import DEFAULT_MODEL

    assert collection.DEFAULT_MODEL == DEFAULT_MODEL


def test_weights_changed_in_place_are_refused_on_the_same_output(good_wav, small_model_dir, tmp_path, capsys):
    from maest import MAESTConfig, MAESTForAudioClassification

    model_dir = shutil.copytree(small_model_dir, tmp_path / "model")
    out = tmp_path / "out.parquet"
    argv = ["embed", good_wav, "--model", model_dir, "--out", out, "-q"]
    status, _, err = run_cli(argv, capsys)
    assert status == 0, err
    written = read_output(out)
    # Other weights under the same directory name (a fine-tuning saved over the model, a changed download).
    torch.manual_seed(7)
    MAESTForAudioClassification(MAESTConfig.from_pretrained(model_dir)).save_pretrained(model_dir)
    before = out.read_bytes()
    other = tmp_path / "other.wav"
    shutil.copyfile(good_wav, other)
    status, _, err = run_cli([*argv[:2], other, *argv[2:]], capsys)  # a new track would be added with the new model
    assert status == 2 and len(err.strip().splitlines()) == 1
    digest = written.schema.metadata and json.loads(written.schema.metadata[b"maest"])["settings"]["weights"]
    assert f"weights: sha256 {digest[:12]} there" in err and "the model's weights or config changed" in err
    assert out.read_bytes() == before  # nothing mixed in, nothing lost
