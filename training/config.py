"""The settings of one pre-training run (`PretrainConfig`) and how they are read: a YAML or JSON file plus
command-line overrides (the `maest pretrain` command line itself, parsed by transformers' `HfArgumentParser` into this
dataclass, is `maest.cli.training.parse_pretrain_arguments`).

Every value is checked when the config is built, so a wrong setting fails before any data is read, with one line
that names the setting and the value (`ConfigError`): its type, that numbers are finite (YAML's `.nan` and `.inf`
are numbers too), its range, and the `model` overrides against `MAESTConfig` (known names, types, shapes). Numbers
may be written in any usual notation (`2e-5`, `2.0e-5`, `0.00002`, `200_000`): YAML 1.1 reads `1e-4` as a string,
so numeric strings are converted here.
"""

import dataclasses
import inspect
import math
import types
import typing
from pathlib import Path

import yaml
from huggingface_hub.errors import StrictDataclassError

from maest.modeling import MAEST_PRESETS, MAESTConfig
from maest.utils.constants import MAX_SEED
from maest.utils.errors import MAESTError, one_line


class ConfigError(MAESTError, ValueError):
    """A pre-training setting that is missing, unknown, of the wrong type or out of range."""


class SettingsMapping(dict):
    """A mapping setting (`model`: `MAESTConfig` overrides); on the command line a YAML/JSON mapping such as
    `--model '{hidden_size: 192, num_hidden_layers: 6}'`."""

    def __init__(self, value=None):
        if isinstance(value, str):
            try:
                value = yaml.safe_load(value)
            except yaml.YAMLError as error:
                raise ValueError(f"not a YAML/JSON mapping: {value!r}") from error
        try:
            super().__init__(value or {})
        except (TypeError, ValueError):
            raise ValueError(f"expected a mapping such as '{{hidden_size: 192}}', got {value!r}") from None


CHOICES = {
    "data_format": ("auto", "hub", "audiofolder", "webdataset", "parquet"),
    "label_format": ("auto", "names", "multi_hot"),
    "unknown_tags": ("skip", "drop"),
    "init_format": ("auto", "maest", "passt", "deit"),
    "mixed_precision": ("auto", "no", "bf16", "fp16"),
    "report_to": ("tensorboard", "none"),
}
# (setting, smallest allowed value, whether the smallest value itself is allowed)
LOWER_BOUNDS = (
    ("batch_size", 1, True),
    ("gradient_accumulation_steps", 1, True),
    ("samples_per_epoch", 1, True),
    ("max_steps", 1, True),
    ("learning_rate", 0, False),
    ("epochs", 0, False),
    ("weight_decay", 0, True),
    ("max_grad_norm", 0, False),
    ("warmup_epochs", 0, True),
    ("decay_start_epoch", 0, True),
    ("decay_epochs", 0, True),
    ("mixup_alpha", 0, True),
    ("swa_start_epoch", 0, True),
    ("swa_update_every_epochs", 0, False),
    ("eval_every_epochs", 0, False),
    ("shuffle_buffer_size", 1, True),
    ("num_workers", 0, True),
    ("logging_steps", 1, True),
    ("checkpoint_every_steps", 1, True),
    ("keep_checkpoints", 1, True),
    ("stop_after_steps", 1, True),
    ("validation_max_examples", 1, True),
    ("class_balance_power", 0, True),
    ("train_patchout_time", 0, True),
    ("train_patchout_freq", 0, True),
    ("seed", 0, True),
)
# Settings that are fractions or probabilities: in [0, 1].
UNIT_INTERVAL = ("max_bad_fraction", "final_lr_factor", "distillation_threshold")
# `model` overrides that pre-training sets itself: the labels come from the data's vocabulary, the distillation head
# from teacher_model / teacher_logits_column, the patchout from train_patchout_time / train_patchout_freq.
MODEL_SETTINGS_SET_BY_PRETRAINING = {
    "num_labels": "the data's label vocabulary", "id2label": "the data's label vocabulary",
    "label2id": "the data's label vocabulary", "use_distillation_head": "teacher_model or teacher_logits_column",
    "train_patchout_time": "the train_patchout_time setting", "train_patchout_freq": "the train_patchout_freq setting",
}


@dataclasses.dataclass
class PretrainConfig:
    """Everything `maest pretrain` needs. A YAML/JSON file holds these keys; `--key value` overrides them."""

    output_dir: str = "maest-pretrain"
    overwrite: bool = dataclasses.field(
        default=False, metadata={"help": "start afresh in an output_dir that holds an earlier run (deletes it)"}
    )
    # --- data: any `datasets` source, streamed
    train_data: str | None = None  # Hub id, audiofolder directory, tar/parquet glob or directory
    train_split: str = "train"
    validation_data: str | None = None  # defaults to train_data with validation_split
    validation_split: str | None = None
    data_format: str = "auto"  # auto, hub, audiofolder, webdataset, parquet
    data_config_name: str | None = None
    audio_column: str = "audio"
    label_column: str = "tags"
    label_format: str = "auto"  # auto, names (list or comma-separated), multi_hot
    labels_file: str | None = None  # one tag per line or JSON; built from the data when unset
    unknown_tags: str = "skip"  # skip the example, or drop the unknown tag
    teacher_logits_column: str | None = None
    max_bad_fraction: float = 0.5
    shuffle_buffer_size: int = 1000
    class_balanced_sampling: bool = True
    class_balance_power: float = 0.5  # weight of a class = count ** -power (1: fully balanced)
    num_workers: int = 2
    validation_max_examples: int | None = None
    # --- model
    model_preset: str = "maest-30s"
    model: SettingsMapping = dataclasses.field(
        default_factory=SettingsMapping, metadata={"help": "MAESTConfig overrides, e.g. '{hidden_size: 192}'"}
    )
    init_from: str | None = None  # None (random), a MAEST directory/checkpoint, PaSST or DeiT weight file
    init_format: str = "auto"
    train_patchout_time: int | None = None  # None: the paper's (30 per 10 s of input)
    train_patchout_freq: int = 0
    gradient_checkpointing: bool = False
    # --- recipe (docs/design.md, section 'Training recipe')
    batch_size: int = 12  # per process
    gradient_accumulation_steps: int = 1
    learning_rate: float = 2e-5
    weight_decay: float = 1e-4
    max_grad_norm: float | None = None
    samples_per_epoch: int = 200_000
    epochs: float = 130
    max_steps: int | None = None  # overrides epochs
    warmup_epochs: float = 5
    decay_start_epoch: float = 50
    decay_epochs: float = 50
    final_lr_factor: float = 0.01
    mixup_alpha: float = 0.3  # 0 disables mixup
    swa: bool = True
    swa_start_epoch: float = 50
    swa_update_every_epochs: float = 1
    export_swa: bool = True
    teacher_model: str | None = None
    distillation_threshold: float = 0.45
    # auto: bf16 autocast on a CUDA GPU with bf16 (6.4x the float32 step with patchout on an H200), else no.
    mixed_precision: str = "auto"  # auto, no, bf16, fp16
    seed: int = 0
    # --- bookkeeping
    logging_steps: int = 50
    eval_every_epochs: float | None = 1
    checkpoint_every_steps: int | None = 1000
    keep_checkpoints: int = 3
    report_to: str = "tensorboard"  # tensorboard or none
    resume: str | None = dataclasses.field(
        default=None,
        metadata={"nargs": "?", "const": "latest", "help": "continue from the latest checkpoint (or the one given)"},
    )
    stop_after_steps: int | None = None  # stop (after checkpointing) at this step without finishing; for tests
    progress_bar: bool = True
    record_example_ids: bool = False  # write the examples each process trained on to example_ids_rank<r>.txt
    model_card: bool = True

    def __post_init__(self):
        hints = typing.get_type_hints(type(self))
        for field in dataclasses.fields(self):
            setattr(self, field.name, _checked_value(field.name, getattr(self, field.name), hints[field.name]))
        for name, allowed in CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name} must be one of {', '.join(allowed)}; got {getattr(self, name)!r}")
        for name, bound, inclusive in LOWER_BOUNDS:
            value = getattr(self, name)
            if value is not None and (value < bound or (value == bound and not inclusive)):
                relation = "at least" if inclusive else "greater than"
                hint = " (leave it unset to train for `epochs`)" if name == "max_steps" else ""
                raise ConfigError(f"{name} must be {relation} {bound}{hint}; got {value!r}")
        for name in UNIT_INTERVAL:
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"{name} must be in [0, 1]; got {getattr(self, name)!r}")
        if self.seed > MAX_SEED:
            raise ConfigError(f"seed must be at most {MAX_SEED}; got {self.seed}")
        if self.model_preset not in MAEST_PRESETS:
            raise ConfigError(f"model_preset must be one of {', '.join(MAEST_PRESETS)}; got {self.model_preset!r}")
        self.model = _checked_model_overrides(self.model)

    def model_config(self, **settings) -> MAESTConfig:
        """The `MAESTConfig` of the model to train: `model_preset`, the `model` overrides, `settings` (pre-training's
        own: labels, distillation head) and the patchout (None: the paper's 30 / 60 / 90 of the 10 / 20 / 30 s
        inputs' patch columns, about 48%), checked (`ConfigError` naming the setting). Not part of building the
        config: a config file may leave the shape to command-line overrides; the trainer calls it before any data
        is read."""
        try:
            config = MAESTConfig.from_preset(self.model_preset, **{**self.model, **settings})
            patchout = self.train_patchout_time
            if patchout is None:
                patchout = 30 * (config.max_length // 626) if config.max_length >= 626 else 0
            config.train_patchout_time = patchout
            config.train_patchout_freq = self.train_patchout_freq
            config.validate_architecture()
        except (MAESTError, StrictDataclassError, TypeError, ValueError) as error:
            raise ConfigError(f"the model (model_preset {self.model_preset} and model overrides): {one_line(error)}") from None
        return config

    @classmethod
    def from_dict(cls, data: dict, overrides: dict | None = None) -> "PretrainConfig":
        """A config from a mapping of settings (and `overrides` on top); unknown keys are refused."""
        merged = {**data, **(overrides or {})}
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(merged) - known)
        if unknown:
            raise ConfigError(f"unknown pretrain settings: {', '.join(unknown)} (see `maest pretrain --help`)")
        return cls(**merged)

    @classmethod
    def from_file(cls, path, overrides: dict | None = None) -> "PretrainConfig":
        """A config from a YAML or JSON file (`overrides` on top)."""
        settings = read_settings_file(path)
        try:
            return cls.from_dict(settings, overrides)
        except ConfigError as error:
            raise ConfigError(f"{path}: {error}") from None


def read_settings_file(path) -> dict:
    """The mapping of settings in a YAML or JSON file (JSON is YAML)."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise ConfigError(f"cannot read the config file {path}: {error.strerror or error}") from None
    except yaml.YAMLError as error:
        where = getattr(error, "problem_mark", None)
        line = f" at line {where.line + 1}, column {where.column + 1}" if where is not None else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ConfigError(f"{path} is not valid YAML{line}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of settings (key: value lines), got {type(data).__name__}")
    return data


def _checked_model_overrides(overrides: dict) -> "SettingsMapping":
    """The `model` overrides with each value converted to `MAESTConfig`'s type for it; unknown names (a typo would
    otherwise be stored in the config and ignored) and the ones pre-training sets itself are refused."""
    types_by_name = inspect.get_annotations(MAESTConfig, eval_str=True)  # MAESTConfig's own settings
    checked = SettingsMapping()
    for name, value in overrides.items():
        if name in MODEL_SETTINGS_SET_BY_PRETRAINING:
            raise ConfigError(f"model.{name} cannot be set: pre-training takes it from {MODEL_SETTINGS_SET_BY_PRETRAINING[name]}")
        if name not in types_by_name:
            known = ", ".join(n for n in types_by_name if n not in MODEL_SETTINGS_SET_BY_PRETRAINING)
            raise ConfigError(f"model.{name} is not a MAEST model setting; they are: {known}")
        checked[name] = _checked_value(f"model.{name}", value, types_by_name[name])  # ranges: MAESTConfig's own checks
    return checked


def _checked_value(name: str, value, annotation):
    """`value` converted to the setting's type (`int`, `float`, `bool`, `str`, `SettingsMapping`, `X | None`);
    numbers must be finite."""
    allowed = typing.get_args(annotation) if isinstance(annotation, types.UnionType) else (annotation,)
    if value is None:
        if type(None) in allowed:
            return None
        raise ConfigError(f"{name} must be set (it cannot be null)")
    kind = next(t for t in allowed if t is not type(None))
    try:
        converted = _converted(value, kind)
    except (TypeError, ValueError, OverflowError):
        expected = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(kind, "a mapping")
        raise ConfigError(f"{name} must be {expected}; got {value!r}") from None
    if kind is float and not math.isfinite(converted):
        raise ConfigError(f"{name} must be a finite number; got {value!r}")
    return converted


def _converted(value, kind):
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ValueError(value)
    if kind in (int, float):
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise TypeError(value)
        number = float(value.replace("_", "")) if isinstance(value, str) else value
        if kind is int:
            if isinstance(number, float) and not number.is_integer():
                raise ValueError(value)
            return int(number)
        return float(number)
    if kind is str:
        if isinstance(value, (dict, list)):
            raise TypeError(value)
        return str(value)
    return kind(value)


__all__ = ["ConfigError", "PretrainConfig", "SettingsMapping", "read_settings_file"]
