"""The web app in a real browser: `maest app` serves it on the loopback interface, headless Chromium (Debian's
package, driven by Playwright) uploads a generated track, and the page must show what the command line computes for
the same file: the styles table, the timeline image, the neighbours with audio players, the downloads.

Every part runs in its own process (the commands, the browser session): the test process never loads gradio, FAISS
or Playwright beside the other tests' native runtimes."""

import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import synthetic_music, write_audio

MISSING = [name for name in ("gradio", "faiss", "playwright") if importlib.util.find_spec(name) is None]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [
    pytest.mark.skipif(bool(MISSING), reason=f"not installed: {', '.join(MISSING)} (pip install -e '.[test]')"),
    pytest.mark.skipif(CHROMIUM is None, reason="no Chromium (make browser, or apt-get install chromium)"),
    pytest.mark.slow,  # about 40 s: a browser, a server, three model runs
]
ENVIRONMENT = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False", HF_HUB_OFFLINE="1")


def maest(*arguments) -> str:
    done = subprocess.run([sys.executable, "-m", "maest", *map(str, arguments)], capture_output=True, text=True,
                          env=ENVIRONMENT, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_server(process: subprocess.Popen, port: int, log_path: Path, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"maest app exited with status {process.returncode}: {log_path.read_text()[-2000:]}")
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise AssertionError(f"maest app did not listen on port {port} within {timeout:.0f} s")


@pytest.fixture(scope="module")
def served_app(tmp_path_factory, small_model_dir):
    """`maest app` on 127.0.0.1 with an index of four generated tracks (the app takes its model from the index)."""
    root = tmp_path_factory.mktemp("app")
    folder = root / "collection"
    folder.mkdir()
    for seed in range(4):
        write_audio(folder / f"song{seed}.wav", synthetic_music(6.0, seed=seed))
    maest("embed", folder, "--model", small_model_dir, "--out", root / "songs.parquet", "--num-workers", "0")
    maest("index", root / "songs.parquet", "--out", root / "songs.index")
    port = free_port()
    log_path = root / "app.log"  # a file, not a pipe: nobody reads the server's output while it runs
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "maest", "app", "--index", str(root / "songs.index"), "--port", str(port),
             "--top-k", "3"],
            stdout=log, stderr=subprocess.STDOUT, env=ENVIRONMENT,
        )
    try:
        wait_for_server(process, port, log_path)
        yield f"http://127.0.0.1:{port}/", root / "songs.index"
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_upload_shows_styles_timeline_and_neighbours(served_app, small_model_dir, tmp_path):
    url, index_dir = served_app
    upload = write_audio(tmp_path / "upload.wav", synthetic_music(12.0, seed=9))
    session = [sys.executable, str(Path(__file__).with_name("browser_session.py")), url, str(upload), CHROMIUM]
    if os.environ.get("MAEST_APP_SCREENSHOT"):
        session.append(os.environ["MAEST_APP_SCREENSHOT"])
    done = subprocess.run(session, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    shown = json.loads(done.stdout)
    # The page shows what the command line computes for the same file.
    expected_styles = json.loads(maest("tag", upload, "--model", small_model_dir, "--format", "json", "--top-k", "3",
                                       "--num-workers", "0"))[0]["tags"]
    styles = shown["styles"].split()
    for style in expected_styles:
        position = styles.index(style["label"].split()[-1])
        assert float(styles[position + 1]) == pytest.approx(style["score"], abs=1e-3)
    expected_neighbours = json.loads(maest("similar", upload, "--index", index_dir, "--top-k", "3", "--format", "json"))
    listed = [line for line in shown["neighbours"].splitlines() if ".wav" in line]
    assert [os.path.basename(line) for line in listed] == [os.path.basename(row["path"]) for row in expected_neighbours]
    assert shown["players"] == 3
    assert f"style,1,{expected_styles[0]['label']}," in shown["csv"] and "neighbour,3," in shown["csv"]
    assert shown["timeline_width"] > 300
