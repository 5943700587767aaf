"""The probe results as files: `results.json` (every configuration, with the run's settings), `results.md` (blocks x
token sets tables of ROC-AUC and mAP) and `heatmap.png`, the poster's figure (blocks 1..12 across, token sets down,
each cell annotated with its test ROC-AUC in percent)."""

import json
import math
from pathlib import Path

import numpy as np

from maest.utils.files import atomic_write, write_text_atomically

from .embeddings import POSTER_TOKEN_SETS


RESULT_FIELDS = (
    "block",
    "tokens",
    "roc_auc",
    "average_precision",
    "best_epoch",
    "validation_roc_auc",
    "validation_average_precision",
    "num_labels_skipped",
)


def _json_value(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN
    if isinstance(value, (np.floating, np.integer)):
        return _json_value(value.item())
    return value


def result_row(block: int, tokens: str, result: dict) -> dict:
    """The summary of one `train_probe` result that the reports keep (plus its per-epoch history)."""
    row = {"block": int(block), "tokens": tokens}
    row.update({name: _json_value(result[name]) for name in RESULT_FIELDS[2:]})
    row["history"] = [{key: _json_value(value) for key, value in epoch.items()} for epoch in result.get("history", [])]
    return row


def write_results_json(output_dir, rows: list, settings: dict) -> Path:
    path = Path(output_dir) / "results.json"
    best = max((row for row in rows if row["roc_auc"] is not None), key=lambda row: row["roc_auc"], default=None)
    document = {
        "settings": settings,
        "best": {k: v for k, v in best.items() if k != "history"} if best else None,
        "results": rows,
    }
    write_text_atomically(path, json.dumps(document, indent=1, default=str) + "\n")
    return path


def _grid(rows: list, metric: str):
    blocks = sorted({row["block"] for row in rows})
    token_sets = [name for name in POSTER_TOKEN_SETS if any(row["tokens"] == name for row in rows)]
    token_sets += sorted({row["tokens"] for row in rows} - set(token_sets))
    values = np.full((len(token_sets), len(blocks)), np.nan)
    for row in rows:
        if row[metric] is not None:
            values[token_sets.index(row["tokens"]), blocks.index(row["block"])] = row[metric]
    return blocks, token_sets, values


def markdown_tables(rows: list, title: str | None = None) -> str:
    """Two Markdown tables (test ROC-AUC and mAP, in percent), token sets as rows and blocks as columns; the best
    cell of each is bold."""
    lines = [f"# {title}", ""] if title else []
    for metric, name in (("roc_auc", "ROC-AUC"), ("average_precision", "mAP")):
        blocks, token_sets, values = _grid(rows, metric)
        best = np.nanmax(values) if np.isfinite(values).any() else None
        lines += [f"Test macro {name} (%), tokens (c: cls, d: dist, a: average of patch tokens) x block", ""]
        lines.append("| tokens | " + " | ".join(f"block {block}" for block in blocks) + " |")
        lines.append("|---|" + "---:|" * len(blocks))
        for name_index, token_set in enumerate(token_sets):
            cells = []
            for value in values[name_index]:
                text = "" if np.isnan(value) else f"{100 * value:.1f}"
                cells.append(f"**{text}**" if best is not None and value == best else text)
            lines.append(f"| {token_set} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def render_heatmap(rows: list, path, title: str | None = None) -> Path:
    """The poster's heatmap of test ROC-AUC: blocks (1-based) on the x axis, token sets on the y axis, each cell
    annotated with its value in percent. Written with matplotlib's Agg backend (no display needed)."""
    # imported here: matplotlib (about 2 s to import) serves only this heatmap, not the tables and files of the probe
    # reports, which `maest probe` and the probe module import
    import matplotlib
    from matplotlib.figure import Figure

    matplotlib.use("Agg", force=False)

    blocks, token_sets, values = _grid(rows, "roc_auc")
    percent = 100 * values
    figure = Figure(figsize=(1.0 + 0.75 * len(blocks), 1.4 + 0.45 * len(token_sets)), dpi=120)
    axes = figure.add_subplot()
    image = axes.imshow(np.ma.masked_invalid(percent), cmap="viridis", aspect="auto")
    axes.set_xticks(range(len(blocks)), [str(block) for block in blocks])
    axes.set_yticks(range(len(token_sets)), token_sets)
    axes.set_xlabel("block")
    axes.set_ylabel("tokens")
    finite = percent[np.isfinite(percent)]
    middle = (finite.min() + finite.max()) / 2 if finite.size else 0.0
    for (row, column), value in np.ndenumerate(percent):
        if np.isfinite(value):
            color = "black" if value > middle else "white"
            axes.text(column, row, f"{value:.1f}", ha="center", va="center", fontsize=8, color=color)
    figure.colorbar(image, ax=axes, label="test ROC-AUC (%)")
    axes.set_title(title or "Probe ROC-AUC per block and token set", fontsize=10)
    figure.tight_layout()
    return atomic_write(path, lambda temporary: figure.savefig(temporary, format="png"))


def write_probe_report(output_dir, rows: list, settings: dict, title: str | None = None) -> dict:
    """Writes `results.json`, `results.md` and `heatmap.png` into `output_dir`; returns their paths."""
    output_dir = Path(output_dir)
    paths = {"json": write_results_json(output_dir, rows, settings)}
    paths["markdown"] = output_dir / "results.md"
    write_text_atomically(paths["markdown"], markdown_tables(rows, title))
    paths["heatmap"] = render_heatmap(rows, output_dir / "heatmap.png", title)
    return paths


__all__ = [
    "markdown_tables",
    "render_heatmap",
    "result_row",
    "write_probe_report",
    "write_results_json",
]
