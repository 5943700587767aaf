"""A MAEST model ready for inference (`InferenceModel`: the model at its precision and device, with its front-end)
and the front-end that goes with a model's folder. Loading one by name, back-end included, is `maest.inference.loading`
(above both this module and `maest.inference.backends`, so that imports go one way)."""

import hashlib
import json
import weakref
from dataclasses import dataclass
from pathlib import Path

import torch

from maest.feature_extraction import MAESTFeatureExtractor, max_length_mismatch
from maest.modeling import pool_embedding_tokens, validate_block_index
from maest.modeling.conversion import ModelNotAvailableError
from maest.modeling.modeling_maest import parse_embedding_tokens
from maest.utils.constants import DEFAULT_BACKEND, DEFAULT_MODEL
from maest.utils.errors import MAESTError

from .precision import input_dtype


# The default model, and what runs a model unless asked otherwise (`--backend`; see `maest.inference.backends` and
# README "Speed"): defined in `maest.utils.constants`, which the CLI reads too.


class InferenceSettingError(MAESTError, ValueError):
    """An inference setting the model cannot run with."""


# ---------------------------------------------------------------------------------------------------- identity
# Config fields that say where a model came from or how one run uses it, not what it computes: left out of its
# identity (the run's strides and block are recorded on their own).
_CONFIG_FIELDS_NOT_IDENTITY = (
    "_name_or_path", "_commit_hash", "transformers_version", "dtype", "torch_dtype", "architectures", "auto_map",
    "inference_patchout_time_stride", "inference_patchout_freq_stride", "embedding_block",
    "output_attentions", "output_hidden_states", "return_dict",
)  # fmt: skip
_digests = weakref.WeakKeyDictionary()  # model -> (state stamp, digest): computed once per loaded model


def _update_digest(digest, name: str, value) -> None:
    if isinstance(value, torch.Tensor):
        if value.is_quantized:  # torch's int8 Linears: their integer weights and scales are their content
            value = value.dequantize()
        digest.update(f"{name}:{tuple(value.shape)}".encode())
        array = value.detach().to("cpu", torch.float32).contiguous().numpy()
        digest.update(memoryview(array).cast("B"))
    elif isinstance(value, (tuple, list)):
        for index, item in enumerate(value):
            _update_digest(digest, f"{name}.{index}", item)
    else:
        digest.update(f"{name}={value}".encode())


def weights_digest(model: torch.nn.Module) -> str:
    """The identity of a model by content: a SHA-256 digest of its weights (names, shapes, values as float32) and of
    the config fields that change what it computes (not where it was loaded from). Two loads of one directory, or of
    two copies, give one digest; a weight file changed in place gives another. Recorded in every collection output's
    settings and in the graph cache's keys. Computed once per loaded model (about 0.3 s for the 30 s model), again
    when its tensors change."""
    config = {
        key: value for key, value in json.loads(model.config.to_json_string(use_diff=False)).items()
        if key not in _CONFIG_FIELDS_NOT_IDENTITY
    }  # fmt: skip
    tensors = [*model.parameters(), *model.buffers()]
    stamp = (json.dumps(config, sort_keys=True), tuple((t.data_ptr(), t._version) for t in tensors))
    cached = _digests.get(model)
    if cached is not None and cached[0] == stamp:
        return cached[1]
    digest = hashlib.sha256(stamp[0].encode())
    for name, value in model.state_dict().items():
        _update_digest(digest, name, value)
    _digests[model] = (stamp, digest.hexdigest())
    return digest.hexdigest()


@dataclass
class InferenceModel:
    """A MAEST classifier prepared for inference, with the front-end that makes its inputs.

    Attributes:
        model: `MAESTForAudioClassification` in eval mode at `dtype` on `device`.
        feature_extractor: `MAESTFeatureExtractor` whose `max_length` is the segment length.
        name: what the model was loaded from (a Hub id or a directory).
    """

    model: torch.nn.Module
    feature_extractor: object
    name: str
    device: torch.device
    dtype: str

    # What runs `run`: torch here; `maest.inference.backends.ExportedInferenceModel` runs exported graphs.
    backend = "torch"

    @property
    def weights_digest(self) -> str:
        """The identity of the model that runs, by content (`weights_digest`), as recorded in outputs' settings."""
        return weights_digest(self.model)

    @property
    def config(self):
        return self.model.config

    @property
    def segment_frames(self) -> int:
        return self.feature_extractor.max_length

    @property
    def segment_seconds(self) -> float:
        """Audio per segment (frames are `hop` samples apart): 30.016 s for the 30 s model."""
        return self.segment_frames * self.feature_extractor.hop_size / self.feature_extractor.sampling_rate

    @property
    def labels(self) -> list[str]:
        id2label = self.config.id2label
        return [str(id2label.get(index, id2label.get(str(index), f"LABEL_{index}"))) for index in range(self.config.num_labels)]

    @property
    def inference_patchout_time_stride(self) -> int:
        return int(self.config.inference_patchout_time_stride)

    @inference_patchout_time_stride.setter
    def inference_patchout_time_stride(self, stride: int) -> None:
        if int(stride) < 1:
            raise InferenceSettingError(f"inference_patchout_time_stride must be >= 1, got {stride}")
        # The embeddings read the (shared) config at every forward pass.
        self.config.inference_patchout_time_stride = int(stride)

    def resolve_block(self, block: int | None) -> int:
        """The 0-based block index (`config.embedding_block` for None; negative values count from the end)."""
        return validate_block_index(self.config.embedding_block if block is None else block, self.config.num_hidden_layers)

    def prepare(self, scores: bool = True, embedding: bool = False, block=None, tokens="cls,dist,mean") -> None:
        """Gets ready for `run` with these arguments (nothing for torch; an exported back-end builds its graph)."""

    @torch.inference_mode()
    def run(self, segments: torch.Tensor, scores: bool = True, embedding: bool = False, block=None, tokens="cls,dist,mean"):
        """Runs the model on a batch of segments.

        Args:
            segments (`torch.Tensor` of shape `(batch, segment_frames, 96)`): features from the feature extractor.
            scores: return the sigmoid activations of the tagging head.
            embedding: return the paper's embedding of `block` pooled over `tokens`.

        Returns:
            `dict` with `"scores"` of shape `(batch, num_labels)` and/or `"embedding"` of shape
            `(batch, len(tokens) * hidden_size)`, float32 on CPU.
        """
        inputs = segments.to(self.device, dtype=input_dtype(self.dtype), non_blocking=True)
        outputs = {}
        if scores:
            block_index = self.resolve_block(block) if embedding else None
            result = self.model(inputs, output_hidden_states=embedding)
            outputs["scores"] = torch.sigmoid(result.logits.float()).cpu()
            if embedding:
                hidden_state = result.hidden_states[block_index + 1]
                outputs["embedding"] = pool_embedding_tokens(hidden_state, tokens).float().cpu()
        elif embedding:
            outputs["embedding"] = self.model.maest.embed(inputs, block=self.resolve_block(block), tokens=tokens).float().cpu()
        return outputs


def load_feature_extractor(source: str, max_length: int):
    """The front-end for the model at `source` (a path or a Hub id) whose segments are `max_length` frames.

    MAEST directories carry their own front-end settings; everything else (the published AST-format repos carry an
    older extractor, with a periodic Hann window, that differs from the training features; Hub ids; checkpoint files)
    gets the Essentia-exact default.
    """
    if not source:
        return MAESTFeatureExtractor(max_length=max_length)
    source = Path(source).expanduser()
    config_file = source / "config.json"
    preprocessor_file = source / "preprocessor_config.json"
    if config_file.is_file() and preprocessor_file.is_file():
        if json.loads(config_file.read_text()).get("model_type") == "maest":
            feature_extractor = MAESTFeatureExtractor.from_pretrained(source)
            mismatch = max_length_mismatch(feature_extractor, max_length)
            if mismatch:
                raise ValueError(f"{source}: {mismatch}")
            return feature_extractor
    return MAESTFeatureExtractor(max_length=max_length)


__all__ = [
    "DEFAULT_BACKEND",
    "DEFAULT_MODEL",
    "InferenceModel",
    "InferenceSettingError",
    "ModelNotAvailableError",
    "load_feature_extractor",
    "parse_embedding_tokens",
]
