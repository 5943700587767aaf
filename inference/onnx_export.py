"""ONNX export of MAEST for deployment outside Python (`maest export-onnx MODEL_DIR OUT.onnx`) and for the ONNX Runtime
and OpenVINO back-ends (`maest.inference.backends`).

The graph takes `input_values` of shape `(batch, frames, 96)` (dynamic batch and frame count, frames from 16 up to
the trained length; the features of `MAESTFeatureExtractor`) and returns, by `outputs`, `logits` `(batch,
num_labels)` (apply a sigmoid for the scores) and/or `embedding` `(batch, len(tokens) * hidden_size)`, the paper's
embedding of one block. Exported with `torch.export` (the dynamo exporter); inference patchout is fixed at export time.
"""

import copy
from pathlib import Path

import torch
from torch import nn

from maest.modeling import parse_embedding_tokens, pool_embedding_tokens


# What an exported graph returns: both outputs, or only the one a job needs (an embedding-only graph runs only the
# blocks up to the embedding's, as `MAESTModel.embed` does).
GRAPH_OUTPUTS = {"scores,embedding": ("logits", "embedding"), "scores": ("logits",), "embedding": ("embedding",)}


class MAESTExportWrapper(nn.Module):
    """MAEST with plain tensor outputs: `(logits, embedding)`, `(logits,)` or `(embedding,)` by `outputs`."""

    def __init__(self, model, block: int, tokens=("cls", "dist", "mean"), outputs: str = "scores,embedding"):
        super().__init__()
        if outputs not in GRAPH_OUTPUTS:
            raise ValueError(f"outputs must be one of {', '.join(GRAPH_OUTPUTS)}, got {outputs!r}")
        self.model = model
        self.block = block
        self.tokens = tuple(tokens)
        self.outputs = outputs

    def forward(self, input_values: torch.Tensor):
        if self.outputs == "embedding":
            return (self.model.maest.embed(input_values, block=self.block, tokens=self.tokens),)
        if self.outputs == "scores":
            return (self.model(input_values).logits,)
        outputs = self.model(input_values, output_hidden_states=True)
        return outputs.logits, pool_embedding_tokens(outputs.hidden_states[self.block + 1], self.tokens)


def export_graph(
    model: nn.Module,
    out,
    block: int,
    tokens=("cls", "dist", "mean"),
    outputs: str = "scores,embedding",
    example_frames: int | None = None,
    opset_version: int | None = None,
) -> Path:
    """Exports a float32 `MAESTForAudioClassification` (at its config's inference patchout strides) to one ONNX file.

    Args:
        model: the model; it is not modified (a copy with eager attention is traced).
        out: the `.onnx` file to write (its folder is created).
        block: 0-based block of the embedding output; tokens: its pooled tokens.
        outputs: one of `GRAPH_OUTPUTS`.
        example_frames: frames of the traced example (`config.max_length` by default); batch and frames stay dynamic.

    Returns:
        The written path.
    """
    # The exporter traces one attention implementation; eager attention is plain matmuls and softmax in any opset.
    model = copy.deepcopy(model).float().eval()
    model.set_attn_implementation("eager")
    wrapper = MAESTExportWrapper(model, block, parse_embedding_tokens(tokens), outputs).eval()
    example = torch.zeros(2, example_frames or model.config.max_length, model.config.num_mel_bins)
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
        output_names=list(GRAPH_OUTPUTS[outputs]),
        dynamic_shapes={"input_values": {0: dynamic, 1: dynamic}},
        external_data=False,
        verbose=False,
        **kwargs,
    )
    return out


__all__ = ["GRAPH_OUTPUTS", "MAESTExportWrapper", "export_graph"]
