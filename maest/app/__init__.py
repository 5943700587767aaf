"""The MAEST web app (Gradio): upload or record a track and see its top styles, the timeline of style activations
per segment, its nearest neighbours in a similarity index (with audio players), and download the results.

`maest app --model M [--index INDEX_DIR]` serves it; `examples/hub_space/app.py` is the same app as a Hub Space.
Everything runs locally: a model directory works offline.

What it serves from the disk: only its own folder of temporary files (`AppFiles`: Gradio's uploads, each analysis's
results, and copies of the neighbours' audio for the players, copied from the index's search results only). No folder
of the collection, nor any indexed file by its own path, is served: Gradio's `allowed_paths` stays empty. The folder is
kept under a size bound (oldest files removed first), files expire after an hour, and it is removed when the app
stops (or, after a kill, by the next app started). A login (`auth`, Gradio's) is required for any host other than
the loopback interface, unless waived explicitly (`allow_unauthenticated`).
"""

import csv
import errno
import ipaddress
import json
import logging
import os
import shutil
import socket
import stat
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from maest.feature_extraction.audio import AudioDecodingError, decode_frames
from maest.inference import DEFAULT_MODEL, load_model
from maest.inference.model import DEFAULT_BACKEND
from maest.inference.plot import plot_timeline
from maest.inference.store import OutputLock
from maest.similarity import SimilarityIndex, check_settings, embed_like_index
from maest.utils.errors import MAESTError


logger = logging.getLogger(__name__)

MAX_NEIGHBOUR_PLAYERS = 10
DEFAULT_MAX_UPLOAD_MB = 200
DEFAULT_TEMP_LIMIT_MB = 1024
TEMP_MAX_AGE_SECONDS = 3600  # an analysis's results and players stay this long (or until the size bound needs room)
PRUNE_EVERY_SECONDS = 2.0  # how often uploads (which no analysis may follow) are checked against the bound
EMPTY_FOLDER_GRACE_SECONDS = 60.0  # an empty folder younger than this may be about to receive files: kept
AUTH_ENVIRONMENT = "MAEST_APP_AUTH"
APP_FOLDER_PREFIX = "maest-app-"


class AppSetupError(MAESTError):
    """The app cannot start as asked: a port in use, a bad host, a missing login for a public host."""


@dataclass
class TrackAnalysis:
    """What the app shows for one track."""

    path: str
    duration: float
    styles: list[tuple[str, float]]
    segment_scores: np.ndarray
    segment_seconds: float
    neighbours: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "path": self.path,
            "duration": self.duration,
            "styles": [{"label": label, "score": score} for label, score in self.styles],
            "segment_seconds": self.segment_seconds,
            "segment_scores": self.segment_scores.tolist(),
            "neighbours": [neighbour.to_dict() for neighbour in self.neighbours],
        }


class TrackAnalyzer:
    """A loaded model (and optional index): analyzes uploaded tracks.

    Args:
        model: a MAEST directory or Hub id; by default the index's model.
        index: a similarity index directory (`maest index`), or None for no neighbours.
    """

    def __init__(self, model: str | None = None, index=None, top_k: int = 5):
        if top_k < 1:
            raise AppSetupError(f"--top-k must be at least 1, got {top_k}")
        self.index = SimilarityIndex.open(index) if index is not None else None
        settings = dict(self.index.settings) if self.index is not None else {}
        name = model or settings.get("model", DEFAULT_MODEL)
        if self.index is not None and model is not None:
            resolved = os.path.abspath(Path(model).expanduser()) if Path(model).expanduser().exists() else model
            check_settings(settings, dict(settings, model=resolved), f"tracks embedded with --model {model}")
        self.model = load_model(name, dtype=settings.get("dtype", "float32"),
                                inference_patchout_time_stride=settings.get("inference_patchout_time_stride"),
                                backend=settings.get("backend", DEFAULT_BACKEND))
        if settings.get("weights"):  # the same path may hold other weights now: compare by content, before serving
            now = dict(settings, weights=self.model.weights_digest)
            check_settings(settings, now, f"embeddings of the model now in {name}")
        self.settings = dict(settings, model=settings.get("model", name))
        self.top_k = top_k

    def analyze(self, path: str, progress: bool = False) -> TrackAnalysis:
        """Styles of the whole track, per-segment activations, and neighbours from the index."""
        results = embed_like_index([path], self.settings, model=self.model, scores=True, progress=progress)
        if results.failed:
            raise MAESTError(f"{Path(path).name}: {results.failed[0]['reason']}")
        neighbours = []
        if self.index is not None:
            vectors = results.segment_embeddings[0] if self.index.per_segment else results.embeddings[:1]
            neighbours = self.index.search(vectors, self.top_k, query=Path(path).name, settings=results.metadata["settings"])
        return TrackAnalysis(
            path=path,
            duration=float(results.durations[0]),
            styles=results.top(self.top_k)[0],
            segment_scores=results.segment_scores[0],
            segment_seconds=float(results.metadata["segment_seconds"]),
            neighbours=neighbours,
        )


class AppFiles:
    """The app's one folder on the disk (private: mode 0700), the only one it serves: Gradio's upload folder (set
    through `GRADIO_TEMP_DIR` before the app is built), and `results/` with one folder per analysis (its figure,
    downloads and the copies of the neighbours' audio).

    Args:
        limit_bytes: the folder's size bound: `prune` removes the oldest files beyond it.
        max_age_seconds: files older than this are removed by `prune`.
        parent: where to make the folder (default: the system's temporary folder).
    """

    def __init__(self, limit_bytes: int, max_age_seconds: float = TEMP_MAX_AGE_SECONDS, parent=None):
        self.root = Path(tempfile.mkdtemp(prefix=APP_FOLDER_PREFIX, dir=parent))
        # Held while the app runs (the kernel drops it when the process dies, killed too): the folder is in use.
        self._owner = OutputLock(self.root).acquire()
        self.results = self.root / "results"
        self.results.mkdir()
        self.limit_bytes = int(limit_bytes)
        self.max_age_seconds = max_age_seconds
        self._lock = threading.Lock()
        remove_abandoned_folders(self.root.parent)

    def use_for_gradio(self) -> None:
        """Points Gradio's upload folder (and its examples cache, else `.gradio/` under the working directory) here:
        read when a Gradio app is built and launched, so call this first."""
        os.environ["GRADIO_TEMP_DIR"] = str(self.root)
        os.environ["GRADIO_EXAMPLES_CACHE"] = str(self.root / "examples")

    def new_folder(self) -> Path:
        """A folder for one analysis's files (a random name: nobody can guess another analysis's files)."""
        return Path(tempfile.mkdtemp(dir=self.results))

    def size(self) -> int:
        return sum(size for _, size, _ in self._files())

    def _files(self) -> list[tuple[float, int, Path]]:
        found = []
        for folder, _, names in os.walk(self.root):
            for name in names:
                path = Path(folder, name)
                try:
                    status = path.lstat()
                except OSError:
                    continue  # removed meanwhile
                found.append((status.st_mtime, status.st_size, path))
        return found

    def prune(self, keep: Path | None = None) -> int:
        """Removes expired files, then the oldest files until the folder is within its bound (never those under
        `keep`: the analysis being made), and then empty folders. Returns the bytes removed."""
        with self._lock:
            files = sorted(self._files(), key=lambda item: item[0])
            total = sum(size for _, size, _ in files)
            now, removed = time.time(), 0
            for modified, size, path in files:
                if keep is not None and keep in path.parents:
                    continue
                if total - removed > self.limit_bytes or now - modified > self.max_age_seconds:
                    try:
                        path.unlink()
                        removed += size
                    except OSError:
                        pass
            for folder, _, _ in sorted(os.walk(self.root), key=lambda item: -len(item[0])):
                folder = Path(folder)
                if folder in (self.root, self.results) or folder == keep:
                    continue
                try:
                    if now - folder.stat().st_mtime > EMPTY_FOLDER_GRACE_SECONDS:  # not one just made for new files
                        folder.rmdir()  # only empty ones
                except OSError:
                    pass
            return removed

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
        self._owner.release()


def remove_abandoned_folders(parent: Path) -> None:
    """Removes the temporary folders that killed apps (SIGKILL, a crash) left in `parent`: this user's, older than a
    minute (not one an app is making right now), and whose lock no process holds."""
    for folder in Path(parent).glob(APP_FOLDER_PREFIX + "*"):
        try:
            status = folder.lstat()
        except OSError:
            continue
        if not stat.S_ISDIR(status.st_mode) or status.st_uid != os.getuid() or time.time() - status.st_mtime < 60:
            continue
        lock = OutputLock(folder)
        try:
            lock.acquire()
        except MAESTError:  # a running app's folder (or a lock file this user cannot open)
            continue
        try:
            shutil.rmtree(folder, ignore_errors=True)
        finally:
            lock.release()


def write_downloads(analysis: TrackAnalysis, directory) -> list[str]:
    """`results.json` (everything) and `results.csv` (styles, then neighbours) for the download button."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    json_file, csv_file = directory / "results.json", directory / "results.csv"
    json_file.write_text(json.dumps(analysis.to_dict(), indent=1))
    with open(csv_file, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["kind", "rank", "name", "score"])
        for rank, (label, score) in enumerate(analysis.styles, 1):
            writer.writerow(["style", rank, label, f"{score:.6f}"])
        for neighbour in analysis.neighbours:
            writer.writerow(["neighbour", neighbour.rank, neighbour.path, f"{neighbour.score:.6f}"])
    return [str(json_file), str(csv_file)]


def copy_for_player(neighbour, folder: Path, limit_bytes: int) -> str | None:
    """A copy of an indexed track (a search result: nothing else is ever copied) in the analysis's folder, for its
    audio player; None when the file is gone, larger than the app's whole temporary-files bound, or no longer audio.

    The copy is what gets served, so it is checked, not the path: a track replaced since it was indexed (by a link to
    a file the app's user can read, say) is served only if the copy still decodes as audio."""
    source = Path(neighbour.path)
    copy = folder / f"neighbour-{neighbour.rank}{source.suffix.lower()}"
    try:
        if source.stat().st_size > limit_bytes:
            return None
        shutil.copyfile(source, copy)
        next(decode_frames(copy, sampling_rate=None))
    except (OSError, AudioDecodingError, StopIteration):
        copy.unlink(missing_ok=True)
        return None
    return str(copy)


def build_app(model: str | None = None, index=None, top_k: int = 5, analyzer: TrackAnalyzer | None = None,
              files: AppFiles | None = None):
    """The Gradio app (a `gradio.Blocks`; `launch_app` serves it). `files`: the app's temporary folder (by default
    a new one bounded to `DEFAULT_TEMP_LIMIT_MB`; `app.maest_files`), made Gradio's upload folder."""
    analyzer = analyzer or TrackAnalyzer(model, index, top_k)  # first: a bad index fails before anything else
    files = files or AppFiles(DEFAULT_TEMP_LIMIT_MB * 2**20)
    files.use_for_gradio()  # before gradio is imported: some of its modules read the folder at import
    try:
        # imported here: an optional extra (`pip install "maest[app]"`)
        import gradio as gr
    except ImportError as error:
        raise MAESTError('the web app needs Gradio: pip install "maest[app]"') from error

    players = min(top_k, MAX_NEIGHBOUR_PLAYERS) if analyzer.index is not None else 0

    def run(audio_path, progress=gr.Progress(track_tqdm=True)):
        if not audio_path:
            raise gr.Error("upload or record a track first")
        progress(0.0, desc="analyzing")
        try:
            analysis = analyzer.analyze(audio_path, progress=True)
        except MAESTError as error:
            raise gr.Error(str(error)) from error
        workdir = files.new_folder()
        files.prune(keep=workdir)
        timeline = str(workdir / "timeline.png")
        plot_timeline(analysis.segment_scores, analyzer.model.labels, analysis.segment_seconds, timeline,
                      top_k=analyzer.top_k, title=Path(audio_path).name)
        styles = [[label, round(score, 4)] for label, score in analysis.styles]
        per_segment = analyzer.index is not None and analyzer.index.per_segment
        neighbours = [[n.rank, n.path, round(n.score, 4)] + ([n.start_seconds] if per_segment else [])
                      for n in analysis.neighbours]
        audio = []
        for neighbour in analysis.neighbours[:players]:
            copy = copy_for_player(neighbour, workdir, files.limit_bytes)
            name = f"{neighbour.rank}. {Path(neighbour.path).name} ({neighbour.score:.3f})"
            audio.append(gr.Audio(value=copy, label=name if copy else f"{name}: file unavailable", visible=True))
        audio += [gr.Audio(value=None, visible=False)] * (players - len(audio))
        return [styles, timeline, neighbours, write_downloads(analysis, workdir), *audio]

    with gr.Blocks(title="MAEST: music styles and similar tracks") as app:
        gr.Markdown("## MAEST: music styles and similar tracks\nUpload or record a track.")
        with gr.Row():
            audio_input = gr.Audio(sources=["upload", "microphone"], type="filepath", label="track", elem_id="track")
            button = gr.Button("Analyze", variant="primary", elem_id="analyze")
        styles = gr.Dataframe(headers=["style", "score"], label="top styles of the whole track", elem_id="styles")
        timeline = gr.Image(type="filepath", label="style activations per segment", elem_id="timeline")
        headers = ["rank", "path", "similarity"] + (["start (s)"] if analyzer.index is not None and analyzer.index.per_segment else [])
        neighbours = gr.Dataframe(headers=headers, label="nearest neighbours in the index", elem_id="neighbours",
                                  visible=analyzer.index is not None)
        neighbour_audio = [gr.Audio(visible=False, interactive=False, elem_id=f"neighbour-{rank}") for rank in range(players)]
        downloads = gr.File(label="results (JSON, CSV)", file_count="multiple", elem_id="downloads")
        button.click(run, inputs=audio_input, outputs=[styles, timeline, neighbours, downloads, *neighbour_audio],
                     api_name="analyze")
    app.maest_files = files
    return app


def parse_auth(text: str | None) -> tuple[str, str] | None:
    """`USER:PASSWORD` as Gradio's `auth` pair (the password may hold colons); None for None or ''."""
    if not text:
        return None
    user, colon, password = text.partition(":")
    if not colon or not user.strip() or not password:
        raise AppSetupError("--auth (or $MAEST_APP_AUTH) must be USER:PASSWORD, both non-empty")
    return user.strip(), password


def is_loopback(host: str) -> bool:
    """True when only this machine can reach `host` (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_port(host: str, port: int) -> None:
    """Refuses a port out of range or already in use on `host`, before minutes of model loading."""
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise AppSetupError(f"--port must be a port number from 1 to 65535, got {port!r}")
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as error:
        raise AppSetupError(f"--host {host}: not an address of this machine ({error})") from None
    family, kind, protocol, _, address = addresses[0]
    with socket.socket(family, kind, protocol) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server does: a closed server's port is free
        try:
            probe.bind(address)
        except OSError as error:
            raise AppSetupError(
                f"cannot listen on {host} port {port} ({error.strerror or error}): "
                f"{'another program uses it; choose another --port' if error.errno == errno.EADDRINUSE else 'choose another --host or --port'}"
            ) from None


def launch_app(
    model: str | None = None,
    index=None,
    host: str = "127.0.0.1",
    port: int = 7860,
    top_k: int = 5,
    auth: tuple[str, str] | None = None,
    allow_unauthenticated: bool = False,
    max_upload_mb: int = DEFAULT_MAX_UPLOAD_MB,
    temp_limit_mb: int = DEFAULT_TEMP_LIMIT_MB,
    **launch_kwargs,
):
    """Builds the app and serves it (blocks until stopped, unless `prevent_thread_lock=True`: then call
    `app.close()` and `app.maest_files.remove()` when done).

    Args:
        auth: `(user, password)` for Gradio's login; needed for a `host` other than the loopback interface unless
            `allow_unauthenticated`.
        max_upload_mb: the largest upload accepted.
        temp_limit_mb: the bound of the app's temporary folder (uploads, results, players' copies).
    """
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home: the app works offline
    if auth is None and not allow_unauthenticated and not is_loopback(host):
        raise AppSetupError(
            f"--host {host} serves the app to other machines: give a login with --auth USER:PASSWORD (or "
            f"${AUTH_ENVIRONMENT}), or pass --no-auth (a Space: MAEST_APP_PUBLIC=1) to serve it to anyone who can "
            f"reach the port"
        )
    for name, value in (("--max-upload-mb", max_upload_mb), ("--temp-limit-mb", temp_limit_mb)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise AppSetupError(f"{name} must be a positive number of megabytes, got {value!r}")
    check_port(host, port)
    files = AppFiles(temp_limit_mb * 2**20)
    stop = threading.Event()
    try:
        app = build_app(model, index, top_k, files=files)
        app.queue()

        def prune_regularly():  # uploads arrive without any analysis to prune before them
            while not stop.wait(PRUNE_EVERY_SECONDS):
                files.prune()

        threading.Thread(target=prune_regularly, name="maest-app-prune", daemon=True).start()
        print(f"temporary files in {files.root} (at most {temp_limit_mb} MB; removed when the app stops)", flush=True)
        try:
            app.launch(server_name=host, server_port=port, auth=auth, max_file_size=f"{min(max_upload_mb, temp_limit_mb)}mb",
                       **launch_kwargs)
        except OSError as error:  # the port was taken between the check and the launch
            raise AppSetupError(f"cannot listen on {host} port {port}: {error}") from None
    except BaseException:
        stop.set()
        files.remove()
        raise
    if not launch_kwargs.get("prevent_thread_lock"):
        stop.set()
        files.remove()
    return app


__all__ = [
    "AppFiles",
    "AppSetupError",
    "TrackAnalysis",
    "TrackAnalyzer",
    "build_app",
    "check_port",
    "copy_for_player",
    "is_loopback",
    "launch_app",
    "parse_auth",
    "remove_abandoned_folders",
    "write_downloads",
]
