"""MAEST (Music Audio Efficient Spectrogram Transformer) model configuration."""

import math

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig


try:  # the package's base of user errors, so that `maest` commands print these as one line
    from maest.utils.errors import MAESTError
except ImportError:  # loaded as remote code (`trust_remote_code=True`) where the package is not installed

    class MAESTError(Exception):
        """A user error: the message is one line that names the setting or value at fault."""


class MAESTConfigError(MAESTError):
    """A configuration that cannot describe a MAEST model (bad shape, out-of-range setting).

    Deliberately not a `ValueError`: `huggingface_hub`'s strict dataclasses wrap `ValueError`s raised by validators in
    a multi-line error of their own, and this message must reach the user as the one line it is."""


class BlockIndexError(MAESTError, ValueError):
    """A transformer block index outside the model's depth."""


class UnknownPresetError(MAESTError, ValueError):
    """A `MAESTConfig.from_preset` name that is not a preset."""


# Upper bounds of a loadable config. They exist so that a crafted or mistyped `config.json` fails at once with a
# clear message instead of allocating until the machine runs out of memory (`num_hidden_layers: 1000000` builds a
# million blocks). Each is more than 20 times what any MAEST or ViT shape uses (ViT-Huge: 32 blocks of width 1280).
MAX_NUM_HIDDEN_LAYERS = 256
MAX_HIDDEN_SIZE = 16384
MAX_INTERMEDIATE_SIZE = 65536
MAX_NUM_MEL_BINS = 1024
# 100 000 frames are 1000 s of audio at MAEST's 100 frames per second: 10 000 time positions.
MAX_LENGTH = 100_000
MAX_NUM_LABELS = 100_000
# 2e9 parameters are 8 GB in float32, 6 times ViT-Huge; the 30 s MAEST has 87 million.
MAX_PARAMETERS = 2_000_000_000

# Every Auto class a saved MAEST directory can be loaded with by `trust_remote_code=True`, naming the three
# self-contained source files that transformers' `save_pretrained` copies next to the weights.
MAEST_AUTO_MAP = {
    "AutoConfig": "configuration_maest.MAESTConfig",
    "AutoModel": "modeling_maest.MAESTModel",
    "AutoModelForAudioClassification": "modeling_maest.MAESTForAudioClassification",
    "AutoFeatureExtractor": "feature_extraction_maest.MAESTFeatureExtractor",
}


def validate_block_index(block: int, num_hidden_layers: int) -> int:
    """The 0-based index of a transformer block; negative values count from the last block (-1 is the last).

    Raises:
        `BlockIndexError` when `block` is not an integer in `[-num_hidden_layers, num_hidden_layers)`.
    """
    if isinstance(block, bool) or not isinstance(block, int):
        raise BlockIndexError(f"block must be an integer, got {block!r}")
    if not -num_hidden_layers <= block < num_hidden_layers:
        raise BlockIndexError(
            f"block must be in [{-num_hidden_layers}, {num_hidden_layers}) for this {num_hidden_layers}-block "
            f"model, got {block}"
        )
    return block % num_hidden_layers


# The Hub's MAEST repos (`mtg-upf/discogs-maest-*`) are stock `ASTForAudioClassification` checkpoints: their
# config.json has AST's model type and AST's field names, which are MAEST's own.
AST_MODEL_TYPE = "audio-spectrogram-transformer"
# AST's `layer_norm_eps` when its config.json leaves it out (ASTConfig's default).
AST_DEFAULT_LAYER_NORM_EPS = 1e-12


def maest_config_dict_from_ast(config_dict: dict) -> dict:
    """The MAEST config of an AST-format MAEST checkpoint's config.json.

    The fields keep their names. AST's head LayerNorm takes the blocks' eps, so `classifier_layer_norm_eps` does too;
    the conversion to AST dropped the distillation head; the problem type is multi-label (the published configs name
    none; MAEST's released models are multi-label taggers). An AST config that is not a MAEST conversion (not 96 mel
    bands, or unequal strides: its summed position grid would not split into MAEST's frequency and time parts) is
    refused.
    """
    num_mel_bins = config_dict.get("num_mel_bins")
    strides = (config_dict.get("frequency_stride"), config_dict.get("time_stride"))
    if num_mel_bins != 96 or strides[0] != strides[1]:
        raise MAESTConfigError(
            f"this {AST_MODEL_TYPE} config is not a MAEST conversion (num_mel_bins={num_mel_bins}, "
            f"frequency_stride={strides[0]}, time_stride={strides[1]}; MAEST has 96 mel bands and equal strides)"
        )
    converted = {key: value for key, value in config_dict.items() if key != "architectures"}
    converted["model_type"] = MAESTConfig.model_type
    converted["layer_norm_eps"] = config_dict.get("layer_norm_eps", AST_DEFAULT_LAYER_NORM_EPS)
    converted["classifier_layer_norm_eps"] = converted["layer_norm_eps"]
    converted["use_distillation_head"] = False
    converted["problem_type"] = converted.get("problem_type") or "multi_label_classification"
    return converted


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
        use_distillation_head (`bool`, defaults to `False`): add the distillation head (the original `head_dist`, a
            Linear on the distillation token) to the classifier, for teacher-student training. The inference outputs
            never use it; the original checkpoints that carry trained `head_dist` weights load with it.
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
    use_distillation_head: bool = False
    train_patchout_time: int = 0
    train_patchout_freq: int = 0
    inference_patchout_time_stride: int = 1
    inference_patchout_freq_stride: int = 1
    embedding_block: int | None = None

    def __post_init__(self, **kwargs):
        # The published models have 400 Discogs styles. `problem_type` stays unset unless given (as in transformers'
        # classifiers): the first loss infers it from the labels. The released models are multi-label taggers
        # (sigmoid + BCE), and their configs say so.
        if self.id2label is None and kwargs.get("num_labels") is None:
            kwargs["num_labels"] = 400
        if self.embedding_block is None:
            self.embedding_block = self.num_hidden_layers // 2
        super().__post_init__(**kwargs)

    def validate_architecture(self):
        """Checks the shapes and patchout settings; raises `MAESTConfigError` naming the bad field."""
        self._check_sizes()
        if self.hidden_size % self.num_attention_heads:
            raise MAESTConfigError(
                f"hidden_size ({self.hidden_size}) must be divisible by num_attention_heads ({self.num_attention_heads})"
            )
        if self.num_mel_bins < self.patch_size:
            raise MAESTConfigError(f"num_mel_bins ({self.num_mel_bins}) must be at least patch_size ({self.patch_size})")
        if self.max_length < self.patch_size:
            raise MAESTConfigError(f"max_length ({self.max_length}) must be at least patch_size ({self.patch_size})")
        if self.num_time_positions < self.num_time_patches(self.max_length):
            longest = self.time_stride * self.num_time_positions + self.patch_size - self.time_stride
            raise MAESTConfigError(
                f"max_length {self.max_length} gives {self.num_time_patches(self.max_length)} patch columns but only "
                f"{self.num_time_positions} time positions; use max_length <= {longest}"
            )
        if not 0 <= self.train_patchout_freq < self.num_frequency_patches:
            raise MAESTConfigError(
                f"train_patchout_freq must be in [0, {self.num_frequency_patches}), got {self.train_patchout_freq}"
            )
        if not 0 <= self.train_patchout_time < self.num_time_positions:
            raise MAESTConfigError(
                f"train_patchout_time must be in [0, {self.num_time_positions}), got {self.train_patchout_time}"
            )
        for name in ("inference_patchout_time_stride", "inference_patchout_freq_stride"):
            if getattr(self, name) < 1:
                raise MAESTConfigError(f"{name} must be >= 1 (1 keeps every patch), got {getattr(self, name)}")
        if not 0 <= self.embedding_block < self.num_hidden_layers:
            raise MAESTConfigError(
                f"embedding_block must be in [0, {self.num_hidden_layers}), got {self.embedding_block}"
            )
        self._check_rates()

    def _check_rates(self) -> None:
        """The float settings are finite and in range (a NaN dropout or epsilon would give NaN outputs, silently)."""
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            value = getattr(self, name)
            if not 0 <= value < 1:  # (False for NaN)
                raise MAESTConfigError(f"{name} must be in [0, 1), got {value}")
        for name in ("layer_norm_eps", "classifier_layer_norm_eps", "initializer_range"):
            value = getattr(self, name)
            if not 0 < value < math.inf:
                raise MAESTConfigError(f"{name} must be a positive finite number, got {value}")

    def _check_sizes(self) -> None:
        """Every size is positive and below the bounds above, so building the model cannot exhaust the machine."""
        bounds = {
            "hidden_size": MAX_HIDDEN_SIZE,
            "num_hidden_layers": MAX_NUM_HIDDEN_LAYERS,
            "num_attention_heads": MAX_HIDDEN_SIZE,
            "intermediate_size": MAX_INTERMEDIATE_SIZE,
            "patch_size": MAX_NUM_MEL_BINS,
            "frequency_stride": MAX_NUM_MEL_BINS,
            "time_stride": MAX_LENGTH,
            "num_mel_bins": MAX_NUM_MEL_BINS,
            "max_length": MAX_LENGTH,
            "num_labels": MAX_NUM_LABELS,
        }
        for name, bound in bounds.items():
            value = getattr(self, name)
            if not 1 <= value <= bound:
                raise MAESTConfigError(f"{name} must be in [1, {bound}], got {value}")
        if self.num_parameters_estimate > MAX_PARAMETERS:
            raise MAESTConfigError(
                f"this config describes a model of about {self.num_parameters_estimate:.3g} parameters "
                f"(hidden_size {self.hidden_size}, {self.num_hidden_layers} blocks, intermediate_size "
                f"{self.intermediate_size}); the limit is {MAX_PARAMETERS:.0e}"
            )

    @property
    def num_parameters_estimate(self) -> int:
        """Parameters of the model this config builds, up to biases and norms (checked before building it)."""
        width, patch = self.hidden_size, self.patch_size
        per_block = 4 * width * width + 2 * width * self.intermediate_size
        embeddings = width * (patch * patch + self.num_frequency_patches + self.num_time_positions + 4)
        return self.num_hidden_layers * per_block + embeddings + 2 * width * self.num_labels

    def block_index(self, block: int | None = None) -> int:
        """The 0-based index of `block` (`embedding_block` when None; negative values count from the last block).

        Raises:
            `BlockIndexError` for an index outside this model's depth.
        """
        return validate_block_index(self.embedding_block if block is None else block, self.num_hidden_layers)

    def to_dict(self) -> dict:
        """The config as a dict. A config whose class is registered for the Auto classes (`import maest` does it,
        and so does loading with `trust_remote_code=True`) names every Auto class in `auto_map`: transformers'
        `save_pretrained` copies the code files but records only the saved object's own class."""
        output = super().to_dict()
        if type(self)._auto_class is not None:
            output["auto_map"] = {**MAEST_AUTO_MAP, **(output.get("auto_map") or {})}
        return output

    @classmethod
    def get_config_dict(cls, pretrained_model_name_or_path, **kwargs) -> tuple[dict, dict]:
        """As `PreTrainedConfig.get_config_dict`; the config.json of an AST-format MAEST checkpoint (the Hub's
        `mtg-upf/discogs-maest-*`) is read as the MAEST config it describes (`maest_config_dict_from_ast`)."""
        config_dict, kwargs = super().get_config_dict(pretrained_model_name_or_path, **kwargs)
        if config_dict.get("model_type") == AST_MODEL_TYPE:
            config_dict = maest_config_dict_from_ast(config_dict)
        return config_dict, kwargs

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
        """A config of a published shape (`maest-5s` ... `maest-30s`, `maest-30s-519l`) or a small one for tests
        (`maest-tiny`, `maest-small`). The config of a released checkpoint by its name
        (`discogs-maest-30s-pw-129e`) is `maest.modeling.find_published(name).config()`."""
        if name not in MAEST_PRESETS:
            raise UnknownPresetError(f"Unknown MAEST preset {name!r}; known presets: {', '.join(sorted(MAEST_PRESETS))}")
        return cls(**{**MAEST_PRESETS[name], **kwargs})


__all__ = [
    "AST_MODEL_TYPE",
    "MAEST_AUTO_MAP",
    "MAEST_PRESETS",
    "BlockIndexError",
    "MAESTConfig",
    "MAESTConfigError",
    "UnknownPresetError",
    "maest_config_dict_from_ast",
    "validate_block_index",
]
