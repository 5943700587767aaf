"""The HEAR 2021 API (https://hearbenchmark.com/hear-api.html) for MAEST: `hear-validator maest.hear --model PATH`.

```python
import maest.hear

model = maest.hear.load_model("path/to/maest-dir")                   # or an original *.ckpt, or a Hub id
embeddings, timestamps = maest.hear.get_timestamp_embeddings(audio, model)  # (n, T, 2304), (n, T) ms
scene = maest.hear.get_scene_embeddings(audio, model)                 # (n, 2304)
```

`audio` is a `(n, samples)` float tensor at `model.sample_rate` (16 kHz). MAEST embeds segments of its input length
(30.016 s for the 30 s models: `feature_extractor.segment_seconds`), so the timestamp embeddings are one per segment:
the paper's embedding (block `config.embedding_block`, the 7th of 12 by default; concat of the cls token, the
distillation token and the mean of the patch tokens, without the final norm) of each consecutive, non-overlapping
segment. Segments come from the project's front-end (`MAESTFeatureExtractor(..., return_segments=True)`): a clip
shorter than one segment is one segment padded in the log-mel domain (as `maest embed` does), and a partial last
segment is kept, padded, when it holds at least half a segment of audio.

Timestamps are the centers of the segments' spans, `segment_start_seconds(k) + segment_seconds / 2`, in
milliseconds: 15008 ms, 45024 ms, ... for the 30 s models (also for a padded segment: the center of its span, not of
its audio). The scene embedding is the mean of a clip's timestamp embeddings (the paper's track embedding: segment
embeddings averaged).
"""

import warnings

import torch
from torch import nn

from maest.utils.errors import MAESTError
from .feature_extraction import MAESTFeatureExtractor, max_length_mismatch
from .modeling import MAESTForAudioClassification, find_published, load_maest
from .modeling.modeling_maest import parse_embedding_tokens
from .inference.model import load_feature_extractor
from .original import DEFAULT_ARCH


# The shape `load_model("")` gives random weights of.
RANDOM_WEIGHTS_ARCH = DEFAULT_ARCH


class HEARInputError(MAESTError, ValueError):
    """Audio the HEAR API cannot take (type, shape)."""


class HEARModel(nn.Module):
    """A MAEST model with the attributes of the HEAR API.

    Attributes:
        sample_rate (`int`): 16000.
        scene_embedding_size (`int`), timestamp_embedding_size (`int`): `len(tokens) * hidden_size` (2304).
        model (`MAESTForAudioClassification`): the weights.
        feature_extractor (`MAESTFeatureExtractor`): the front-end; its `max_length` is the segment length.
        block (`int`): the 0-based block whose output is embedded.
        tokens (`tuple[str, ...]`): the pooled tokens, in order.
        batch_size (`int`): segments per forward pass.
    """

    def __init__(self, model, feature_extractor, block: int | None = None, tokens="cls,dist,mean", batch_size: int = 8):
        super().__init__()
        mismatch = max_length_mismatch(feature_extractor, model.config.max_length)
        if mismatch:
            raise HEARInputError(mismatch)
        self.model = model
        self.feature_extractor = feature_extractor
        self.block = model.config.block_index(block)
        self.tokens = parse_embedding_tokens(tokens)
        self.batch_size = int(batch_size)
        self.sample_rate = int(feature_extractor.sampling_rate)
        self.scene_embedding_size = len(self.tokens) * int(model.config.hidden_size)
        self.timestamp_embedding_size = self.scene_embedding_size

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def segment_timestamps_ms(self, num_segments: int) -> torch.Tensor:
        """The centers of the first `num_segments` segments' spans, in milliseconds, float32 on the model's device."""
        extractor = self.feature_extractor
        half = extractor.segment_seconds / 2
        centers = [1000.0 * (extractor.segment_start_seconds(index) + half) for index in range(num_segments)]
        return torch.tensor(centers, dtype=torch.float32, device=self.device)

    @torch.no_grad()
    def embed_segments(self, segments: torch.Tensor) -> torch.Tensor:
        """(segments, frames, mel) features -> (segments, embedding_size) float32 on the model's device."""
        encoder = self.model.maest
        parts = [
            encoder.embed(batch.to(self.device, self.model.dtype), block=self.block, tokens=self.tokens).float()
            for batch in segments.split(self.batch_size)
        ]
        return torch.cat(parts)


def load_model(
    model_file_path: str = "", block: int | None = None, tokens="cls,dist,mean", batch_size: int = 8
) -> HEARModel:
    """A MAEST model for the HEAR API.

    Args:
        model_file_path: anything `maest.modeling.load_maest` reads: a MAEST directory (`maest convert` output), an
            AST-format MAEST directory or Hub id (`mtg-upf/discogs-maest-30s-pw-129e`), or an original checkpoint
            file. Empty: random weights of the 30 s model's shape (seeded, no network), with a warning; for
            validating the API only.
        block: 0-based block to embed (`config.embedding_block` by default: the paper's 7th of 12).
        tokens: the pooled tokens (`cls`, `dist`, `mean`, or `"cda"`-style letters).
        batch_size: segments per forward pass.

    Raises:
        `CheckpointError` (a one-line `MAESTError`) for a path or repo that is not a readable MAEST checkpoint.
    """
    if not model_file_path:
        warnings.warn(
            f"maest.hear.load_model: no model file given, so the model has RANDOM weights of the {RANDOM_WEIGHTS_ARCH} "
            f"shape; its embeddings mean nothing (use it to validate the API). Pass a MAEST directory, an original "
            f"checkpoint or a Hub id.",
            UserWarning,
            stacklevel=2,
        )
        config = find_published(RANDOM_WEIGHTS_ARCH).config()
        with torch.random.fork_rng(devices=[]):  # the same random model every time, without touching the caller's RNG
            torch.manual_seed(0)
            model = MAESTForAudioClassification(config)
        feature_extractor = MAESTFeatureExtractor(max_length=config.max_length)
    else:
        model = load_maest(model_file_path)
        feature_extractor = load_feature_extractor(str(model_file_path), model.config.max_length)
    return HEARModel(model, feature_extractor, block=block, tokens=tokens, batch_size=batch_size).eval()


def _check_audio(audio) -> None:
    if not torch.is_tensor(audio):
        raise HEARInputError(f"audio must be a torch.Tensor of shape (n_sounds, n_samples), got {type(audio).__name__}")
    if audio.ndim != 2 or audio.shape[0] == 0 or audio.shape[1] == 0:
        raise HEARInputError(
            f"audio must have shape (n_sounds, n_samples) with at least one sample, got {tuple(audio.shape)}"
        )
    if not audio.is_floating_point():
        raise HEARInputError(f"audio must be floating-point in [-1, 1], got {audio.dtype}")


def get_timestamp_embeddings(audio: torch.Tensor, model: HEARModel) -> tuple[torch.Tensor, torch.Tensor]:
    """One embedding per segment of each clip, and the segments' center times.

    Args:
        audio (`torch.Tensor` of shape `(n_sounds, n_samples)`): 16 kHz audio in [-1, 1].
        model (`HEARModel`): from `load_model`.

    Returns:
        `(embeddings, timestamps)`: float32 tensors of shapes `(n_sounds, n_segments, timestamp_embedding_size)` and
        `(n_sounds, n_segments)` (milliseconds), on the model's device.
    """
    _check_audio(audio)
    features = model.feature_extractor(
        audio.to(model.device), sampling_rate=model.sample_rate, return_segments=True, last_segment="auto"
    )
    # Every clip has the same length, so the same number of segments, in clip order.
    num_sounds = audio.shape[0]
    num_segments = features["input_values"].shape[0] // num_sounds
    embeddings = model.embed_segments(features["input_values"]).reshape(num_sounds, num_segments, -1)
    timestamps = model.segment_timestamps_ms(num_segments).expand(num_sounds, num_segments).contiguous()
    return embeddings, timestamps


def get_scene_embeddings(audio: torch.Tensor, model: HEARModel) -> torch.Tensor:
    """One embedding per clip: the mean of its segment (timestamp) embeddings.

    Returns:
        `torch.Tensor` of shape `(n_sounds, scene_embedding_size)`, float32 on the model's device.
    """
    embeddings, _ = get_timestamp_embeddings(audio, model)
    return embeddings.mean(dim=1)


__all__ = ["HEARInputError", "HEARModel", "get_scene_embeddings", "get_timestamp_embeddings", "load_model"]
