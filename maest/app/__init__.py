"""The MAEST web app (Gradio): upload or record a track and see its top styles, the timeline of style activations
per segment, its nearest neighbours in a similarity index (with audio players), and download the results.

`maest app --model M [--index INDEX_DIR]` serves it; `examples/hub_space/app.py` is the same app as a Hub Space.
Everything runs locally: a model directory works offline.
"""

import csv
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from maest.errors import MAESTError
from maest.inference import DEFAULT_MODEL, load_model
from maest.inference.plot import plot_timeline
from maest.similarity import SimilarityIndex, check_settings, embed_like_index


MAX_NEIGHBOUR_PLAYERS = 10


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
        self.index = SimilarityIndex.open(index) if index is not None else None
        settings = dict(self.index.settings) if self.index is not None else {}
        name = model or settings.get("model", DEFAULT_MODEL)
        if self.index is not None and model is not None:
            resolved = os.path.abspath(Path(model).expanduser()) if Path(model).expanduser().exists() else model
            check_settings(settings, dict(settings, model=resolved), f"tracks embedded with --model {model}")
        self.model = load_model(name, dtype=settings.get("dtype", "float32"),
                                inference_patchout_time_stride=settings.get("inference_patchout_time_stride"))
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

    def allowed_paths(self) -> list[str]:
        """The folders of the indexed tracks: the app may serve their audio to the players."""
        if self.index is None:
            return []
        folders = sorted({os.path.dirname(path) for path in self.index.paths()})
        return folders if len(folders) <= 100 else [os.path.commonpath(folders)]


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


def build_app(model: str | None = None, index=None, top_k: int = 5, analyzer: TrackAnalyzer | None = None):
    """The Gradio app (a `gradio.Blocks`; call `.launch()`)."""
    try:
        # imported here: an optional extra (`pip install "maest[app]"`)
        import gradio as gr
    except ImportError as error:
        raise MAESTError('the web app needs Gradio: pip install "maest[app]"') from error

    analyzer = analyzer or TrackAnalyzer(model, index, top_k)
    players = min(top_k, MAX_NEIGHBOUR_PLAYERS) if analyzer.index is not None else 0

    def run(audio_path, progress=gr.Progress(track_tqdm=True)):
        if not audio_path:
            raise gr.Error("upload or record a track first")
        progress(0.0, desc="analyzing")
        try:
            analysis = analyzer.analyze(audio_path, progress=True)
        except MAESTError as error:
            raise gr.Error(str(error)) from error
        workdir = tempfile.mkdtemp(prefix="maest-app-")
        timeline = os.path.join(workdir, "timeline.png")
        plot_timeline(analysis.segment_scores, analyzer.model.labels, analysis.segment_seconds, timeline,
                      top_k=analyzer.top_k, title=Path(audio_path).name)
        styles = [[label, round(score, 4)] for label, score in analysis.styles]
        neighbours = [[n.rank, n.path, round(n.score, 4)] + ([n.start_seconds] if analyzer.index.per_segment else [])
                      for n in analysis.neighbours]
        audio = [gr.Audio(value=n.path, label=f"{n.rank}. {Path(n.path).name} ({n.score:.3f})", visible=True)
                 for n in analysis.neighbours[:players]]
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
        button.click(run, inputs=audio_input, outputs=[styles, timeline, neighbours, downloads, *neighbour_audio])
    app.maest_allowed_paths = analyzer.allowed_paths()
    return app


def launch_app(model: str | None = None, index=None, host: str = "127.0.0.1", port: int = 7860, top_k: int = 5, **launch_kwargs):
    """Builds the app and serves it (blocks until stopped, unless `prevent_thread_lock=True`)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home: the app works offline
    app = build_app(model, index, top_k)
    app.queue()
    app.launch(server_name=host, server_port=port, allowed_paths=app.maest_allowed_paths, **launch_kwargs)
    return app


__all__ = ["TrackAnalysis", "TrackAnalyzer", "build_app", "launch_app", "write_downloads"]
