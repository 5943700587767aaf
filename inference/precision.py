"""Inference precision for MAEST: float32, bfloat16 and dynamic int8.

`prepare_model` is the one place where `maest tag`, `maest embed` and `maest bench` turn a loaded model into the
inference model for a `--dtype` / `--device` pair:

- ``"auto"`` (the default of `maest tag` / `maest embed` / `load_model`): ``"bfloat16"`` on a CUDA GPU that
  supports it (8.8x float32 on an H200, block-6 embedding cosine 0.99995), ``"float32"`` elsewhere (`resolve_dtype`).
  What it resolved to is recorded in an output's settings.
- ``"float32"``: the model as is (the reference the other variants are measured against). On CUDA, float32 matmuls
  and convolutions may use TF32 (2.1x on an H200, embedding cosine 0.9999997): `prepare_model` allows it.
- ``"bfloat16"``: parameters and buffers cast to bfloat16; inputs must be cast by the caller (`input_dtype`). Pays on
  GPUs and on CPUs with bf16 units (AMX or AVX512-BF16); on AVX2-only CPUs bf16 matmuls are emulated and far slower
  than float32 (README.md, section 'Speed'), so this warns there.
- ``"int8"``: dynamic int8 quantization of every `nn.Linear` (int8 weights with one scale per output channel,
  activations quantized on the fly per call); CPU only. Attention's score matmuls, the patch convolution, GELU and
  the layer norms stay in float32.
"""

import functools
import warnings
from typing import Iterable, Optional

import torch
from torch import nn

from transformers.utils import logging


logger = logging.get_logger(__name__)

SUPPORTED_DTYPES = ("float32", "bfloat16", "int8")
# What `--dtype` takes: a dtype, or "auto" (`resolve_dtype`).
DTYPE_CHOICES = ("auto", *SUPPORTED_DTYPES)
SUPPORTED_DEVICES = ("cpu", "cuda")


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset:
    """The CPU feature flags of this machine (from /proc/cpuinfo; empty where that file does not exist)."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_has_bf16_units() -> bool:
    """Whether this CPU has native bfloat16 matmul units (AMX-BF16 or AVX512-BF16)."""
    return bool({"amx_bf16", "avx512_bf16"} & cpu_flags())


def cpu_precision_summary() -> dict:
    """The CPU facts that decide which precision is fast here (reported by `maest bench`)."""
    flags = cpu_flags()
    return {
        "avx2": "avx2" in flags,
        "fma": "fma" in flags,
        "avx512f": "avx512f" in flags,
        "avx512_bf16": "avx512_bf16" in flags,
        "amx_bf16": "amx_bf16" in flags,
        "amx_int8": "amx_int8" in flags,
        "avx512_vnni": "avx512_vnni" in flags,
        "avx_vnni": "avx_vnni" in flags,
        "quantized_engine": torch.backends.quantized.engine,
    }


def resolve_dtype(dtype: str, device="cpu") -> str:
    """The dtype that `"auto"` stands for on `device`: bfloat16 on a CUDA GPU with bf16 support (compute capability
    8.0 and up), float32 elsewhere (on CPUs float32 is the reference and, without bf16 units, the fastest). Other
    values are checked and returned as they are."""
    if dtype != "auto":
        _check_dtype(dtype)
        return dtype
    device = _parse_device(device)
    if device.type == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False):
        return "bfloat16"
    return "float32"


def allow_tf32() -> None:
    """Lets float32 matmuls and cuDNN convolutions on CUDA use TF32 tensor cores (10-bit mantissa products,
    float32 accumulation): a process-wide torch setting, made when a float32 model is put on a GPU."""
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True


def compile_model(model: nn.Module) -> nn.Module:
    """Compiles the model's forward and, for MAEST, its `embed` with `torch.compile(fullgraph=True)` (the inference
    forward traces as one graph), in place. Shapes are static: each new batch size compiles once more."""
    model.compile(fullgraph=True, dynamic=False)
    encoder = getattr(model, "maest", None)
    if encoder is not None and hasattr(encoder, "embed"):
        encoder.embed = torch.compile(encoder.embed, fullgraph=True, dynamic=False)
    return model


def input_dtype(dtype: str) -> torch.dtype:
    """The dtype of `input_values` for a model prepared with `dtype` (int8 models take float32 inputs)."""
    _check_dtype(dtype)
    return torch.bfloat16 if dtype == "bfloat16" else torch.float32


def _check_dtype(dtype: str) -> None:
    if dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"Unsupported dtype {dtype!r}: choose one of {', '.join(SUPPORTED_DTYPES)}.")


def _parse_device(device) -> torch.device:
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"Unsupported device {device!r}: choose cpu or cuda.") from error


def _check_device(device) -> torch.device:
    device = _parse_device(device)
    if device.type not in SUPPORTED_DEVICES:
        raise ValueError(f"Unsupported device {str(device)!r}: choose cpu or cuda.")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"Device {str(device)!r} was asked for, but no CUDA GPU is available (torch.cuda.is_available() is False)."
        )
    return device


def quantize_linear_layers_int8(model: nn.Module, skip_modules: Iterable[str] = ()) -> nn.Module:
    """Replaces every `nn.Linear` of `model` (except those named in `skip_modules`) with a dynamically quantized int8
    Linear, in place, and returns the model.

    Uses `torch.ao.quantization.quantize_dynamic` (eager-mode dynamic quantization, fbgemm/x86 kernels on CPU). torch
    marks the `torch.ao.quantization` namespace as deprecated in favour of torchao, but the dynamic-quantized Linear
    kernels are still the maintained CPU path in torch 2.14 (torchao's int8 configs target GPUs and compiled graphs);
    the deprecation notice is silenced here so that it does not reach every `maest embed --dtype int8` user.
    """
    skip = set(skip_modules)
    if skip:
        names = {name for name, module in model.named_modules() if isinstance(module, nn.Linear)}
        unknown = skip - names
        if unknown:
            raise ValueError(f"skip_modules names modules that are not nn.Linear layers of the model: {sorted(unknown)}")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.ao\.quantization is deprecated.*")
        warnings.filterwarnings("ignore", message=r".*quantize_per_tensor.*deprecated.*")
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

        # Per-channel weight scales: closer to float32 than one scale per tensor (block-6 embedding cosine 0.9993
        # against 0.9991 on the 30 s model), at the same speed.
        if skip:
            qconfig_spec = {name: per_channel_dynamic_qconfig for name in sorted(names - skip)}
        else:
            qconfig_spec = {nn.Linear: per_channel_dynamic_qconfig}
        # The weights are packed for the engine set at quantization time, and that packing picks the kernels.
        previous_engine = torch.backends.quantized.engine
        torch.backends.quantized.engine = int8_engine()
        try:
            return quantize_dynamic(model, qconfig_spec, dtype=torch.qint8, inplace=True)
        finally:
            torch.backends.quantized.engine = previous_engine


def int8_engine() -> str:
    """The quantized engine for dynamic int8 Linears on this CPU: oneDNN where the CPU has AMX tiles (its int8
    Linears use them: 1.74x float32 against 1.46x with torch's default "x86" engine, 30 s model, batch 2, on a 2-core
    AMX Xeon, same accuracy), torch's default elsewhere (fbgemm's AVX2/AVX-512 kernels)."""
    supported = torch.backends.quantized.supported_engines
    if "amx_int8" in cpu_flags() and "onednn" in supported:
        return "onednn"
    return "x86" if "x86" in supported else torch.backends.quantized.engine


def prepare_model(
    model: nn.Module, dtype: str = "float32", device: str = "cpu", int8_skip_modules: Optional[Iterable[str]] = None
) -> nn.Module:
    """Puts `model` in eval mode on `device` at inference precision `dtype` and returns it (modified in place).

    Args:
        model: a MAEST (or any) `nn.Module` in float32.
        dtype: ``"float32"`` (default; on CUDA with TF32 allowed), ``"bfloat16"``, ``"int8"`` (dynamic int8 Linear
            layers, CPU only) or ``"auto"`` (`resolve_dtype`).
        device: ``"cpu"`` or ``"cuda"`` (``"cuda:N"`` too).
        int8_skip_modules: for ``"int8"``, names of `nn.Linear` modules to keep in float32 (as in
            `model.named_modules()`).

    Raises:
        ValueError: for an unknown dtype or device, int8 on CUDA, or CUDA without a GPU.
    """
    if dtype == "auto":
        dtype = resolve_dtype(dtype, device)
    _check_dtype(dtype)  # (a dtype the caller resolved is only checked)
    if dtype == "int8" and _parse_device(device).type != "cpu":
        raise ValueError(
            f"dtype 'int8' (dynamic int8 quantization) runs on CPU only, not on {str(device)!r}; on a GPU use dtype "
            "'bfloat16' instead."
        )
    device = _check_device(device)
    model.eval()
    if dtype == "int8":
        model.to(device=device, dtype=torch.float32)
        quantize_linear_layers_int8(model, int8_skip_modules or ())
        return model
    if dtype == "bfloat16":
        if device.type == "cpu" and not cpu_has_bf16_units():
            warnings.warn(
                "bfloat16 on a CPU without bf16 units (no AMX-BF16 / AVX512-BF16 in /proc/cpuinfo flags): bf16 matmuls "
                "are emulated and much slower than float32 here. Use dtype 'float32' (or 'int8') on this machine.",
                UserWarning,
                stacklevel=2,
            )
        return model.to(device=device, dtype=torch.bfloat16)
    if device.type == "cuda":
        allow_tf32()
    return model.to(device=device, dtype=torch.float32)
