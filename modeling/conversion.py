"""Loading MAEST weights from every published layout (docs/design.md, section 'Checkpoint formats').

`load_maest(path_or_repo)` is the one entry point: it reads MAEST directories and Hub repos through transformers'
`from_pretrained` (which the model classes leave as transformers has it), and converts the other layouts:

- original released checkpoints (`*-swa.ckpt`): a plain state dict with timm/PaSST key names;
- original training checkpoints: `{"state_dict": {"net.<key>": ..., "net_swa.<key>": ...}}` (SWA by default);
- the Hub's AST-format repos (`mtg-upf/discogs-maest-*`): stock `ASTForAudioClassification` weights whose position
  embeddings are stored summed over the (frequency, time) grid.

Only tensors are ever unpickled (`torch.load(..., weights_only=True)`).
"""

import copy
import pickle
import re
from pathlib import Path

import torch
from huggingface_hub.errors import StrictDataclassError
from huggingface_hub.utils import HFValidationError, validate_repo_id
from safetensors.torch import load_file as load_safetensors
from transformers import ASTConfig, ASTForAudioClassification, PreTrainedConfig
from transformers.utils import cached_file

from ..errors import MAESTError
from .configuration_maest import MAEST_PRESETS, MAESTConfig, MAESTConfigError
from .label_names import apply_discogs_names, set_label_names
from .modeling_maest import MAESTForAudioClassification
from .published import match_published


ORIGINAL_CHECKPOINT_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".safetensors")
AST_MODEL_TYPE = "audio-spectrogram-transformer"

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
    "head_dist": "distillation_classifier",
}
# transformers 4.x AST names (as stored on the Hub) -> transformers 5.x AST names.
_LEGACY_AST_RENAMES = [
    (r"\.encoder\.layer\.(\d+)\.", r".layers.\1."),
    (r"\.attention\.attention\.query\.", ".attention.q_proj."),
    (r"\.attention\.attention\.key\.", ".attention.k_proj."),
    (r"\.attention\.attention\.value\.", ".attention.v_proj."),
    (r"\.attention\.output\.dense\.", ".attention.o_proj."),
    (r"\.intermediate\.dense\.", ".mlp.fc1."),
    (r"(\.layers\.\d+)\.output\.dense\.", r"\1.mlp.fc2."),
]
_AST_PREFIX = "audio_spectrogram_transformer."
_POSITIONS = "embeddings.position_embeddings"


class CheckpointError(MAESTError, ValueError):
    """A checkpoint (file, directory or Hub repo) that cannot be read as MAEST weights."""


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
        refused = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(error))
        if refused is None:  # not a pickle of anything: a damaged file or another format
            raise CheckpointError(f"{path}: not a readable PyTorch checkpoint (corrupt, truncated or another format)") from error
        raise CheckpointError(
            f"{path}: refused to load; the file holds objects other than tensors ({refused.group(1)}), and MAEST only "
            f"unpickles tensors (weights_only=True). Re-save its state dict with torch.save(model.state_dict(), ...)"
        ) from error
    except Exception as error:  # a damaged file can fail anywhere inside the unpickler
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint (corrupt or truncated?): {error}") from error


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
        }
    except (KeyError, IndexError, AttributeError) as error:
        raise CheckpointError(f"{source}: not a complete MAEST checkpoint (no {error} tensor of the expected shape)") from error
    kwargs.update(overrides)
    return _config_or_error(lambda: MAESTConfig(**kwargs), source)


def ast_to_maest_state_dict(state_dict: dict, num_frequency_patches: int) -> dict:
    """AST-format MAEST weights -> MAEST weights. The summed position grid is split back into its frequency and time
    parts: time[t] = mean_f grid[f, t], freq[f] = mean_t grid[f, t] - mean(grid); their sum restores the grid exactly
    because it was built additively."""
    converted = {}
    for key, tensor in state_dict.items():
        for pattern, replacement in _LEGACY_AST_RENAMES:
            key = re.sub(pattern, replacement, key)
        if key.startswith(_AST_PREFIX):
            key = "maest." + key[len(_AST_PREFIX) :]
        converted[key] = tensor
    positions = converted.pop("maest." + _POSITIONS)
    hidden_size = positions.shape[-1]
    grid = positions[0, 2:].reshape(num_frequency_patches, -1, hidden_size).permute(2, 0, 1)  # (hidden, freq, time)
    time_part = grid.mean(dim=1, keepdim=True)
    frequency_part = grid.mean(dim=2, keepdim=True) - grid.mean(dim=(1, 2), keepdim=True)
    converted["maest.embeddings.special_token_position_embeddings"] = positions[:, :2].clone()
    converted["maest.embeddings.frequency_position_embeddings"] = frequency_part.unsqueeze(0).contiguous()
    converted["maest.embeddings.time_position_embeddings"] = time_part.unsqueeze(0).contiguous()
    return converted


def maest_to_ast_state_dict(state_dict: dict) -> dict:
    """MAEST weights -> transformers' `ASTForAudioClassification` weights (the distillation head is dropped); the
    inverse of `ast_to_maest_state_dict`. Stock AST then runs only full-length inputs without patchout."""
    converted = {}
    for key, tensor in state_dict.items():
        if key.startswith("distillation_classifier."):
            continue
        if key.startswith("maest."):
            key = _AST_PREFIX + key[len("maest.") :]
        converted[key] = tensor
    special = converted.pop(_AST_PREFIX + "embeddings.special_token_position_embeddings")
    frequency = converted.pop(_AST_PREFIX + "embeddings.frequency_position_embeddings")
    time = converted.pop(_AST_PREFIX + "embeddings.time_position_embeddings")
    grid = (frequency + time).flatten(2).transpose(1, 2)  # frequency-major, as the patch tokens
    converted[_AST_PREFIX + _POSITIONS] = torch.cat((special, grid), dim=1)
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


def maest_config_from_ast(ast_config: dict) -> MAESTConfig:
    """The MAEST config of an AST-format MAEST repo (its `config.json` as a dict)."""
    keys = (
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "intermediate_size",
        "hidden_act",
        "layer_norm_eps",
        "patch_size",
        "frequency_stride",
        "time_stride",
        "num_mel_bins",
        "max_length",
        "qkv_bias",
        "id2label",
        "label2id",
    )
    kwargs = {key: ast_config[key] for key in keys if key in ast_config}
    if kwargs.get("num_mel_bins", 96) != 96 or ast_config.get("frequency_stride", 10) != ast_config.get("time_stride", 10):
        raise CheckpointError(
            f"this AST config is not a MAEST conversion (num_mel_bins={kwargs.get('num_mel_bins')}, "
            f"frequency_stride={ast_config.get('frequency_stride')}, time_stride={ast_config.get('time_stride')})"
        )
    if "id2label" in kwargs:
        kwargs["id2label"] = {int(index): label for index, label in kwargs["id2label"].items()}
    # The Hub conversion stores the head's LayerNorm with the blocks' eps and has no distillation head.
    kwargs["classifier_layer_norm_eps"] = kwargs.get("layer_norm_eps", 1e-6)
    kwargs["use_distillation_head"] = False
    return MAESTConfig(**kwargs)


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


def load_ast_checkpoint(path_or_repo, model_class=None, config: MAESTConfig | None = None, **hub_kwargs):
    """A MAEST model from an AST-format MAEST directory or Hub repo (`mtg-upf/discogs-maest-*`: stock
    `ASTForAudioClassification` weights with summed position embeddings); `hub_kwargs` are `cached_file`'s."""
    model_class = model_class or MAESTForAudioClassification
    source = str(path_or_repo)
    config_dict, _ = PreTrainedConfig.get_config_dict(source, **hub_kwargs)
    config = config or _config_or_error(lambda: maest_config_from_ast(config_dict), source)
    weights = None
    for name in ("model.safetensors", "pytorch_model.bin"):
        weights = cached_file(source, name, _raise_exceptions_for_missing_entries=False, **hub_kwargs)
        if weights is not None:
            break
    if weights is None:
        raise CheckpointError(f"{source}: no model.safetensors or pytorch_model.bin found")
    state_dict = ast_to_maest_state_dict(load_tensor_file(weights), config.num_frequency_patches)
    apply_discogs_names(config, source=source)
    return _build(model_class, config, state_dict, source=source)


def _build(model_class, config, state_dict, source: str):
    model = model_class(config)
    if not hasattr(model, model.base_model_prefix):  # the bare MAESTModel: drop the heads and the prefix
        prefix = model.base_model_prefix + "."
        state_dict = {key[len(prefix) :]: value for key, value in state_dict.items() if key.startswith(prefix)}
    if not config.use_distillation_head:
        state_dict.pop("distillation_classifier.weight", None)
        state_dict.pop("distillation_classifier.bias", None)
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
    """Loads a MAEST model from any published layout; the one entry point for checkpoints that
    `MAESTForAudioClassification.from_pretrained` (plain transformers) does not read itself.

    - a MAEST directory or Hub repo (`save_pretrained` output): `model_class.from_pretrained`;
    - an AST-format MAEST directory or Hub repo (`mtg-upf/discogs-maest-*`): converted (`load_ast_checkpoint`);
    - an original checkpoint file (`*.ckpt`, `*.pt`, `*.pth`, `*.bin`, `*.safetensors`): converted
      (`load_original_checkpoint`; `preset` and `use_swa` apply).

    Models without label names and 400 or 519 outputs get the published Discogs style names.

    Args:
        path_or_repo: a local file or directory, or a Hub repo id.
        model_class: `MAESTForAudioClassification` (default) or `MAESTModel`.
        labels (list of `str`, *optional*): label names in output order, replacing the stored ones.
        kwargs: `from_pretrained` arguments (`config`, `dtype`, `revision`, `cache_dir`, `token`,
            `local_files_only`, config overrides such as `inference_patchout_time_stride=2`, ...).

    Raises:
        `CheckpointError` (one line, naming the path or repo) for anything that is not a readable MAEST checkpoint.
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
    if not local.is_dir():
        _check_repo_id(source)
    hub_kwargs = {name: kwargs[name] for name in _HUB_ARGUMENTS if name in kwargs}
    model_type = _read_model_type(source, hub_kwargs)
    if model_type == AST_MODEL_TYPE:
        model = _to_dtype(load_ast_checkpoint(source, model_class, kwargs.get("config"), **hub_kwargs), kwargs.get("dtype"))
    elif model_type == MAESTConfig.model_type:
        if local.is_dir():
            _refuse_pickled_weights(local)
        model = _load_maest_format(model_class, source, kwargs)
        apply_discogs_names(model.config, source=source)
    else:
        raise CheckpointError(
            f"{source}: config.json has model_type {model_type!r}; expected a MAEST or AST-format MAEST model"
        )
    if labels is not None:
        set_label_names(model.config, labels)
    return model


# `from_pretrained` arguments that say where to find the files.
_HUB_ARGUMENTS = ("cache_dir", "force_download", "local_files_only", "token", "revision", "subfolder")


def _check_repo_id(source: str) -> None:
    """A name that is neither a local path nor a possible Hub repo id is a missing local path."""
    looks_local = source.startswith((".", "/", "~")) or source.count("/") > 1 or Path(source).suffix in ORIGINAL_CHECKPOINT_SUFFIXES
    try:
        validate_repo_id(source)
    except HFValidationError:
        looks_local = True
    if looks_local:
        raise CheckpointError(f"{source}: no such file or directory")


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


def _load_maest_format(model_class, source: str, kwargs: dict):
    """`model_class.from_pretrained` with its config validated first, so a bad config is one line naming it."""
    kwargs = dict(kwargs)
    config = kwargs.pop("config", None)
    hub_kwargs = {name: kwargs[name] for name in _HUB_ARGUMENTS if name in kwargs}
    if config is None:
        # Like `from_pretrained`, the keyword arguments that are config fields override the stored config.
        config, kwargs = _config_or_error(
            lambda: MAESTConfig.from_pretrained(source, return_unused_kwargs=True, **kwargs), source
        )
    try:
        return model_class.from_pretrained(source, config=config, **{**kwargs, **hub_kwargs})
    except OSError as error:
        raise CheckpointError(f"{source}: {' '.join(str(error).split())}") from error


def _to_dtype(model, dtype):
    if dtype is None or dtype == "auto":
        return model
    return model.to(getattr(torch, dtype) if isinstance(dtype, str) else dtype)


__all__ = [
    "CheckpointError",
    "ast_to_maest_state_dict",
    "config_from_original_state_dict",
    "load_ast_checkpoint",
    "load_maest",
    "load_original_checkpoint",
    "load_tensor_file",
    "maest_config_from_ast",
    "maest_to_ast_model",
    "maest_to_ast_state_dict",
    "original_to_maest_state_dict",
]
