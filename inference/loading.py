"""Loading a MAEST model for inference by name: the weights (`maest.modeling.load_maest`, the one loader of every
published layout), its front-end, precision and device, and the back-end that runs it.

This module sits above `maest.inference.model` (what a loaded model is) and `maest.inference.backends` (exported
graphs and their cache), and chooses between them, so that imports between the three go one way: model <- backends
<- loading. `export_onnx` (load by name, then export) lives here for the same reason.
"""

from pathlib import Path

import torch

from maest.modeling import load_maest, parse_embedding_tokens

from .backends import load_backend, resolve_backend
from .model import DEFAULT_BACKEND, DEFAULT_MODEL, InferenceModel, InferenceSettingError, load_feature_extractor
from .onnx_export import export_graph
from .precision import compile_model, prepare_model, resolve_dtype


def load_model(
    name_or_path: str = DEFAULT_MODEL,
    device: str = "cpu",
    dtype: str = "auto",
    inference_patchout_time_stride: int | None = None,
    backend: str = DEFAULT_BACKEND,
    compile: bool = False,
) -> InferenceModel:
    """Loads a MAEST classifier for inference, through `maest.modeling.load_maest` (the one loader of every
    published layout).

    Args:
        name_or_path: a MAEST directory or Hub repo, an AST-format MAEST repo or directory (`mtg-upf/discogs-maest-*`,
            read by `from_pretrained` through the checkpoint conversion mapping), or an original checkpoint file
            (`*.ckpt`, `*.pt`). Defaults to the 519-style 30 s model.
        device: ``"cpu"`` or ``"cuda"``.
        dtype: ``"auto"`` (default: bfloat16 on a CUDA GPU that supports it, else float32), ``"float32"``,
            ``"bfloat16"`` or ``"int8"`` (see `maest.inference.precision.prepare_model`).
        inference_patchout_time_stride: keep every k-th patch column at inference (1: all, the default of the
            model's config when None).
        backend: what runs the model: ``"torch"`` (default), ``"onnxruntime"`` or ``"openvino"`` (an exported graph,
            CPU only, built on first use and cached; see `maest.inference.backends`), or ``"auto"`` (the fastest
            installed one for `dtype` on `device`). For an exported back-end the torch model is loaded at float32
            (the graph's source) and the graph runs `dtype`.
        compile: compile the torch model (`torch.compile(fullgraph=True)`; the first batch of each size compiles).

    Raises:
        ModelNotAvailableError: a Hub id that is not cached while offline (or without network).
        CheckpointNotFoundError: a local path that does not exist (a `FileNotFoundError`).
        CheckpointError: anything that is not a readable MAEST checkpoint, or whose weights do not fill the model
            (never random weights).
        BackendError: an unknown back-end, an exported back-end on CUDA, or a dtype the back-end does not run.
    """
    dtype = resolve_dtype(dtype, device)
    chosen = resolve_backend(backend, dtype, device)  # before the weights are read: a wrong choice fails at once

    name = str(name_or_path)
    local = Path(name).expanduser()
    # A path that exists is read from disk; anything else is left to `load_maest`, the one judge of what is a Hub id
    # and what a missing path.
    source = str(local) if local.exists() else name
    model = load_maest(source)
    if inference_patchout_time_stride is not None:
        if int(inference_patchout_time_stride) < 1:
            raise InferenceSettingError(f"inference_patchout_time_stride must be >= 1, got {inference_patchout_time_stride}")
        model.config.inference_patchout_time_stride = int(inference_patchout_time_stride)
    feature_extractor = load_feature_extractor(source, model.config.max_length)
    torch_dtype = dtype if chosen == "torch" else "float32"  # an exported graph is made from the float32 model
    model = prepare_model(model, dtype=torch_dtype, device=device)
    if compile and chosen == "torch":
        compile_model(model)
    inference_model = InferenceModel(model, feature_extractor, name, torch.device(device), torch_dtype)
    # The torch model at `dtype` is ready as it is; an exported back-end builds on the float32 one.
    return inference_model if chosen == "torch" else load_backend(inference_model, chosen, dtype)


def export_onnx(
    model_name_or_path,
    out,
    block: int | None = None,
    tokens="cls,dist,mean",
    inference_patchout_time_stride: int | None = None,
    opset_version: int | None = None,
    overwrite: bool = False,
) -> Path:
    """Exports a MAEST classifier to ONNX with dynamic batch and frame axes, outputs `logits` and `embedding`.

    Args:
        model_name_or_path: a MAEST directory (or anything `load_model` takes).
        out: the `.onnx` file to write.
        block / tokens: the embedding output (`config.embedding_block` and all three tokens by default).
        inference_patchout_time_stride: keep every k-th patch column (fixed in the graph).
        overwrite: replace an existing `out` (refused otherwise: it may be anything the user keeps there).

    Returns:
        The written path.
    """
    # Checked before the model is loaded, so that a typo or a taken name fails at once.
    try:
        parse_embedding_tokens(tokens)
    except ValueError as error:
        raise InferenceSettingError(str(error)) from error
    out_path = Path(out)
    if out_path.is_dir():
        raise InferenceSettingError(f"{out}: is a folder; name the .onnx file to write")
    if out_path.exists() and not overwrite:
        raise InferenceSettingError(f"{out}: already exists; pass --overwrite to replace it")
    if out_path.parent.exists() and not out_path.parent.is_dir():
        raise InferenceSettingError(f"{out}: {out_path.parent} is a file, not a folder")
    inference_model = load_model(
        model_name_or_path, device="cpu", dtype="float32", inference_patchout_time_stride=inference_patchout_time_stride
    )
    return export_graph(
        inference_model.model,
        out,
        inference_model.resolve_block(block),
        tokens,
        example_frames=inference_model.segment_frames,
        opset_version=opset_version,
    )


__all__ = ["export_onnx", "load_model"]
