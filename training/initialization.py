"""Initial weights for pre-training (docs/design.md, section 'Checkpoint formats', item 4).

- `random`: the model's own initialization.
- a MAEST checkpoint: a saved MAEST directory or any layout `maest.modeling.conversion.load_maest` reads.
- PaSST weights (the original timm/PaSST key names, e.g. AudioSet PaSST with a 12 x 99 patch grid over 128 mel
  bands, or an original MAEST file of another length): the frequency and time position embeddings are resampled
  bicubically to the new grid (9 rows, `max_length // 10` columns).
- DeiT-B distilled weights (timm key names, one 2-D `pos_embed` over a square grid): the grid is resampled bicubically
  to (9, P); frequency = mean over time, time = mean over frequency; the RGB patch filters are summed into one
  channel.

Heads whose class count differs from the new model's are dropped (they are re-initialized).
"""

import logging
from pathlib import Path

import torch
import torch.nn.functional as F

from maest.modeling.conversion import (
    CheckpointError,
    extract_original_state_dict,
    load_maest,
    load_tensor_file,
    original_to_maest_state_dict,
)

logger = logging.getLogger(__name__)

INIT_FORMATS = ("auto", "maest", "passt", "deit")


def resample_grid(grid: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bicubic resampling of a `(1, hidden, rows, cols)` embedding grid to `size` = (rows, cols)."""
    if tuple(grid.shape[-2:]) == tuple(size):
        return grid
    return F.interpolate(grid.float(), size=size, mode="bicubic", align_corners=False).to(grid.dtype)


def _unwrap(checkpoint: dict) -> dict:
    for key in ("model", "state_dict", "model_state_dict"):
        if isinstance(checkpoint, dict) and key in checkpoint and isinstance(checkpoint[key], dict):
            checkpoint = checkpoint[key]
    return checkpoint


def _drop_mismatched_heads(state_dict: dict, num_labels: int) -> dict:
    heads = ("head.1.", "head_dist.", "head.")
    result = {}
    for key, tensor in state_dict.items():
        is_head = key.startswith(heads) and not key.startswith("head.0.")
        if is_head and tensor.shape[0] != num_labels:
            continue
        result[key] = tensor
    if len(result) != len(state_dict):
        logger.info(f"dropped {len(state_dict) - len(result)} head tensors with another class count ({num_labels} wanted)")
    return result


def passt_to_original_state_dict(state_dict: dict, config) -> dict:
    """PaSST-layout weights (original MAEST key names, any grid) -> the same layout with the position embeddings
    resampled to `config`'s grid: `freq_new_pos_embed` `(1, D, F, 1)` -> `(1, D, 9, 1)` and `time_new_pos_embed`
    `(1, D, 1, T)` -> `(1, D, 1, config.num_time_positions)`."""
    state_dict = dict(extract_original_state_dict(_unwrap(state_dict), source="PaSST weights"))
    for key in ("freq_new_pos_embed", "time_new_pos_embed"):
        if key not in state_dict:
            raise CheckpointError(f"PaSST weights lack {key!r}")
    frequency = state_dict["freq_new_pos_embed"]
    time = state_dict["time_new_pos_embed"]
    state_dict["freq_new_pos_embed"] = resample_grid(frequency, (config.num_frequency_patches, 1))
    state_dict["time_new_pos_embed"] = resample_grid(time, (1, config.num_time_positions))
    return _drop_mismatched_heads(state_dict, config.num_labels)


def deit_to_original_state_dict(state_dict: dict, config) -> dict:
    """DeiT-B distilled timm weights -> original MAEST key names for `config`'s grid.

    `pos_embed` `(1, 2 + G*G, D)`: its first two rows become `new_pos_embed`; the `(G, G)` grid is resampled
    bicubically to `(9, P)`, then `freq_new_pos_embed` = mean over time `(1, D, 9, 1)` and `time_new_pos_embed` =
    mean over frequency `(1, D, 1, P)`. `patch_embed.proj.weight` `(D, 3, 16, 16)` is summed over the RGB channels.
    """
    state_dict = dict(_unwrap(state_dict))
    if "pos_embed" not in state_dict:
        raise CheckpointError("DeiT weights lack 'pos_embed'")
    if "dist_token" not in state_dict:
        raise CheckpointError("DeiT weights lack 'dist_token': use a distilled DeiT (deit_base_distilled_*)")
    position = state_dict.pop("pos_embed")
    num_grid = position.shape[1] - 2
    side = int(round(num_grid**0.5))
    if side * side != num_grid:
        raise CheckpointError(f"DeiT pos_embed has {num_grid} grid positions, not a square grid")
    state_dict["new_pos_embed"] = position[:, :2]
    grid = position[:, 2:].transpose(1, 2).reshape(1, -1, side, side)
    grid = resample_grid(grid, (config.num_frequency_patches, config.num_time_positions))
    state_dict["freq_new_pos_embed"] = grid.mean(dim=3, keepdim=True)
    state_dict["time_new_pos_embed"] = grid.mean(dim=2, keepdim=True)
    patch = state_dict["patch_embed.proj.weight"]
    if patch.shape[1] != 1:
        state_dict["patch_embed.proj.weight"] = patch.sum(dim=1, keepdim=True)
    # DeiT heads: head (Linear) and head_dist; MAEST's head is LayerNorm + Linear (head.0, head.1).
    for key in list(state_dict):
        if key.startswith("head.") and not key.startswith(("head.0.", "head.1.")):
            state_dict["head.1." + key[len("head."):]] = state_dict.pop(key)
    return _drop_mismatched_heads(state_dict, config.num_labels)


def detect_init_format(state_dict: dict) -> str:
    state_dict = _unwrap(state_dict)
    keys = set(state_dict)
    if "pos_embed" in keys:
        return "deit"
    if {"freq_new_pos_embed", "time_new_pos_embed"} <= keys or any(k.startswith(("net.", "net_swa.")) for k in keys):
        return "passt"
    raise CheckpointError(
        f"cannot tell the layout of these weights (keys such as {sorted(keys)[:5]}); expected PaSST/MAEST "
        f"('freq_new_pos_embed') or DeiT ('pos_embed') key names"
    )


def load_initial_weights(model, source: str, init_format: str = "auto") -> dict:
    """Loads `source` into `model` (a `MAESTForAudioClassification`) for pre-training.

    Args:
        source: a MAEST directory / Hub id / original checkpoint, or a local PaSST or DeiT weight file.
        init_format: `auto`, `maest`, `passt` or `deit`.

    Returns:
        A report: `{"format", "missing", "unexpected"}` (the missing keys are re-initialized, e.g. a new head).
    """
    if init_format not in INIT_FORMATS:
        raise CheckpointError(f"init_format must be one of {INIT_FORMATS}, got {init_format!r}")
    path = Path(source).expanduser()
    if init_format == "maest" or (init_format == "auto" and not path.is_file()):
        loaded = load_maest(source)  # CheckpointError (one line) for anything unreadable
        converted = loaded.state_dict()
        fmt = "maest"
        if loaded.config.num_labels != model.config.num_labels:
            converted = {k: v for k, v in converted.items() if not k.startswith(("classifier.dense", "classifier.distillation_dense"))}
        ours = model.state_dict()
        for key in ("maest.embeddings.frequency_position_embeddings", "maest.embeddings.time_position_embeddings"):
            if key in converted and converted[key].shape != ours[key].shape:
                converted[key] = resample_grid(converted[key], tuple(ours[key].shape[-2:]))
    else:
        checkpoint = load_tensor_file(path)
        fmt = detect_init_format(checkpoint) if init_format == "auto" else init_format
        if fmt == "maest":
            fmt = "passt"
        original = (deit_to_original_state_dict if fmt == "deit" else passt_to_original_state_dict)(checkpoint, model.config)
        converted = original_to_maest_state_dict(original)
    ours = model.state_dict()
    shape_mismatch = [k for k, v in converted.items() if k in ours and ours[k].shape != v.shape]
    if shape_mismatch:
        details = ", ".join(f"{k}: {tuple(converted[k].shape)} vs {tuple(ours[k].shape)}" for k in shape_mismatch[:4])
        raise CheckpointError(f"{source}: weights do not fit the model's shape ({details})")
    result = model.load_state_dict(converted, strict=False)
    if result.unexpected_keys:
        raise CheckpointError(f"{source}: unexpected weights {result.unexpected_keys[:5]}")
    allowed_missing = ("classifier.",)
    missing_body = [k for k in result.missing_keys if not k.startswith(allowed_missing)]
    if missing_body:
        raise CheckpointError(f"{source}: the weights lack {len(missing_body)} body tensors, e.g. {missing_body[:5]}")
    if result.missing_keys:
        logger.info(f"initialized from {source} ({fmt}); new: {result.missing_keys}")
    return {"format": fmt, "missing": list(result.missing_keys), "unexpected": list(result.unexpected_keys)}


__all__ = [
    "deit_to_original_state_dict",
    "detect_init_format",
    "load_initial_weights",
    "passt_to_original_state_dict",
    "resample_grid",
]
