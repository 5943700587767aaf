"""`maest embed` over several processes: torchrun with two CPU processes (gloo), `--devices cpu,cpu`, kill and resume
with another process count, and a corrupt file in one process's share. The truth is a one-process run."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from maest.inference import embed, read_output
from maest.inference.distributed import (
    EXIT_AFTER_ENVIRONMENT_VARIABLE,
    GlobalProgress,
    launched_world_size,
    parse_devices,
    progress_file,
    write_json,
)
from maest.inference.store import SETTINGS_COLUMNS, ProgressStore, table_metadata

from conftest import synthetic_music, write_audio


# Tracks of 2-8 s in several formats and folders; the corrupt file sorts last, so it is never a process's first track.
TRACKS = [("a/t0.wav", 2.0), ("a/t1.flac", 8.0), ("b/t2.mp3", 3.0), ("b/t3.wav", 6.0), ("t4.ogg", 4.0), ("t5.flac", 7.0)]
CORRUPT = "zz_corrupt.mp3"


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    root = tmp_path_factory.mktemp("collection")
    for index, (name, seconds) in enumerate(TRACKS):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        write_audio(root / name, synthetic_music(seconds, seed=index))
    (root / CORRUPT).write_bytes(b"ID3" + b"this is no mp3 frame data" * 40)
    return root


@pytest.fixture(scope="module")
def one_process(collection, small_model_dir, tmp_path_factory):
    """The truth: the same collection embedded by one process."""
    out = tmp_path_factory.mktemp("one") / "embeddings.parquet"
    results = embed([collection], out=out, model=str(small_model_dir), num_workers=0)
    assert len(results) == len(TRACKS) and len(results.failed) == 1
    return read_output(out)


def _environment(**extra):
    environment = dict(os.environ, HF_HUB_OFFLINE="1", ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        environment.pop(name, None)
    environment.update(extra)
    return environment


def _torchrun(num_processes, collection, model, out, **environment):
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(num_processes),
        "-m", "maest", "embed", str(collection), "--model", str(model), "--out", str(out), "--num-workers", "0",
    ]
    return subprocess.run(command, env=_environment(**environment), capture_output=True, text=True, timeout=300)


def _assert_same_output(table, expected):
    """Row for row (same paths in the same order), same columns and settings, vectors within float tolerance."""
    if table.column_names != expected.column_names:  # NPZ has no constant settings columns (they are in its metadata)
        assert table.column_names == [name for name in expected.column_names if name not in SETTINGS_COLUMNS]
    assert table["path"].to_pylist() == expected["path"].to_pylist()
    np.testing.assert_allclose(table["duration"].to_numpy(), expected["duration"].to_numpy())
    assert table["num_segments"].to_pylist() == expected["num_segments"].to_pylist()
    embeddings = np.stack(table["embedding"].to_numpy(zero_copy_only=False))
    np.testing.assert_allclose(embeddings, np.stack(expected["embedding"].to_numpy(zero_copy_only=False)), atol=1e-5)
    assert table_metadata(table)["settings"] == table_metadata(expected)["settings"]


def _rank_exit_codes(torchrun_stderr):
    """Per rank, its exit code from torchrun's failure report (ranks that exited 0 are not listed)."""
    pattern = r"rank\s*:\s*(\d+) \(local_rank: \d+\)\s*\n\s*exitcode\s*:\s*(-?\d+)"
    return {int(rank): int(code) for rank, code in re.findall(pattern, torchrun_stderr)}


@pytest.mark.slow
def test_torchrun_two_cpu_processes_equal_one_process(collection, small_model_dir, one_process, tmp_path):
    out = tmp_path / "embeddings.parquet"
    run = _torchrun(2, collection, small_model_dir, out)
    # The corrupt file (in one process's share) fails the job on every rank: exit status 1, like one process.
    assert run.returncode == 1, run.stderr[-3000:]
    assert _rank_exit_codes(run.stderr) == {0: 1, 1: 1}, run.stderr[-3000:]
    # ... and it is reported once, in the main process's summary.
    assert run.stderr.count(f"failed: {collection / CORRUPT}") == 1, run.stderr[-3000:]
    assert run.stderr.count("tracks processed by 2 processes") == 1
    assert "6 tracks ok, 1 failed" in run.stderr
    assert "2 processes" in run.stderr and "7/7" in run.stderr  # the one global bar: all 7 tracks of both processes
    merged = read_output(out)
    assert merged.schema.equals(one_process.schema) and merged.schema.metadata == one_process.schema.metadata
    _assert_same_output(merged, one_process)
    failed_lines = (tmp_path / "embeddings.parquet.failed.tsv").read_text().splitlines()[1:]
    assert [line.split("\t")[0] for line in failed_lines] == [str(collection / CORRUPT)]
    assert not (tmp_path / "embeddings.parquet.partial").exists()  # part files merged and removed
    assert sorted(path.name for path in tmp_path.iterdir()) == ["embeddings.parquet", "embeddings.parquet.failed.tsv"]


@pytest.mark.slow
def test_killed_two_process_run_resumes_with_one_process(collection, small_model_dir, one_process, tmp_path):
    out = tmp_path / "embeddings.parquet"
    # Process 1 dies abruptly after its first track (its part file flushed, as a periodic flush leaves it); the
    # launcher then tears process 0 down, which flushes what it finished (SIGTERM = interrupt).
    killed = _torchrun(2, collection, small_model_dir, out, **{EXIT_AFTER_ENVIRONMENT_VARIABLE: "1:1"})
    assert killed.returncode != 0
    assert _rank_exit_codes(killed.stderr).get(1) == 75, killed.stderr[-3000:]
    assert not out.exists()
    store = ProgressStore(out, settings={}, output_dims={"embedding": 192})
    finished = store.finished_paths()
    assert 1 <= len(finished) < len(TRACKS)
    assert {os.path.basename(path) for path in finished} <= {os.path.basename(name) for name, _ in TRACKS}

    # The rerun, with one process: finished tracks are skipped whichever process did them, the rest is computed.
    results = embed([collection], out=out, model=str(small_model_dir), num_workers=0)
    assert results.skipped == len(finished)
    assert results.num_ok == len(TRACKS) and [item["path"] for item in results.failed] == [str(collection / CORRUPT)]
    _assert_same_output(read_output(out), one_process)
    assert not (tmp_path / "embeddings.parquet.partial").exists()


@pytest.mark.slow
def test_devices_cpu_cpu_equals_one_process(collection, small_model_dir, one_process, tmp_path, capsys, monkeypatch):
    from maest.cli import main

    out = tmp_path / "embeddings.npz"
    command = ["embed", str(collection), "--model", str(small_model_dir), "--out", str(out), "--num-workers", "0", "--devices", "cpu,cpu"]

    # The spawned worker dies after its first track: the job stops with a one-line error (exit 2, never 1: that
    # means "some tracks failed"), the finished tracks are kept.
    monkeypatch.setenv(EXIT_AFTER_ENVIRONMENT_VARIABLE, "1:1")
    assert main(command) == 2
    assert "the worker process on cpu died" in capsys.readouterr().err
    assert not out.exists()
    finished = ProgressStore(out, settings={}, output_dims={"embedding": 192}).finished_paths()
    assert len(finished) >= 1

    # Rerun: the finished tracks are skipped, the rest is shared between the two processes, the output is complete.
    monkeypatch.delenv(EXIT_AFTER_ENVIRONMENT_VARIABLE)
    assert main(command) == 1  # the corrupt file
    captured = capsys.readouterr()
    assert captured.err.count(f"failed: {collection / CORRUPT}") == 1
    assert f"{len(TRACKS) + 1 - len(finished)} tracks processed by 2 processes" in captured.err
    _assert_same_output(read_output(out), one_process)
    with np.load(out) as saved:
        assert saved["failed_path"].tolist() == [str(collection / CORRUPT)]
    assert not (tmp_path / "embeddings.npz.partial").exists()

    # Again: only the corrupt file is left to try, so one process has nothing to do; the job still ends.
    assert main(command + ["-q"]) == 1
    assert "1 tracks processed by 2 processes" in capsys.readouterr().err
    _assert_same_output(read_output(out), one_process)


# ------------------------------------------------------------------------------------------------- fast unit tests
def test_parse_devices():
    assert parse_devices("cpu,cpu") == ["cpu", "cpu"]
    assert parse_devices(["cpu", "cpu", "cpu"]) == ["cpu"] * 3
    if not __import__("torch").cuda.is_available():
        assert parse_devices("2") == ["cpu", "cpu"]
        with pytest.raises(ValueError, match="no CUDA GPU"):
            parse_devices("cuda:0,cuda:1")
    with pytest.raises(ValueError, match="at least 1"):
        parse_devices("0")
    with pytest.raises(ValueError, match="unknown device 'gpu7'"):  # CollectionError is a ValueError too
        parse_devices("cpu,gpu7")
    with pytest.raises(ValueError, match="no device"):
        parse_devices(" , ")


def test_launched_world_size(monkeypatch):
    monkeypatch.delenv("PMI_SIZE", raising=False)
    monkeypatch.delenv("OMPI_COMM_WORLD_SIZE", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert launched_world_size() == 1
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert launched_world_size() == 4


def test_global_progress_sums_every_process_and_waits_for_all(tmp_path):
    """The main process's bar shows the sum over the processes' progress files and ends when all reported done,
    also when a process had nothing to do."""
    progress = GlobalProgress(tmp_path, num_processes=3, total=9, skipped=0, enabled=False)
    try:
        write_json(progress_file(tmp_path, 0), {"tracks": 4, "failed": 1, "seconds": 120.0, "done": False})
        write_json(progress_file(tmp_path, 1), {"tracks": 5, "failed": 0, "seconds": 300.0, "done": True})
        write_json(progress_file(tmp_path, 2), {"tracks": 0, "failed": 0, "seconds": 0.0, "done": True})
        progress.poll()
        assert progress.totals == {"tracks": 9, "failed": 1, "seconds": 420.0} and not progress.all_done()
        write_json(progress_file(tmp_path, 0), {"tracks": 4, "failed": 1, "seconds": 120.0, "done": True})
        progress.wait()  # returns: every process is done
        assert progress.all_done()
        assert json.loads(progress_file(tmp_path, 1).read_text())["seconds"] == 300.0
    finally:
        progress.close()


def test_global_progress_stops_when_a_worker_died(tmp_path):
    progress = GlobalProgress(tmp_path, num_processes=2, total=2, skipped=0, enabled=False)

    def alive():
        raise RuntimeError("worker 1 died")

    try:
        with pytest.raises(RuntimeError, match="worker 1 died"):
            progress.wait(alive)
    finally:
        progress.close()
