"""The similarity index as a hostile or careless user meets it (issue 21): two updates at once, an --out folder of
the user's own files, an empty or duplicate-laden embeddings file, damaged files (each reported in one line with the
command that rebuilds the index, and repaired by the next update), readers during updates, a read-only folder, a full
disk, bad options, and `maest similar` given a file that is not audio."""

import errno
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import synthetic_music, write_audio
from maest.cli import main
from maest.inference.store import OutputLock, OutputLockedError, TrackResult, rows_to_table, write_failures, write_output
from maest.similarity import IndexSettingsMismatchError, SimilarityIndex, build_index, normalize
from test_similarity import SETTINGS, clustered_vectors, write_embeddings

pytest.importorskip("faiss")


def cli(capsys, *arguments):
    status = main([str(argument) for argument in arguments])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def one_line_error(err: str) -> str:
    """The command's error: exactly one line, no traceback."""
    assert "Traceback" not in err and err.count("\n") == 1 and err.startswith("error: "), err
    return err


def built(tmp_path, count: int = 30, per_segment: bool = False):
    vectors = clustered_vectors(count)
    write_embeddings(tmp_path / "e.parquet", vectors)
    build_index(tmp_path / "e.parquet", tmp_path / "index", per_segment=per_segment)
    return vectors, tmp_path / "index"


def data_file(index: Path, kind: str) -> Path:
    return index / json.loads((index / "manifest.json").read_text())[f"{kind}_file"]


def write_rows(path, tracks: list[tuple[str, np.ndarray]]):
    """An embeddings file with the given (name, vector) rows, in order (names may repeat); two segments each."""
    rows = [TrackResult(name, 10.0, 2, {"embedding": vector}, {"embedding": np.stack([vector, -vector])}) for name, vector in tracks]
    write_output(path, rows_to_table(rows, {"embedding": tracks[0][1].shape[0]}, True), {"settings": SETTINGS, "segment_seconds": 5.0})


# ------------------------------------------------------------------------------------------ 4. concurrent updates
def test_a_second_update_while_one_runs_is_refused(tmp_path, capsys):
    _, index = built(tmp_path)
    write_embeddings(tmp_path / "more.parquet", clustered_vectors(40))
    with OutputLock(index):  # what a running `maest index` on the same index holds
        status, _, err = cli(capsys, "index", tmp_path / "more.parquet", "--out", index)
    assert status == 2 and "is being written by another run (pid" in one_line_error(err)
    assert len(SimilarityIndex.open(index)) == 30
    assert cli(capsys, "index", tmp_path / "more.parquet", "--out", index)[0] == 0
    assert len(SimilarityIndex.open(index)) == 40


def test_two_updates_at_once_never_mix(tmp_path):
    # The run: both printed "N added" and the index held one run's rows. Now one is refused (or they run one
    # after the other): the index holds exactly one file's tracks, with that file's vectors. (Threads: an flock
    # excludes another open file of the same process as it does another process.)
    small, large = clustered_vectors(300, seed=1), clustered_vectors(400, seed=2)
    write_embeddings(tmp_path / "small.parquet", small)
    write_embeddings(tmp_path / "large.parquet", large)
    outcomes = []

    def update(name):
        try:
            outcomes.append(build_index(tmp_path / name, tmp_path / "index").added)
        except OutputLockedError as error:
            outcomes.append(str(error))

    runs = [threading.Thread(target=update, args=(name,)) for name in ("small.parquet", "large.parquet")]
    for run in runs:
        run.start()
    for run in runs:
        run.join(timeout=120)
    assert len(outcomes) == 2 and any(isinstance(outcome, int) for outcome in outcomes)
    assert all(isinstance(outcome, int) or "being written by another run" in outcome for outcome in outcomes)
    index = SimilarityIndex.open(tmp_path / "index")
    vectors = {300: small, 400: large}[len(index)]
    for i in (0, 123, 299):
        assert np.allclose(index.vectors_of(f"/music/track{i}.wav")[0], normalize(vectors[i:i + 1])[0], atol=1e-6)


# ------------------------------------------------------------------------------- 5. only its own files are deleted
def test_an_out_folder_of_other_files_is_refused_and_left_alone(tmp_path, capsys):
    write_embeddings(tmp_path / "e.parquet", clustered_vectors(10))
    folder = tmp_path / "papers"
    folder.mkdir()
    mine = {"rows-2024.csv": "a,b", "vectors-notes.faiss": "mine", "notes.txt": "hello"}
    for name, text in mine.items():
        (folder / name).write_text(text)
    status, _, err = cli(capsys, "index", tmp_path / "e.parquet", "--out", folder)
    assert status == 2 and "not a similarity index" in one_line_error(err)
    assert {file.name: file.read_text() for file in folder.iterdir()} == mine


def test_an_update_deletes_only_the_files_its_manifest_recorded(tmp_path, capsys):
    vectors, index = built(tmp_path)
    old = {data_file(index, "vectors").name, data_file(index, "rows").name}
    mine = {"rows-mine.parquet": "x", "vectors-0.faiss": "y", ".rows-draft.tmp": "z"}
    for name, text in mine.items():
        (index / name).write_text(text)
    write_embeddings(tmp_path / "e.parquet", vectors[:25])
    assert cli(capsys, "index", tmp_path / "e.parquet", "--out", index)[0] == 0
    names = {file.name for file in index.iterdir()}
    assert not old & names  # the previous generation is gone
    assert {name: (index / name).read_text() for name in mine} == mine
    assert len(names) == 3 + len(mine)


# ------------------------------------------------------------------------------------------ 6. an empty input
def test_an_empty_embeddings_file_is_refused_and_the_index_kept(tmp_path, capsys):
    _, index = built(tmp_path, count=8)
    empty = tmp_path / "failed_run.parquet"  # what `maest embed` writes when every track failed
    write_output(empty, rows_to_table([], {"embedding": 48}, True), {"settings": SETTINGS, "segment_seconds": 5.0})
    write_failures(str(empty) + ".failed.tsv", [{"path": "/music/x.wav", "reason": "/music/x.wav: not audio"}])
    status, _, err = cli(capsys, "index", empty, "--out", index)
    assert status == 2 and "holds no tracks (every track failed: see" in one_line_error(err) and "not changed" in err
    assert len(SimilarityIndex.open(index)) == 8
    assert cli(capsys, "similar", "/music/track3.wav", "--index", index, "--top-k", "3")[0] == 0
    status, _, err = cli(capsys, "index", empty, "--out", tmp_path / "new")
    assert status == 2 and not (tmp_path / "new").exists()


# ------------------------------------------------------------------------------------------- 7. duplicate rows
@pytest.mark.parametrize("per_segment", [False, True])
def test_duplicate_tracks_are_indexed_once_from_their_last_row(tmp_path, capsys, per_segment):
    vectors = clustered_vectors(12, seed=4)
    tracks = [(f"/music/track{i}.wav", vectors[i]) for i in range(10)]
    tracks += [("/music/track3.wav", vectors[10]), ("/music/track5.wav", vectors[11]), ("/music/track3.wav", vectors[11])]
    write_rows(tmp_path / "e.parquet", tracks)
    options = ["--per-segment"] if per_segment else []
    status, out, err = cli(capsys, "index", tmp_path / "e.parquet", "--out", tmp_path / "index", *options)
    assert status == 0 and "3 rows repeat a track" in err and "indexed once, from its last row" in err
    index = SimilarityIndex.open(tmp_path / "index")
    keys = list(zip(index.rows["path"].to_pylist(), index.rows["segment"].to_pylist()))
    assert len(keys) == len(set(keys)) == 10 * (2 if per_segment else 1)
    # Every track's stored vector is its last row's (track3's third row, track5's second), none stored twice.
    last = {name: vector for name, vector in tracks}
    for name, vector in last.items():
        assert np.allclose(index.vectors_of(name)[0], normalize(vector[None])[0], atol=1e-6), name
    status, out, _ = cli(capsys, "index", tmp_path / "e.parquet", "--out", tmp_path / "index", *options)
    assert status == 0 and "0 added, 0 replaced, 0 removed" in out


# ------------------------------------------------------------------------------------- 8. damaged data files
def test_flipped_bytes_in_the_vectors_are_reported_and_an_update_rebuilds(tmp_path, capsys):
    vectors, index = built(tmp_path)
    vectors_file = data_file(index, "vectors")
    data = bytearray(vectors_file.read_bytes())
    data[len(data) // 2:len(data) // 2 + 64] = bytes(64)  # zeroes in the middle of the stored vectors
    vectors_file.write_bytes(bytes(data))
    status, out, err = cli(capsys, "similar", "/music/track3.wav", "--index", index)
    assert status == 2 and out == ""
    assert f"{index}: the index is damaged ({vectors_file.name} does not match its checksum)" in one_line_error(err)
    assert f"maest index {tmp_path / 'e.parquet'} --out {index} --overwrite" in err
    status, out, err = cli(capsys, "index", tmp_path / "e.parquet", "--out", index)
    assert status == 0 and "was damaged" in err and "rebuilt from" in err and "built" in out
    top = SimilarityIndex.open(index).search(vectors[3], k=1)[0]
    assert top.path == "/music/track3.wav" and top.score == pytest.approx(1.0, abs=1e-5)


def damage_manifest(how: str):
    def damage(index: Path):
        manifest_path = index / "manifest.json"
        text = manifest_path.read_text()
        if how == "truncated":
            manifest_path.write_text(text[: len(text) // 2])
        elif how == "empty":
            manifest_path.write_text("")
        elif how == "binary":
            manifest_path.write_bytes(np.random.default_rng(0).bytes(300))
        elif how == "missing key":
            manifest = json.loads(text)
            del manifest["dim"]
            manifest_path.write_text(json.dumps(manifest))
        elif how == "foreign file name":  # a tampered manifest must not make an update delete another file
            manifest = json.loads(text)
            manifest["vectors_file"] = "../victim.txt"
            manifest_path.write_text(json.dumps(manifest))
    return damage


def damage_data(kind: str, how: str):
    def damage(index: Path):
        file = data_file(index, kind)
        if how == "missing":
            file.unlink()
        else:
            file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])
    return damage


MANIFEST_DAMAGE = ["truncated", "empty", "binary", "missing key", "foreign file name"]
DATA_DAMAGE = [("vectors", "truncated"), ("vectors", "missing"), ("rows", "truncated"), ("rows", "missing")]


@pytest.mark.parametrize("how", MANIFEST_DAMAGE)
def test_a_damaged_manifest_is_one_line_and_only_overwrite_replaces_it(tmp_path, capsys, how):
    (tmp_path / "victim.txt").write_text("keep me")
    vectors, index = built(tmp_path)
    damage_manifest(how)(index)
    status, _, err = cli(capsys, "similar", "/music/track3.wav", "--index", index)
    assert status == 2 and "the index is damaged (manifest.json" in one_line_error(err) and "--overwrite" in err
    status, _, err = cli(capsys, "index", tmp_path / "e.parquet", "--out", index)
    assert status == 2 and "damaged" in one_line_error(err)
    assert cli(capsys, "index", tmp_path / "e.parquet", "--out", index, "--overwrite")[0] == 0
    assert SimilarityIndex.open(index).search(vectors[3], k=1)[0].path == "/music/track3.wav"
    assert (tmp_path / "victim.txt").read_text() == "keep me"


@pytest.mark.parametrize("kind,how", DATA_DAMAGE)
def test_a_damaged_or_missing_data_file_is_one_line_and_an_update_rebuilds(tmp_path, capsys, kind, how):
    vectors, index = built(tmp_path)
    name = data_file(index, kind).name
    damage_data(kind, how)(index)
    status, _, err = cli(capsys, "similar", "/music/track3.wav", "--index", index)
    problem = "is missing" if how == "missing" else "does not match its checksum"
    assert status == 2 and f"the index is damaged ({name} {problem})" in one_line_error(err)
    status, _, err = cli(capsys, "index", tmp_path / "e.parquet", "--out", index)
    assert status == 0 and f"was damaged ({name} {problem}): rebuilt" in err
    assert SimilarityIndex.open(index).search(vectors[3], k=1)[0].path == "/music/track3.wav"
    assert len(list(index.iterdir())) == 3


def test_an_index_without_checksums_still_reports_a_truncated_file(tmp_path, capsys):
    # Version-1 indexes (before checksums) are read; their damage is found by parsing and by the sizes.
    _, index = built(tmp_path)
    manifest = json.loads((index / "manifest.json").read_text())
    del manifest["checksums"]
    (index / "manifest.json").write_text(json.dumps(dict(manifest, version=1)))
    damage_data("vectors", "truncated")(index)
    status, _, err = cli(capsys, "similar", "/music/track3.wav", "--index", index)
    assert status == 2 and "cannot be read as a FAISS index" in one_line_error(err)


# --------------------------------------------------------------------------- 9. the model's identity by content
def test_embeddings_of_other_weights_under_the_same_model_path_are_refused(tmp_path, capsys):
    # `maest embed` records the weights' digest (`weights`): weights replaced in the model's directory are another
    # model, for the index as for the collection job.
    vectors = clustered_vectors(20)
    write_embeddings(tmp_path / "e.parquet", vectors, settings=dict(SETTINGS, weights="a" * 64))
    build_index(tmp_path / "e.parquet", tmp_path / "index")
    write_embeddings(tmp_path / "changed.parquet", vectors, settings=dict(SETTINGS, weights="b" * 64))
    status, _, err = cli(capsys, "index", tmp_path / "changed.parquet", "--out", tmp_path / "index")
    assert status == 2 and f"weights: sha256 {'b' * 12} there, {'a' * 12} in the index (the model's weights or config changed)" in one_line_error(err)
    index = SimilarityIndex.open(tmp_path / "index")
    with pytest.raises(IndexSettingsMismatchError, match="weights"):
        index.search(vectors[3], settings=dict(SETTINGS, weights="b" * 64))
    assert index.search(vectors[3], k=1, settings=dict(SETTINGS, weights="a" * 64))[0].path == "/music/track3.wav"


# ------------------------------------------------------------------------------- reading while an update runs
def test_a_reader_whose_generation_an_update_removed_reads_the_new_one(tmp_path, monkeypatch):
    import maest.similarity as similarity

    vectors, index = built(tmp_path, count=20)
    write_embeddings(tmp_path / "more.parquet", clustered_vectors(30))
    original, calls = similarity.read_manifest, []

    def manifest_then_update(directory, finished=True):
        manifest = original(directory, finished)
        if not calls:  # the reader has the manifest; an update commits and removes those files before it opens them
            calls.append(1)
            build_index(tmp_path / "more.parquet", index)
        return manifest

    monkeypatch.setattr(similarity, "read_manifest", manifest_then_update)
    assert len(SimilarityIndex.open(index)) == 30


READER = """
import json, select, sys, time
from maest.similarity import SimilarityIndex
sizes, failures, opens, deadline = set(), [], 0, time.monotonic() + 120
while time.monotonic() < deadline and opens < 20000:
    try:
        sizes.add(len(SimilarityIndex.open(sys.argv[1])))
    except Exception as error:
        failures.append(f"{type(error).__name__}: {error}")
    opens += 1
    if opens % 20 == 0 and select.select([sys.stdin], [], [], 0)[0]:
        break  # the test closed our stdin: the updates are done
print(json.dumps({"sizes": sorted(sizes), "failures": failures[:3], "count": len(failures), "opens": opens}))
"""


def test_readers_during_updates_always_see_a_whole_generation(tmp_path):
    # The run: 4 of 88 opens during updates failed with FileNotFoundError. A reader process (it imports no
    # torch: a second to start) opens the index in a loop while this process updates it 16 times. (How a reader
    # recovers when an update removes the generation it is about to open: the test above, deterministically.)
    vectors = clustered_vectors(400)
    write_embeddings(tmp_path / "a.parquet", vectors[:300])
    write_embeddings(tmp_path / "b.parquet", vectors)
    build_index(tmp_path / "a.parquet", tmp_path / "index")
    readers = [
        subprocess.Popen([sys.executable, "-c", READER, str(tmp_path / "index")], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(1)
    ]
    try:
        time.sleep(1.0)  # the readers start
        for round in range(16):
            build_index(tmp_path / ("b.parquet" if round % 2 == 0 else "a.parquet"), tmp_path / "index")
    finally:
        reports = [reader.communicate(input="", timeout=180) for reader in readers]
    for (out, err), reader in zip(reports, readers):
        assert reader.returncode == 0, err
        report = json.loads(out)
        assert report["count"] == 0, report["failures"]
        assert set(report["sizes"]) <= {300, 400} and report["opens"] > 0


# ---------------------------------------------------------------------- read-only folder, full disk, bad options
def test_a_read_only_index_folder_is_searched_and_an_update_is_one_line(tmp_path, capsys, monkeypatch):
    import maest.utils.files

    vectors, index = built(tmp_path)
    before = {file.name: file.read_bytes() for file in index.iterdir()}
    index.chmod(0o555)
    try:
        assert cli(capsys, "similar", "/music/track3.wav", "--index", index, "--top-k", "2")[0] == 0
        if os.geteuid() == 0:  # root writes anywhere: refuse writes in the folder as the kernel would
            make_temporary = maest.utils.files.tempfile.mkstemp

            def refused(*args, dir=None, **kwargs):
                if Path(dir) == index:
                    raise PermissionError(errno.EACCES, "Permission denied", str(dir))
                return make_temporary(*args, dir=dir, **kwargs)

            monkeypatch.setattr(maest.utils.files.tempfile, "mkstemp", refused)
        write_embeddings(tmp_path / "e.parquet", vectors[:20])
        status, _, err = cli(capsys, "index", tmp_path / "e.parquet", "--out", index)
    finally:
        index.chmod(0o755)
    assert status == 2 and f"could not write the index {index} (Permission denied); the previous index is unchanged" in one_line_error(err)
    assert {file.name: file.read_bytes() for file in index.iterdir()} == before


def test_a_full_disk_leaves_the_previous_index_and_no_new_file(tmp_path, capsys, monkeypatch):
    import maest.similarity as similarity

    vectors, index = built(tmp_path, count=20)
    before = {file.name: file.read_bytes() for file in index.iterdir()}
    write_embeddings(tmp_path / "e.parquet", clustered_vectors(30))

    def disk_full(table, where):  # the vectors file was written; the rows file does not fit
        where.write(b"PAR1" + bytes(1000))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(similarity.pq, "write_table", disk_full)
    status, _, err = cli(capsys, "index", tmp_path / "e.parquet", "--out", index)
    assert status == 2 and "(No space left on device); the previous index is unchanged" in one_line_error(err)
    monkeypatch.undo()
    assert sorted(file.name for file in index.iterdir()) == sorted(before)  # the new generation's files are gone
    assert len(SimilarityIndex.open(index)) == 20
    assert cli(capsys, "index", tmp_path / "e.parquet", "--out", index)[0] == 0
    assert len(SimilarityIndex.open(index)) == 30 and len(list(index.iterdir())) == 3


def test_a_killed_writes_files_are_removed_by_the_next_run_even_when_it_changes_nothing(tmp_path, capsys, monkeypatch):
    import maest.similarity as similarity

    vectors, index = built(tmp_path, count=20)
    write_embeddings(tmp_path / "more.parquet", clustered_vectors(30))

    def killed(table, where):  # SIGKILL after the vectors file: nothing cleans up in this process
        raise KeyboardInterrupt

    monkeypatch.setattr(similarity.pq, "write_table", killed)
    with pytest.raises(KeyboardInterrupt):
        build_index(tmp_path / "more.parquet", index)
    monkeypatch.undo()
    assert len(list(index.iterdir())) > 3  # the killed write's vectors file (and temporary file), named as pending
    status, out, _ = cli(capsys, "index", tmp_path / "e.parquet", "--out", index)  # the same 20: nothing to write
    assert status == 0 and "0 added, 0 replaced, 0 removed" in out
    assert len(list(index.iterdir())) == 3 and len(SimilarityIndex.open(index)) == 20


def test_bad_index_options_are_one_line(tmp_path, capsys):
    write_embeddings(tmp_path / "e.parquet", clustered_vectors(10))
    status, _, err = cli(capsys, "index", tmp_path / "e.parquet", "--out", tmp_path / "index", "--exact-max", "0")
    assert status == 2 and "--exact-max) must be an integer of at least 100" in one_line_error(err)
    (tmp_path / "afile").write_text("not a folder")
    status, _, err = cli(capsys, "index", tmp_path / "e.parquet", "--out", tmp_path / "afile")
    assert status == 2 and "afile: is a file" in one_line_error(err)
    assert (tmp_path / "afile").read_text() == "not a folder"
    status, _, err = cli(capsys, "similar", "/music/x.wav", "--index", tmp_path / "afile")
    assert status == 2 and "is a file, not a similarity index folder" in one_line_error(err)


# ------------------------------------------------------------------------------------ similar: a bad audio file
def test_similar_with_a_file_that_is_not_audio_gives_the_others_and_exit_1(small_model_dir, tmp_path, capsys):
    folder = tmp_path / "music"
    folder.mkdir()
    for seed in range(3):
        write_audio(folder / f"song{seed}.wav", synthetic_music(3.0, seed=seed))
    assert cli(capsys, "embed", folder, "--model", small_model_dir, "--out", tmp_path / "e.parquet", "--num-workers", "0", "-q")[0] == 0
    assert cli(capsys, "index", tmp_path / "e.parquet", "--out", tmp_path / "index")[0] == 0
    good = write_audio(tmp_path / "good.wav", synthetic_music(3.0, seed=7))
    (tmp_path / "notaudio.wav").write_text("this is not audio")
    status, out, err = cli(capsys, "similar", good, tmp_path / "notaudio.wav", "--index", tmp_path / "index",
                           "--top-k", "3", "--format", "json")
    assert status == 1
    rows = json.loads(out)
    assert [row["rank"] for row in rows] == [1, 2, 3] and {row["query"] for row in rows} == {str(good)}
    assert {row["path"] for row in rows} == {str(folder / f"song{seed}.wav") for seed in range(3)}
    assert "Traceback" not in err and "failed: " in err and "notaudio.wav" in err
