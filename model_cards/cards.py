"""Model cards (the Hub's `README.md`) for MAEST directories: the released checkpoints, and models fine-tuned or
pre-trained with this package, filled from the config, the training run and `maest probe` results.

The metadata is built with `huggingface_hub.ModelCardData` and `EvalResult`, so that the Hub (and
`ModelCard.load`) reads the `model-index` back; the text comes from the Jinja2 templates in `templates/`.
"""

import json
import math
import re
from collections.abc import Mapping
from pathlib import Path

import jinja2
from huggingface_hub import EvalResult, ModelCard, ModelCardData
from safetensors import safe_open

from maest.utils.errors import MAESTError
from ..modeling.configuration_maest import MAEST_PRESETS, MAESTConfig
from ..modeling.published import PublishedCheckpoint, find_published

from .published import (
    CITATION_BIBTEX,
    ORIGINAL_CODE_URL,
    ORIGINAL_LICENSE,
    ORIGINAL_LICENSE_URL,
    PAPER_DOWNSTREAM_RESULTS,
    PAPER_PROBE_DESCRIPTION,
    PAPER_TITLE,
    PAPER_URL,
)


class ModelCardError(MAESTError, ValueError):
    """Card inputs that cannot be used: malformed results, a config of another shape than the named checkpoint."""


TEMPLATES_DIRECTORY = Path(__file__).parent / "templates"
CARD_NAME = "README.md"
DEFAULT_LICENSE = ORIGINAL_LICENSE
SAMPLING_RATE = 16000
HOP_SIZE = 256

# Metric keys accepted in results dicts -> (model-index metric type, name shown on the card). Values are fractions in
# [0, 1], as `maest probe`, `evaluate` and scikit-learn report them.
METRICS = {
    "roc_auc": ("roc_auc", "ROC-AUC (macro)"),
    "average_precision": ("average_precision", "mAP (macro average precision)"),
    "accuracy": ("accuracy", "Accuracy"),
    "f1": ("f1", "F1 (macro)"),
}
_METRIC_ALIASES = {
    "roc-auc": "roc_auc",
    "rocauc": "roc_auc",
    "auc": "roc_auc",
    "map": "average_precision",
    "mean_average_precision": "average_precision",
    "pr_auc": "average_precision",
    "macro_f1": "f1",
}
# Keys of a results dict that describe the evaluation rather than measure it.
_DESCRIPTORS = ("task", "dataset", "dataset_name", "dataset_config", "split")
_IGNORED_KEYS = ("loss", "runtime", "samples_per_second", "steps_per_second", "epoch")


def _metric_key(key: str) -> str | None:
    """`eval_roc_auc`, `test_mAP`, `roc_auc` -> `roc_auc`; None for keys that are not metrics."""
    name = key.lower()
    # Only test-set and Trainer-eval keys: `validation_roc_auc` (model selection) is not the reported score.
    for prefix in ("eval_", "test_"):
        if name.startswith(prefix):
            name = name[len(prefix) :]
    name = _METRIC_ALIASES.get(name, name)
    return name if name in METRICS else None


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", str(text).lower()).strip("-") or "unnamed"


def read_results(results) -> list[dict]:
    """Results as a list of dicts: accepts one dict, a list of dicts, a `{task: {metric: value}}` dict or a JSON file
    holding any of these."""
    if results is None:
        return []
    if isinstance(results, (str, Path)):
        path = Path(results)
        try:
            results = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as error:
            raise FileNotFoundError(f"results file {path} does not exist") from error
        except json.JSONDecodeError as error:
            raise ModelCardError(f"results file {path} is not valid JSON: {error}") from error
    if isinstance(results, Mapping) and "best" in results and "results" in results:
        return [_probe_report_row(results)]
    if isinstance(results, Mapping):
        has_metric = any(_metric_key(str(key)) for key in results)
        if not has_metric and results and all(isinstance(value, Mapping) for value in results.values()):
            # {"genre": {"roc_auc": ...}, "mood": {...}}
            return [{"task": task, **dict(values)} for task, values in results.items()]
        return [dict(results)]
    if isinstance(results, (list, tuple)) and all(isinstance(item, Mapping) for item in results):
        return [dict(item) for item in results]
    raise ModelCardError(f"results must be a dict, a list of dicts or a JSON file path, got {type(results).__name__}")


def _probe_report_row(report: Mapping) -> dict:
    """The reported result of a `maest probe` report (`results.json`: `settings`, `best`, `results`): its best
    configuration by validation-selected test ROC-AUC, described by the settings."""
    best = report.get("best")
    if not best:
        raise ModelCardError("the probe report has no finished result ('best' is empty)")
    settings = report.get("settings") or {}
    data = settings.get("data")
    row = {
        "task": settings.get("label_column") or "probe",  # what was predicted, e.g. "genre"
        "split": "test",
        "roc_auc": best.get("roc_auc"),
        "average_precision": best.get("average_precision"),
        "block": best.get("block"),
        "tokens": best.get("tokens"),
        "probe": settings.get("probe"),
    }
    if data and data != "in-memory splits":
        row["dataset_name"] = Path(str(data)).name
        row["dataset"] = _slug(Path(str(data)).name)
    return {key: value for key, value in row.items() if value is not None}


def _normalize_results(results, source: str) -> list[dict]:
    """Validated result rows: `{"task", "dataset", "dataset_name", "dataset_config", "split", "metrics", "details"}`
    where `metrics` maps the `METRICS` keys to fractions."""
    rows = []
    for index, result in enumerate(read_results(results)):
        metrics, details = {}, {}
        for key, value in result.items():
            if key in _DESCRIPTORS:
                continue
            metric = _metric_key(str(key))
            if metric is None:
                # Scalars describe the result; histories, per-split counts and the like stay in their files.
                scalar = isinstance(value, (str, int, float, bool))
                if scalar and not any(str(key).lower().endswith(ignored) for ignored in _IGNORED_KEYS):
                    details[str(key)] = value
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ModelCardError(f"{source}[{index}]: {key} must be a finite number, got {value!r}")
            if not 0.0 <= value <= 1.0:
                raise ModelCardError(
                    f"{source}[{index}]: {key}={value} is outside [0, 1]; give metrics as fractions (0.882, not 88.2)"
                )
            metrics[metric] = float(value)
        if not metrics:
            raise ModelCardError(
                f"{source}[{index}] has no metric; expected some of {sorted(METRICS)} (got keys {sorted(result)})"
            )
        task = result.get("task") or result.get("dataset_name") or result.get("dataset")
        if not task:
            raise ModelCardError(f"{source}[{index}] needs a 'task' (or 'dataset') naming what was evaluated")
        rows.append(
            {
                "task": str(task),
                "dataset": str(result.get("dataset") or _slug(task)),
                "dataset_name": str(result.get("dataset_name") or task),
                "dataset_config": result.get("dataset_config"),
                "split": result.get("split"),
                "metrics": metrics,
                "details": ", ".join(f"{key}={_format_value(value)}" for key, value in details.items()),
            }
        )
    return rows


def results_table(rows: list[dict]) -> str:
    """A Markdown table of result rows, with a column for each metric present."""
    metrics = [key for key in METRICS if any(key in row["metrics"] for row in rows)]
    has_details = any(row["details"] for row in rows)
    header = ["Task", "Dataset", "Split"] + [METRICS[key][1] for key in metrics] + (["Details"] if has_details else [])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row["task"], row["dataset_name"], row["split"] or ""]
        cells += [f"{row['metrics'][key]:.4f}" if key in row["metrics"] else "" for key in metrics]
        cells += [row["details"]] if has_details else []
        lines.append("| " + " | ".join(_table_cell(cell) for cell in cells) + " |")
    return "\n".join(lines)


def _eval_results(rows: list[dict], task_name: str, **source) -> list[EvalResult]:
    return [
        EvalResult(
            task_type="audio-classification",
            task_name=task_name,
            dataset_type=row["dataset"],
            dataset_name=row["dataset_name"],
            dataset_config=row["dataset_config"],
            dataset_split=row["split"],
            metric_type=METRICS[metric][0],
            metric_name=METRICS[metric][1],
            metric_value=round(value, 4),
            **source,
        )
        for row in rows
        for metric, value in row["metrics"].items()
    ]


def _paper_eval_results() -> list[EvalResult]:
    rows = [
        {
            "dataset": result.dataset_type,
            "dataset_name": result.dataset_name,
            "dataset_config": result.dataset_config,
            "split": "test",
            "metrics": {"roc_auc": result.roc_auc, "average_precision": result.average_precision},
        }
        for result in PAPER_DOWNSTREAM_RESULTS
    ]
    return _eval_results(
        rows, "Music auto-tagging (probe on frozen MAEST embeddings)", source_name=PAPER_TITLE, source_url=PAPER_URL
    )


def _format_value(value) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(_format_value(item) for item in value)
    return str(value)


def _table_cell(text: str) -> str:
    """Text that stays inside one Markdown table cell."""
    return str(text).replace("|", "\\|").replace("\r\n", "<br>").replace("\n", "<br>")


def _flatten(summary: Mapping, prefix: str = "") -> list[tuple[str, str]]:
    """Nested training-summary dicts -> `("recipe.learning_rate", "2e-05")` pairs (table-cell safe), in order."""
    items = []
    for key, value in summary.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            items.extend(_flatten(value, prefix=f"{name}."))
        elif value is not None:
            items.append((_table_cell(name), _table_cell(_format_value(value))))
    return items


def count_parameters(directory) -> int | None:
    """Parameters in a directory's safetensors weights (read from the file headers; nothing is loaded), or None."""
    directory = Path(directory)
    files = sorted(directory.glob("model*.safetensors"))
    if not files:
        return None
    total = 0
    for file in files:
        with safe_open(str(file), framework="pt") as weights:
            for key in weights.keys():
                total += math.prod(weights.get_slice(key).get_shape())
    return total


def _format_count(count: int | None) -> str | None:
    if count is None:
        return None
    return f"{count / 1e6:.1f}M" if count >= 1e6 else f"{count / 1e3:.1f}k"


def _load_config(save_directory: Path, config):
    if config is None:
        if not (save_directory / "config.json").is_file():
            raise FileNotFoundError(
                f"{save_directory} has no config.json; save the model first or pass `config=`"
            )
        return MAESTConfig.from_pretrained(save_directory)
    if isinstance(config, Mapping):
        return MAESTConfig(**config)
    if getattr(config, "model_type", None) != MAESTConfig.model_type:
        raise ModelCardError(f"config must be a MAESTConfig (model_type 'maest'), got {type(config).__name__}")
    return config


def _model_facts(config, save_directory: Path) -> dict:
    labels = [config.id2label[index] for index in sorted(config.id2label)]
    named = not all(re.fullmatch(r"LABEL_\d+", str(label)) for label in labels)
    embedding_block = config.embedding_block
    return {
        "max_length": config.max_length,
        # Essentia framing: n samples give 1 + ceil(n / 256) frames.
        "seconds": f"{(config.max_length - 1) * HOP_SIZE / SAMPLING_RATE:.2f}",
        "num_mel_bins": config.num_mel_bins,
        "hidden_size": config.hidden_size,
        "num_hidden_layers": config.num_hidden_layers,
        "num_attention_heads": config.num_attention_heads,
        "num_parameters": _format_count(count_parameters(save_directory)),
        "num_labels": config.num_labels,
        "labels": [str(label) for label in labels] if named else [],
        "multi_label": config.problem_type != "single_label_classification",
        "embedding_block": embedding_block,
        "embedding_block_ordinal": embedding_block + 1,
        "embedding_size": 3 * config.hidden_size,
        "inference_patchout_time_stride": config.inference_patchout_time_stride,
        "inference_patchout_freq_stride": config.inference_patchout_freq_stride,
    }


def _is_hub_id(name: str | None) -> bool:
    """`namespace/name` that is not a local path: what the Hub accepts as `base_model`."""
    return bool(name) and bool(re.fullmatch(r"[\w.-]+/[\w.-]+", name)) and not Path(name).exists()


def _base_model_link(base_model: str | None) -> str | None:
    """A Markdown link for a Hub id, the name in code style for a local path."""
    if base_model is None:
        return None
    return f"[`{base_model}`](https://huggingface.co/{base_model})" if _is_hub_id(base_model) else f"`{base_model}`"


def _render(template_name: str, card_data: ModelCardData, context: dict) -> ModelCard:
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES_DIRECTORY)),
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        undefined=jinja2.StrictUndefined,
    )
    content = environment.get_template(template_name).render(card_data=card_data.to_yaml(), **context)
    card = ModelCard(content)
    # Fail here, not on the Hub, if the metadata does not parse back (e.g. an invalid model-index).
    ModelCard(str(card))
    return card


def build_model_card(
    save_directory,
    config=None,
    *,
    model_name: str | None = None,
    repo_id: str | None = None,
    published: str | PublishedCheckpoint | None = None,
    base_model: str | None = None,
    training_summary: Mapping | None = None,
    probe_results=None,
    evaluation_results=None,
    license: str = DEFAULT_LICENSE,
    datasets: str | list[str] | None = None,
    tags: list[str] | None = None,
    description: str | None = None,
) -> ModelCard:
    """The model card of a MAEST directory, without writing it ([`write_model_card`] writes it).

    Args:
        save_directory: the `save_pretrained` directory.
        config (`MAESTConfig` or `dict`, *optional*): the model's config; read from `save_directory/config.json`
            when not given.
        model_name (`str`, *optional*): the card's title and `model-index` name; by default the last part of
            `repo_id`, else the released checkpoint's repo name (`maest-30s`), else the directory name.
        repo_id (`str`, *optional*): the Hub repo the usage examples load from (e.g. `"my-org/maest-30s"`).
        published (`str`, *optional*): for conversions of the released checkpoints, the original checkpoint name
            (`"discogs-maest-30s-pw-129e"`, a `*-swa.ckpt` file name) or repo name (`"maest-30s"`). The card then
            describes that checkpoint (training data, initialization, input length) and, for the 30 s model, carries
            the paper's downstream results as its `model-index`. The config must have that checkpoint's shape.
        base_model (`str`, *optional*): Hub id (or path) of the model this one was fine-tuned or initialized from;
            a Hub id also goes into the metadata (`base_model`), a local path only into the text.
        training_summary (`dict`, *optional*): how the model was trained, e.g. `{"dataset": ..., "epochs": ...,
            "steps": ..., "recipe": {"learning_rate": ..., "mixup_alpha": ...}}`; shown as a table (nested dicts are
            flattened to `recipe.learning_rate`).
        probe_results (`dict`, list of `dict`, or JSON file path, *optional*): a `maest probe` report
            (`results.json`; its best configuration is reported), or results, each
            `{"task": "genre", "roc_auc": 0.88, "average_precision": 0.21, ...}` (optional `dataset`,
            `dataset_name`, `dataset_config`, `split`; other keys such as `block` or `tokens` are shown as
            details). Metrics are fractions in [0, 1]; they become `model-index` entries.
        evaluation_results (same forms as `probe_results`, *optional*): the model's own scores on a labelled set,
            e.g. after fine-tuning (`{"task": ..., "accuracy": ...}`; `eval_`-prefixed Trainer keys are accepted).
        license (`str`): the Hub license id; `cc-by-nc-sa-4.0`, the license of the released MAEST weights, by
            default (models derived from them inherit it: share-alike).
        datasets (`str` or list of `str`, *optional*): Hub dataset ids the model was trained on.
        tags (list of `str`, *optional*): extra Hub tags.
        description (`str`, *optional*): a paragraph of your own, placed under the title.

    Returns:
        `huggingface_hub.ModelCard`, checked to parse back.
    """
    save_directory = Path(save_directory)
    config = _load_config(save_directory, config)
    if published is not None and not isinstance(published, PublishedCheckpoint):
        published = find_published(published)
    default_name = published.repo_name if published is not None else save_directory.resolve().name
    model_name = model_name or (repo_id.split("/")[-1] if repo_id else default_name)
    facts = _model_facts(config, save_directory)
    probe_rows = _normalize_results(probe_results, "probe_results")
    evaluation_rows = _normalize_results(evaluation_results, "evaluation_results")
    eval_results = _eval_results(probe_rows, "Music tagging (probe on frozen MAEST embeddings)")
    eval_results += _eval_results(evaluation_rows, "Audio classification")

    if published is not None:
        shape = MAEST_PRESETS[published.preset]
        if config.max_length != shape["max_length"] or config.num_labels != published.num_labels:
            raise ModelCardError(
                f"{save_directory}: the config ({config.max_length} frames, {config.num_labels} labels) is not the "
                f"shape of {published.checkpoint} ({shape['max_length']} frames, {published.num_labels} labels)"
            )
        if published.has_paper_results:
            eval_results = _paper_eval_results() + eval_results
        template = "published.md"
        default_tags = ["maest", "music", "audio", "music-tagging", "discogs"]
    else:
        template = "trained.md"
        default_tags = ["maest", "music", "audio"]

    card_data = ModelCardData(
        license=license,
        library_name="transformers",
        pipeline_tag="audio-classification",
        tags=default_tags + [tag for tag in (tags or []) if tag not in default_tags],
        # The Hub's `base_model` must name a Hub model; a local path is only mentioned in the text.
        base_model=base_model if _is_hub_id(base_model) else None,
        datasets=datasets,
        metrics=sorted({result.metric_type for result in eval_results}) or None,
        model_name=model_name if eval_results else None,
        eval_results=eval_results or None,
    )
    context = {
        **facts,
        "model_name": model_name,
        "repo_id": repo_id or model_name,
        "published": published,
        "base_model": base_model,
        "base_model_link": _base_model_link(base_model),
        "description": description,
        "training_summary": _flatten(training_summary or {}),
        "probe_rows": probe_rows,
        "evaluation_rows": evaluation_rows,
        "probe_table": results_table(probe_rows),
        "evaluation_table": results_table(evaluation_rows),
        "paper_results": PAPER_DOWNSTREAM_RESULTS,
        "paper_probe_description": PAPER_PROBE_DESCRIPTION,
        "paper_title": PAPER_TITLE,
        "paper_url": PAPER_URL,
        "code_url": ORIGINAL_CODE_URL,
        "license": license,
        "original_license": ORIGINAL_LICENSE,
        "original_license_url": ORIGINAL_LICENSE_URL,
        "citation": CITATION_BIBTEX,
    }
    return _render(template, card_data, context)


def write_model_card(save_directory, config=None, *, filename: str = CARD_NAME, **card_options) -> Path:
    """Writes the model card of a saved MAEST directory to `save_directory / filename` (`README.md`) and returns its
    path; `card_options` are those of [`build_model_card`]."""
    card = build_model_card(save_directory, config, **card_options)
    path = Path(save_directory) / filename
    path.parent.mkdir(parents=True, exist_ok=True)
    card.save(path)
    return path
