"""Inference precisions (`maest.inference.precision.prepare_model`): float32, bfloat16, dynamic int8."""

import copy
import warnings

import pytest
import torch
from torch import nn

from maest import MAESTForAudioClassification
from maest.inference import precision
from maest.inference.precision import input_dtype, prepare_model


@pytest.fixture(scope="module")
def tiny_model(tiny_config):
    torch.manual_seed(0)
    return MAESTForAudioClassification(tiny_config).eval()


@pytest.fixture(scope="module")
def tiny_inputs(tiny_config):
    generator = torch.Generator().manual_seed(1)
    return torch.randn(3, tiny_config.max_length, tiny_config.num_mel_bins, generator=generator)


def _cosine(a, b):
    return nn.functional.cosine_similarity(a.float(), b.float(), dim=-1)


def test_float32_is_the_model_in_eval_mode(tiny_model, tiny_inputs):
    model = copy.deepcopy(tiny_model).train()
    prepared = prepare_model(model)
    assert prepared is model and not prepared.training
    assert all(parameter.dtype == torch.float32 for parameter in prepared.parameters())
    with torch.no_grad():
        torch.testing.assert_close(prepared(tiny_inputs).logits, tiny_model(tiny_inputs).logits, rtol=0, atol=0)


def test_int8_replaces_every_linear_with_a_dynamic_quantized_one(tiny_model, tiny_inputs):
    linear_names = [name for name, module in tiny_model.named_modules() if type(module) is nn.Linear]
    # 6 per block (q, k, v, output, fc1, fc2) and the classifier, plus the distillation head where the model has one.
    heads = 2 if tiny_model.config.use_distillation_head else 1
    assert len(linear_names) == 6 * tiny_model.config.num_hidden_layers + heads
    model = prepare_model(copy.deepcopy(tiny_model), "int8")
    modules = dict(model.named_modules())
    for name in linear_names:
        assert isinstance(modules[name], torch.ao.nn.quantized.dynamic.Linear), name
        assert modules[name].weight().dtype == torch.qint8
    assert not any(type(module) is nn.Linear for module in model.modules())
    # The patch convolution and the norms stay in float32.
    assert model.maest.embeddings.patch_embeddings.projection.weight.dtype == torch.float32

    with torch.no_grad():
        reference = tiny_model.maest.embed(tiny_inputs)
        quantized = model.maest.embed(tiny_inputs)
        reference_logits, quantized_logits = tiny_model(tiny_inputs).logits, model(tiny_inputs).logits
    assert not torch.equal(reference, quantized)  # it really computes in int8
    assert _cosine(reference, quantized).min() > 0.999
    torch.testing.assert_close(quantized_logits, reference_logits, rtol=0, atol=0.05)


@pytest.mark.parametrize("flags, engine", [({"avx2", "fma"}, "x86"), ({"avx512f", "amx_tile", "amx_int8"}, "onednn")])
def test_int8_engine_follows_the_cpu_and_is_restored(tiny_model, tiny_inputs, monkeypatch, flags, engine):
    if engine not in torch.backends.quantized.supported_engines:
        pytest.skip(f"torch has no {engine} quantized engine here")
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset(flags))
    assert precision.int8_engine() == engine
    before = torch.backends.quantized.engine
    model = prepare_model(copy.deepcopy(tiny_model), "int8")
    assert torch.backends.quantized.engine == before
    # Weights packed for either engine give the float32 model's embedding (the kernels run on this machine's CPU).
    with torch.no_grad():
        assert _cosine(tiny_model.maest.embed(tiny_inputs), model.maest.embed(tiny_inputs)).min() > 0.999


def test_int8_can_keep_chosen_linears_in_float32(tiny_model, tiny_inputs):
    keep = [f"maest.layers.{i}.mlp.fc2" for i in range(tiny_model.config.num_hidden_layers)]
    model = prepare_model(copy.deepcopy(tiny_model), "int8", int8_skip_modules=keep)
    modules = dict(model.named_modules())
    for name in keep:
        assert type(modules[name]) is nn.Linear
    assert isinstance(modules["maest.layers.0.mlp.fc1"], torch.ao.nn.quantized.dynamic.Linear)
    with pytest.raises(ValueError, match="maest.layers.0.mlp"):
        prepare_model(copy.deepcopy(tiny_model), "int8", int8_skip_modules=["maest.layers.0.mlp"])


def test_bfloat16_outputs_are_close_to_float32(tiny_model, tiny_inputs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the no-bf16-units warning where this runs on such a CPU
        model = prepare_model(copy.deepcopy(tiny_model), "bfloat16")
    assert all(parameter.dtype == torch.bfloat16 for parameter in model.parameters())
    assert input_dtype("bfloat16") == torch.bfloat16 and input_dtype("int8") == torch.float32
    with torch.no_grad():
        embeddings = model.maest.embed(tiny_inputs.to(torch.bfloat16))
        logits = model(tiny_inputs.to(torch.bfloat16)).logits
        reference = tiny_model.maest.embed(tiny_inputs)
        reference_logits = tiny_model(tiny_inputs).logits
    assert embeddings.dtype == torch.bfloat16
    # bfloat16 keeps 8 bits of mantissa: about 2-3 significant digits.
    assert _cosine(reference, embeddings).min() > 0.995
    torch.testing.assert_close(logits.float(), reference_logits, rtol=0, atol=0.1)


def test_bfloat16_warns_on_a_cpu_without_bf16_units(tiny_model, monkeypatch):
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx2", "fma"}))
    with pytest.warns(UserWarning, match="much slower than float32"):
        prepare_model(copy.deepcopy(tiny_model), "bfloat16")
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx2", "amx_bf16"}))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        prepare_model(copy.deepcopy(tiny_model), "bfloat16")


def test_cpu_flags_are_read_from_proc_cpuinfo():
    flags = precision.cpu_flags()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            text = cpuinfo.read()
    except OSError:
        assert flags == frozenset()
        return
    line = next(line for line in text.splitlines() if line.startswith("flags"))
    assert flags == frozenset(line.split(":", 1)[1].split())
    summary = precision.cpu_precision_summary()
    assert summary["amx_bf16"] == ("amx_bf16" in line.split())


@pytest.mark.parametrize(
    "dtype, device, message",
    [
        ("float16", "cpu", "Unsupported dtype 'float16'"),
        ("int8", "cuda", "int8.*CPU only"),
        ("int8", "cuda:1", "int8.*CPU only"),
        ("float32", "tpu", "Unsupported device 'tpu'"),
        ("float32", "mps", "Unsupported device 'mps'"),
    ],
)
def test_bad_dtype_and_device_combinations_are_clear_errors(tiny_model, dtype, device, message):
    with pytest.raises(ValueError, match=message):
        prepare_model(copy.deepcopy(tiny_model), dtype, device)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without a GPU")
def test_cuda_without_a_gpu_is_a_clear_error(tiny_model):
    with pytest.raises(ValueError, match="no CUDA GPU is available"):
        prepare_model(copy.deepcopy(tiny_model), "bfloat16", "cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_cuda_outputs_match_cpu(tiny_model, tiny_inputs, dtype):
    model = prepare_model(copy.deepcopy(tiny_model), dtype, "cuda")
    with torch.no_grad():
        embeddings = model.maest.embed(tiny_inputs.to("cuda", input_dtype(dtype))).cpu()
        reference = tiny_model.maest.embed(tiny_inputs)
    assert _cosine(reference, embeddings).min() > 0.995


def test_auto_dtype_is_bfloat16_on_a_gpu_with_bf16_and_float32_elsewhere(monkeypatch):
    assert precision.resolve_dtype("auto", "cpu") == "float32"
    assert precision.resolve_dtype("int8", "cpu") == "int8"
    with pytest.raises(ValueError, match="Unsupported dtype 'float16'"):
        precision.resolve_dtype("float16", "cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: not including_emulation)
    assert precision.resolve_dtype("auto", "cuda:0") == "bfloat16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)  # a pre-Ampere GPU
    assert precision.resolve_dtype("auto", "cuda") == "float32"


def test_load_model_defaults_to_auto_and_records_what_it_resolved_to(small_model_dir):
    from maest.inference import load_model

    model = load_model(str(small_model_dir))
    assert model.dtype == "float32" and next(model.model.parameters()).dtype == torch.float32


def test_the_inference_forward_compiles_as_one_graph(tiny_model, tiny_inputs):
    """`torch.compile(fullgraph=True)` raises at the first graph break: output capture (hidden states for the
    embedding), the input checks and inference patchout must all trace. The eager back-end keeps this fast; the
    graph is the same one inductor compiles."""
    model = copy.deepcopy(tiny_model)
    model.config.inference_patchout_time_stride = 2
    compiled = torch.compile(model, fullgraph=True, backend="eager", dynamic=False)
    with torch.inference_mode():
        expected = tiny_model(tiny_inputs, output_hidden_states=True)
        actual = compiled(tiny_inputs, output_hidden_states=True)
        embedding = torch.compile(model.maest.embed, fullgraph=True, backend="eager")(tiny_inputs, block=1)
        expected_embedding = model.maest.embed(tiny_inputs, block=1)
    assert actual.logits.shape == expected.logits.shape and len(actual.hidden_states) == len(expected.hidden_states)
    model.config.inference_patchout_time_stride = 1
    with torch.inference_mode():
        unstrided = tiny_model(tiny_inputs).logits
    # The stride reached the compiled graph: its logits differ from the unstrided model's and equal the strided one's.
    assert not torch.allclose(actual.logits, unstrided)
    model.config.inference_patchout_time_stride = 2
    with torch.inference_mode():
        torch.testing.assert_close(actual.logits, model(tiny_inputs).logits)
    torch.testing.assert_close(embedding, expected_embedding)
    assert model._can_compile_fullgraph
