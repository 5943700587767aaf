"""PyTorch MAEST (Music Audio Efficient Spectrogram Transformer).

MAEST (Alonso-Jiménez, Serra, Bogdanov, ISMIR 2023) is a PaSST-style spectrogram transformer. Its encoder blocks are
exactly the pre-norm ViT/AST blocks of transformers, which this file reuses; what MAEST adds lives here: separate
frequency and time position embeddings (so any input up to the trained length works), structured patchout in
training, deterministic patchout at inference, a LayerNorm + Linear head on the mean of the cls and distillation
tokens, and the paper's block embeddings.

This file imports nothing from the `maest` package besides its configuration, so that saved directories can carry it
as remote code (`trust_remote_code=True`).
"""

from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutputWithPooling, SequenceClassifierOutput
from transformers.models.audio_spectrogram_transformer.modeling_audio_spectrogram_transformer import (
    ASTAttention,
    ASTLayer,
    ASTPatchEmbeddings,
)
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs, logging
from transformers.utils.generic import can_return_tuple, merge_with_config_defaults
from transformers.utils.output_capturing import capture_outputs, maybe_install_capturing_hooks

from .configuration_maest import MAESTConfig


logger = logging.get_logger(__name__)

# The embedding token sets of the paper's poster: c(ls), d(ist), a(verage of the patch tokens).
EMBEDDING_TOKENS = {"c": "cls", "d": "dist", "a": "mean", "cls": "cls", "dist": "dist", "mean": "mean"}


def parse_embedding_tokens(tokens) -> tuple[str, ...]:
    """Normalizes a token set: `"cda"`, `"cls,dist,mean"` or `("cls", "mean")` -> `("cls", "dist", "mean")`."""
    if isinstance(tokens, str):
        if "," in tokens:
            tokens = tokens.split(",")
        else:
            tokens = [tokens] if tokens.lower() in ("cls", "dist", "mean") else list(tokens)
    names = []
    for token in tokens:
        token = token.strip().lower()
        if token not in EMBEDDING_TOKENS:
            raise ValueError(f"Unknown embedding token {token!r}: use cls, dist, mean (or c, d, a)")
        names.append(EMBEDDING_TOKENS[token])
    if not names or len(set(names)) != len(names):
        raise ValueError(f"Embedding tokens must be a non-empty set without repeats, got {tokens!r}")
    return tuple(names)


def pool_embedding_tokens(hidden_state: torch.Tensor, tokens=("cls", "dist", "mean")) -> torch.Tensor:
    """The paper's embedding of one block output.

    Args:
        hidden_state (`torch.Tensor` of shape `(batch_size, 2 + num_patches, hidden_size)`): a block output.
        tokens: which vectors to concatenate, in this order: `cls` (token 0), `dist` (token 1), `mean` (mean of
            the patch tokens).

    Returns:
        `torch.Tensor` of shape `(batch_size, len(tokens) * hidden_size)`; 2304 dims for all three at width 768.
    """
    vectors = {"cls": lambda: hidden_state[:, 0], "dist": lambda: hidden_state[:, 1]}
    vectors["mean"] = lambda: hidden_state[:, 2:].mean(dim=1)
    return torch.cat([vectors[name]() for name in parse_embedding_tokens(tokens)], dim=-1)


@dataclass
class MAESTAudioClassifierOutput(SequenceClassifierOutput):
    r"""
    loss (`torch.FloatTensor` of shape `(1,)`, *optional*): classification loss when `labels` are given; with the
        distillation head, the mean of the two heads' losses (see `MAESTForAudioClassification.forward`).
    logits (`torch.FloatTensor` of shape `(batch_size, num_labels)`): scores before the sigmoid.
    distillation_logits (`torch.FloatTensor` of shape `(batch_size, num_labels)`, *optional*): the distillation
        head's scores on the distillation token (the original `head_dist`), when the model has that head.
    """

    distillation_logits: torch.FloatTensor | None = None


class MAESTPatchEmbeddings(ASTPatchEmbeddings):
    """Overlapping 16x16 patches at stride (10, 10), kept as a (frequency, time) grid so that the two position
    embeddings can be added along their axes."""

    def forward(self, input_values: torch.Tensor) -> torch.Tensor:
        """(batch_size, num_frames, num_mel_bins) -> (batch_size, hidden_size, num_frequency_patches, num_time_patches)"""
        return self.projection(input_values.transpose(1, 2).unsqueeze(1))


class MAESTEmbeddings(nn.Module):
    """Patch embeddings plus PaSST-style position embeddings, patchout, and the cls and distillation tokens.

    The frequency embedding has one row per patch row (9) and the time embedding one column per time position of the
    trained length (187 for 30 s). Inputs shorter than that use the first columns in eval and a random window of them
    in training, as the original does.
    """

    def __init__(self, config: MAESTConfig):
        super().__init__()
        self.config = config
        hidden_size = config.hidden_size
        self.patch_embeddings = MAESTPatchEmbeddings(config)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, hidden_size))
        self.distillation_token = nn.Parameter(torch.zeros(1, 1, hidden_size))
        self.special_token_position_embeddings = nn.Parameter(torch.zeros(1, 2, hidden_size))
        self.frequency_position_embeddings = nn.Parameter(torch.zeros(1, hidden_size, config.num_frequency_patches, 1))
        self.time_position_embeddings = nn.Parameter(torch.zeros(1, hidden_size, 1, config.num_time_positions))
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def _time_positions(self, num_time_patches: int) -> torch.Tensor:
        num_positions = self.config.num_time_positions
        offset = 0
        if self.training and num_time_patches < num_positions:
            offset = int(torch.randint(num_positions - num_time_patches + 1, (1,)).item())
        return self.time_position_embeddings[..., offset : offset + num_time_patches]

    def _patchout(self, grid: torch.Tensor) -> torch.Tensor:
        """Drops patch columns/rows of the (batch, hidden, freq, time) grid after the positions were added, so every
        kept patch keeps its position."""
        config = self.config
        num_freq, num_time = grid.shape[-2:]
        if self.training:
            if config.train_patchout_time:
                if config.train_patchout_time >= num_time:
                    raise ValueError(
                        f"train_patchout_time={config.train_patchout_time} would drop all {num_time} time columns of "
                        f"this input; use longer inputs or less patchout"
                    )
                kept = torch.randperm(num_time, device=grid.device)[: num_time - config.train_patchout_time]
                grid = grid[..., kept.sort().values]
            if config.train_patchout_freq:
                kept = torch.randperm(num_freq, device=grid.device)[: num_freq - config.train_patchout_freq]
                grid = grid[:, :, kept.sort().values]
        else:
            grid = grid[:, :, :: config.inference_patchout_freq_stride, :: config.inference_patchout_time_stride]
        return grid

    def forward(self, input_values: torch.Tensor) -> torch.Tensor:
        """(batch_size, num_frames, num_mel_bins) -> (batch_size, 2 + num_kept_patches, hidden_size)"""
        batch_size = input_values.shape[0]
        grid = self.patch_embeddings(input_values)
        grid = grid + self.frequency_position_embeddings + self._time_positions(grid.shape[-1])
        grid = self._patchout(grid)
        # Frequency-major order (row f, then column t), as the original flattens the grid.
        patch_tokens = grid.flatten(2).transpose(1, 2)
        special_tokens = torch.cat((self.cls_token, self.distillation_token), dim=1)
        special_tokens = (special_tokens + self.special_token_position_embeddings).expand(batch_size, -1, -1)
        embeddings = torch.cat((special_tokens, patch_tokens), dim=1)
        return self.dropout(embeddings)


class MAESTPreTrainedModel(PreTrainedModel):
    config: MAESTConfig
    base_model_prefix = "maest"
    main_input_name = "input_values"
    input_modalities = ("audio",)
    supports_gradient_checkpointing = True
    # The whole forward (eval and training, patchout included) is captured by `torch.compile(fullgraph=True)`.
    _can_compile_fullgraph = True
    _no_split_modules = ["MAESTEmbeddings", "ASTLayer"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _can_record_outputs = {"hidden_states": ASTLayer, "attentions": ASTAttention}

    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, MAESTEmbeddings):
            # timm/PaSST initialize tokens and position embeddings with a truncated normal of std 0.02.
            std = self.config.initializer_range
            for parameter in (
                module.cls_token,
                module.distillation_token,
                module.special_token_position_embeddings,
                module.frequency_position_embeddings,
                module.time_position_embeddings,
            ):
                init.trunc_normal_(parameter, std=std)


class MAESTModel(MAESTPreTrainedModel):
    """The bare MAEST encoder: embeddings, transformer blocks and the final layer norm; `pooler_output` is the mean of
    the cls and distillation tokens after the final norm, which the classification head reads."""

    def __init__(self, config: MAESTConfig):
        super().__init__(config)
        self.embeddings = MAESTEmbeddings(config)
        self.layers = nn.ModuleList([ASTLayer(config) for _ in range(config.num_hidden_layers)])
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.post_init()
        # transformers installs the output-capturing hooks at the first forward, under a threading lock that
        # torch.compile cannot trace: installed here, `torch.compile(model, fullgraph=True)` has no graph break.
        maybe_install_capturing_hooks(self)

    def get_input_embeddings(self) -> MAESTPatchEmbeddings:
        return self.embeddings.patch_embeddings

    def _check_input_values(self, input_values: torch.Tensor | None) -> None:
        config = self.config
        if input_values is None:
            raise ValueError("MAEST needs `input_values` of shape (batch_size, num_frames, num_mel_bins)")
        if not torch.is_tensor(input_values) or not input_values.is_floating_point():
            dtype = input_values.dtype if torch.is_tensor(input_values) else type(input_values).__name__
            raise TypeError(f"`input_values` must be a floating-point tensor, got {dtype}")
        if input_values.ndim != 3 or input_values.shape[-1] != config.num_mel_bins:
            raise ValueError(
                f"`input_values` must have shape (batch_size, num_frames, {config.num_mel_bins}), got "
                f"{tuple(input_values.shape)}"
            )
        num_frames = input_values.shape[1]
        longest = (config.num_time_positions - 1) * config.time_stride + config.patch_size
        if not config.patch_size <= num_frames <= longest:
            raise ValueError(
                f"`input_values` has {num_frames} frames; this model takes {config.patch_size} to {longest} frames "
                f"(its time position embeddings cover {config.num_time_positions} patch columns). Split longer audio "
                f"into segments (MAESTFeatureExtractor(..., return_segments=True))"
            )

    @merge_with_config_defaults
    @capture_outputs(tie_last_hidden_states=False)
    def forward(
        self, input_values: torch.Tensor | None = None, **kwargs: Unpack[TransformersKwargs]
    ) -> BaseModelOutputWithPooling:
        r"""
        Args:
            input_values (`torch.FloatTensor` of shape `(batch_size, num_frames, num_mel_bins)`):
                Normalized log-mel spectrograms from [`MAESTFeatureExtractor`]; any `num_frames` from `patch_size`
                up to the trained length.
            output_hidden_states (`bool` or list of `int`, *optional*): `hidden_states[0]` is the embedding output
                and `hidden_states[k + 1]` the output of block k (no final norm).
            output_attentions (`bool`, *optional*): per-block attention weights. The SDPA and flash kernels compute
                none: load with `attn_implementation="eager"` or call `model.set_attn_implementation("eager")`.

        Returns:
            [`BaseModelOutputWithPooling`] with `last_hidden_state` of shape `(batch_size, 2 + num_patches,
            hidden_size)` after the final norm and `pooler_output` of shape `(batch_size, hidden_size)`.
        """
        self._check_input_values(input_values)
        hidden_states = self.embeddings(input_values)
        for layer in self.layers:
            hidden_states = layer(hidden_states, None, **kwargs)
        sequence_output = self.layernorm(hidden_states)
        pooled_output = (sequence_output[:, 0] + sequence_output[:, 1]) / 2
        return BaseModelOutputWithPooling(last_hidden_state=sequence_output, pooler_output=pooled_output)

    def embed(self, input_values: torch.Tensor, block: int | None = None, tokens=("cls", "dist", "mean")):
        """The paper's embedding: the output of `block` (0-based, no final norm; `config.embedding_block`, i.e. the
        7th block of 12, by default) pooled as the concatenation of the chosen tokens. Runs only the blocks it needs.
        Gradients flow as in `forward` (fine-tuning through it works); wrap it in `torch.no_grad()` for extraction.

        Args:
            input_values (`torch.FloatTensor` of shape `(batch_size, num_frames, num_mel_bins)`).
            block (`int`, *optional*): 0-based block; negative values count from the last block.
            tokens: any of `cls`, `dist`, `mean` (or `"cda"`-style letters), concatenated in that order.

        Returns:
            `torch.FloatTensor` of shape `(batch_size, len(tokens) * hidden_size)` (2304 for cls, dist, mean at 768).
        """
        block = self.config.block_index(block)
        tokens = parse_embedding_tokens(tokens)
        self._check_input_values(input_values)
        hidden_states = self.embeddings(input_values)
        for layer in self.layers[: block + 1]:
            hidden_states = layer(hidden_states, None)
        return pool_embedding_tokens(hidden_states, tokens)


class MAESTClassificationHead(nn.Module):
    """The tagging head: LayerNorm + Linear on the pooled vector (the original `head`). With
    `config.use_distillation_head`, also the original `head_dist`: a Linear on the distillation token, for
    teacher-student training. Both Linears live in this one module, so transformers finds every `num_labels`-sized
    layer of the head (as when it re-initializes them for a new label count)."""

    def __init__(self, config: MAESTConfig):
        super().__init__()
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.classifier_layer_norm_eps)
        self.dense = nn.Linear(config.hidden_size, config.num_labels)
        self.distillation_dense = (
            nn.Linear(config.hidden_size, config.num_labels) if config.use_distillation_head else None
        )

    def forward(self, pooled_output: torch.Tensor) -> torch.Tensor:
        """(batch_size, hidden_size) pooled vector -> (batch_size, num_labels) logits of the main head."""
        return self.dense(self.layernorm(pooled_output))

    def distillation_logits(self, distillation_token: torch.Tensor) -> torch.Tensor | None:
        """(batch_size, hidden_size) distillation token after the final norm -> (batch_size, num_labels) logits of the
        distillation head; None without that head."""
        if self.distillation_dense is None:
            return None
        return self.distillation_dense(distillation_token)


def _is_class_indices(labels: torch.Tensor) -> bool:
    return labels.ndim == 1 and not labels.is_floating_point() and labels.dtype != torch.bool


class MAESTForAudioClassification(MAESTPreTrainedModel):
    """MAEST with its tagging head. Scores are multi-label: apply a sigmoid to `logits` (the pipeline does for configs
    whose `problem_type` is `"multi_label_classification"`, as the released models' are)."""

    def __init__(self, config: MAESTConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.maest = MAESTModel(config)
        self.classifier = MAESTClassificationHead(config)
        self.post_init()

    def _classification_loss(self, labels: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """transformers' sequence-classification loss: with `config.problem_type` unset it is inferred from the
        labels (class indices: single-label cross-entropy; multi-hot: BCE) and recorded in the config, as for
        transformers' own classifiers."""
        config = self.config
        if _is_class_indices(labels) and config.problem_type == "multi_label_classification":
            raise ValueError(
                f"labels of shape {tuple(labels.shape)} are class indices, but config.problem_type is "
                f"'multi_label_classification' (needs multi-hot labels of shape (batch_size, {config.num_labels})); "
                f"set config.problem_type = 'single_label_classification' to train on class indices"
            )
        multi_hot = labels.is_floating_point() or labels.dtype == torch.bool
        if config.problem_type == "single_label_classification" and multi_hot:
            raise ValueError(
                f"labels of shape {tuple(labels.shape)} ({labels.dtype}) are not class indices, but "
                f"config.problem_type is 'single_label_classification' (needs integer labels of shape (batch_size,)); set "
                f"config.problem_type = 'multi_label_classification' to train on multi-hot labels"
            )
        return self.loss_function(labels, logits, config)

    @can_return_tuple
    def forward(
        self,
        input_values: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        distillation_labels: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> MAESTAudioClassifierOutput:
        r"""
        Args:
            input_values (`torch.FloatTensor` of shape `(batch_size, num_frames, num_mel_bins)`).
            labels (`torch.Tensor`, *optional*): multi-hot `(batch_size, num_labels)` targets for the BCE loss, or
                integer class indices `(batch_size,)` for a softmax cross-entropy. An unset `config.problem_type` is
                inferred from them (and recorded), as transformers does for its classifiers.
            distillation_labels (`torch.Tensor` of shape `(batch_size, num_labels)`, *optional*): a teacher's
                binarized labels for the distillation head (teacher-student training).

        With the distillation head (`config.use_distillation_head`), the loss is the mean of the main head's loss on
        `labels` and the distillation head's loss: BCE on `distillation_labels`, or, without them, the same loss on
        `labels`. The head thus always trains with the model (DistributedDataParallel expects a gradient for every
        parameter). The logits are the main head's only.

        Returns:
            [`MAESTAudioClassifierOutput`] with `logits` of shape `(batch_size, num_labels)`.
        """
        outputs = self.maest(input_values, **kwargs)
        logits = self.classifier(outputs.pooler_output)
        distillation_logits = self.classifier.distillation_logits(outputs.last_hidden_state[:, 1])
        if distillation_labels is not None and distillation_logits is None:
            raise ValueError("distillation_labels need a model with use_distillation_head=True")

        loss = None
        if labels is not None:
            loss = self._classification_loss(labels, logits)
            if distillation_logits is not None and distillation_labels is None:
                loss = (loss + self._classification_loss(labels, distillation_logits)) / 2
        if distillation_labels is not None:
            distillation_loss = nn.functional.binary_cross_entropy_with_logits(
                distillation_logits, distillation_labels.to(distillation_logits.dtype)
            )
            loss = distillation_loss if loss is None else (loss + distillation_loss) / 2

        return MAESTAudioClassifierOutput(
            loss=loss,
            logits=logits,
            distillation_logits=distillation_logits,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )


__all__ = [
    "MAESTAudioClassifierOutput",
    "MAESTForAudioClassification",
    "MAESTModel",
    "MAESTPreTrainedModel",
    "parse_embedding_tokens",
    "pool_embedding_tokens",
]
