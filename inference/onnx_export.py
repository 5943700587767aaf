"""ONNX export of MAEST for deployment outside Python (`maest export-onnx MODEL_DIR OUT.onnx`).

The graph takes `input_values` of shape `(batch, frames, 96)` (dynamic batch and frame count, frames from 16 up to
the trained length; the features of `MAESTFeatureExtractor`) and returns `logits` `(batch, num_labels)` (apply a
sigmoid for the scores) and `embedding` `(batch, len(tokens) * hidden_size)`, the paper's embedding of one block.
Exported with `torch.export` (the dynamo exporter); inference patchout is fixed at export time.
"""

from pathlib import Path

import torch
from torch import nn

from maest.modeling import pool_embedding_tokens


class MAESTExportWrapper(nn.Module):
    """MAEST with plain tensor outputs: `(logits, embedding)`."""

    def __init__(self, model, block: int, tokens=("cls", "dist", "mean")):
        super().__init__()
        self.model = model
        self.block = block
        self.tokens = tokens

    def forward(self, input_values: torch.Tensor):
        outputs = self.model(input_values, output_hidden_states=True)
        embedding = pool_embedding_tokens(outputs.hidden_states[self.block + 1], self.tokens)
        return outputs.logits, embedding


def export_onnx(
    model_name_or_path,
    out,
    block: int | None = None,
    tokens="cls,dist,mean",
    inference_patchout_time_stride: int | None = None,
    opset_version: int | None = None,
) -> Path:
    """Exports a MAEST classifier to ONNX with dynamic batch and frame axes.

    Args:
        model_name_or_path: a MAEST directory (or anything `load_model` takes).
        out: the `.onnx` file to write.
        block / tokens: the embedding output (`config.embedding_block` and all three tokens by default).
        inference_patchout_time_stride: keep every k-th patch column (fixed in the graph).

    Returns:
        The written path.
    """
    from .model import load_model

    inference_model = load_model(model_name_or_path, device="cpu", dtype="float32")
    config = inference_model.config
    if inference_patchout_time_stride is not None:
        inference_model.inference_patchout_time_stride = inference_patchout_time_stride
    # The exporter traces one attention implementation; eager attention is plain matmuls and softmax in any opset.
    config._attn_implementation = "eager"
    from maest.modeling import parse_embedding_tokens

    wrapper = MAESTExportWrapper(inference_model.model, inference_model.resolve_block(block), parse_embedding_tokens(tokens)).eval()
    example = torch.zeros(2, inference_model.segment_frames, config.num_mel_bins)
    dynamic = torch.export.Dim.DYNAMIC
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    kwargs = {} if opset_version is None else {"opset_version": opset_version}
    torch.onnx.export(
        wrapper,
        (example,),
        str(out),
        dynamo=True,
        input_names=["input_values"],
        output_names=["logits", "embedding"],
        dynamic_shapes={"input_values": {0: dynamic, 1: dynamic}},
        external_data=False,
        verbose=False,
        **kwargs,
    )
    return out


__all__ = ["MAESTExportWrapper", "export_onnx"]
