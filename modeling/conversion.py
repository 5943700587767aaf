"""Loading MAEST weights from every published layout (DESIGN.md section 4).

- original released checkpoints (`*-swa.ckpt`): a plain state dict with timm/PaSST key names;
- original training checkpoints: `{"state_dict": {"net.<key>": ..., "net_swa.<key>": ...}}` (SWA by default);
- the Hub's AST-format repos (`mtg-upf/discogs-maest-*`): stock `ASTForAudioClassification` weights whose position
  embeddings are stored summed over the (frequency, time) grid.

Only tensors are ever unpickled (`torch.load(..., weights_only=True)`).
"""

import json
import os
import pickle
import re
from pathlib import Path

import torch
from safetensors.torch import load_file as load_safetensors

from .configuration_maest import MAEST_PRESETS, PUBLISHED_CHECKPOINTS, MAESTConfig


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


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read as MAEST weights."""


def load_tensor_file(path) -> dict:
    """Reads a state dict (or a dict holding one) from a `.safetensors` or torch file, unpickling only tensors."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        try:
            return load_safetensors(str(path))
        except Exception as error:  # safetensors raises its own error types
            raise CheckpointError(f"{path}: not a readable safetensors file ({error})") from error
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise CheckpointError(
            f"{path}: refused to load; the file holds objects other than tensors, and MAEST only unpickles tensors "
            f"(weights_only=True). Re-save its state dict with torch.save(model.state_dict(), ...). Detail: {error}"
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


def config_from_original_state_dict(state_dict: dict, **overrides) -> MAESTConfig:
    """Infers the shape of an original checkpoint. The attention head count is not recorded in the weights: it is
    `hidden_size // 64` (ViT-Base's 12 for 768) unless given."""
    hidden_size = state_dict["cls_token"].shape[-1]
    num_time_positions = state_dict["time_new_pos_embed"].shape[-1]
    depth = 1 + max(int(key.split(".")[1]) for key in state_dict if key.startswith("blocks."))
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
    kwargs.update(overrides)
    return MAESTConfig(**kwargs)


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
    from transformers import ASTConfig, ASTForAudioClassification

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


def _hub_kwargs(kwargs: dict) -> dict:
    names = ("cache_dir", "force_download", "local_files_only", "token", "revision", "subfolder")
    return {name: kwargs[name] for name in names if name in kwargs}


def find_foreign_checkpoint(path_or_id, **kwargs):
    """`("original", file)` for an original checkpoint file, `("ast", path_or_id)` for an AST-format MAEST repo, or
    None for a MAEST-format one (which `from_pretrained` loads as usual)."""
    if kwargs.get("config") is not None and not isinstance(kwargs["config"], MAESTConfig):
        return None
    path = Path(str(path_or_id))
    if path.is_file() and path.suffix in ORIGINAL_CHECKPOINT_SUFFIXES:
        return ("original", path)
    from transformers import PreTrainedConfig

    try:
        config_dict, _ = PreTrainedConfig.get_config_dict(str(path_or_id), **_hub_kwargs(kwargs))
    except (OSError, ValueError):
        return None  # let from_pretrained raise its usual, complete error
    if config_dict.get("model_type") == AST_MODEL_TYPE:
        return ("ast", path_or_id)
    return None


def _resolve_weights_file(path_or_id, **kwargs) -> str:
    from transformers.utils import cached_file

    for name in ("model.safetensors", "pytorch_model.bin"):
        resolved = cached_file(
            str(path_or_id), name, _raise_exceptions_for_missing_entries=False, **_hub_kwargs(kwargs)
        )
        if resolved is not None:
            return resolved
    raise FileNotFoundError(f"{path_or_id}: no model.safetensors or pytorch_model.bin found")


def load_foreign_checkpoint(model_class, foreign, **kwargs):
    """Builds `model_class` from an original checkpoint file or an AST-format repo (see `find_foreign_checkpoint`)."""
    from transformers import PreTrainedConfig

    kind, location = foreign
    config = kwargs.get("config")
    if kind == "original":
        return load_original_checkpoint(location, config=config, model_class=model_class, use_swa=kwargs.get("use_swa", True))
    config_dict, _ = PreTrainedConfig.get_config_dict(str(location), **_hub_kwargs(kwargs))
    config = config or maest_config_from_ast(config_dict)
    state_dict = ast_to_maest_state_dict(
        load_tensor_file(_resolve_weights_file(location, **kwargs)), config.num_frequency_patches
    )
    return _build(model_class, config, state_dict, source=str(location), dtype=kwargs.get("dtype"))


def load_original_checkpoint(
    path, config: MAESTConfig | None = None, model_class=None, use_swa: bool = True, labels=None, preset: str | None = None
):
    """A MAEST model from an original checkpoint file (released `*-swa.ckpt` state dict or a training checkpoint).

    Args:
        path: the checkpoint file.
        config (`MAESTConfig`, *optional*): its shape; inferred from the weights and the file name otherwise.
        preset (`str`, *optional*): a `MAESTConfig.from_preset` name giving the shape, when no `config` is given.
        model_class: `MAESTForAudioClassification` (default) or `MAESTModel`.
        use_swa: for training checkpoints, load the SWA weights (the published ones) rather than the last weights.
        labels (list of `str`, *optional*): label names, in output order.
    """
    from .modeling_maest import MAESTForAudioClassification

    model_class = model_class or MAESTForAudioClassification
    state_dict = extract_original_state_dict(load_tensor_file(path), use_swa=use_swa, source=str(path))
    if config is None:
        overrides = {}
        if preset is None:
            preset = next((preset for name, preset in PUBLISHED_CHECKPOINTS.items() if Path(path).name.startswith(name)), None)
        if preset is not None:
            MAESTConfig.from_preset(preset)  # raises the error that lists the known presets
            shape = MAEST_PRESETS[PUBLISHED_CHECKPOINTS.get(preset, preset)]
            overrides = {key: value for key, value in shape.items() if key != "num_labels"}
        config = config_from_original_state_dict(state_dict, **overrides)
    if labels is not None:
        labels = list(labels)
        if len(labels) != config.num_labels:
            raise ValueError(f"{len(labels)} labels given for a model with {config.num_labels} outputs")
        config.id2label = dict(enumerate(labels))
        config.label2id = {label: index for index, label in enumerate(labels)}
    return _build(model_class, config, original_to_maest_state_dict(state_dict), source=str(path))


def _build(model_class, config, state_dict, source: str, dtype=None):
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
    if dtype is not None and dtype != "auto":
        model = model.to(getattr(torch, dtype) if isinstance(dtype, str) else dtype)
    return model.eval()


def read_labels(path) -> list[str]:
    """Label names from a text file (one per line), a JSON list, or a JSON `{index: name}` map."""
    text = Path(path).read_text(encoding="utf-8")
    if Path(path).suffix == ".json":
        data = json.loads(text)
        if isinstance(data, dict):
            data = [data[key] for key in sorted(data, key=int)]
        return [str(label) for label in data]
    return [line.strip() for line in text.splitlines() if line.strip()]


__all__ = [
    "CheckpointError",
    "ast_to_maest_state_dict",
    "config_from_original_state_dict",
    "load_original_checkpoint",
    "load_tensor_file",
    "maest_config_from_ast",
    "maest_to_ast_state_dict",
    "original_to_maest_state_dict",
    "read_labels",
]
