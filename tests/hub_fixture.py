"""A test Hugging Face Hub cache holding the eight published MAEST repos in their published layouts, with tiny weights.

Each repo `mtg-upf/<name>` of the registry (`maest.modeling.PUBLISHED_CHECKPOINTS`) is what the Hub serves:
- `config.json` of stock transformers AST (`model_type` "audio-spectrogram-transformer", written by transformers 4.x:
  `torch_dtype`, no `problem_type`), 96 mel bins, the real `max_length` (316 / 626 / 1256 / 1876), strides 10,
  `layer_norm_eps` 1e-6 and the real Discogs style names as `id2label`;
- the weights as stock `ASTForAudioClassification` stores them (transformers 4.x key names, the position grid stored
  summed), in `pytorch_model.bin` for some repos and `model.safetensors` for the others;
- `preprocessor_config.json` naming a remote-code `MAESTFeatureExtractor` through `auto_map`, and that code,
  `feature_extraction_maest.py` (an AST-style extractor with a periodic Hann window, as published).

Only the width and depth are tiny (`TINY_SHAPE`). The weights are made here in the original implementation's layout
(timm/PaSST names, separate frequency and time position embeddings) and written in the Hub's AST layout by this
module's own mapping, which follows the published description (docs/design.md, 'Checkpoint formats'), not the
package's conversion code. The same weights are also written as original checkpoint files: the released
`<name>-swa.ckpt` (a plain state dict) and a training checkpoint (`{"state_dict": {"net.": ..., "net_swa.": ...}}`).

The truth the tests compare with is stock transformers: `ASTForAudioClassification.from_pretrained` on the snapshot
directory of a repo. Nothing downloads: the files lie in a Hugging Face cache (`HF_HUB_CACHE`) read offline.
"""

import json
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import torch
from safetensors.torch import save_file

from maest.modeling import PUBLISHED_CHECKPOINTS


HUB_ORGANIZATION = "mtg-upf"
# Small enough to build eight models in a second and run a 30 s segment in tens of milliseconds; the head count is
# the one original checkpoints imply (hidden_size // 64), so the `.ckpt` files load to the same model.
TINY_SHAPE = dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=2, intermediate_size=256)
# Repos whose weights the Hub serves as `pytorch_model.bin` (the others: `model.safetensors`); the default model of
# `maest tag`/`maest embed` is one of them.
PICKLED_REPOS = ("discogs-maest-30s-pw-129e-519l", "discogs-maest-10s-fs-129e", "discogs-maest-5s-pw-129e")
# What the Hub's transformers 4.x wrote; it is part of the published config.json.
PUBLISHED_TRANSFORMERS_VERSION = "4.33.0.dev0"
NUM_FREQUENCY_PATCHES = 9  # (96 - 16) // 10 + 1
COMMIT = "0123456789abcdef0123456789abcdef01234567"

PREPROCESSOR_CONFIG = {
    "auto_map": {"AutoFeatureExtractor": "feature_extraction_maest.MAESTFeatureExtractor"},
    "do_normalize": True,
    "feature_extractor_type": "MAESTFeatureExtractor",
    "feature_size": 1,
    "mean": 2.06755686098554,
    "num_mel_bins": 96,
    "padding_side": "right",
    "padding_value": 0.0,
    "return_attention_mask": False,
    "sampling_rate": 16000,
    "std": 1.268292820667291,
}

# The remote code of the published repos: an AST-style extractor (periodic Hann window, padded in the log-mel domain).
REMOTE_FEATURE_EXTRACTOR = '''"""Feature extractor class for MAEST (remote code, as published with the AST-format checkpoints)."""

import numpy as np
import torch
from transformers.audio_utils import mel_filter_bank, spectrogram, window_function
from transformers.feature_extraction_sequence_utils import SequenceFeatureExtractor
from transformers.feature_extraction_utils import BatchFeature


class MAESTFeatureExtractor(SequenceFeatureExtractor):
    model_input_names = ["input_values"]

    def __init__(self, feature_size=1, sampling_rate=16000, num_mel_bins=96, max_length=1876, padding_value=0.0,
                 do_normalize=True, mean=2.06755686098554, std=1.268292820667291, return_attention_mask=False,
                 **kwargs):
        super().__init__(feature_size=feature_size, sampling_rate=sampling_rate, padding_value=padding_value, **kwargs)
        self.num_mel_bins = num_mel_bins
        self.max_length = max_length
        self.do_normalize = do_normalize
        self.mean = mean
        self.std = std
        self.return_attention_mask = return_attention_mask
        self.window = window_function(512, "hann")
        self.mel_filters = mel_filter_bank(257, num_mel_bins, 0, 8000, sampling_rate, norm="slaney", mel_scale="slaney")

    def _log_mel(self, waveform):
        power = spectrogram(waveform, self.window, frame_length=512, hop_length=256, power=2.0, center=True,
                            pad_mode="constant", mel_filters=self.mel_filters, log_mel=None)
        features = np.log10(1 + 10000 * power.T)
        frames = features.shape[0]
        if frames < self.max_length:
            features = np.pad(features, ((0, self.max_length - frames), (0, 0)), constant_values=self.padding_value)
        return features[: self.max_length]

    def __call__(self, raw_speech, sampling_rate=None, return_tensors=None, **kwargs):
        if not isinstance(raw_speech, (list, tuple)) and np.asarray(raw_speech).ndim == 1:
            raw_speech = [raw_speech]
        features = [self._log_mel(np.asarray(clip, dtype=np.float64)) for clip in raw_speech]
        if self.do_normalize:
            features = [(feature - self.mean) / (self.std * 2) for feature in features]
        return BatchFeature({"input_values": [f.astype(np.float32) for f in features]}, tensor_type=return_tensors)
'''


def label_names(label_set: str) -> list[str]:
    """The Discogs style names of a label set, read from the package data file (not through the code under test)."""
    text = resources.files("maest.modeling").joinpath("labels", f"{label_set}.txt").read_text(encoding="utf-8")
    return [line for line in text.splitlines() if line.strip()]


def original_weights(num_time_positions: int, num_labels: int, seed: int) -> dict:
    """Tiny weights in the original implementation's layout (timm/PaSST names), at trained-model scales (unit-gain
    linear maps, position embeddings of the size of the patch embeddings)."""
    generator = torch.Generator().manual_seed(seed)
    hidden, intermediate = TINY_SHAPE["hidden_size"], TINY_SHAPE["intermediate_size"]

    def normal(*shape, std=1.0):
        return torch.randn(*shape, generator=generator) * std

    def linear(prefix, out_features, in_features):
        return {f"{prefix}.weight": normal(out_features, in_features, std=in_features**-0.5),
                f"{prefix}.bias": normal(out_features, std=0.1)}

    def layer_norm(prefix):
        return {f"{prefix}.weight": 1 + normal(hidden, std=0.1), f"{prefix}.bias": normal(hidden, std=0.1)}

    weights = {
        "patch_embed.proj.weight": normal(hidden, 1, 16, 16, std=1 / 16),
        "patch_embed.proj.bias": normal(hidden, std=0.1),
        "cls_token": normal(1, 1, hidden),
        "dist_token": normal(1, 1, hidden),
        "new_pos_embed": normal(1, 2, hidden, std=0.5),
        "freq_new_pos_embed": normal(1, hidden, NUM_FREQUENCY_PATCHES, 1, std=0.5),
        "time_new_pos_embed": normal(1, hidden, 1, num_time_positions, std=0.5),
        **layer_norm("norm"),
        **layer_norm("head.0"),
        **linear("head.1", num_labels, hidden),
        **linear("head_dist", num_labels, hidden),
    }
    for index in range(TINY_SHAPE["num_hidden_layers"]):
        block = f"blocks.{index}"
        weights.update(layer_norm(f"{block}.norm1"))
        weights.update(layer_norm(f"{block}.norm2"))
        weights.update(linear(f"{block}.attn.qkv", 3 * hidden, hidden))
        weights.update(linear(f"{block}.attn.proj", hidden, hidden))
        weights.update(linear(f"{block}.mlp.fc1", intermediate, hidden))
        weights.update(linear(f"{block}.mlp.fc2", hidden, intermediate))
    return weights


def hub_ast_weights(original: dict) -> dict:
    """The original weights as the Hub's AST conversion stores them: transformers 4.x AST names, `qkv` split into
    query/key/value, the position grid stored summed (freq + time, frequency-major), `head_dist` dropped."""
    prefix = "audio_spectrogram_transformer."
    grid = (original["freq_new_pos_embed"] + original["time_new_pos_embed"]).flatten(2).transpose(1, 2)
    weights = {
        prefix + "embeddings.cls_token": original["cls_token"],
        prefix + "embeddings.distillation_token": original["dist_token"],
        prefix + "embeddings.position_embeddings": torch.cat((original["new_pos_embed"], grid), dim=1),
        prefix + "embeddings.patch_embeddings.projection.weight": original["patch_embed.proj.weight"],
        prefix + "embeddings.patch_embeddings.projection.bias": original["patch_embed.proj.bias"],
        prefix + "layernorm.weight": original["norm.weight"],
        prefix + "layernorm.bias": original["norm.bias"],
        "classifier.layernorm.weight": original["head.0.weight"],
        "classifier.layernorm.bias": original["head.0.bias"],
        "classifier.dense.weight": original["head.1.weight"],
        "classifier.dense.bias": original["head.1.bias"],
    }
    renames = {"norm1": "layernorm_before", "norm2": "layernorm_after", "attn.proj": "attention.output.dense",
               "mlp.fc1": "intermediate.dense", "mlp.fc2": "output.dense"}
    for index in range(TINY_SHAPE["num_hidden_layers"]):
        layer = f"{prefix}encoder.layer.{index}."
        for kind in ("weight", "bias"):
            for name, ast_name in renames.items():
                weights[f"{layer}{ast_name}.{kind}"] = original[f"blocks.{index}.{name}.{kind}"]
            query, key, value = original[f"blocks.{index}.attn.qkv.{kind}"].chunk(3, dim=0)
            for ast_name, part in (("query", query), ("key", key), ("value", value)):
                weights[f"{layer}attention.attention.{ast_name}.{kind}"] = part
    return {name: tensor.contiguous() for name, tensor in weights.items()}


def hub_config(max_length: int, labels: list[str]) -> dict:
    """The config.json of a published AST-format repo (as transformers 4.x wrote it), at the tiny shape."""
    return {
        "architectures": ["ASTForAudioClassification"],
        "attention_probs_dropout_prob": 0.0,
        "frequency_stride": 10,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.0,
        **TINY_SHAPE,
        "id2label": {str(index): label for index, label in enumerate(labels)},
        "initializer_range": 0.02,
        "label2id": {label: index for index, label in enumerate(labels)},
        "layer_norm_eps": 1e-06,
        "max_length": max_length,
        "model_type": "audio-spectrogram-transformer",
        "num_mel_bins": 96,
        "patch_size": 16,
        "qkv_bias": True,
        "time_stride": 10,
        "torch_dtype": "float32",
        "transformers_version": PUBLISHED_TRANSFORMERS_VERSION,
    }


@dataclass
class PublishedRepo:
    repo_id: str
    checkpoint: str  # the released name, e.g. "discogs-maest-30s-pw-129e"
    snapshot: Path  # the repo's files in the cache
    weights_file: str  # "pytorch_model.bin" or "model.safetensors"
    max_length: int
    labels: list[str]
    original_checkpoint: Path  # the released `<name>-swa.ckpt` with the same weights
    training_checkpoint: Path  # `{"state_dict": {"net.": last weights, "net_swa.": these weights}}`


@dataclass
class PublishedHub:
    cache: Path  # a Hugging Face hub cache (`HF_HUB_CACHE`)
    repos: dict = field(default_factory=dict)  # repo id -> PublishedRepo

    def env(self, base: dict | None = None) -> dict:
        """Environment variables for a subprocess that must see this Hub (and nothing else) offline."""
        environment = dict(os.environ if base is None else base)
        environment.update(HF_HUB_CACHE=str(self.cache), HF_HUB_OFFLINE="1")
        return environment

    def repo(self, checkpoint: str) -> PublishedRepo:
        return self.repos[f"{HUB_ORGANIZATION}/{checkpoint}"]

    def stock_ast(self, repo_id: str):
        """transformers' own `ASTForAudioClassification` on a repo's files: the truth to compare with."""
        from transformers import ASTForAudioClassification

        return ASTForAudioClassification.from_pretrained(self.repos[repo_id].snapshot).eval()


def build_published_hub(root: Path) -> PublishedHub:
    """Writes the eight published repos into a Hugging Face cache under `root / "hub"` and the original checkpoint
    files under `root / "originals"`."""
    hub = PublishedHub(cache=root / "hub")
    originals = root / "originals"
    originals.mkdir(parents=True, exist_ok=True)
    for seed, published in enumerate(PUBLISHED_CHECKPOINTS.values()):
        repo_id = f"{HUB_ORGANIZATION}/{published.checkpoint}"
        max_length = {5: 316, 10: 626, 20: 1256, 30: 1876}[published.seconds]
        labels = label_names(published.label_set)
        weights = original_weights(max_length // 10, len(labels), seed)

        repo_folder = hub.cache / f"models--{repo_id.replace('/', '--')}"
        snapshot = repo_folder / "snapshots" / COMMIT
        snapshot.mkdir(parents=True)
        (repo_folder / "refs").mkdir()
        (repo_folder / "refs" / "main").write_text(COMMIT)
        (snapshot / "config.json").write_text(json.dumps(hub_config(max_length, labels), indent=2, sort_keys=True))
        preprocessor = {**PREPROCESSOR_CONFIG, "max_length": max_length}
        (snapshot / "preprocessor_config.json").write_text(json.dumps(preprocessor, indent=2, sort_keys=True))
        (snapshot / "feature_extraction_maest.py").write_text(REMOTE_FEATURE_EXTRACTOR)
        ast_weights = hub_ast_weights(weights)
        if published.checkpoint in PICKLED_REPOS:
            weights_file = "pytorch_model.bin"
            torch.save(ast_weights, snapshot / weights_file)
        else:
            weights_file = "model.safetensors"
            save_file(ast_weights, str(snapshot / weights_file), metadata={"format": "pt"})

        original_checkpoint = originals / f"{published.checkpoint}-swa.ckpt"
        torch.save(weights, original_checkpoint)
        # A training checkpoint: the last weights under "net.", the SWA (published) ones under "net_swa.".
        last = {name: tensor + 0.5 for name, tensor in weights.items()}
        training_checkpoint = originals / f"{published.checkpoint}-epoch=129.ckpt"
        torch.save({"state_dict": {**{f"net.{k}": v for k, v in last.items()},
                                   **{f"net_swa.{k}": v for k, v in weights.items()}}, "epoch": 129},
                   training_checkpoint)
        hub.repos[repo_id] = PublishedRepo(
            repo_id, published.checkpoint, snapshot, weights_file, max_length, labels, original_checkpoint,
            training_checkpoint,
        )
    return hub


__all__ = ["HUB_ORGANIZATION", "PublishedHub", "PublishedRepo", "TINY_SHAPE", "build_published_hub", "label_names"]
