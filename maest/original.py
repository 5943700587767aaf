"""The original MAEST API (palonso/MAEST) on this package's classes, so that code written for it runs unchanged.

```python
from maest import get_maest

model = get_maest(arch="discogs-maest-30s-pw-129e")          # pretrained: local cache or the Hub
logits, embeddings = model(audio_16khz, transformer_block=6)   # per 30 s segment: (segments, 400), (segments, 2304)
activations, labels = model.predict_labels(audio_16khz)        # mean sigmoid over the segments, style names
```

The call accepts the original's input forms (see `OriginalMAEST.forward`). Underneath are this package's
`MAESTForAudioClassification` (the weights, `model.model`) and `MAESTFeatureExtractor` (the front-end,
`model.feature_extractor`).

Differences from the original, all deliberate:
- Audio goes through this package's Essentia-exact front-end (Essentia's `TensorflowInputMusiCNN`, the features MAEST
  was trained on). The original's torchaudio front-end frames with a periodic Hann window and reflection padding at
  the clip's edges and gives `1 + n // 256` frames for `n` samples; this one uses Essentia's symmetric window, zero
  padding and `1 + ceil(n / 256)` frames. The features differ slightly (the window alone by up to about 0.03 after
  normalization, docs/design.md, section 'Front-end'; the padding at the clip's edges), so audio-input logits and
  embeddings differ slightly from the original's; mel-spectrogram inputs give the original's results.
- A segment is the model's `max_length` frames (1876 for the 30 s models: all 187 time positions), where the original
  cuts segments of 1875 frames (186 positions).
- With a `transformer_block`, the logits are returned too (recent versions of the original return `None` for them).
- Inputs the original silently cuts (mel or audio batches longer than the model's length) raise `ModelInputError`,
  as do numpy arrays and empty tensors.
- A 2-D mel spectrogram shorter than one segment is one segment of its own length (the original fails on it).
"""


import torch
from torch import nn

from maest.utils.errors import MAESTError
from .feature_extraction import max_length_mismatch
from .inference.model import load_feature_extractor
from .modeling.conversion import ModelNotAvailableError, hub_unavailable_reason
from .modeling import (
    MAESTForAudioClassification,
    find_published,
    load_maest,
    pool_embedding_tokens,
    validate_block_index,
)


# The Hub organization of the released AST-format checkpoints (`mtg-upf/discogs-maest-30s-pw-129e`, ...).
ORIGINAL_HUB_ORGANIZATION = "mtg-upf"
DEFAULT_ARCH = "discogs-maest-30s-pw-129e"
# `transformer_block=-1` is the original's "no block": the logits and the pooled vector after the final norm.
FINAL_OUTPUT = -1


class ModelInputError(MAESTError, ValueError):
    """An input the original-API model cannot take (type, shape, length)."""


class ModelInputTypeError(ModelInputError, TypeError):
    """An input that is not a floating-point torch tensor."""


class OriginalSettingError(MAESTError, ValueError):
    """A `get_maest` setting this drop-in does not support."""


class OriginalMAEST(nn.Module):
    """A MAEST classifier called as the original `MAEST` model is.

    Attributes:
        model (`MAESTForAudioClassification`): the weights.
        feature_extractor (`MAESTFeatureExtractor`): the front-end for audio inputs; its `max_length` (the model's) is
            the segment length.
        labels (`list[str]`): the output names, in output order.
    """

    def __init__(self, model: MAESTForAudioClassification, feature_extractor):
        super().__init__()
        mismatch = max_length_mismatch(feature_extractor, model.config.max_length)
        if mismatch:
            raise OriginalSettingError(mismatch)
        self.model = model
        self.feature_extractor = feature_extractor

    @property
    def config(self):
        return self.model.config

    @property
    def labels(self) -> list[str]:
        id2label = self.config.id2label
        return [str(id2label.get(index, f"LABEL_{index}")) for index in range(self.config.num_labels)]

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # ------------------------------------------------------------------------------------------ inputs
    def _check_frames(self, num_frames: int, what: str) -> None:
        config = self.config
        if num_frames < config.patch_size:
            raise ModelInputError(
                f"{what} has {num_frames} frames; the model needs at least {config.patch_size} "
                f"({self.feature_extractor.frames_to_seconds(config.patch_size):.2f} s)"
            )
        if num_frames > config.max_length:
            raise ModelInputError(
                f"{what} has {num_frames} frames, more than the model's {config.max_length} "
                f"({self.feature_extractor.segment_seconds:.2f} s); pass one clip as 1-D audio (or one (96, time) mel "
                f"spectrogram) to split it into segments"
            )

    def _segments(self, frames: torch.Tensor, what: str) -> torch.Tensor:
        """(frames, mel) of one clip -> (segments, frames, mel): consecutive segments of the model's length, the
        partial last one dropped, as the original does; a clip shorter than one segment is one segment of its own
        length (the model takes any length up to its own)."""
        length = self.config.max_length
        if frames.shape[0] < length:
            self._check_frames(frames.shape[0], what)
            return frames[None]
        return self.feature_extractor.segment(frames, length, last_segment="drop")

    def _audio_frames(self, audio: torch.Tensor) -> torch.Tensor:
        """(clips, samples) or (samples,) 16 kHz audio -> (clips, frames, mel), unpadded."""
        return self.feature_extractor(
            audio, sampling_rate=self.feature_extractor.sampling_rate, padding=False, truncation=False
        )["input_values"]

    def input_values(self, x: torch.Tensor, melspectrogram_input: bool = False) -> torch.Tensor:
        """The model's `input_values` `(batch, frames, mel)` for any input form of `forward`."""
        if not torch.is_tensor(x):
            hint = "; convert it with torch.from_numpy(...)" if type(x).__module__ == "numpy" else ""
            kind = f"{type(x).__module__}.{type(x).__name__}"
            raise ModelInputTypeError(f"the input must be a torch.Tensor, got {kind}{hint}")
        if x.ndim == 0:
            raise ModelInputError("the input is a 0-d tensor (one number); expected audio or a mel spectrogram")
        if x.numel() == 0:
            raise ModelInputError(f"the input is empty (shape {tuple(x.shape)})")
        if not x.is_floating_point():
            raise ModelInputTypeError(f"the input must be floating-point, got {x.dtype}")
        num_mel_bins = self.config.num_mel_bins
        if x.ndim == 1:
            if melspectrogram_input:
                raise ModelInputError("a 1-D input is audio; melspectrogram_input=True needs (96, time) or more dims")
            frames = self._audio_frames(x)[0]
            return self._segments(frames, f"audio of {x.shape[0]} samples")
        if x.ndim == 2 and not melspectrogram_input:
            frames = self._audio_frames(x)
            self._check_frames(frames.shape[1], f"audio of shape {tuple(x.shape)} (batch, samples)")
            return frames
        if x.ndim == 2:
            mel = x[None]
        elif x.ndim == 3:
            mel = x
        elif x.ndim == 4:
            if x.shape[1] != 1:
                raise ModelInputError(f"a 4-D input must be (batch, 1, {num_mel_bins}, time), got {tuple(x.shape)}")
            mel = x[:, 0]
        else:
            raise ModelInputError(f"input of shape {tuple(x.shape)}: expected 1 to 4 dimensions")
        if mel.shape[1] != num_mel_bins:
            layout = {2: "(mel, time)", 3: "(batch, mel, time)", 4: "(batch, 1, mel, time)"}[x.ndim]
            raise ModelInputError(
                f"mel spectrogram of shape {tuple(x.shape)}: expected {layout} with {num_mel_bins} mel bands"
            )
        frames = mel.transpose(1, 2)  # the original's (mel, time) -> this package's (time, mel)
        if x.ndim == 2:
            return self._segments(frames[0], f"mel spectrogram of shape {tuple(x.shape)}")
        self._check_frames(frames.shape[1], f"mel spectrogram of shape {tuple(x.shape)}")
        return frames

    # ------------------------------------------------------------------------------------------ model
    def forward(
        self,
        x: torch.Tensor,
        transformer_block: int = FINAL_OUTPUT,
        return_self_attention: bool = False,
        melspectrogram_input: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and embeddings, as the original `MAEST.forward`.

        Args:
            x (`torch.Tensor`): one of
                - `(samples,)`: one 16 kHz clip, split into consecutive segments of the model's length (the partial
                  last segment is dropped, as the original does; a clip shorter than one segment is one segment);
                - `(batch, samples)` with `melspectrogram_input=False` (the default): a batch of 16 kHz clips, each
                  at most one segment long;
                - `(96, time)` with `melspectrogram_input=True`: one normalized log-mel spectrogram (Essentia's
                  `TensorflowInputMusiCNN` with MAEST's normalization), split into segments as 1-D audio is;
                - `(batch, 96, time)` or `(batch, 1, 96, time)`: a batch of mel spectrograms, each at most one
                  segment long.
            transformer_block (`int`): `-1` (the original's default): the embeddings are the pooled vector after the
                final norm, `(cls + dist) / 2`, of shape `(batch, hidden_size)`. `0 ... num_layers - 1`: the paper's
                embedding of that block (0-based; 6, the 7th of 12, is the paper's best), concat(cls, dist, mean of
                the patch tokens) without the final norm, of shape `(batch, 3 * hidden_size)` (2304).
            return_self_attention (`bool`): not supported (raises when true).
            melspectrogram_input (`bool`): whether a 2-D input is a mel spectrogram rather than a batch of audio.

        Returns:
            `(logits, embeddings)`: `logits` of shape `(batch, num_labels)` (before the sigmoid) and the embeddings;
            `batch` is the number of segments for a single clip. On the model's device.

        Raises:
            `ModelInputError` (a `MAESTError`): numpy arrays, empty tensors, integer tensors, wrong shapes, inputs
            shorter than one patch or (batches) longer than the model's length, and unknown blocks.
        """
        if return_self_attention:
            raise OriginalSettingError(
                "return_self_attention=True is not supported; use model.model(input_values, output_attentions=True)"
            )
        block = self._block(transformer_block)
        input_values = self.input_values(x, melspectrogram_input).to(self.device, self.model.dtype)
        encoder_output = self.model.maest(input_values, output_hidden_states=block is not None)
        logits = self.model.classifier(encoder_output.pooler_output)
        if block is None:
            return logits, encoder_output.pooler_output
        # hidden_states[0] is the embedding output, hidden_states[k + 1] the output of block k.
        return logits, pool_embedding_tokens(encoder_output.hidden_states[block + 1], ("cls", "dist", "mean"))

    def _block(self, transformer_block) -> int | None:
        """None for the final output, else the 0-based block."""
        if transformer_block == FINAL_OUTPUT and not isinstance(transformer_block, bool):
            return None
        depth = self.config.num_hidden_layers
        if isinstance(transformer_block, int) and transformer_block < 0:
            raise ModelInputError(
                f"transformer_block={transformer_block}: use -1 for the final output or a block in 0..{depth - 1}"
            )
        return validate_block_index(transformer_block, depth)

    @torch.no_grad()
    def predict_labels(self, x: torch.Tensor, melspectrogram_input: bool = False):
        """The sigmoid activations averaged over the segments of a clip (over the batch for batched inputs), and the
        label names, as the original's `predict_labels`.

        Returns:
            `(activations, labels)`: a numpy array of shape `(num_labels,)` and `labels` (`list[str]`).
        """
        logits, _ = self.forward(x, melspectrogram_input=melspectrogram_input)
        activations = torch.sigmoid(logits.float()).mean(dim=0)
        return activations.cpu().numpy(), self.labels


# Settings of the original `get_maest` that change the architecture or its use, with the only value this drop-in
# supports; other values raise instead of being silently ignored.
_FIXED_SETTINGS = {
    "in_channels": 1,
    "stride_f": 10,
    "stride_t": 10,
    "input_f": 96,
    "input_t": None,
    "u_patchout": 0,
    "s_patchout_f_indices": (),
    "s_patchout_t_indices": (),
    "distilled_type": "mean",
    "checkpoint_discard_head": False,
}


def get_maest(
    arch: str = DEFAULT_ARCH,
    pretrained: bool = True,
    n_classes: int | None = None,
    in_channels: int = 1,
    stride_f: int = 10,
    stride_t: int = 10,
    input_f: int = 96,
    input_t: int | None = None,
    u_patchout: int = 0,
    s_patchout_t: int = 0,
    s_patchout_f: int = 0,
    s_patchout_f_indices=(),
    s_patchout_f_interleaved: int = 0,
    s_patchout_t_indices=(),
    s_patchout_t_interleaved: int = 0,
    distilled_type: str = "mean",
    checkpoint: str | None = None,
    checkpoint_swa_weigts: bool = True,
    checkpoint_discard_head: bool = False,
) -> OriginalMAEST:
    """A released MAEST model by its original name, called as the original's (`OriginalMAEST.forward`).

    Args:
        arch: one of the eight released names (`maest.modeling.PUBLISHED_CHECKPOINTS`): `discogs-maest-5s-pw-129e`,
            `-10s-fs-129e`, `-10s-pw-129e`, `-10s-dw-75e`, `-20s-pw-129e`, `-30s-pw-129e`, `-30s-pw-73e-ts`,
            `-30s-pw-129e-519l`.
        pretrained: load the released weights: the AST-format Hub repo `mtg-upf/<arch>` (from the local Hugging Face
            cache when offline). `False`: random weights of that shape, with its style names; no network.
        n_classes: the number of outputs; must be the released model's (400, or 519 for `-519l`) when pretrained.
        s_patchout_t_interleaved, s_patchout_f_interleaved: inference patchout: keep every k-th patch column / row
            (0 or 1: all).
        s_patchout_t, s_patchout_f: structured patchout in training (random columns / rows dropped).
        checkpoint: weights to load instead of the Hub's: anything `maest.modeling.load_maest` reads (an original
            `*.ckpt` or `*-swa.ckpt` file of the shape of `arch`, a MAEST or AST-format directory or a Hub id, whose
            own config gives the shape).
        checkpoint_swa_weigts: take the SWA weights of a training checkpoint (the published ones).
        in_channels, stride_f, stride_t, input_f, input_t, u_patchout, s_patchout_f_indices, s_patchout_t_indices,
            distilled_type, checkpoint_discard_head: the original's; only their defaults are supported.

    Returns:
        `OriginalMAEST` in eval mode (call `.train()` to fine-tune).

    Raises:
        `UnknownCheckpointError` for another `arch`, `ModelNotAvailableError` when pretrained weights are not cached
        and the Hub cannot be used, `CheckpointError` for an unreadable `checkpoint`, `OriginalSettingError` for
        unsupported settings (all one-line `MAESTError`s).
    """
    given = dict(
        in_channels=in_channels, stride_f=stride_f, stride_t=stride_t, input_f=input_f, input_t=input_t,
        u_patchout=u_patchout, s_patchout_f_indices=tuple(s_patchout_f_indices or ()),
        s_patchout_t_indices=tuple(s_patchout_t_indices or ()), distilled_type=distilled_type,
        checkpoint_discard_head=checkpoint_discard_head,
    )
    for name, value in given.items():
        if value != _FIXED_SETTINGS[name]:
            raise OriginalSettingError(
                f"get_maest({name}={value!r}) is not supported by this package's drop-in "
                f"(only {_FIXED_SETTINGS[name]!r})"
            )
    published = find_published(arch)
    overrides = dict(
        train_patchout_time=int(s_patchout_t),
        train_patchout_freq=int(s_patchout_f),
        inference_patchout_time_stride=max(1, int(s_patchout_t_interleaved)),
        inference_patchout_freq_stride=max(1, int(s_patchout_f_interleaved)),
    )
    if checkpoint is not None:
        # As in the original, `arch` gives the shape of a checkpoint file (the weights do not record the head count).
        model = load_maest(checkpoint, preset=published.checkpoint, use_swa=checkpoint_swa_weigts)
        source = str(checkpoint)
    elif pretrained:
        source = f"{ORIGINAL_HUB_ORGANIZATION}/{published.checkpoint}"
        _check_cached(source, arch)
        model = load_maest(source)
    else:
        model = MAESTForAudioClassification(published.config())
        source = ""
    if n_classes is not None and n_classes != model.config.num_labels:
        if checkpoint is not None or pretrained:
            raise OriginalSettingError(
                f"get_maest(arch={arch!r}, n_classes={n_classes}): the pretrained model has {model.config.num_labels} "
                f"outputs; fine-tune a new head with `maest finetune` or pretrained=False"
            )
        model = MAESTForAudioClassification(published.config(num_labels=n_classes, id2label=None, label2id=None))
    for name, value in overrides.items():
        setattr(model.config, name, value)
    return OriginalMAEST(model, load_feature_extractor(source, model.config.max_length)).eval()


def _check_cached(repo_id: str, arch: str) -> None:
    cause = hub_unavailable_reason(repo_id)
    if cause is not None:
        raise ModelNotAvailableError(
            f"get_maest(arch={arch!r}): the pretrained weights ({repo_id}) are not in the local Hugging Face cache and "
            f"{cause}; download them once with network access, pass checkpoint=PATH, or use pretrained=False for "
            f"random weights"
        )


__all__ = ["ModelInputError", "ModelInputTypeError", "OriginalMAEST", "OriginalSettingError", "get_maest"]
