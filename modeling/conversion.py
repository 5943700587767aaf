"""Loading MAEST weights from every published layout (docs/design.md, section 'Checkpoint formats').

`load_maest(path_or_repo)` is the one loader every entry point of this package uses. It reads:

- MAEST directories and Hub repos (`save_pretrained` output) and the Hub's AST-format MAEST repos
  (`mtg-upf/discogs-maest-*`: stock `ASTForAudioClassification` weights whose position embeddings are stored summed
  over the (frequency, time) grid, in `model.safetensors` or `pytorch_model.bin`), both through transformers'
  `from_pretrained`. AST-format repos need nothing of this package's own: `MAESTConfig` reads their config.json, and
  the checkpoint conversion mapping registered below (transformers' declarative `WeightRenaming` /
  `WeightConverter`) renames their keys and splits the summed position grid while the weights load, so
  `MAESTForAudioClassification.from_pretrained("mtg-upf/discogs-maest-30s-pw-129e")` is plain transformers;
- original released checkpoints (`*-swa.ckpt`): a plain state dict with timm/PaSST key names;
- original training checkpoints: `{"state_dict": {"net.<key>": ..., "net_swa.<key>": ...}}` (SWA by default).

Whatever the layout, a load that leaves a weight of the model missing (it would be random) or a checkpoint weight
unused is a `CheckpointError` naming them; the one exception is a new classification head asked for with
`num_labels` and `ignore_mismatched_sizes=True`, which is logged. Only tensors are ever unpickled
(`torch.load(..., weights_only=True)`, also inside `from_pretrained`).
"""

import contextlib
import copy
import logging
import pickle
import re
import socket
from pathlib import Path
from urllib.parse import urlparse

import torch
from huggingface_hub import constants as hub_constants
from huggingface_hub import try_to_load_from_cache
from huggingface_hub.errors import StrictDataclassError
from huggingface_hub.utils import HFValidationError, validate_repo_id
from safetensors import SafetensorError
from safetensors.torch import load_file as load_safetensors
from transformers import ASTConfig, ASTForAudioClassification, PreTrainedConfig
from transformers.conversion_mapping import register_checkpoint_conversion_mapping
from transformers.core_model_loading import ConversionOps, WeightConverter, WeightRenaming
from transformers.utils import logging as transformers_logging

from maest.utils.errors import MAESTError
from .configuration_maest import AST_MODEL_TYPE, MAEST_PRESETS, MAESTConfig, MAESTConfigError
from .label_names import apply_discogs_names, set_label_names
from .modeling_maest import MAESTForAudioClassification
from .published import match_published


logger = logging.getLogger(__name__)


ORIGINAL_CHECKPOINT_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".safetensors")

# timm/PaSST block names -> the transformers AST block names that MAESTModel reuses.
_ORIGINAL_BLOCK_RENAMES = {
    "norm1": "layernorm_before",
    "norm2": "layernorm_after",
    "attn.proj": "attention.o_proj",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
}
_ORIGINAL_RENAMES = {
    "patch_embed.proj": "maest.embeddings.patch_embeddings.projection",
    "cls_token": "maest.embeddings.cls_token",
    "dist_token": "maest.embeddings.distillation_token",
    "new_pos_embed": "maest.embeddings.special_token_position_embeddings",
    "freq_new_pos_embed": "maest.embeddings.frequency_position_embeddings",
    "time_new_pos_embed": "maest.embeddings.time_position_embeddings",
    "norm": "maest.layernorm",
    "head.0": "classifier.layernorm",
    "head.1": "classifier.dense",
    "head_dist": "classifier.distillation_dense",
}
_AST_PREFIX = "audio_spectrogram_transformer."


class CheckpointError(MAESTError, ValueError):
    """A checkpoint (file, directory or Hub repo) that cannot be read as MAEST weights."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """A model named by a local path that does not exist (a name that cannot be a Hub id is a path)."""


class ModelNotAvailableError(MAESTError, OSError):
    """A Hub model that is not in the local Hugging Face cache and cannot be downloaded (offline, no network)."""


# ---------------------------------------------------------------------------------------------------------------------
# The AST layout of the Hub's MAEST repos, read by `from_pretrained` through transformers' checkpoint conversion mapping


def split_position_grid(positions: torch.Tensor, num_frequency_patches: int) -> tuple[torch.Tensor, ...]:
    """AST's position embeddings `(1, 2 + F * T, hidden)` (the special tokens', then the grid's, frequency-major) ->
    MAEST's special-token `(1, 2, hidden)`, frequency `(1, hidden, F, 1)` and time `(1, hidden, 1, T)` parts.

    The Hub's grid was stored as the sum freq[f] + time[t], so it splits back exactly: time[t] = mean over f of
    grid[f, t], freq[f] = mean over t of grid[f, t] - mean(grid); their sum restores the grid (the split is unique up
    to a constant, which cancels in the sum).
    """
    hidden_size = positions.shape[-1]
    grid = positions[0, 2:].reshape(num_frequency_patches, -1, hidden_size).permute(2, 0, 1)  # (hidden, freq, time)
    time_part = grid.mean(dim=1, keepdim=True)
    frequency_part = grid.mean(dim=2, keepdim=True) - grid.mean(dim=(1, 2), keepdim=True)
    special = positions[:, :2].clone()
    return special, frequency_part.unsqueeze(0).contiguous(), time_part.unsqueeze(0).contiguous()


class SplitPositionGrid(ConversionOps):
    """AST's summed position embeddings -> MAEST's special-token, frequency and time position embeddings
    (`split_position_grid`), in the order of the converter's target patterns."""

    @torch.no_grad()
    def convert(self, input_dict, source_patterns, target_patterns, config=None, **kwargs):
        (tensors,) = input_dict.values()
        positions = tensors[0] if isinstance(tensors, list) else tensors
        return dict(zip(target_patterns, split_position_grid(positions, config.num_frequency_patches)))


class _LoadOnly:
    """A transform of the AST layout into MAEST's that applies when loading only: `save_pretrained` writes MAEST's
    own layout (transformers would otherwise reverse the transform on save, to the checkpoint's layout)."""

    __slots__ = ()

    def reverse_transform(self):
        return _NoRenaming("(?!)", "(?!)")


class _NoRenaming(WeightRenaming):
    __slots__ = ()

    def rename_source_key(self, source_key: str):
        return source_key, None


class _AstRenaming(_LoadOnly, WeightRenaming):
    __slots__ = ()


class _AstConverter(_LoadOnly, WeightConverter):
    __slots__ = ()


# Applied in order to every checkpoint key (all that match), then at most one converter. The AST names are those the
# Hub stores (transformers 4.x; transformers 5 writes them too) and transformers 5's own. None matches a MAEST key.
AST_CHECKPOINT_CONVERSION = [
    _AstRenaming(r"^audio_spectrogram_transformer\.", "maest."),
    _AstRenaming(r"encoder\.layer\.", "layers."),
    _AstRenaming(r"attention\.attention\.query", "attention.q_proj"),
    _AstRenaming(r"attention\.attention\.key", "attention.k_proj"),
    _AstRenaming(r"attention\.attention\.value", "attention.v_proj"),
    _AstRenaming(r"attention\.output\.dense", "attention.o_proj"),
    _AstRenaming(r"intermediate\.dense", "mlp.fc1"),
    _AstRenaming(r"(?<!attention\.)output\.dense", "mlp.fc2"),
    _AstConverter(
        r"embeddings\.position_embeddings",
        [
            "embeddings.special_token_position_embeddings",
            "embeddings.frequency_position_embeddings",
            "embeddings.time_position_embeddings",
        ],
        operations=[SplitPositionGrid()],
    ),
    # MAEST directories saved before the distillation head moved into the classifier module.
    _AstRenaming(r"^distillation_classifier\.", "classifier.distillation_dense."),
]
# Under MAEST's model type: `from_pretrained` of `MAESTModel`, `MAESTForAudioClassification` and the Auto classes.
register_checkpoint_conversion_mapping(MAESTConfig.model_type, AST_CHECKPOINT_CONVERSION, overwrite=True)


def load_tensor_file(path) -> dict:
    """Reads a state dict (or a dict holding one) from a `.safetensors` or torch file, unpickling only tensors."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file" + (" (it is a directory)" if path.is_dir() else ""))
    if path.suffix == ".safetensors":
        try:
            return load_safetensors(str(path))
        except Exception as error:  # safetensors raises its own error types
            raise CheckpointError(f"{path}: not a readable safetensors file ({error})") from error
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise _unpickling_error(path, error) from error
    except Exception as error:  # a damaged file can fail anywhere inside the unpickler
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint (corrupt or truncated?): {error}") from error


def _unpickling_error(path, error: pickle.UnpicklingError) -> CheckpointError:
    """One line for a pickle that `weights_only=True` refuses (objects other than tensors) or cannot read."""
    refused = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(error))
    if refused is None:  # not a pickle of anything: a damaged file or another format
        return CheckpointError(f"{path}: not a readable PyTorch checkpoint (corrupt, truncated or another format)")
    return CheckpointError(
        f"{path}: refused to load; the file holds objects other than tensors ({refused.group(1)}), and MAEST only "
        f"unpickles tensors (weights_only=True). Re-save its state dict with torch.save(model.state_dict(), ...)"
    )


def extract_original_state_dict(checkpoint: dict, use_swa: bool = True, source: str = "checkpoint") -> dict:
    """The network weights of a released or training checkpoint (SWA weights by default)."""
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"{source}: expected a state dict, found {type(checkpoint).__name__}")
    state_dict = checkpoint.get("state_dict", checkpoint)
    prefixes = ("net_swa.", "net.") if use_swa else ("net.",)
    for prefix in prefixes:
        weights = {key[len(prefix) :]: value for key, value in state_dict.items() if key.startswith(prefix)}
        if weights:
            return weights
    if "cls_token" not in state_dict:
        raise CheckpointError(
            f"{source}: no MAEST weights found (expected keys such as 'cls_token', 'net_swa.cls_token' or "
            f"'net.cls_token'; found {sorted(state_dict)[:5]}...)"
        )
    return dict(state_dict)


def original_to_maest_state_dict(state_dict: dict) -> dict:
    """Original (timm/PaSST) key names -> `MAESTForAudioClassification` key names; the fused `qkv` is split."""
    converted = {}
    for key, tensor in state_dict.items():
        if not torch.is_tensor(tensor):
            raise CheckpointError(f"checkpoint entry {key!r} is not a tensor")
        block = re.fullmatch(r"blocks\.(\d+)\.(.+)\.(weight|bias)", key)
        if block:
            index, name, kind = block.groups()
            prefix = f"maest.layers.{index}."
            if name == "attn.qkv":
                # The fused weight's rows are ordered q, k, v.
                for projection, part in zip(("q_proj", "k_proj", "v_proj"), tensor.chunk(3, dim=0)):
                    converted[f"{prefix}attention.{projection}.{kind}"] = part.clone()
                continue
            if name not in _ORIGINAL_BLOCK_RENAMES:
                raise CheckpointError(f"unexpected block parameter {key!r} in the original checkpoint")
            converted[f"{prefix}{_ORIGINAL_BLOCK_RENAMES[name]}.{kind}"] = tensor
            continue
        module, _, kind = key.rpartition(".")
        if key in _ORIGINAL_RENAMES:
            converted[_ORIGINAL_RENAMES[key]] = tensor
        elif module in _ORIGINAL_RENAMES:
            converted[f"{_ORIGINAL_RENAMES[module]}.{kind}"] = tensor
        else:
            raise CheckpointError(f"unexpected parameter {key!r} in the original checkpoint")
    return converted


def config_from_original_state_dict(state_dict: dict, source: str = "checkpoint", **overrides) -> MAESTConfig:
    """Infers the shape of an original checkpoint. The attention head count is not recorded in the weights: it is
    `hidden_size // 64` (ViT-Base's 12 for 768) unless given."""
    try:
        hidden_size = state_dict["cls_token"].shape[-1]
        num_time_positions = state_dict["time_new_pos_embed"].shape[-1]
        depth = 1 + max((int(key.split(".")[1]) for key in state_dict if key.startswith("blocks.")), default=-1)
        kwargs = {
            "hidden_size": hidden_size,
            "num_hidden_layers": depth,
            "num_attention_heads": max(1, hidden_size // 64),
            "intermediate_size": state_dict["blocks.0.mlp.fc1.weight"].shape[0],
            "num_mel_bins": 96,
            # The largest input whose patch grid fits the time positions: 1876 frames for 187 positions.
            "max_length": (num_time_positions - 1) * 10 + 16,
            "num_labels": state_dict["head.1.weight"].shape[0],
            "use_distillation_head": "head_dist.weight" in state_dict,
            "problem_type": "multi_label_classification",  # the original MAEST trains sigmoid + BCE taggers
        }
    except (KeyError, IndexError, AttributeError) as error:
        raise CheckpointError(f"{source}: not a complete MAEST checkpoint (no {error} tensor of the expected shape)") from error
    kwargs.update(overrides)
    return _config_or_error(lambda: MAESTConfig(**kwargs), source)


def maest_to_ast_state_dict(state_dict: dict) -> dict:
    """MAEST weights -> transformers' `ASTForAudioClassification` weights (the distillation head is dropped); the
    inverse of what `AST_CHECKPOINT_CONVERSION` does when loading. Stock AST then runs only full-length inputs
    without patchout."""
    converted = {}
    for key, tensor in state_dict.items():
        if key.startswith("classifier.distillation_dense."):
            continue
        if key.startswith("maest."):
            key = _AST_PREFIX + key[len("maest.") :]
        converted[key] = tensor
    special = converted.pop(_AST_PREFIX + "embeddings.special_token_position_embeddings")
    frequency = converted.pop(_AST_PREFIX + "embeddings.frequency_position_embeddings")
    time = converted.pop(_AST_PREFIX + "embeddings.time_position_embeddings")
    grid = (frequency + time).flatten(2).transpose(1, 2)  # frequency-major, as the patch tokens
    converted[_AST_PREFIX + "embeddings.position_embeddings"] = torch.cat((special, grid), dim=1)
    return converted


def maest_to_ast_model(model, max_length: int | None = None, attn_implementation: str = "sdpa"):
    """transformers' stock `ASTForAudioClassification` carrying a MAEST classifier's weights, for inputs of exactly
    `max_length` frames (default: the model's) without patchout; it gives MAEST's logits and hidden states.

    Args:
        model: a `MAESTForAudioClassification`.
        max_length: AST's fixed input length; MAEST's time positions beyond it are dropped (stock AST has one
            position per patch column of a full-length input).
    """
    config = model.config
    max_length = config.max_length if max_length is None else max_length
    num_columns = config.num_time_patches(max_length)
    if num_columns > config.num_time_positions:
        raise ValueError(f"max_length {max_length} needs {num_columns} time positions; the model has {config.num_time_positions}")
    ast_config = ASTConfig(
        hidden_size=config.hidden_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        intermediate_size=config.intermediate_size,
        hidden_act=config.hidden_act,
        layer_norm_eps=config.layer_norm_eps,
        patch_size=config.patch_size,
        qkv_bias=config.qkv_bias,
        frequency_stride=config.frequency_stride,
        time_stride=config.time_stride,
        max_length=max_length,
        num_mel_bins=config.num_mel_bins,
        num_labels=config.num_labels,
        id2label=dict(config.id2label),
        label2id=dict(config.label2id),
        attn_implementation=attn_implementation,
    )
    ast = ASTForAudioClassification(ast_config)
    # AST's head LayerNorm takes the blocks' eps; MAEST's (the original's) has its own.
    ast.classifier.layernorm.eps = config.classifier_layer_norm_eps
    state_dict = dict(model.state_dict())
    key = "maest.embeddings.time_position_embeddings"
    state_dict[key] = state_dict[key][..., :num_columns]
    ast.load_state_dict(maest_to_ast_state_dict(state_dict), strict=True)
    return ast.eval().to(next(model.parameters()).device)


def load_original_checkpoint(
    path,
    config: MAESTConfig | None = None,
    model_class=None,
    use_swa: bool = True,
    labels: list[str] | None = None,
    preset: str | None = None,
):
    """A MAEST model from an original checkpoint file (released `*-swa.ckpt` state dict or a training checkpoint).

    Args:
        path: the checkpoint file.
        config (`MAESTConfig`, *optional*): its shape; inferred from the weights and the file name otherwise. A copy
            is used (as transformers' `from_pretrained` does): the caller's config is never modified.
        model_class: `MAESTForAudioClassification` (default) or `MAESTModel`.
        use_swa: for training checkpoints, load the SWA weights (the published ones) rather than the last weights.
        labels (list of `str`, *optional*): label names, in output order. Original checkpoints store none: without
            them, a model with 400 or 519 outputs gets the published Discogs style names (and says so in the log).
        preset (`str`, *optional*): a `MAESTConfig.from_preset` name or a released checkpoint name giving the shape,
            when no `config` is given and the file name is not a released checkpoint's.
    """
    model_class = model_class or MAESTForAudioClassification
    state_dict = extract_original_state_dict(load_tensor_file(path), use_swa=use_swa, source=str(path))
    if config is None:
        shape = _preset_shape(preset, path)
        config = config_from_original_state_dict(state_dict, source=str(path), **shape)
    else:
        config = copy.deepcopy(config)
    if labels is not None:
        set_label_names(config, labels)
    else:
        apply_discogs_names(config, source=str(path))
    return _build(model_class, config, original_to_maest_state_dict(state_dict), source=str(path))


def _preset_shape(preset: str | None, path) -> dict:
    """The shape fields (no label count: the weights tell it) of `preset`, or of the released checkpoint that the
    file name names; empty when neither says."""
    if preset is None:
        published = match_published(Path(path).name)
        preset = published.preset if published is not None else None
    elif preset not in MAEST_PRESETS:
        published = match_published(preset)
        if published is None:
            raise CheckpointError(
                f"unknown preset {preset!r}; known: {', '.join(sorted(MAEST_PRESETS))} or a released checkpoint name"
            )
        preset = published.preset
    if preset is None:
        return {}
    return {key: value for key, value in MAEST_PRESETS[preset].items() if key != "num_labels"}


def _build(model_class, config, state_dict, source: str):
    model = model_class(config)
    if not hasattr(model, model.base_model_prefix):  # the bare MAESTModel: drop the heads and the prefix
        prefix = model.base_model_prefix + "."
        state_dict = {key[len(prefix) :]: value for key, value in state_dict.items() if key.startswith(prefix)}
    if not config.use_distillation_head:
        state_dict.pop("classifier.distillation_dense.weight", None)
        state_dict.pop("classifier.distillation_dense.bias", None)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"{source}: weights do not fit the model (missing {missing[:6]}, unexpected {unexpected[:6]})")
    for key, tensor in state_dict.items():
        if tensor.shape != expected[key].shape:
            raise CheckpointError(
                f"{source}: {key} has shape {tuple(tensor.shape)}, the config expects {tuple(expected[key].shape)}"
            )
    model.load_state_dict(state_dict, strict=True)
    return model.eval()


def _config_or_error(make_config, source: str) -> MAESTConfig:
    """Runs `make_config`, turning a config validation failure into one `CheckpointError` line naming `source`."""
    try:
        return make_config()
    except MAESTConfigError as error:
        raise CheckpointError(f"{source}: invalid config: {error}") from error
    except StrictDataclassError as error:
        cause = error.__cause__ or error
        raise CheckpointError(f"{source}: invalid config: {' '.join(str(cause).split())}") from error


def load_maest(
    path_or_repo,
    model_class=None,
    *,
    labels: list[str] | None = None,
    preset: str | None = None,
    use_swa: bool = True,
    **kwargs,
):
    """Loads a MAEST model from any published layout: the one loader behind every command and function of this
    package that takes a model.

    - a MAEST directory or Hub repo (`save_pretrained` output), or an AST-format MAEST directory or Hub repo
      (`mtg-upf/discogs-maest-*`, `model.safetensors` or `pytorch_model.bin`): `model_class.from_pretrained`, which
      reads both (see the module docstring);
    - an original checkpoint file (`*.ckpt`, `*.pt`, `*.pth`, `*.bin`, `*.safetensors`): converted
      (`load_original_checkpoint`; `preset` and `use_swa` apply).

    Never silently random: a weight of the model that the checkpoint lacks, a checkpoint weight the model does not
    use, or one of another shape is a `CheckpointError` naming them. The exception is a new head for other labels,
    asked for with `num_labels=N, ignore_mismatched_sizes=True` (as in transformers): the re-initialized head
    weights are logged. The head weights of a classifier checkpoint are not used by `MAESTModel` (the bare
    encoder), as in transformers. Models without label names and 400 or 519 outputs get the published Discogs style
    names.

    Args:
        path_or_repo: a local file or directory, or a Hub repo id.
        model_class: `MAESTForAudioClassification` (default) or `MAESTModel`.
        labels (list of `str`, *optional*): label names in output order, replacing the stored ones.
        kwargs: `from_pretrained` arguments (`config`, `dtype`, `revision`, `cache_dir`, `token`,
            `local_files_only`, `ignore_mismatched_sizes`, config overrides such as
            `inference_patchout_time_stride=2`, ...).

    Raises:
        `CheckpointError` (one line, naming the path or repo) for anything that is not a readable MAEST checkpoint or
        does not fill the model; `ModelNotAvailableError` for a Hub repo that is not cached while offline or without
        network.
    """
    model_class = model_class or MAESTForAudioClassification
    source = str(path_or_repo)
    local = Path(source).expanduser()
    if local.is_file():
        if local.suffix not in ORIGINAL_CHECKPOINT_SUFFIXES:
            raise CheckpointError(
                f"{source}: not a checkpoint file (expected {', '.join(ORIGINAL_CHECKPOINT_SUFFIXES)}) or a model directory"
            )
        model = load_original_checkpoint(local, config=kwargs.get("config"), model_class=model_class, use_swa=use_swa,
                                         labels=labels, preset=preset)
        return _to_dtype(model, kwargs.get("dtype"))
    if local.is_dir():
        source = str(local)
    else:
        _check_repo_id(source)
        _check_available(source, kwargs)
    hub_kwargs = {name: kwargs[name] for name in _HUB_ARGUMENTS if name in kwargs}
    model_type = _read_model_type(source, hub_kwargs)
    if model_type not in (MAESTConfig.model_type, AST_MODEL_TYPE):
        raise CheckpointError(
            f"{source}: config.json has model_type {model_type!r}; expected a MAEST or AST-format MAEST model"
        )
    if model_type == MAESTConfig.model_type and local.is_dir():
        _refuse_pickled_weights(local)
    model = _from_pretrained(model_class, source, kwargs)
    apply_discogs_names(model.config, source=source)
    if labels is not None:
        set_label_names(model.config, labels)
    return model


# `from_pretrained` arguments that say where to find the files.
_HUB_ARGUMENTS = ("cache_dir", "force_download", "local_files_only", "token", "revision", "subfolder")
# The weights of the classification heads, which the bare encoder (`MAESTModel`) does not use.
_HEAD_PREFIXES = ("classifier.",)
_DISTILLATION_HEAD = "classifier.distillation_dense."


def _check_repo_id(source: str) -> None:
    """A name that is neither a local path nor a possible Hub repo id is a missing local path. Hub ids of MAEST
    models are "owner/name": a bare name (a typo of a folder, more likely than an owner-less Hub model) is a path."""
    looks_local = source.startswith((".", "/", "~")) or source.count("/") != 1 or Path(source).suffix in ORIGINAL_CHECKPOINT_SUFFIXES
    try:
        validate_repo_id(source)
    except HFValidationError:
        looks_local = True
    if looks_local:
        raise CheckpointNotFoundError(f"{source}: no such file or directory")


def hub_unavailable_reason(repo_id: str, cache_dir=None, local_files_only: bool = False) -> str | None:
    """Why the Hub repo `repo_id` can be neither read from the local Hugging Face cache nor downloaded ("HF_HUB_OFFLINE
    is set", "the Hub's host cannot be resolved"), or None when it can: the one offline-cache check, whose callers
    word their own one-line `ModelNotAvailableError` (instead of the Hub client's error after its retries)."""
    if isinstance(try_to_load_from_cache(repo_id, "config.json", cache_dir=cache_dir), str):
        return None
    if hub_constants.HF_HUB_OFFLINE or local_files_only:
        return "HF_HUB_OFFLINE is set"
    if not _hub_resolvable():
        return "the Hub's host cannot be resolved"
    return None


def _check_available(repo_id: str, kwargs: dict) -> None:
    if kwargs.get("revision") or kwargs.get("subfolder"):
        return  # the cache check knows the main revision's files only
    cause = hub_unavailable_reason(repo_id, kwargs.get("cache_dir"), bool(kwargs.get("local_files_only")))
    if cause is None:
        return
    reason = f"it is not in the local Hugging Face cache and {cause}"
    raise ModelNotAvailableError(
        f"Model {repo_id!r} is not available offline: {reason}. Download it once with network access (it is then "
        f"cached), or give a local model directory instead (--model DIR on the command line; `maest convert` writes "
        f"one)"
    )


def _hub_resolvable() -> bool:
    """Whether the Hub's host name resolves (a quick check, instead of the Hub client's retries with back-off)."""
    try:
        socket.getaddrinfo(urlparse(hub_constants.ENDPOINT).hostname, 443)
        return True
    except OSError:
        return False


def _read_model_type(source: str, hub_kwargs: dict) -> str | None:
    local_config = Path(source, hub_kwargs.get("subfolder") or "", "config.json")
    if Path(source).is_dir() and not local_config.is_file():
        raise CheckpointError(f"{source}: not a model directory (it has no {local_config.relative_to(source)})")

    try:
        config_dict, _ = PreTrainedConfig.get_config_dict(source, **hub_kwargs)
    except OSError as error:
        detail = " ".join(str(error).split())
        if local_config.is_file():
            raise CheckpointError(f"{local_config}: not a readable config ({detail})") from error
        raise CheckpointError(f"{source}: not a model Hub repo (or the Hub cannot be reached): {detail}") from error
    except (ValueError, UnicodeDecodeError) as error:  # a config.json that is not JSON
        raise CheckpointError(f"{source}: config.json does not parse ({' '.join(str(error).split())})") from error
    return config_dict.get("model_type")


def _refuse_pickled_weights(directory: Path) -> None:
    """A MAEST directory is read only from safetensors: a pickled `pytorch_model.bin` can run code when loaded."""
    if any(directory.glob("model*.safetensors")):
        return
    pickled = sorted(path.name for path in directory.glob("*.bin"))
    if pickled:
        raise CheckpointError(
            f"{directory / pickled[0]}: MAEST directories are loaded from safetensors only (a pickled file can run "
            f"code); convert it with `maest convert {directory / pickled[0]} OUTPUT_DIR`"
        )


class _LoadReportFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "LOAD REPORT" not in str(record.msg)


@contextlib.contextmanager
def _quiet_load_report():
    """Holds back transformers' load report (a table on stderr) and its "Loading weights" bar: `_from_pretrained`
    checks the report's facts and raises or logs them itself, in one line (a command's error stays one line)."""
    report_logger = logging.getLogger("transformers.modeling_utils")
    report_filter = _LoadReportFilter()
    report_logger.addFilter(report_filter)
    bar_was_enabled = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        report_logger.removeFilter(report_filter)
        if bar_was_enabled:
            transformers_logging.enable_progress_bar()


def _from_pretrained(model_class, source: str, kwargs: dict):
    """`model_class.from_pretrained` with its config validated first (a bad config is one line naming it) and its
    load report checked: nothing missing, unused or of another shape, except a new head asked for."""
    kwargs = dict(kwargs)
    config = kwargs.pop("config", None)
    new_head = bool(kwargs.pop("ignore_mismatched_sizes", False))
    hub_kwargs = {name: kwargs[name] for name in _HUB_ARGUMENTS if name in kwargs}
    if config is None:
        # Like `from_pretrained`, the keyword arguments that are config fields override the stored config.
        config, kwargs = _config_or_error(
            lambda: MAESTConfig.from_pretrained(source, return_unused_kwargs=True, **kwargs), source
        )
    try:
        with _quiet_load_report():
            model, report = model_class.from_pretrained(
                source, config=config, ignore_mismatched_sizes=True, output_loading_info=True, **{**kwargs, **hub_kwargs}
            )
    except pickle.UnpicklingError as error:  # transformers unpickles only tensors too (weights_only=True)
        raise _unpickling_error(source, error) from error
    except (OSError, RuntimeError, SafetensorError) as error:  # a damaged or truncated weights file
        raise CheckpointError(f"{source}: cannot read its weights ({' '.join(str(error).split())[:300]})") from error
    missing = sorted(report["missing_keys"])
    unexpected = sorted(report["unexpected_keys"])
    if model_class.base_model_prefix and not hasattr(model, model_class.base_model_prefix):
        unexpected = [key for key in unexpected if not key.startswith(_HEAD_PREFIXES)]  # the bare encoder
    if not model.config.use_distillation_head and any(key.startswith(_DISTILLATION_HEAD) for key in unexpected):
        # A teacher-student head that the model was not asked for (it is off by default; inference never uses it).
        logger.info(f"{source}: the checkpoint's distillation head is not loaded (use_distillation_head=True keeps it)")
        unexpected = [key for key in unexpected if not key.startswith(_DISTILLATION_HEAD)]
    mismatched = sorted(report["mismatched_keys"])
    new_head_weights = [key for key, _, _ in mismatched if key.startswith(_HEAD_PREFIXES)]
    if not new_head or len(new_head_weights) < len(mismatched):
        shapes = [f"{key} {tuple(stored)} in the checkpoint, {tuple(expected)} in the model" for key, stored, expected in mismatched]
    else:
        shapes = []
    if missing or unexpected or shapes:
        problems = []
        if missing:
            problems.append(f"missing (they would be random): {_names(missing)}")
        if unexpected:
            problems.append(f"not used by {model_class.__name__}: {_names(unexpected)}")
        if shapes:
            problems.append(f"of another shape: {_names(shapes)}")
        raise CheckpointError(f"{source}: the checkpoint does not fit the model; weights " + "; ".join(problems))
    if new_head_weights:
        logger.warning(
            f"{source}: new classification head for {model.config.num_labels} labels (ignore_mismatched_sizes=True): "
            f"{', '.join(new_head_weights)} randomly initialized, to be trained"
        )
    return model


def _names(keys: list[str], shown: int = 6) -> str:
    more = f" and {len(keys) - shown} more" if len(keys) > shown else ""
    return ", ".join(keys[:shown]) + more


def _to_dtype(model, dtype):
    if dtype is None or dtype == "auto":
        return model
    return model.to(getattr(torch, dtype) if isinstance(dtype, str) else dtype)


__all__ = [
    "AST_CHECKPOINT_CONVERSION",
    "CheckpointError",
    "CheckpointNotFoundError",
    "ModelNotAvailableError",
    "hub_unavailable_reason",
    "SplitPositionGrid",
    "config_from_original_state_dict",
    "load_maest",
    "load_original_checkpoint",
    "load_tensor_file",
    "maest_to_ast_model",
    "maest_to_ast_state_dict",
    "original_to_maest_state_dict",
    "split_position_grid",
]
