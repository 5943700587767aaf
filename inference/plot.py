"""A timeline of one track's style activations per segment (`maest tag TRACK --plot OUT.png`)."""

from pathlib import Path

import numpy as np


def plot_timeline(
    segment_scores: np.ndarray, labels: list[str], segment_seconds: float, out, top_k: int = 5, title: str | None = None
) -> list[str]:
    """Draws the per-segment activations of the track's `top_k` styles (ranked by their mean over the track) against
    time and saves the figure (format from the file name: png, pdf, svg...).

    Args:
        segment_scores (`np.ndarray` of shape `(num_segments, num_labels)`): sigmoid activations per segment.
        labels: the label names, one per column.
        segment_seconds: audio per segment; segment `k` is drawn over `[k, k + 1) * segment_seconds`.

    Returns:
        The plotted labels, best first.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    segment_scores = np.asarray(segment_scores, dtype=np.float32)
    if segment_scores.ndim != 2 or segment_scores.shape[1] != len(labels):
        raise ValueError(f"segment_scores must have shape (num_segments, {len(labels)}), got {segment_scores.shape}")
    ranked = np.argsort(-segment_scores.mean(axis=0), kind="stable")[:top_k]
    num_segments = segment_scores.shape[0]
    in_minutes = num_segments * segment_seconds >= 120
    edges = np.arange(num_segments + 1) * segment_seconds / (60.0 if in_minutes else 1.0)
    figure, axes = plt.subplots(figsize=(max(6.0, min(16.0, 4.0 + 0.4 * num_segments)), 4.0), constrained_layout=True)
    for column in ranked:
        # A step per segment: each value holds for the whole segment it was computed on.
        values = np.append(segment_scores[:, column], segment_scores[-1, column])
        axes.step(edges, values, where="post", label=f"{labels[column]} ({segment_scores[:, column].mean():.2f})")
    axes.set_xlim(edges[0], edges[-1])
    axes.set_ylim(0.0, 1.0)
    axes.set_xlabel("time (min)" if in_minutes else "time (s)")
    axes.set_ylabel("activation (sigmoid)")
    axes.set_title(title or "style activations per segment")
    axes.grid(alpha=0.3)
    axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", title="mean over the track")
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=120)
    plt.close(figure)
    return [labels[column] for column in ranked]


__all__ = ["plot_timeline"]
