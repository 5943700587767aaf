"""The web app as a hostile visitor meets it (issue 21): `maest app` runs in its own process on 127.0.0.1 (the test
process never loads gradio beside the other tests' native runtimes) with a login, and the test speaks HTTP to it.

Security cases: (1) an index spanning more than 100 folders (and one elsewhere) no longer opens the disk's common
parent: /etc/passwd is refused; (2) nothing beside an indexed track (a secret file, a subfolder's, a hidden folder's)
nor the track itself by its path is served, only the app's copies of search results; every request needs the login;
(3) the app's temporary files stay under their bound and are removed when it stops. Set-up errors (a public host
without a login, a port in use or out of range, a damaged index) are one line with exit status 2."""

import http.cookiejar
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from conftest import synthetic_music, write_audio
from maest.cli import main
from maest.inference.store import OutputLock, TrackResult, read_output, rows_to_table, table_metadata, write_output

MISSING = [name for name in ("gradio", "faiss") if importlib.util.find_spec(name) is None]
pytestmark = pytest.mark.skipif(bool(MISSING), reason=f"not installed: {', '.join(MISSING)}")

# The tests that speak to a running app: starting it (a model, an index, gradio) takes about 40 s on 2 busy cores.
SERVER = pytest.mark.slow
USER, PASSWORD = "tester", "s3cret:with-colon"
TEMP_LIMIT_MB, MAX_UPLOAD_MB = 2, 1
SECRETS = {"secret.txt": "beside the tracks", "sub/s.txt": "in a subfolder", ".hidden/h.txt": "in a hidden folder"}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Visitor:
    """An HTTP client of the app (urllib, with its own cookies); every call has a timeout."""

    def __init__(self, base: str):
        self.base = base
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))

    def request(self, path: str, data: bytes | None = None, headers: dict | None = None, timeout: float = 60):
        request = urllib.request.Request(self.base + path, data=data, headers=headers or {})
        try:
            with self.opener.open(request, timeout=timeout) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()

    def file(self, path: str) -> tuple[int, bytes]:
        return self.request("/gradio_api/file=" + urllib.parse.quote(str(path)))

    def login(self) -> None:
        form = urllib.parse.urlencode({"username": USER, "password": PASSWORD}).encode()
        status, body = self.request("/login", form, {"Content-Type": "application/x-www-form-urlencoded"})
        assert status == 200, body

    def upload(self, name: str, content: bytes) -> tuple[int, bytes]:
        boundary = uuid.uuid4().hex
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"{name}\"\r\n"
                f"Content-Type: application/octet-stream\r\n\r\n").encode() + content + f"\r\n--{boundary}--\r\n".encode()
        return self.request("/gradio_api/upload", body, {"Content-Type": f"multipart/form-data; boundary={boundary}"})

    def analyze(self, uploaded_path: str) -> list:
        """Runs the app's `analyze` endpoint (Gradio's two-step HTTP API) and returns its outputs."""
        payload = json.dumps({"data": [{"path": uploaded_path, "meta": {"_type": "gradio.FileData"}}]}).encode()
        status, body = self.request("/gradio_api/call/analyze", payload, {"Content-Type": "application/json"})
        assert status == 200, body
        event_id = json.loads(body)["event_id"]
        status, body = self.request(f"/gradio_api/call/analyze/{event_id}", timeout=240)
        lines = body.decode().splitlines()
        assert status == 200 and "event: complete" in lines, body[-2000:]
        return json.loads(lines[lines.index("event: complete") + 1][len("data: "):])


def wait_for_port(process: subprocess.Popen, port: int, log: Path, timeout: float = 240.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"maest app exited with status {process.returncode}: {log.read_text()[-3000:]}")
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise AssertionError(f"maest app did not listen on port {port} within {timeout:.0f} s")


def app_folder(log: Path) -> Path:
    for line in log.read_text().splitlines():
        if line.startswith("temporary files in "):
            return Path(line[len("temporary files in "):].split(" (")[0])
    raise AssertionError(f"the app did not say where its files are: {log.read_text()[-2000:]}")


def folder_size(folder: Path) -> int:
    return sum(file.stat().st_size for file in folder.rglob("*") if file.is_file())


@pytest.fixture(scope="module")
def collection(tmp_path_factory, small_model_dir):
    """Three real tracks with secrets beside them, and an index that also lists 100 album folders and a track on
    another "mount" (case 1: more than 100 folders, whose common parent is far up)."""
    root = tmp_path_factory.mktemp("app_security")
    music = root / "music"
    for name, text in SECRETS.items():
        (music / name).parent.mkdir(parents=True, exist_ok=True)
        (music / name).write_text(text)
    for seed in range(3):
        write_audio(music / f"song{seed}.wav", synthetic_music(4.0, seed=seed))
    assert main(["embed", str(music), "--model", str(small_model_dir), "--out", str(root / "real.parquet"),
                 "--num-workers", "0", "-q"]) == 0
    real = read_output(root / "real.parquet")
    extra = [str(root / "library" / f"album{i:03d}" / "track.wav") for i in range(100)] + [str(root / "usb" / "t.wav")]
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((len(extra), real["embedding"].type.list_size)).astype(np.float32)
    rows = [TrackResult(path, 4.0, 1, {"embedding": vector}) for path, vector in zip(extra, vectors)]
    table = rows_to_table(rows, {"embedding": vectors.shape[1]}, False)
    combined = pa.concat_tables([real.select(table.column_names).replace_schema_metadata(None), table])
    write_output(root / "collection.parquet", combined, table_metadata(real))
    assert main(["index", str(root / "collection.parquet"), "--out", str(root / "index")]) == 0
    return root, music


@pytest.fixture(scope="module")
def served(collection):
    """`maest app` with a login, small bounds and its temporary folder under the test's own TMPDIR."""
    root, _ = collection
    tmpdir = root / "tmp"
    tmpdir.mkdir()
    # What a killed app leaves (its folder, its unlocked lock file), and a running app's folder (locked here).
    abandoned, running = tmpdir / "maest-app-killed", tmpdir / "maest-app-running"
    for folder in (abandoned, running):
        (folder / "results").mkdir(parents=True)
        (folder / "results" / "timeline.png").write_bytes(b"x" * 1000)
        os.utime(folder, (time.time() - 600, time.time() - 600))
    (tmpdir / "maest-app-killed.lock").write_text("pid 1 on a machine long gone\n")
    running_lock = OutputLock(running).acquire()
    port, log = free_port(), root / "app.log"
    environment = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False", HF_HUB_OFFLINE="1", TMPDIR=str(tmpdir),
                       MAEST_APP_AUTH=f"{USER}:{PASSWORD}")
    with open(log, "wb") as output:  # a file, not a pipe: nobody reads the server's output while it runs
        process = subprocess.Popen(
            [sys.executable, "-m", "maest", "app", "--index", str(root / "index"), "--port", str(port), "--top-k", "3",
             "--temp-limit-mb", str(TEMP_LIMIT_MB), "--max-upload-mb", str(MAX_UPLOAD_MB)],
            stdout=output, stderr=subprocess.STDOUT, env=environment,
        )
    try:
        wait_for_port(process, port, log)
        yield {"url": f"http://127.0.0.1:{port}", "process": process, "log": log, "tmpdir": tmpdir, "folder": app_folder(log),
               "abandoned": abandoned, "running": running}
    finally:
        running_lock.release()
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)


@SERVER
def test_every_request_needs_the_login(served, collection):
    _, music = collection
    stranger = Visitor(served["url"])
    for path in ("/config", "/gradio_api/info", "/gradio_api/file=" + str(music / "song0.wav")):
        assert stranger.request(path)[0] == 401, path
    assert stranger.upload("x.wav", b"RIFF")[0] == 401
    wrong = urllib.parse.urlencode({"username": USER, "password": "guess"}).encode()
    assert stranger.request("/login", wrong, {"Content-Type": "application/x-www-form-urlencoded"})[0] == 400


@SERVER
def test_no_file_of_the_disk_is_served(served, collection):
    root, music = collection
    visitor = Visitor(served["url"])
    visitor.login()
    refused = [
        "/etc/passwd", "/etc/shadow", "/root/.bashrc",  # case 1: the common parent of > 100 folders was `/`-like
        *(music / name for name in SECRETS),  # case 2: beside an indexed track, in a subfolder, in a hidden folder
        music / "song0.wav",  # an indexed track by its own path: only the app's copies of search results are served
        root / "index" / "manifest.json", root / "collection.parquet",
        served["folder"], served["folder"] / ".." / ".." / "music" / "secret.txt",  # the app's folder, and `..` out of it
    ]
    for path in refused:
        status, body = visitor.file(path)
        assert status in (403, 404), (path, status)
        assert not any(text.encode() in body for text in SECRETS.values())
        assert visitor.request("/gradio_api/file/" + urllib.parse.quote(str(path)))[0] in (403, 404), path
    # Nor does an analysis read a file of the server that was not uploaded (Gradio checks inputs against uploads).
    payload = json.dumps({"data": [{"path": str(music / "song0.wav"), "meta": {"_type": "gradio.FileData"}}]}).encode()
    status, body = visitor.request("/gradio_api/call/analyze", payload, {"Content-Type": "application/json"})
    if status == 200:
        status, body = visitor.request(f"/gradio_api/call/analyze/{json.loads(body)['event_id']}", timeout=120)
        assert "event: error" in body.decode() and "event: complete" not in body.decode()


@SERVER
def test_an_analysis_serves_its_results_and_copies_of_its_neighbours(served, collection):
    _, music = collection
    visitor = Visitor(served["url"])
    visitor.login()
    query = write_audio(served["tmpdir"].parent / "query.wav", synthetic_music(6.0, seed=9))
    status, body = visitor.upload("query.wav", query.read_bytes())
    assert status == 200
    uploaded = json.loads(body)[0]
    assert Path(uploaded).parent.parent == served["folder"]  # uploads go to the app's own folder
    styles, timeline, neighbours, downloads, *players = visitor.analyze(uploaded)
    assert len(styles["data"]) == 3 and [row[0] for row in neighbours["data"]] == [1, 2, 3]
    # The three real tracks are the nearest (the 101 other rows are random vectors, far away).
    assert {row[1] for row in neighbours["data"]} == {str(music / f"song{seed}.wav") for seed in range(3)}
    for served_file in [timeline, *downloads]:
        status, _ = visitor.request(served_file["url"][len(served["url"]):])
        assert status == 200 and Path(served_file["path"]).is_relative_to(served["folder"])
    for row, player in zip(neighbours["data"], players):
        copy = player["value"]
        assert Path(copy["path"]).is_relative_to(served["folder"])
        status, audio = visitor.request(copy["url"][len(served["url"]):])
        assert status == 200 and audio == Path(row[1]).read_bytes(), row  # the indexed track's exact bytes


@SERVER
def test_temporary_files_stay_under_their_bound(served):
    visitor = Visitor(served["url"])
    visitor.login()
    status, _ = visitor.upload("big.bin", os.urandom(int(1.5 * 2**20)))
    assert status == 413  # over --max-upload-mb
    for number in range(4):  # 3.6 MB of uploads, each within the limit: over the 2 MB bound together
        assert visitor.upload(f"part{number}.bin", os.urandom(int(0.9 * 2**20)))[0] == 200
    deadline = time.monotonic() + 30
    while folder_size(served["folder"]) > TEMP_LIMIT_MB * 2**20 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert folder_size(served["folder"]) <= TEMP_LIMIT_MB * 2**20
    assert served["folder"].stat().st_mode & 0o077 == 0  # private to the app's user


@SERVER
def test_a_killed_apps_folder_is_removed_by_the_next_app(served):
    assert not served["abandoned"].exists() and not (served["tmpdir"] / "maest-app-killed.lock").exists()
    assert (served["running"] / "results" / "timeline.png").exists()  # another running app's: kept


@SERVER
def test_stopping_the_app_removes_its_files(served):
    # Runs after the tests above (file order): it stops the server.
    process = served["process"]
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) in (0, 130)
    assert not served["folder"].exists() and not Path(str(served["folder"]) + ".lock").exists()
    running = served["running"]
    assert sorted(served["tmpdir"].glob("maest-app-*")) == [running, Path(str(running) + ".lock")]
    assert not (served["tmpdir"] / "gradio").exists()


# ------------------------------------------------------------------------------------ set-up errors: one line, 2
def one_line_error(err: str) -> str:
    assert "Traceback" not in err and err.count("\n") == 1 and err.startswith("error: "), err
    return err


@pytest.fixture
def private_temp(tmp_path, monkeypatch):
    """The app's temporary folder goes under the test's tmp_path: nothing may be left there after a failed start."""
    import tempfile

    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    yield folder
    assert not list(folder.glob("maest-app-*"))  # neither the folder nor its lock file


def test_a_public_host_without_a_login_is_refused(collection, capsys, private_temp, monkeypatch):
    monkeypatch.delenv("MAEST_APP_AUTH", raising=False)
    root, _ = collection
    assert main(["app", "--index", str(root / "index"), "--host", "0.0.0.0", "--port", str(free_port())]) == 2
    assert "--host 0.0.0.0 serves the app to other machines: give a login with --auth" in one_line_error(capsys.readouterr().err)
    assert main(["app", "--index", str(root / "index"), "--auth", "nopassword"]) == 2
    assert "must be USER:PASSWORD" in one_line_error(capsys.readouterr().err)


def test_the_space_needs_a_login_or_an_explicit_public_setting(collection, private_temp, monkeypatch):
    from maest.app import AppSetupError

    space = Path(__file__).parent.parent / "examples" / "hub_space" / "app.py"
    spec = importlib.util.spec_from_file_location("hub_space_app", space)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for name in ("MAEST_APP_AUTH", "MAEST_APP_PUBLIC"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MAEST_INDEX", str(collection[0] / "index"))
    with pytest.raises(AppSetupError, match="MAEST_APP_PUBLIC=1"):
        module.main()


def test_a_port_in_use_or_out_of_range_is_one_line(collection, capsys, private_temp):
    root, _ = collection
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["app", "--index", str(root / "index"), "--port", str(port)]) == 2
    assert f"cannot listen on 127.0.0.1 port {port}" in one_line_error(capsys.readouterr().err)
    assert main(["app", "--index", str(root / "index"), "--port", "99999"]) == 2
    assert "--port must be a port number from 1 to 65535, got 99999" in one_line_error(capsys.readouterr().err)


def test_a_damaged_index_is_one_line(collection, capsys, private_temp, tmp_path):
    root, _ = collection
    damaged = tmp_path / "index"
    shutil.copytree(root / "index", damaged)
    manifest = json.loads((damaged / "manifest.json").read_text())
    (damaged / manifest["rows_file"]).write_bytes(b"PAR1")
    assert main(["app", "--index", str(damaged), "--port", str(free_port())]) == 2
    assert f"{damaged}: the index is damaged ({manifest['rows_file']} does not match its checksum)" in one_line_error(capsys.readouterr().err)


def test_help_says_how_to_log_in():
    done = subprocess.run([sys.executable, "-m", "maest", "app", "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0
    text = " ".join(done.stdout.split())
    assert "--auth USER:PASSWORD" in text and "$MAEST_APP_AUTH" in text and "--no-auth" in text
    assert "other host needs --auth" in text


def test_weights_changed_in_place_under_the_index_model_path_are_refused(collection, small_model_dir, capsys, private_temp, tmp_path):
    # The index records the weights' digest: a model directory whose weights were replaced is another model.
    import torch
    from maest import MAESTForAudioClassification

    root, _ = collection
    model_dir = tmp_path / "model"
    shutil.copytree(small_model_dir, model_dir)
    torch.manual_seed(1)
    model = MAESTForAudioClassification.from_pretrained(model_dir)
    for parameter in model.parameters():
        torch.nn.init.normal_(parameter, std=0.02)
    model.save_pretrained(model_dir)
    index = tmp_path / "index"
    shutil.copytree(root / "index", index)
    manifest = json.loads((index / "manifest.json").read_text())
    manifest["settings"]["model"] = str(model_dir)  # as if the index had been built from this directory before
    (index / "manifest.json").write_text(json.dumps(manifest))
    assert main(["app", "--index", str(index), "--port", str(free_port())]) == 2
    err = one_line_error(capsys.readouterr().err)
    assert f"embeddings of the model now in {model_dir} were made with other settings than the index (weights: " in err


@pytest.mark.parametrize("suffix", [".wav", ".mp3", ".flac"])
def test_a_track_replaced_after_indexing_by_another_file_is_not_copied_for_the_player(tmp_path, suffix):
    # The player gets a copy of an indexed path's bytes as they are at the time of the search. Whoever can write in
    # the collection could swap a track for a link to a file the app's user can read (a key, a password file): only
    # what still decodes as audio is served.
    from types import SimpleNamespace

    from maest.app import copy_for_player

    secret = tmp_path / "id_rsa"
    secret.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\n" + "b3BlbnNzaC1rZXktdjEAAAAA\n" * 40 + "-----END OPENSSH PRIVATE KEY-----\n")
    served_folder = tmp_path / "served"
    served_folder.mkdir()
    song = write_audio(tmp_path / f"song{suffix}", synthetic_music(3.0, seed=1))
    copy = copy_for_player(SimpleNamespace(path=str(song), rank=1), served_folder, 10**9)
    assert copy is not None and Path(copy).read_bytes() == song.read_bytes()
    swapped = tmp_path / f"swapped{suffix}"
    swapped.symlink_to(secret)
    assert copy_for_player(SimpleNamespace(path=str(swapped), rank=2), served_folder, 10**9) is None
    overwritten = tmp_path / f"overwritten{suffix}"
    shutil.copyfile(secret, overwritten)
    assert copy_for_player(SimpleNamespace(path=str(overwritten), rank=3), served_folder, 10**9) is None
    assert [file.name for file in served_folder.iterdir()] == [Path(copy).name]  # nothing else left to serve
