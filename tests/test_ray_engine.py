"""The Ray Data engine (`--engine ray`, `maest.inference.ray_engine`) on a local 2-CPU Ray cluster: the same rows as a
one-process run, one bad file among good ones, a non-UTF-8 file name, URIs and a Ray Dataset as inputs, an output made
with other settings refused, an interrupted run and a killed run resumed with no track lost or repeated. Nothing here
connects to anything but the local machine (`address="local"`), and every Ray process started here is gone at the end.
"""

import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import psutil
import pyarrow.parquet as pq
import pytest

from conftest import synthetic_music, write_audio
from maest.cli import main as maest_main
from maest.inference import SettingsMismatchError, embed, read_failures, read_output, tag
from maest.inference.store import table_metadata, table_paths


ray = pytest.importorskip("ray", reason="the Ray engine needs the maest[ray] extra")

pytestmark = pytest.mark.usefixtures("single_torch_thread")

NON_UTF8_NAME = b"caf\xe9 \xff.wav"  # Latin-1 bytes: not valid UTF-8


def _ray_processes(root: psutil.Process) -> list[psutil.Process]:
    try:
        return [child for child in root.children(recursive=True) if "ray" in " ".join(child.cmdline()).lower() or child.name() in ("raylet", "gcs_server")]
    except psutil.Error:
        return []


def _wait_gone(processes: list[psutil.Process], seconds: float) -> list[psutil.Process]:
    """The processes still alive after `seconds` (each killed, so that no test leaves one behind)."""
    _, alive = psutil.wait_procs(processes, timeout=seconds)
    for process in alive:
        try:
            process.kill()
        except psutil.Error:
            pass
    return alive


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray cluster of 2 CPUs for this module; `analyze_with_ray` runs on it (and leaves it up)."""
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    running = _ray_processes(psutil.Process())  # the cluster's own processes, its workers and actors
    ray.shutdown()
    assert not _wait_gone(running, 60), "Ray processes outlived ray.shutdown()"


@pytest.fixture(scope="module")
def collection(tmp_path_factory, small_model_dir):
    """Tracks of 1 to 3 segments (the small model's are 5 s) at two rates, one that is not audio, one that is too
    short, and one whose file name is not UTF-8."""
    directory = tmp_path_factory.mktemp("ray_collection")
    for index, seconds in enumerate([3.0, 6.0, 11.0, 4.5, 8.0, 14.0]):
        write_audio(directory / f"track{index}.{'wav' if index % 2 else 'flac'}", synthetic_music(seconds, seed=index), 16000 if index % 3 else 22050)
    (directory / "broken.mp3").write_bytes(b"ID3 this is not an mp3 at all" * 10)
    write_audio(directory / "short.wav", synthetic_music(0.4, seed=9))
    shutil.copy(directory / "track1.wav", os.path.join(os.fsencode(directory), NON_UTF8_NAME))
    return directory


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)


def stored_rows(partial) -> int:
    """Tracks in the part files of a progress store."""
    return sum(pq.read_metadata(os.path.join(partial, name)).num_rows for name in os.listdir(partial) if name.endswith(".parquet"))


def run_cli(argv, capsys):
    status = maest_main([str(arg) for arg in argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def assert_same_rows(ours, reference, per_segment_column=None):
    assert ours.paths == reference.paths
    np.testing.assert_array_equal(ours.num_segments, reference.num_segments)
    np.testing.assert_allclose(ours.durations, reference.durations, rtol=0, atol=1e-9)
    for column in ("embedding", "scores"):
        if column in reference.table.column_names:
            assert cosines(ours._matrix(column), reference._matrix(column)).min() >= 0.99999
    if per_segment_column:
        for mine, theirs in zip(ours._per_track(per_segment_column), reference._per_track(per_segment_column)):
            assert mine.shape == theirs.shape and cosines(mine, theirs).min() >= 0.99999


# ------------------------------------------------------------------------------------------------- equal rows
@pytest.mark.slow
def test_maest_embed_engine_ray_writes_the_rows_of_a_one_process_run(local_ray, collection, small_model_dir, tmp_path, capsys):
    reference = embed([collection], out=tmp_path / "one.parquet", model=str(small_model_dir), per_segment=True, block=1, tokens="cls,mean")
    out = tmp_path / "ray.parquet"
    argv = ["embed", collection, "--out", out, "--model", small_model_dir, "--per-segment", "--block", "1", "--tokens", "cls,mean"]
    status, _, err = run_cli(argv + ["--engine", "ray", "--tracks-per-batch", "3", "-q"], capsys)
    assert status == 1  # some tracks failed; the others are written
    assert "7 tracks ok, 2 failed; failures listed in" in err
    ours = read_output(out)
    theirs = read_output(tmp_path / "one.parquet")
    # The same file: schema (columns, types, the settings as columns) and the recorded settings.
    assert pq.read_schema(out).remove_metadata() == pq.read_schema(tmp_path / "one.parquet").remove_metadata()
    assert table_metadata(ours)["settings"] == table_metadata(theirs)["settings"]
    from maest.inference.job import InferenceResults

    assert_same_rows(InferenceResults(ours, {}), reference, "segment_embeddings")
    assert os.path.join(str(collection), os.fsdecode(NON_UTF8_NAME)) in table_paths(ours)  # the exact name, kept
    # The same failures, with the same reasons, in the failure list.
    assert read_failures(f"{out}.failed.tsv") == read_failures(tmp_path / "one.parquet.failed.tsv")
    reasons = {os.path.basename(item["path"]): item["reason"] for item in read_failures(f"{out}.failed.tsv")}
    assert set(reasons) == {"broken.mp3", "short.wav"} and "too short" in reasons["short.wav"]
    assert not os.path.exists(f"{out}.partial") and not os.path.exists(f"{out}.lock")

    # A rerun has nothing left to do, and says so.
    status, _, err = run_cli(argv + ["--engine", "ray", "-q"], capsys)
    assert status == 1 and "7 tracks ok (7 already done), 2 failed" in err


@pytest.mark.slow
def test_tag_with_ray_in_memory_from_a_ray_dataset_of_paths_and_uris(local_ray, collection, small_model_dir):
    from maest.inference.ray_engine import tag_with_ray

    files = sorted(str(path) for path in collection.glob("track*"))
    reference = tag(files, model=str(small_model_dir))
    # A Ray Dataset with a `path` column; one of them a file:// URI (read through fsspec).
    names = files[:-1] + [collection.joinpath(os.path.basename(files[-1])).as_uri()]
    dataset = ray.data.from_items([{"path": name} for name in names])
    ours = tag_with_ray(dataset, model=str(small_model_dir), tracks_per_batch=2)
    assert ours.paths == names and not ours.failed
    np.testing.assert_array_equal(ours.num_segments, reference.num_segments)
    assert cosines(ours.scores, reference.scores).min() >= 0.99999
    for mine, theirs in zip(ours.segment_scores, reference.segment_scores):
        assert cosines(mine, theirs).min() >= 0.99999
    assert ours.top(3) and ours.metadata["settings"] == reference.metadata["settings"]
    # Actors that would hold every CPU of the cluster, leaving none for decoding, would wait forever: refused.
    from maest.inference.ray_engine import RayEngineError

    with pytest.raises(RayEngineError, match="leave no 1 CPU"):
        tag_with_ray(files[:1], model=str(small_model_dir), num_cpus=2)


@pytest.mark.slow
def test_decoding_runs_on_tasks_of_its_own_not_inside_the_model_actors(local_ray, collection, small_model_dir):
    from maest.inference.job import CollectionSettings, load_run_model, model_settings
    from maest.inference.ray_engine import RayResources, build_pipeline

    settings = CollectionSettings(model=str(small_model_dir), scores=True)
    model = load_run_model(settings)
    files = [str(collection / "track0.flac"), str(collection / "track2.flac"), str(collection / "broken.mp3")]
    reference = tag(files, model=str(small_model_dir))
    # The front-end on the actors' device (what GPU actors do: decoding tasks send samples), run here on CPU actors:
    # the same rows as the one-process run's CPU front-end.
    dataset = build_pipeline(ray, files, settings, model, model_settings(model, settings), RayResources(), front_end_on_device=True)
    rows = sorted(dataset.take_all(), key=lambda row: row["index"])
    assert [row["error"] == "" for row in rows] == [True, True, False]
    assert [int(row["num_segments"]) for row in rows[:2]] == reference.num_segments.tolist()
    assert cosines(np.stack([row["scores"] for row in rows[:2]]), reference.scores).min() >= 0.99999
    stats = dataset.stats()
    assert "FlatMap(decode_track)" in stats and "MapBatches(ModelActor)" in stats
    assert "decode_track)->MapBatches" not in stats  # not fused into the actors


# ------------------------------------------------------------------------------------------------- refusals
def test_an_output_made_with_other_settings_is_refused_before_any_work(collection, small_model_dir, tmp_path, capsys):
    from maest.inference.ray_engine import embed_with_ray

    out = tmp_path / "made.parquet"
    embed([collection / "track0.flac"], out=out, model=str(small_model_dir), block=1)
    before = out.read_bytes()
    # Refused while the job is planned, before Ray starts (the address is never reached).
    with pytest.raises(SettingsMismatchError, match="block: 1 there, 2 now"):
        embed_with_ray([collection / "track0.flac"], out=out, model=str(small_model_dir), block=2, address="ray://never-used:1")
    status, _, err = run_cli(["embed", collection, "--out", out, "--model", small_model_dir, "--block", "2", "--engine", "ray", "--ray-address", "ray://never-used:1", "-q"], capsys)
    assert status == 2 and err.count("error:") == 1 and "Traceback" not in err and "was written with other settings" in err
    assert out.read_bytes() == before
    # Options of one engine given to the other: one line, exit 2.
    status, _, err = run_cli(["embed", collection, "--out", tmp_path / "x.parquet", "--model", small_model_dir, "--num-gpus", "1"], capsys)
    assert status == 2 and "--num-gpus is an option of the Ray engine: add --engine ray" in err
    status, _, err = run_cli(["embed", collection, "--out", tmp_path / "x.parquet", "--model", small_model_dir, "--engine", "ray", "--device", "cpu"], capsys)
    assert status == 2 and "device does not apply to the Ray engine" in err
    status, _, err = run_cli(["embed", collection, "--out", tmp_path / "x.parquet", "--engine", "ray", "--num-cpus", "-1"], capsys)
    assert status == 2 and "num-cpus must be a number >= 0" in err


# ------------------------------------------------------------------------------------------------- resume
@pytest.mark.slow
def test_a_killed_ray_run_leaves_no_process_and_a_rerun_loses_and_repeats_nothing(local_ray, collection, small_model_dir, tmp_path):
    from maest.inference.ray_engine import embed_with_ray

    out = tmp_path / "killed.parquet"
    partial = f"{out}.partial"
    command = [sys.executable, "-m", "maest", "embed", str(collection), "--out", str(out), "--model", str(small_model_dir),
               "--engine", "ray", "--tracks-per-batch", "1", "-q"]  # fmt: skip
    environment = dict(os.environ, RAY_ADDRESS="")
    driver = subprocess.Popen(command, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and driver.poll() is None:
            if os.path.isdir(partial) and any(name.endswith(".parquet") for name in os.listdir(partial)):
                break
            time.sleep(0.2)
        assert driver.poll() is None, f"the run ended before it could be killed: {driver.stderr.read().decode()[-2000:]}"
        cluster = _ray_processes(psutil.Process(driver.pid))
        assert cluster, "the killed run had started no Ray processes"
        driver.send_signal(signal.SIGKILL)
        driver.wait()
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
        driver.stderr.close()
    survivors = _wait_gone(cluster, 90)
    assert not survivors, f"Ray processes outlived the killed run: {[process.pid for process in survivors]}"
    stored = stored_rows(partial)
    assert stored >= 1 and not out.exists()

    results = embed_with_ray([collection], out=out, model=str(small_model_dir), tracks_per_batch=3)  # the lock is free
    reference = embed([collection], model=str(small_model_dir))
    assert table_paths(read_output(out)) == reference.paths  # none lost, none twice
    assert results.skipped == stored and results.processed == 9 - stored
    assert cosines(results.embeddings, reference.embeddings).min() >= 0.99999
