"""The web app in a real browser: headless Chromium (Debian's package, driven by Playwright) opens the app served
on the loopback interface, uploads a generated track, and finds the styles table, the timeline image, the
neighbours list with audio players, and the downloads."""

import os
import shutil
import socket
import subprocess
import sys
import time

import pytest

from conftest import synth_music, write_audio

pytest.importorskip("gradio")
pytest.importorskip("faiss")
sync_api = pytest.importorskip("playwright.sync_api")

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [
    pytest.mark.skipif(CHROMIUM is None, reason="no Chromium (make browser, or apt-get install chromium)"),
    pytest.mark.slow,  # about 40 s: a browser, a server, three model runs
]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_server(process: subprocess.Popen, port: int, log_path, timeout: float = 180.0) -> None:
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
    """`maest app` (the command itself, in its own process) on 127.0.0.1 with an index of four generated tracks; the
    app takes its model from the index."""
    from maest.inference import embed
    from maest.similarity import build_index

    folder = tmp_path_factory.mktemp("app_collection")
    for seed in range(4):
        write_audio(folder / f"song{seed}.wav", synth_music(6.0, seed=seed))
    embed([str(folder)], out=folder.parent / "songs.parquet", model=str(small_model_dir), num_workers=0)
    build_index(folder.parent / "songs.parquet", folder.parent / "songs.index")
    port = free_port()
    command = [sys.executable, "-m", "maest", "app", "--index", str(folder.parent / "songs.index"), "--port", str(port),
               "--top-k", "3"]
    environment = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False", HF_HUB_OFFLINE="1")
    log_path = folder.parent / "app.log"  # a file, not a pipe: nobody reads the server's output while it runs
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=environment)
    try:
        wait_for_server(process, port, log_path)
        yield f"http://127.0.0.1:{port}/", folder.parent / "songs.index"
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_upload_shows_styles_timeline_and_neighbours(served_app, small_model_dir, tmp_path):
    from maest.inference import tag
    from maest.similarity import SimilarityIndex

    url, index_dir = served_app
    upload = write_audio(tmp_path / "upload.wav", synth_music(12.0, seed=9))
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1200, "height": 1600})
        page.goto(url, wait_until="domcontentloaded")
        page.locator("#track input[type=file]").set_input_files(str(upload))
        page.locator("#analyze").click()
        page.locator("#timeline img").wait_for(state="visible", timeout=120_000)
        csv_link = page.locator("#downloads a[download='results.csv']")
        csv_link.wait_for(timeout=30_000)
        csv_text = page.request.get(csv_link.get_attribute("href")).text()
        styles = page.locator("#styles").inner_text().split()
        neighbours = page.locator("#neighbours").inner_text()
        players = page.locator("[id^=neighbour-]:visible").count()
        timeline_width = page.locator("#timeline img").evaluate("image => image.naturalWidth")
        if os.environ.get("MAEST_APP_SCREENSHOT"):
            page.screenshot(path=os.environ["MAEST_APP_SCREENSHOT"], full_page=True)
        browser.close()
    # The page shows what the Python API computes for the same file.
    expected_styles = tag([str(upload)], model=str(small_model_dir), num_workers=0).top(3)[0]
    for label, score in expected_styles:
        position = styles.index(label.split()[-1])
        assert float(styles[position + 1]) == pytest.approx(score, abs=1e-3)
    expected_neighbours = SimilarityIndex.open(index_dir).search_audio([str(upload)], k=3)[0]
    shown = [line for line in neighbours.splitlines() if ".wav" in line]
    assert [os.path.basename(line) for line in shown] == [os.path.basename(n.path) for n in expected_neighbours]
    assert players == 3
    assert f"style,1,{expected_styles[0][0]}," in csv_text and "neighbour,3," in csv_text
    assert timeline_width > 300
