"""MAEST (Music Audio Efficient Spectrogram Transformer) model configuration."""

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig


# Input frames per published MAEST length. The time position embeddings have `max_length // time_stride`
# columns (31, 62, 125, 187), which is also the number of patch columns of a `max_length`-frame input.
MAEST_PRESETS = {
    "maest-5s": {"max_length": 316},
    "maest-10s": {"max_length": 626},
    "maest-20s": {"max_length": 1256},
    "maest-30s": {"max_length": 1876},
    "maest-30s-519l": {"max_length": 1876, "num_labels": 519},
    # Small shapes for tests and the demo; `maest-tiny` is the shape of the reference fixture.
    "maest-tiny": {
        "max_length": 300,
        "hidden_size": 64,
        "num_hidden_layers": 3,
        "num_attention_heads": 4,
        "intermediate_size": 256,
        "num_labels": 7,
    },
    "maest-small": {
        "max_length": 316,
        "hidden_size": 192,
        "num_hidden_layers": 6,
        "num_attention_heads": 3,
        "intermediate_size": 768,
    },
}

# The published checkpoints' names map onto the presets above.
PUBLISHED_CHECKPOINTS = {
    "discogs-maest-5s-pw-129e": "maest-5s",
    "discogs-maest-10s-fs-129e": "maest-10s",
    "discogs-maest-10s-pw-129e": "maest-10s",
    "discogs-maest-10s-dw-75e": "maest-10s",
    "discogs-maest-20s-pw-129e": "maest-20s",
    "discogs-maest-30s-pw-129e": "maest-30s",
    "discogs-maest-30s-pw-73e-ts": "maest-30s",
    "discogs-maest-30s-pw-129e-519l": "maest-30s-519l",
}


@strict
class MAESTConfig(PreTrainedConfig):
    r"""
    Configuration of a [`MAESTModel`] or [`MAESTForAudioClassification`]. The defaults give the 30 s MAEST
    (`discogs-maest-30s-pw-129e`): a ViT-Base transformer over 96-band mel spectrograms with overlapping 16x16
    patches at stride 10, separate frequency and time position embeddings, and 400 Discogs style labels.

    Args:
        hidden_size (`int`, defaults to 768): width of the transformer.
        num_hidden_layers (`int`, defaults to 12): number of transformer blocks.
        num_attention_heads (`int`, defaults to 12): attention heads per block.
        intermediate_size (`int`, defaults to 3072): width of the MLP of each block.
        hidden_act (`str`, defaults to `"gelu"`): activation of the MLP (exact GELU, as the original).
        hidden_dropout_prob (`float`, defaults to 0.0): dropout on the block outputs.
        attention_probs_dropout_prob (`float`, defaults to 0.0): dropout on the attention weights.
        initializer_range (`float`, defaults to 0.02): std of the truncated-normal weight initialization.
        layer_norm_eps (`float`, defaults to 1e-6): epsilon of the block and final layer norms.
        classifier_layer_norm_eps (`float`, defaults to 1e-5): epsilon of the head's layer norm (the original
            head uses PyTorch's default; the hub's AST conversion uses 1e-6).
        patch_size (`int`, defaults to 16): square patch size over (mel, time).
        frequency_stride (`int`, defaults to 10): patch stride along the mel axis.
        time_stride (`int`, defaults to 10): patch stride along the time axis.
        num_mel_bins (`int`, defaults to 96): mel bands of the input.
        max_length (`int`, defaults to 1876): input frames the model was trained for. The time position
            embeddings have `max_length // time_stride` columns; any input up to `max_length` frames works.
        qkv_bias (`bool`, defaults to `True`): bias on the query, key and value projections.
        use_distillation_head (`bool`, defaults to `True`): keep the `head_dist` classifier on the distillation
            token (used by teacher-student training; the released checkpoints carry it).
        train_patchout_time (`int`, defaults to 0): random time columns of the patch grid dropped in training
            (the paper drops 30 / 60 / 90 of them for the 10 / 20 / 30 s models).
        train_patchout_freq (`int`, defaults to 0): random frequency rows dropped in training (0 in MAEST).
        inference_patchout_time_stride (`int`, defaults to 1): keep every k-th time column outside training.
        inference_patchout_freq_stride (`int`, defaults to 1): keep every k-th frequency row outside training.
        embedding_block (`int`, *optional*): 0-based block whose output [`MAESTModel.embed`] returns by
            default; `num_hidden_layers // 2` when unset, which is block 6 (the 7th, the paper's best) at depth 12.
    """

    model_type = "maest"

    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float | int = 0.0
    attention_probs_dropout_prob: float | int = 0.0
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-6
    classifier_layer_norm_eps: float = 1e-5
    patch_size: int = 16
    frequency_stride: int = 10
    time_stride: int = 10
    num_mel_bins: int = 96
    max_length: int = 1876
    qkv_bias: bool = True
    use_distillation_head: bool = True
    train_patchout_time: int = 0
    train_patchout_freq: int = 0
    inference_patchout_time_stride: int = 1
    inference_patchout_freq_stride: int = 1
    embedding_block: int | None = None

    def __post_init__(self, **kwargs):
        # MAEST tags are multi-label (sigmoid + BCE); the published models have 400 Discogs styles.
        if self.problem_type is None:
            self.problem_type = "multi_label_classification"
        if self.id2label is None and kwargs.get("num_labels") is None:
            kwargs["num_labels"] = 400
        if self.embedding_block is None:
            self.embedding_block = self.num_hidden_layers // 2
        super().__post_init__(**kwargs)

    def validate_architecture(self):
        """Checks the shapes and patchout settings; raises `ValueError` naming the bad field."""
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be divisible by num_attention_heads ({self.num_attention_heads})"
            )
        for name in ("patch_size", "frequency_stride", "time_stride", "num_mel_bins", "max_length"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.num_mel_bins < self.patch_size:
            raise ValueError(f"num_mel_bins ({self.num_mel_bins}) must be at least patch_size ({self.patch_size})")
        if self.max_length < self.patch_size:
            raise ValueError(f"max_length ({self.max_length}) must be at least patch_size ({self.patch_size})")
        if self.num_time_positions < self.num_time_patches(self.max_length):
            raise ValueError(
                f"max_length {self.max_length} gives {self.num_time_patches(self.max_length)} patch columns but only "
                f"{self.num_time_positions} time positions; use max_length <= {self.time_stride * self.num_time_positions + self.patch_size - self.time_stride}"
            )
        if not 0 <= self.train_patchout_freq < self.num_frequency_patches:
            raise ValueError(
                f"train_patchout_freq must be in [0, {self.num_frequency_patches}), got {self.train_patchout_freq}"
            )
        if not 0 <= self.train_patchout_time < self.num_time_positions:
            raise ValueError(
                f"train_patchout_time must be in [0, {self.num_time_positions}), got {self.train_patchout_time}"
            )
        for name in ("inference_patchout_time_stride", "inference_patchout_freq_stride"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1 (1 keeps every patch), got {getattr(self, name)}")
        if not 0 <= self.embedding_block < self.num_hidden_layers:
            raise ValueError(f"embedding_block must be in [0, {self.num_hidden_layers}), got {self.embedding_block}")

    @property
    def num_frequency_patches(self) -> int:
        """Rows of the patch grid: (96 - 16) // 10 + 1 = 9 for MAEST."""
        return (self.num_mel_bins - self.patch_size) // self.frequency_stride + 1

    @property
    def num_time_positions(self) -> int:
        """Columns of the time position embedding (187 for the 30 s model)."""
        return self.max_length // self.time_stride

    def num_time_patches(self, num_frames: int) -> int:
        """Columns of the patch grid for an input of `num_frames` frames."""
        return (num_frames - self.patch_size) // self.time_stride + 1

    @classmethod
    def from_preset(cls, name: str, **kwargs) -> "MAESTConfig":
        """A config of a published shape (`maest-5s` ... `maest-30s`, `maest-30s-519l`, or a published checkpoint
        name such as `discogs-maest-30s-pw-129e`) or a small one for tests (`maest-tiny`, `maest-small`)."""
        preset = PUBLISHED_CHECKPOINTS.get(name, name)
        if preset not in MAEST_PRESETS:
            known = sorted(MAEST_PRESETS) + sorted(PUBLISHED_CHECKPOINTS)
            raise ValueError(f"Unknown MAEST preset {name!r}; known presets: {', '.join(known)}")
        return cls(**{**MAEST_PRESETS[preset], **kwargs})


__all__ = ["MAESTConfig", "MAEST_PRESETS", "PUBLISHED_CHECKPOINTS"]
