"""transformers' own common tests, run unchanged against MAEST: `ModelTesterMixin` (model classes), `ConfigTester`
(configuration) and `SequenceFeatureExtractionTestMixin` (feature extractor).

The installed transformers wheel has no `tests/` folder; its source distribution does. `make setup` (target
`transformers-tests`) extracts that folder, for the installed transformers version, into the git-ignored
`.transformers-tests/`; this module imports the mixins from there. Three helper modules that the mixins import are not
in the source distribution; they are stood in for below (see `_STAND_INS`).

The testers are adapted the way transformers adapts them for its Audio Spectrogram Transformer (AST): small shapes,
`input_values` instead of token ids, eager attention so that attention weights can be returned. MAEST lives outside
transformers, so it is not in transformers' static lists of audio classifiers and base models that the mixins
consult (for instance to give audio classifiers class-index labels in the training tests): each test runs with MAEST
added to those two lists, as an in-tree model would be.
"""

import importlib
import sys
import types
import unittest
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import transformers
from transformers.models.auto import modeling_auto

from maest import MAESTConfig, MAESTFeatureExtractor, MAESTForAudioClassification, MAESTModel
from maest.modeling.modeling_maest import MAESTPatchEmbeddings


COMMON_TESTS = Path(__file__).resolve().parent.parent / ".transformers-tests"
PACKAGE = "transformers_common_tests"


def _stand_in_config_common_kwargs() -> dict:
    """The fields of `PreTrainedConfig` itself that a user sets (all but `is_encoder_decoder` and
    `transformers_version`), each at a value other than its default: `ConfigTester.check_config_arguments_init` checks
    that the model's config keeps them."""
    return {
        "return_dict": False,
        "output_hidden_states": True,
        "output_attentions": True,
        "dtype": "float16",
        "chunk_size_feed_forward": 5,
        "architectures": ["MAESTForAudioClassification"],
        "id2label": {0: "label"},
        "label2id": {"label": 0},
        "problem_type": "regression",
    }


# Modules that the mixins import but the source distribution does not ship:
# - `exporters.test_export.ExportTesterMixin`, a base of `ModelTesterMixin` holding the export tests: an empty
#   stand-in, so those export tests do not run here (MAEST's ONNX export has its own tests);
# - `generation.test_utils.GenerationTesterMixin`, only used to check that a tester of a model that cannot
#   generate does not inherit it;
# - `utils.test_configuration_utils.config_common_kwargs`.
_STAND_INS = {
    "exporters.test_export": {"ExportTesterMixin": type("ExportTesterMixin", (), {})},
    "generation.test_utils": {"GenerationTesterMixin": type("GenerationTesterMixin", (), {})},
    "utils.test_configuration_utils": {"config_common_kwargs": _stand_in_config_common_kwargs()},
}


def _import_common_tests():
    """The extracted `tests/` folder as the package `transformers_common_tests`, with the stand-ins registered."""
    version_file = COMMON_TESTS / "VERSION"
    if not version_file.is_file():
        pytest.skip(
            f"transformers' common tests are not extracted ({COMMON_TESTS} is missing): run `make transformers-tests`",
            allow_module_level=True,
        )
    extracted = version_file.read_text().strip()
    if extracted != transformers.__version__:
        pytest.skip(
            f"{COMMON_TESTS} holds transformers {extracted}'s tests, transformers {transformers.__version__} is "
            f"installed: run `make transformers-tests`",
            allow_module_level=True,
        )
    if PACKAGE not in sys.modules:
        package = types.ModuleType(PACKAGE)
        package.__path__ = [str(COMMON_TESTS / "tests")]
        sys.modules[PACKAGE] = package
        for name, attributes in _STAND_INS.items():
            parent = PACKAGE
            for part in name.split("."):
                full_name = f"{parent}.{part}"
                sys.modules.setdefault(full_name, types.ModuleType(full_name))
                parent = full_name
            vars(sys.modules[parent]).update(attributes)
    return (
        importlib.import_module(f"{PACKAGE}.test_modeling_common"),
        importlib.import_module(f"{PACKAGE}.test_configuration_common"),
        importlib.import_module(f"{PACKAGE}.test_sequence_feature_extraction_common"),
    )


modeling_common, configuration_common, feature_extraction_common = _import_common_tests()
floats_tensor = modeling_common.floats_tensor


class MAESTModelTester:
    """Small MAEST shapes: 16 mel bands and 24 frames in 2x2 patches at stride 2 give an 8 x 12 patch grid, 98
    tokens with the cls and distillation tokens."""

    def __init__(self, parent, use_distillation_head: bool = False):
        self.parent = parent
        self.batch_size = 13
        self.is_training = True
        self.num_mel_bins = 16
        self.max_length = 24
        self.patch_size = 2
        self.frequency_stride = 2
        self.time_stride = 2
        self.hidden_size = 32
        self.num_hidden_layers = 2
        self.num_attention_heads = 4
        self.intermediate_size = 37
        self.num_labels = 10
        self.use_distillation_head = use_distillation_head
        frequency_patches = (self.num_mel_bins - self.patch_size) // self.frequency_stride + 1
        time_patches = (self.max_length - self.patch_size) // self.time_stride + 1
        self.seq_length = 2 + frequency_patches * time_patches

    def get_config(self) -> MAESTConfig:
        return MAESTConfig(
            num_mel_bins=self.num_mel_bins,
            max_length=self.max_length,
            patch_size=self.patch_size,
            frequency_stride=self.frequency_stride,
            time_stride=self.time_stride,
            hidden_size=self.hidden_size,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            intermediate_size=self.intermediate_size,
            hidden_dropout_prob=0.1,
            attention_probs_dropout_prob=0.1,
            num_labels=self.num_labels,
            use_distillation_head=self.use_distillation_head,
            attn_implementation="eager",
        )

    def prepare_config_and_inputs_for_common(self):
        input_values = floats_tensor([self.batch_size, self.max_length, self.num_mel_bins])
        return self.get_config(), {"input_values": input_values}


def _as_in_tree_model(test: unittest.TestCase) -> None:
    """Lists MAEST in transformers' static model-name mappings for the duration of one test."""
    for mapping, class_name in (
        (modeling_auto.MODEL_MAPPING_NAMES, "MAESTModel"),
        (modeling_auto.MODEL_FOR_AUDIO_CLASSIFICATION_MAPPING_NAMES, "MAESTForAudioClassification"),
    ):
        patcher = mock.patch.dict(mapping, {MAESTConfig.model_type: class_name})
        patcher.start()
        test.addCleanup(patcher.stop)


class MAESTModelTest(modeling_common.ModelTesterMixin, unittest.TestCase):
    all_model_classes = (MAESTModel, MAESTForAudioClassification)
    test_resize_embeddings = False  # no token embeddings
    # The mixin dates a model by its file's copyright line, which MAEST's has none of: run the initialization test.
    test_can_init_all_missing_weights_before_2023 = True

    def setUp(self):
        _as_in_tree_model(self)
        self.model_tester = MAESTModelTester(self)
        self.config_tester = configuration_common.ConfigTester(
            self, config_class=MAESTConfig, has_text_modality=False, hidden_size=32, num_attention_heads=4
        )

    def test_config(self):
        self.config_tester.run_common_tests()

    @unittest.skip(reason="MAEST takes spectrograms (`input_values`), it has no `inputs_embeds`")
    def test_inputs_embeds(self):
        pass

    @pytest.mark.slow  # about 13 s on two busy cores
    def test_model_outputs_equivalence(self):
        super().test_model_outputs_equivalence()

    def test_model_get_set_embeddings(self):
        # As for AST: the input embeddings are the patch embeddings (a convolution), not a token `nn.Embedding`.
        config, _ = self.model_tester.prepare_config_and_inputs_for_common()
        for model_class in self.all_model_classes:
            model = model_class(config)
            self.assertIsInstance(model.get_input_embeddings(), MAESTPatchEmbeddings)
            self.assertIsNone(model.get_output_embeddings())

    @unittest.skip(
        reason="MAEST's registered conversions read other layouts (the Hub's AST checkpoints, the distillation head's "
        "former name) when loading only; save_pretrained writes MAEST's own layout, so there is no reverse mapping "
        "to check (tests/test_transformers_conventions.py and tests/test_checkpoints.py test both directions)"
    )
    def test_reverse_loading_mapping(self):
        pass


class MAESTWithDistillationHeadModelTest(MAESTModelTest):
    """The tests that concern the classification heads, with the teacher-student distillation head in the model: it
    trains (with and without gradient checkpointing), saves, loads and is found by transformers' head detection
    like the main head."""

    def setUp(self):
        super().setUp()
        self.model_tester = MAESTModelTester(self, use_distillation_head=True)


DISTILLATION_HEAD_TESTS = {
    "test_training",
    "test_training_gradient_checkpointing",
    "test_training_gradient_checkpointing_use_reentrant_false",
    "test_training_gradient_checkpointing_use_reentrant_true",
    "test_can_load_ignoring_mismatched_shapes",
    "test_save_load",
    "test_can_init_all_missing_weights",
}
# The other tests run once, in `MAESTModelTest` (unittest collects only callable `test_*` attributes; the mixin's
# `test_*` flags, such as `test_all_params_have_gradient`, stay as they are).
for _name in dir(MAESTWithDistillationHeadModelTest):
    if _name.startswith("test_") and _name not in DISTILLATION_HEAD_TESTS:
        if callable(getattr(MAESTWithDistillationHeadModelTest, _name)):
            setattr(MAESTWithDistillationHeadModelTest, _name, None)
assert MAESTWithDistillationHeadModelTest.test_all_params_have_gradient is True


class MAESTFeatureExtractionTester:
    """Raw-audio batches of increasing lengths (400 to 2000 samples) for the padding tests, as transformers' AST
    feature-extraction tester makes them."""

    def __init__(self, parent):
        self.parent = parent
        self.batch_size = 7
        self.min_seq_length = 400
        self.max_seq_length = 2000
        self.seq_length_diff = (self.max_seq_length - self.min_seq_length) // (self.batch_size - 1)
        self.feature_size = 1
        self.padding_value = 0.0
        self.sampling_rate = 16000
        self.return_attention_mask = True

    def prepare_feat_extract_dict(self) -> dict:
        return {
            "feature_size": self.feature_size,
            "padding_value": self.padding_value,
            "sampling_rate": self.sampling_rate,
            "return_attention_mask": self.return_attention_mask,
        }

    def prepare_inputs_for_common(self, equal_length=False, numpify=False):
        generator = np.random.default_rng(0)
        if equal_length:
            lengths = [self.max_seq_length] * self.batch_size
        else:
            lengths = range(self.min_seq_length, self.max_seq_length, self.seq_length_diff)
        inputs = [generator.random(length * self.feature_size) for length in lengths]
        return inputs if numpify else [clip.tolist() for clip in inputs]


class MAESTFeatureExtractionTest(feature_extraction_common.SequenceFeatureExtractionTestMixin, unittest.TestCase):
    feature_extraction_class = MAESTFeatureExtractor

    def setUp(self):
        self.feat_extract_tester = MAESTFeatureExtractionTester(self)
