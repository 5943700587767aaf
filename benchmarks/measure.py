"""`maest bench`: how fast MAEST runs on this machine, and what each speed-up costs in accuracy.

One run measures, on the same machine and in the same process:

- model-only throughput (minutes of audio per second) of the 30 s model at float32, bfloat16 and dynamic int8, and with
  inference patchout time strides 2 and 3; transformers' `ASTForAudioClassification` of the same size and settings
  (SDPA attention, the MAEST weights converted to its layout) on the same input;
- the machine's float32 matrix-multiply peak and the FLOP-bound limit it implies for MAEST (FLOPs counted
  analytically by `count_flops`);
- the accuracy cost of each variant against float32 without patchout: cosine similarity of the block embedding
  (`model.maest.embed`) and top-5 tag agreement, on log-mels of synthetic music;
- every exported-graph back-end (ONNX Runtime, OpenVINO) x dtype x patchout stride (`backend_variant_names`), and
  the fastest float32 path and the fastest path at embedding cosine >= `ACCURATE_COSINE` (`fastest_paths`);
- end-to-end throughput from audio files (20 tracks of 1-2 min by default) to embeddings through `maest.inference`
  (decode, resample, front-end in loader processes, model on the fastest float32 back-end), against model-only
  embedding throughput of the same segments at the same batch size through the same back-end;
- training steps per second (forward, backward, AdamW step) with and without the paper's structured patchout.

Machines shared with other work are noisy, so every measurement is interleaved: each round times every variant once
(rotating the order), ratios are computed within a round, and the report gives medians over rounds.
"""

import contextlib
import copy
import math
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch
from torch import nn

from maest.feature_extraction import MAESTFeatureExtractor
from maest.inference.model import InferenceModel
from maest.inference.precision import compile_model, cpu_precision_summary, prepare_model
from maest.synthetic import synthetic_music
from maest.utils.errors import MAESTError


# The paper's structured patchout for the 30 s model: 90 of the 186 time columns of an 1875-frame crop are dropped.
PAPER_TRAIN_PATCHOUT_TIME = 90
PAPER_TRAIN_CROP_FRAMES = 1875

# Targets of issue 4 (inference) and issue 5 (training speed) on CPU.
TARGETS = {
    "maest_over_ast": 1.0,
    "fraction_of_flop_bound": 0.85,
    "stride2_over_none": 2.4,
    "stride3_over_none": 3.5,
    "bfloat16_over_float32": 1.6,  # only where the hardware has bf16 units
    "int8_over_float32": 1.5,
    "int8_embedding_cosine": 0.998,
    "end_to_end_over_model_only": 0.95,
    "training_patchout_speedup": 1.7,
    # Issue 14 (back-ends): the fastest float32 path, and the fastest path that keeps the block embedding at cosine
    # >= ACCURATE_COSINE to torch float32 (any back-end, dtype, patchout stride), over torch float32.
    "fastest_float32_over_torch": 1.3,
    "fastest_accurate_over_torch": 4.0,
}
ACCURATE_COSINE = 0.998
# Issue 18 (the GPU path), on CUDA: end to end (audio files -> embeddings, bfloat16) over model-only; model-only
# bfloat16 (eager or compiled, the faster) over the bf16 matmul rate measured in the same run; the training step with
# patchout on the CUDA defaults (bf16 autocast) over the float32 step; bfloat16 against float32 (block-6 embedding
# cosine, top-5 agreement).
CUDA_TARGETS = {
    "maest_over_ast": 1.0,
    "end_to_end_over_model_only": 0.8,
    "bfloat16_fraction_of_bf16_peak": 0.55,
    "training_default_over_float32": 5.0,
    "bfloat16_embedding_cosine": 0.9999,
    "bfloat16_top5_agreement": 0.99,
}
# The float32 variants that compute torch float32's function without patchout (candidates for the first target and
# for the end-to-end back-end).
FLOAT32_PATHS = ("float32", "float32-compiled", "onnxruntime-float32", "openvino-float32")


# ----------------------------------------------------------------------------------------------------------------------
# FLOPs


def count_flops(
    config,
    num_frames: Optional[int] = None,
    time_stride: int = 1,
    frequency_stride: int = 1,
    num_blocks: Optional[int] = None,
    include_heads: bool = True,
    kept_time_patches: Optional[int] = None,
) -> int:
    """Multiply-add FLOPs (2 per multiply-accumulate) of one MAEST forward pass on one input, counted analytically.

    Counts what dominates and what `torch.utils.flop_counter` counts: the patch convolution, the q/k/v/output
    projections and MLP matmuls of each block, attention's `QK^T` and `AV`, and the classification heads. Layer
    norms, softmax, GELU and additions (a few percent, memory-bound) are not counted.

    Args:
        config: a `MAESTConfig`.
        num_frames: input frames (`config.max_length` by default).
        time_stride, frequency_stride: inference patchout strides (patch columns/rows kept: every k-th).
        num_blocks: blocks run (all by default; `block + 1` for `model.maest.embed(..., block)`, which also skips
            the final norm and the heads).
        include_heads: count the classifier (and distillation) head matmuls.
        kept_time_patches: patch columns kept after training patchout (overrides `time_stride`).

    Returns:
        FLOPs as an `int`.
    """
    num_frames = config.max_length if num_frames is None else num_frames
    hidden, intermediate = config.hidden_size, config.intermediate_size
    frequency_patches = config.num_frequency_patches
    time_patches = config.num_time_patches(num_frames)
    # The convolution runs over the whole grid; patchout drops columns after it.
    flops = 2 * frequency_patches * time_patches * hidden * config.patch_size * config.patch_size
    if kept_time_patches is None:
        kept_time_patches = math.ceil(time_patches / time_stride)
    kept_frequency_patches = math.ceil(frequency_patches / frequency_stride)
    tokens = 2 + kept_frequency_patches * kept_time_patches
    per_block = 2 * tokens * (4 * hidden * hidden + 2 * hidden * intermediate)  # q, k, v, output; fc1, fc2
    per_block += 2 * 2 * tokens * tokens * hidden  # QK^T and AV over all heads
    num_blocks = config.num_hidden_layers if num_blocks is None else num_blocks
    flops += num_blocks * per_block
    if include_heads:
        num_heads = 2 if config.use_distillation_head else 1
        flops += num_heads * 2 * hidden * config.num_labels
    return int(flops)


# ----------------------------------------------------------------------------------------------------------------------
# Inputs


def music_features(config, batch_size: int, seed: int = 0) -> torch.Tensor:
    """`(batch_size, config.max_length, num_mel_bins)` log-mels of `synthetic_music` clips of the model's length."""

    extractor = MAESTFeatureExtractor(max_length=config.max_length)
    seconds = extractor_seconds(extractor, config.max_length) + 0.1
    clips = [synthetic_music(seconds, extractor.sampling_rate, seed + i) for i in range(batch_size)]
    return extractor(clips, sampling_rate=extractor.sampling_rate)["input_values"]


def extractor_seconds(extractor, num_frames: int) -> float:
    """Seconds of audio that `num_frames` frames span (1876 frames = 30 s at 16 kHz, hop 256)."""
    return (num_frames - 1) * extractor.hop_size / extractor.sampling_rate


# ----------------------------------------------------------------------------------------------------------------------
# Timing


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], object], device: torch.device) -> float:
    """Wall-clock seconds of one call of `fn` (waiting for the GPU on CUDA)."""
    _synchronize(device)
    start = time.perf_counter()
    fn()
    _synchronize(device)
    return time.perf_counter() - start


def interleaved_rounds(variants: dict, rounds: int, device: torch.device, progress=None, warm_up: bool = True) -> dict:
    """Times every variant once per round, rotating which goes first, after one untimed warm-up call each.

    Args:
        variants: name -> zero-argument callable.
        warm_up: False when the caller already ran each variant once (long end-to-end passes).

    Returns:
        name -> list of seconds, one per round (so that index r of every list belongs to round r).
    """
    names = list(variants)
    for name in names if warm_up else ():
        variants[name]()
    times = {name: [] for name in names}
    for round_index in range(rounds):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            times[name].append(time_call(variants[name], device))
        if progress:
            progress(round_index + 1, rounds)
    return times


def matmul_peak_calls(device: torch.device, size: int | None = None) -> dict:
    """The GEMM peak candidates: name -> (call, FLOPs) for a large float32 square matmul in torch and, on CPU, in each
    installed exported-graph runtime (their own kernels: one torch matmul understates the peak on some CPUs).
    Each call runs 4 matmuls of `size` x `size` (2048 on CPU, 8192 on CUDA): `2 * size**3 * 4` FLOPs."""
    size = size or (8192 if device.type == "cuda" else 2048)
    repeats = 4
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)

    def torch_call():
        for _ in range(repeats):
            torch.matmul(a, b)

    flops = 2 * size**3 * repeats
    calls = {"torch": (torch_call, flops)}
    if device.type == "cuda":
        a16, b16 = a.to(torch.bfloat16), b.to(torch.bfloat16)

        def bfloat16_call():
            for _ in range(repeats):
                torch.matmul(a16, b16)

        calls[BF16_PEAK] = (bfloat16_call, flops)
    if device.type == "cpu":
        calls.update({name: (call, flops) for name, call in runtime_matmul_calls(a.numpy(), b.numpy(), repeats).items()})
    return calls


def runtime_matmul_calls(a: np.ndarray, b: np.ndarray, repeats: int) -> dict:
    """name -> call of `repeats` float32 matmuls `a @ b` in ONNX Runtime and OpenVINO (the installed ones)."""
    import onnx  # optional extra maest[onnx]
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["c"])],
        "matmul",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(a.shape)) for n in ("a", "b")],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, list(a.shape))],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    calls = {}
    with tempfile.TemporaryDirectory(prefix="maest-peak-") as directory:
        path = str(Path(directory) / "matmul.onnx")
        onnx.save(model, path)
        from maest.inference import backends

        for runtime in ("onnxruntime", "openvino"):
            if backends.runtime_version(runtime) is None:
                continue
            if runtime == "onnxruntime":
                session = backends.OnnxRuntimeSession(Path(path), torch.get_num_threads(), cache=False)
                run = lambda s=session: s.session.run(None, {"a": a, "b": b})  # noqa: E731
            else:
                session = backends.OpenVINOSession(Path(path), torch.get_num_threads(), "float32", cache=False)
                run = lambda s=session: s.request.infer({"a": a, "b": b}, share_inputs=True)  # noqa: E731
            calls[runtime] = (lambda run=run: [run() for _ in range(repeats)])
    return calls


BF16_PEAK = "torch-bfloat16"  # the bf16 matmul rate on CUDA (not a float32 peak candidate)


def peak_section(peak_times: dict, peak_flops: dict) -> dict:
    """The GEMM peak: per round, the best GFLOP/s of the runtimes' float32 matmuls; per runtime, its median; on
    CUDA also the bf16 matmul rate."""
    per_runtime = {name: [peak_flops[name] / t / 1e9 for t in seconds] for name, seconds in peak_times.items()}
    bf16 = per_runtime.pop(BF16_PEAK, None)
    best_rounds = [max(values) for values in zip(*per_runtime.values())]
    extra = {} if bf16 is None else {"bf16_matmul_peak_gflops": _median(bf16), "bf16_matmul_peak_gflops_rounds": bf16}
    return extra | {
        "matmul_peak_gflops": _median(best_rounds),
        "matmul_peak_gflops_rounds": best_rounds,
        "matmul_peak_gflops_by_runtime": {name: _median(values) for name, values in per_runtime.items()},
    }


def _median(values):
    return float(statistics.median(values)) if values else float("nan")


# ----------------------------------------------------------------------------------------------------------------------
# Models


def _ast_peer(model: nn.Module, device: torch.device) -> nn.Module:
    """transformers' `ASTForAudioClassification` of the same shape, SDPA attention, carrying the MAEST weights."""
    from maest.modeling.conversion import maest_to_ast_model

    return maest_to_ast_model(model, attn_implementation="sdpa").to(device)


@contextlib.contextmanager
def patchout_time_stride(model: nn.Module, stride: int):
    """Temporarily sets the inference patchout time stride of a MAEST model (its modules share `model.config`)."""
    config = model.config
    previous = config.inference_patchout_time_stride
    config.inference_patchout_time_stride = stride
    try:
        yield
    finally:
        config.inference_patchout_time_stride = previous


def _strided(model: nn.Module, stride: int, fn: Callable):
    def call(*args, **kwargs):
        with patchout_time_stride(model, stride):
            return fn(*args, **kwargs)

    return call


def _load_or_build(args, device: torch.device):
    from maest.modeling import MAESTConfig, MAESTForAudioClassification, load_maest

    if args.model:
        model = load_maest(args.model)  # every published layout; never silently random weights
        source = str(args.model)
    else:
        if args.config:
            config = MAESTConfig.from_json_file(args.config)
            source = f"random weights, config {args.config}"
        else:
            config = MAESTConfig.from_preset(args.preset)
            source = f"random weights, preset {args.preset}"
        torch.manual_seed(args.seed)
        model = MAESTForAudioClassification(config)
    model.config.inference_patchout_time_stride = 1
    model.config.inference_patchout_freq_stride = 1
    return model.eval().to(device), source


# ----------------------------------------------------------------------------------------------------------------------
# Accuracy


def _top_k_agreement(reference_logits, logits, k: int = 5) -> float:
    """Mean over inputs of the fraction of the reference's top-k tags that are also in the variant's top-k."""
    k = min(k, reference_logits.shape[-1])
    top_reference = reference_logits.float().topk(k, dim=-1).indices.tolist()
    top_variant = logits.float().topk(k, dim=-1).indices.tolist()
    return float(np.mean([len(set(a) & set(b)) / k for a, b in zip(top_reference, top_variant)]))


def _accuracy(reference_embeddings, reference_logits, embeddings, logits) -> dict:
    cosine = nn.functional.cosine_similarity(reference_embeddings.float(), embeddings.float(), dim=-1)
    return {
        "embedding_cosine_mean": float(cosine.mean()),
        "embedding_cosine_min": float(cosine.min()),
        "top5_agreement": _top_k_agreement(reference_logits, logits),
        "top1_agreement": _top_k_agreement(reference_logits, logits, k=1),
    }


# ----------------------------------------------------------------------------------------------------------------------
# Variants: each is a zero-argument call timed on the same inputs, with its FLOPs and a way to get its outputs


@dataclass
class Variant:
    """One way of running the model: `call()` is timed; `outputs()` returns `(block embedding, logits or scores)`
    for the accuracy report (None for variants that only reproduce float32, such as the AST peer)."""

    call: Callable[[], object]
    flops: int
    outputs: Callable[[], tuple] | None = None


def torch_variant(model, inputs, name: str, device, log) -> Variant:
    """float32, strideK, bfloat16, int8[-keep-...] and float32-compiled under torch."""
    config, frames = model.config, inputs.shape[1]
    flops = count_flops(config, frames)
    if name == "float32":
        return Variant(lambda: model(inputs), flops, lambda: (model.maest.embed(inputs), model(inputs).logits))
    if name.startswith("stride"):
        stride = int(name[len("stride") :])
        outputs = _strided(model, stride, lambda: (model.maest.embed(inputs), model(inputs).logits))
        return Variant(_strided(model, stride, lambda: model(inputs)), count_flops(config, frames, time_stride=stride), outputs)
    if name == "bfloat16":
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            variant = prepare_model(copy.deepcopy(model), "bfloat16", device)
        for warning in caught:
            log(f"note: {warning.message}")
        half = inputs.to(torch.bfloat16)
        return Variant(lambda: variant(half), flops, lambda: (variant.maest.embed(half), variant(half).logits))
    if name.startswith("int8"):
        if device.type != "cpu":
            raise VariantSkipped("dynamic int8 quantization runs on CPU only")
        skip = [] if name == "int8" else _int8_skip_modules(model, name[len("int8-keep-") :])
        variant = prepare_model(copy.deepcopy(model), "int8", device, int8_skip_modules=skip)
        return Variant(lambda: variant(inputs), flops, lambda: (variant.maest.embed(inputs), variant(inputs).logits))
    if name == "ast":
        peer = _ast_peer(model, device)
        return Variant(lambda: peer(inputs), flops, lambda: (None, peer(inputs).logits))
    if name == "float32-compiled":
        return compiled_variant(model, inputs, device, log)
    if name == "bfloat16-compiled":
        # What `maest tag/embed --compile` runs on a GPU: `compile_model` (inductor, fullgraph, static shapes).
        variant = compile_model(prepare_model(copy.deepcopy(model), "bfloat16", device))
        half = inputs.to(torch.bfloat16)
        start = time.perf_counter()
        try:
            with torch.inference_mode():
                variant(half)
        except Exception as error:  # no C++ compiler / Triton...
            raise VariantSkipped(f"torch.compile failed: {type(error).__name__}: {str(error).splitlines()[0][:200]}")
        log(f"compiled bfloat16 model in {time.perf_counter() - start:.1f} s")
        return Variant(lambda: variant(half), flops, lambda: (variant.maest.embed(half), variant(half).logits))
    raise ValueError(f"unknown variant {name!r}")


def compiled_variant(model, inputs, device, log) -> Variant:
    """torch.compile (inductor) with freezing: weights become constants, linears get prepacked oneDNN kernels with
    fused bias/GELU epilogues. Not the default path; shows what compilation adds here."""
    compiled = torch.compile(model, options={"freezing": True})
    try:
        with torch.inference_mode():
            seconds = time_call(lambda: compiled(inputs), device)
    except Exception as error:  # no C++ compiler, unsupported platform...
        raise VariantSkipped(f"torch.compile failed: {type(error).__name__}: {str(error).splitlines()[0][:200]}")
    log(f"compiled float32 model in {seconds:.1f} s")
    return Variant(lambda: compiled(inputs), count_flops(model.config, inputs.shape[1]), lambda: (None, compiled(inputs).logits))


class VariantSkipped(Exception):
    """A variant that cannot run here (the message says why); the benchmark reports it and goes on."""


def backend_variant(model, inputs, name: str, device, log, cache_dir=None) -> Variant:
    """`<backend>-<dtype>[-strideK]`, e.g. `onnxruntime-float32`, `openvino-int8-stride2`: the exported graph of
    `maest.inference.backends` (built on first use, outside the timing)."""
    from maest.inference import backends

    parts = name.split("-")
    backend, dtype = parts[0], parts[1]
    stride = int(parts[2][len("stride") :]) if len(parts) > 2 else 1
    if backends.runtime_version(backend) is None:
        raise VariantSkipped(f"{backend} is not installed")
    if device.type != "cpu":
        raise VariantSkipped(f"{backend} runs on CPU only")
    strided = copy.deepcopy(model)
    strided.config.inference_patchout_time_stride = stride
    inference_model = InferenceModel(strided, MAESTFeatureExtractor(max_length=inputs.shape[1]), name, device, "float32")
    runner = backends.load_backend(inference_model, backend, dtype, cache_dir=cache_dir)
    started = time.perf_counter()
    runner.run(inputs, scores=True, embedding=True)  # exports (or reads the cache) and compiles the graph
    log(f"{name}: graph ready in {time.perf_counter() - started:.1f} s")

    def outputs():
        result = runner.run(inputs, scores=True, embedding=True)
        return result["embedding"], torch.logit(result["scores"].double(), eps=1e-12)

    # Timed on the graph with both outputs (one export per variant, not two): the embedding is a pooling of a block's
    # hidden state that the scores need anyway, a negligible cost next to the blocks.
    flops = count_flops(model.config, inputs.shape[1], time_stride=stride)
    return Variant(lambda: runner.run(inputs, scores=True, embedding=True), flops, outputs)


def build_variants(model, inputs, device, names: list, log, cache_dir=None) -> tuple[dict, dict]:
    """name -> `Variant` for every variant that runs here, and name -> reason for those that do not."""
    variants, skipped = {}, {}
    for name in names:
        try:
            if name.split("-")[0] in ("onnxruntime", "openvino"):
                variants[name] = backend_variant(model, inputs, name, device, log, cache_dir)
            else:
                variants[name] = torch_variant(model, inputs, name, device, log)
        except VariantSkipped as reason:
            skipped[name] = str(reason)
            log(f"{name}: skipped ({reason})")
    return variants, skipped


# ----------------------------------------------------------------------------------------------------------------------
# The model-only section


def benchmark_inference(
    model, inputs, device, rounds: int, names: list, log, peak_size: int | None = None, cache_dir=None
) -> dict:
    """Model-only throughput of each variant, the GEMM peak, and their accuracy against torch float32 without
    patchout (the reference). Returns the `inference` section of the results."""
    variants, skipped = build_variants(model, inputs, device, names, log, cache_dir)
    peaks = matmul_peak_calls(device, peak_size)
    calls = {name: variant.call for name, variant in variants.items()} | {f"peak:{n}": c for n, (c, _) in peaks.items()}
    log(f"timing {len(calls)} calls x {rounds} rounds, batch {inputs.shape[0]} ...")
    with torch.inference_mode():
        times = interleaved_rounds(calls, rounds, device, progress=lambda r, n: log(f"  round {r}/{n}"))
    peak_times = {name: times.pop(f"peak:{name}") for name in peaks}
    results = peak_section(peak_times, {name: flops for name, (_, flops) in peaks.items()})
    results["model_only"] = throughput_table(times, variants, inputs.shape)
    results["skipped_variants"] = skipped
    if "float32" in times:
        results["flop_bound"] = flop_bound(model.config, inputs.shape, times["float32"], results["matmul_peak_gflops_rounds"])
    results["ratios"] = speed_ratios(times, results)
    if "bf16_matmul_peak_gflops" in results:
        for name in ("bfloat16", "bfloat16-compiled"):
            if name in results["model_only"]:
                achieved = results["model_only"][name]["achieved_gflops_per_second"]
                results["ratios"][f"{name}_fraction_of_bf16_peak"] = achieved / results["bf16_matmul_peak_gflops"]
    log("accuracy against torch float32 without patchout ...")
    with torch.inference_mode():
        results["accuracy"] = accuracy_report(variants)
    results["fastest"] = fastest_paths(results["ratios"], results["accuracy"])
    return results


def fastest_paths(ratios: dict, accuracy: dict) -> dict:
    """The fastest float32 path (`FLOAT32_PATHS`) and the fastest path whose block embedding keeps cosine >=
    `ACCURATE_COSINE` to torch float32 (any variant but the AST peer), each as `{"variant", "over_torch"}`."""
    # Each variant's speed over torch float32 (torch's patchout strides are named `strideK_over_none`).
    speeds = {name: ratios.get(f"{name}_over_float32", ratios.get(f"{name}_over_none")) for name in accuracy}
    speeds = {name: value for name, value in speeds.items() if value is not None} | {"float32": 1.0}
    float32 = {name: value for name, value in speeds.items() if name in FLOAT32_PATHS}
    accurate = {
        name: value
        for name, value in speeds.items()
        if name == "float32" or (accuracy.get(name, {}).get("embedding_cosine_min") or 0.0) >= ACCURATE_COSINE
    }
    fastest = {}
    for kind, candidates in (("float32", float32), ("accurate", accurate)):
        name = max(candidates, key=candidates.get)
        fastest[kind] = {"variant": name, "over_torch": candidates[name]}
    return fastest


def throughput_table(times: dict, variants: dict, shape) -> dict:
    """Per variant: seconds per batch, minutes of audio per second and achieved GFLOP/s (medians over rounds)."""
    batch_size, num_frames = shape[0], shape[1]
    seconds_of_audio = batch_size * _segment_seconds(num_frames)
    return {
        name: {
            "seconds_per_batch_median": _median(seconds),
            "seconds_per_batch_rounds": seconds,
            "minutes_audio_per_second": seconds_of_audio / 60 / _median(seconds),
            "gflops_per_input": variants[name].flops / 1e9,
            "achieved_gflops_per_second": variants[name].flops * batch_size / _median(seconds) / 1e9,
        }
        for name, seconds in times.items()
    }


def flop_bound(config, shape, float32_seconds: list, peak_gflops_rounds: list) -> dict:
    """The FLOP-bound limit the GEMM peak implies for MAEST, and torch float32's fraction of it per round."""
    batch_size, num_frames = shape[0], shape[1]
    flops = count_flops(config, num_frames)
    peak = _median(peak_gflops_rounds) * 1e9
    return {
        "float32_gflops_per_input": flops / 1e9,
        "minutes_audio_per_second": peak / flops * _segment_seconds(num_frames) / 60,
        "float32_fraction_rounds": [flops * batch_size / s / (p * 1e9) for s, p in zip(float32_seconds, peak_gflops_rounds)],
    }


def round_ratio(times: dict, numerator: str, denominator: str) -> float | None:
    """How many times faster `numerator` ran than `denominator`: the ratio within each round (noise hits both alike),
    then the median over rounds. None when either did not run."""
    if numerator not in times or denominator not in times:
        return None
    return _median([d / n for n, d in zip(times[numerator], times[denominator])])


def speed_ratios(times: dict, results: dict) -> dict:
    """The target ratios (see `TARGETS`) and every other variant's speed over torch float32."""
    ratios = {
        "maest_over_ast": round_ratio(times, "float32", "ast"),
        "stride2_over_none": round_ratio(times, "stride2", "float32"),
        "stride3_over_none": round_ratio(times, "stride3", "float32"),
        "bfloat16_over_float32": round_ratio(times, "bfloat16", "float32"),
        "int8_over_float32": round_ratio(times, "int8", "float32"),
        "fraction_of_flop_bound": _median(results["flop_bound"]["float32_fraction_rounds"]) if "flop_bound" in results else None,
    }
    for name in times:
        if name not in ("float32", "ast", "stride2", "stride3", "bfloat16", "int8"):
            ratios[f"{name}_over_float32"] = round_ratio(times, name, "float32")
    return ratios


def accuracy_report(variants: dict) -> dict:
    """Per variant against torch float32 without patchout: block-embedding cosine and top-5 agreement, or for the
    variants that only reproduce float32 in another implementation (AST peer, compiled) the logits' difference."""
    reference_embeddings, reference_logits = variants["float32"].outputs()
    report = {}
    for name, variant in variants.items():
        if name == "float32" or variant.outputs is None:
            continue
        embeddings, logits = variant.outputs()
        if embeddings is None:
            report[name] = {
                "logits_max_abs_difference": float((logits.float() - reference_logits).abs().max()),
                "top5_agreement": _top_k_agreement(reference_logits, logits),
            }
        else:
            report[name] = _accuracy(reference_embeddings, reference_logits, embeddings, logits)
            if name.endswith("-float32"):
                report[name]["logits_max_abs_difference"] = float((logits.float() - reference_logits).abs().max())
    return report


def _int8_skip_modules(model, which: str) -> list:
    """Names of the Linear layers to keep in float32 for an `int8-keep-<which>` variant: `fc2` (every block's MLP
    output), `first-last` (all Linears of the first and last block) or `heads` (the classification heads)."""
    names = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    last = model.config.num_hidden_layers - 1
    if which == "fc2":
        return [name for name in names if name.endswith("mlp.fc2")]
    if which == "first-last":
        return [name for name in names if ".layers.0." in name or f".layers.{last}." in name]
    if which == "heads":
        return [name for name in names if ".layers." not in name]
    raise ValueError(f"unknown int8 variant int8-keep-{which}: use fc2, first-last or heads")


def _segment_seconds(num_frames: int) -> float:

    return extractor_seconds(MAESTFeatureExtractor(max_length=num_frames), num_frames)


def benchmark_training(model, device, batch_size: int, rounds: int, patchout_time: Optional[int], log) -> dict:
    """Training steps per second (forward, BCE loss, backward, AdamW step) with and without structured time
    patchout, interleaved on one model and optimizer."""
    config = copy.deepcopy(model.config)
    crop = min(PAPER_TRAIN_CROP_FRAMES, config.max_length)
    columns = config.num_time_patches(crop)
    if patchout_time is None:
        # The paper's 90 of 186 columns for 30 s; the same fraction for other lengths.
        patchout_time = PAPER_TRAIN_PATCHOUT_TIME if columns == 186 else round(columns * PAPER_TRAIN_PATCHOUT_TIME / 186)
    from maest.modeling import MAESTForAudioClassification

    torch.manual_seed(0)
    train_model = MAESTForAudioClassification(config).to(device).train()
    train_model.load_state_dict(model.state_dict())
    # The fused CPU/GPU kernel: the for-loop AdamW costs about as much as a patchout forward pass on 86M
    # parameters, a fixed cost that patchout cannot shrink.
    optimizer = torch.optim.AdamW(train_model.parameters(), lr=1e-5, fused=True)
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(batch_size, crop, config.num_mel_bins, generator=generator).to(device)
    labels = (torch.rand(batch_size, config.num_labels, generator=generator) < 0.05).float().to(device)

    def step(drop: int):
        def call():
            train_model.config.train_patchout_time = drop
            optimizer.zero_grad(set_to_none=True)
            loss = train_model(inputs, labels=labels).loss
            loss.backward()
            optimizer.step()

        return call

    steps = {"no_patchout": step(0), "patchout": step(patchout_time)}
    if device.type == "cuda":
        # The CUDA default of `maest pretrain` (mixed_precision auto -> bf16): accelerate's autocast, float32 weights.
        patchout_step = step(patchout_time)

        def default_step():
            with torch.autocast("cuda", dtype=torch.bfloat16):
                patchout_step()

        steps["patchout_bf16_autocast"] = default_step
    log(f"timing training steps x {rounds} rounds, batch {batch_size}, crop {crop} frames ...")
    times = interleaved_rounds(
        steps,
        rounds,
        device,
        progress=lambda r, n: log(f"  round {r}/{n}"),
    )
    speedups = [n / p for n, p in zip(times["no_patchout"], times["patchout"])]
    extra = {}
    if "patchout_bf16_autocast" in times:
        extra = {
            "steps_per_second_patchout_bf16_autocast": 1 / _median(times["patchout_bf16_autocast"]),
            "default_over_float32": round_ratio(times, "patchout_bf16_autocast", "patchout"),
            "peak_memory_gb": torch.cuda.max_memory_allocated(device) / 1e9,
        }
    return extra | {
        "optimizer": "AdamW(fused=True)",
        "batch_size": batch_size,
        "crop_frames": crop,
        "time_columns": columns,
        "train_patchout_time": patchout_time,
        "steps_per_second_no_patchout": 1 / _median(times["no_patchout"]),
        "steps_per_second_patchout": 1 / _median(times["patchout"]),
        "seconds_per_step_rounds": times,
        "patchout_speedup": _median(speedups),
    }


def benchmark_end_to_end(
    model,
    device,
    batch_size: int,
    rounds: int,
    num_files: int,
    dtype: str,
    log,
    num_workers: Optional[int] = None,
    backend: str = "torch",
    minutes: tuple = (None, None),
    cache_dir=None,
) -> dict:
    """Audio files -> track embeddings through `maest.inference.embed` (decode, resample, front-end in loader
    processes, model on `backend`), against the model-only time of the same segments in the same batches through
    the same back-end.

    Args:
        minutes: `(shortest, longest)` track length in minutes (uniform); None: one to two segment lengths.
    """
    try:
        from maest.inference import embed, load_model
        from maest.inference.backends import load_backend
    except ImportError as error:
        return {"skipped": f"maest.inference has no embed API ({error})"}

    extractor = MAESTFeatureExtractor(max_length=model.config.max_length)
    segment_seconds = extractor_seconds(extractor, model.config.max_length)
    shortest = segment_seconds if minutes[0] is None else 60.0 * minutes[0]
    longest = 2 * segment_seconds if minutes[1] is None else 60.0 * minutes[1]
    with tempfile.TemporaryDirectory(prefix="maest-bench-") as directory:
        directory = Path(directory)
        model.save_pretrained(directory / "model")
        extractor.save_pretrained(directory / "model")
        inference_model = load_model(str(directory / "model"), device=str(device))
        inference_model.inference_patchout_time_stride = 1
        inference_model = load_backend(inference_model, backend, dtype, cache_dir=cache_dir)
        files, total_seconds = [], 0.0
        rng = np.random.default_rng(0)
        for index in range(num_files):
            # 44.1 kHz, in several formats: resampling and decoding are part of the work.
            seconds = float(rng.uniform(shortest, longest))
            path = directory / f"track{index:02d}.{('flac', 'mp3', 'wav', 'ogg')[index % 4]}"
            _write_audio(path, synthetic_music(seconds, 44100, seed=100 + index), 44100)
            files.append(str(path))
            total_seconds += seconds

        def end_to_end():
            results = embed(files, model=inference_model, batch_size=batch_size, num_workers=num_workers)
            if len(results.failed):
                raise RuntimeError(f"end-to-end benchmark: tracks failed: {results.failed}")
            return results

        warm_up = end_to_end()  # also builds the back-end's graph
        num_segments = int(np.sum(warm_up.num_segments))
        # The model-only twin: the same segments in the same batch sizes, through the same prepared model.
        sizes = [batch_size] * (num_segments // batch_size) + ([num_segments % batch_size] if num_segments % batch_size else [])
        generator = torch.Generator().manual_seed(0)
        batches = [torch.randn(size, model.config.max_length, model.config.num_mel_bins, generator=generator) for size in sizes]

        def model_only():
            for batch in batches:
                inference_model.run(batch, scores=False, embedding=True)

        model_only()  # the warm-up of the twin (end_to_end's was the pass above)
        log(
            f"end-to-end ({inference_model.backend} {dtype}): {num_files} files, {total_seconds / 60:.1f} min of audio, "
            f"{num_segments} segments, batch {batch_size}, {rounds} rounds ..."
        )
        times = interleaved_rounds(
            {"end_to_end": end_to_end, "model_only": model_only}, rounds, device,
            progress=lambda r, n: log(f"  round {r}/{n}"), warm_up=False,
        )  # fmt: skip
    ratios = [m / e for m, e in zip(times["model_only"], times["end_to_end"])]
    return {
        "num_files": num_files,
        "audio_minutes": total_seconds / 60,
        "track_minutes_range": [shortest / 60, longest / 60],
        "segments": num_segments,
        "batch_size": batch_size,
        "backend": inference_model.backend,  # (what `auto` chose, where it was asked for)
        "dtype": dtype,
        "num_workers": num_workers,
        "end_to_end_minutes_audio_per_second": total_seconds / 60 / _median(times["end_to_end"]),
        "model_only_minutes_audio_per_second": num_segments * segment_seconds / 60 / _median(times["model_only"]),
        "seconds_rounds": times,
        "end_to_end_over_model_only": _median(ratios),
    }


def benchmark_end_to_end_cuda(
    model, device, batch_size: int, rounds: int, num_files: int, log, num_workers: Optional[int] = None,
    track_minutes: float = 3.0, distinct_tracks: int = 2, compile: bool = False,
) -> dict:
    """MP3 files -> track embeddings on a GPU through `maest.inference.embed` with the CUDA defaults (bfloat16, the
    front-end on the GPU, loader workers decoding), against the model-only time of the same segments in the same
    batches (inputs already on the GPU); and where the time goes: decoding and resampling in a worker (per core),
    the copy of a pinned batch of samples to the GPU, the front-end on the GPU, and the model.

    The files are `distinct_tracks` synthetic 44.1 kHz stereo tracks of `track_minutes`, copied to `num_files` files
    (synthesizing hours of audio would take longer than the measurement; each copy is decoded for real). The loader
    workers are one per core but one (`num_workers`), as decoding is what bounds the run.
    """
    import shutil

    from maest.feature_extraction.audio import track_segment_windows
    from maest.inference import embed, load_model
    # Decoding bounds a GPU run: one loader worker per core but the main process's.
    num_workers = max(1, (os.cpu_count() or 2) - 1) if num_workers is None else num_workers
    extractor = MAESTFeatureExtractor(max_length=model.config.max_length)
    segment_seconds = extractor_seconds(extractor, model.config.max_length)
    with tempfile.TemporaryDirectory(prefix="maest-bench-cuda-") as directory:
        directory = Path(directory)
        model.save_pretrained(directory / "model")
        extractor.save_pretrained(directory / "model")
        inference_model = load_model(str(directory / "model"), device=str(device), dtype="auto", compile=compile)
        inference_model.inference_patchout_time_stride = 1
        log(f"end-to-end (cuda): writing {distinct_tracks} MP3 tracks of {track_minutes:g} min, {num_files} files ...")
        sources = []
        for index in range(distinct_tracks):
            # A 20 s synthetic clip repeated with other gains and shifts (synthesizing minutes costs minutes; the
            # decoder's work does not depend on the music).
            clip = synthetic_music(20.0, 44100, seed=200 + index)
            repeats = math.ceil(60.0 * track_minutes / 20.0)
            audio = np.concatenate([np.roll(clip, 977 * k) * (0.5 + 0.2 * (k % 3)) for k in range(repeats)])
            audio = audio[: int(60.0 * track_minutes * 44100)].astype(np.float32)
            path = directory / f"source{index}.mp3"
            _write_audio(path, np.stack([audio, np.roll(audio, 441)]), 44100)
            sources.append(path)
        files = []
        for index in range(num_files):
            files.append(str(shutil.copyfile(sources[index % distinct_tracks], directory / f"track{index:03d}.mp3")))

        def end_to_end():
            results = embed(files, model=inference_model, batch_size=batch_size, num_workers=num_workers)
            if len(results.failed):
                raise RuntimeError(f"end-to-end benchmark: tracks failed: {results.failed}")
            return results

        warm_up = end_to_end()
        num_segments = int(np.sum(warm_up.num_segments))
        total_seconds = float(np.sum(warm_up.durations))
        sizes = [batch_size] * (num_segments // batch_size) + ([num_segments % batch_size] if num_segments % batch_size else [])
        generator = torch.Generator().manual_seed(0)
        batches = [
            torch.randn(size, model.config.max_length, model.config.num_mel_bins, generator=generator).to(device)
            for size in sizes
        ]

        def model_only():
            for batch in batches:
                inference_model.run(batch, scores=False, embedding=True)

        model_only()
        log(f"end-to-end (cuda): {num_segments} segments, batch {batch_size}, {num_workers} workers, {rounds} rounds ...")
        times = interleaved_rounds(
            {"end_to_end": end_to_end, "model_only": model_only}, rounds, device,
            progress=lambda r, n: log(f"  round {r}/{n}"), warm_up=False,
        )  # fmt: skip

        # Where the time goes, per batch of `batch_size` segments.
        log("end-to-end (cuda): where the time goes ...")
        start = time.perf_counter()
        windows, frames = [], []
        for source in sources:  # one process, one thread: what one loader worker does
            for chunk, chunk_frames, _ in track_segment_windows(source, extractor, segments_per_chunk=4):
                windows.append(chunk)
                frames.append(chunk_frames)
        decode_seconds = time.perf_counter() - start
        windows, frames = torch.cat(windows), torch.cat(frames)
        decode_per_segment = decode_seconds / len(windows)
        repeat = (batch_size + len(windows) - 1) // len(windows)
        pinned = windows.repeat(repeat, 1)[:batch_size]
        pinned = pinned.pin_memory() if device.type == "cuda" else pinned
        batch_frames = frames.repeat(repeat)[:batch_size]
        on_device = pinned.to(device)
        features = extractor.segment_log_mel(on_device, batch_frames)
        stages = {
            "transfer": lambda: pinned.to(device, non_blocking=True),
            "front_end": lambda: extractor.segment_log_mel(on_device, batch_frames),
            "model": lambda: inference_model.run(features, scores=False, embedding=True),
        }
        stage_times = interleaved_rounds(stages, max(rounds, 3), device)
    per_batch = {name: _median(values) for name, values in stage_times.items()}
    per_batch["decode_one_core"] = decode_per_segment * batch_size
    per_batch["decode_all_workers"] = per_batch["decode_one_core"] / max(num_workers, 1)
    ratios = [m / e for m, e in zip(times["model_only"], times["end_to_end"])]
    return {
        "format": "mp3 44.1 kHz stereo",
        "num_files": num_files,
        "audio_minutes": total_seconds / 60,
        "segments": num_segments,
        "batch_size": batch_size,
        "backend": "torch",
        "dtype": inference_model.dtype,
        "compiled": bool(compile),
        "front_end": f"on the model's device ({device.type})",
        "num_workers": num_workers,
        "end_to_end_segments_per_second": num_segments / _median(times["end_to_end"]),
        "model_only_segments_per_second": num_segments / _median(times["model_only"]),
        "end_to_end_minutes_audio_per_second": total_seconds / 60 / _median(times["end_to_end"]),
        "model_only_minutes_audio_per_second": num_segments * segment_seconds / 60 / _median(times["model_only"]),
        "seconds_rounds": times,
        "end_to_end_over_model_only": _median(ratios),
        "seconds_per_batch": per_batch,
        "decode_real_time_factor_one_core": segment_seconds / decode_per_segment,
        "decode_bound_segments_per_second": max(num_workers, 1) / decode_per_segment,
    }


def _write_audio(path: Path, audio: np.ndarray, sampling_rate: int) -> None:
    from maest.feature_extraction.audio import encode_audio

    encode_audio(path, audio, sampling_rate)


# ----------------------------------------------------------------------------------------------------------------------
# Report


def check_targets(results: dict, bf16_hardware: bool, cuda: bool = False) -> dict:
    ratios = results.get("inference", {}).get("ratios", {})
    accuracy = results.get("inference", {}).get("accuracy", {})
    values = dict(ratios)
    notes = {}
    if cuda:
        fractions = {name: ratios.get(f"{name}_fraction_of_bf16_peak") for name in ("bfloat16", "bfloat16-compiled")}
        fractions = {name: value for name, value in fractions.items() if value is not None}
        if fractions:
            best = max(fractions, key=fractions.get)
            values["bfloat16_fraction_of_bf16_peak"] = fractions[best]
            notes["bfloat16_fraction_of_bf16_peak"] = best
        if "bfloat16" in accuracy:
            values["bfloat16_embedding_cosine"] = accuracy["bfloat16"]["embedding_cosine_min"]
            values["bfloat16_top5_agreement"] = accuracy["bfloat16"]["top5_agreement"]
        values["training_default_over_float32"] = results.get("training", {}).get("default_over_float32")
    if "int8" in accuracy:
        values["int8_embedding_cosine"] = accuracy["int8"]["embedding_cosine_min"]
    end_to_end = results.get("end_to_end", {})
    values["end_to_end_over_model_only"] = end_to_end.get("end_to_end_over_model_only")
    values["training_patchout_speedup"] = results.get("training", {}).get("patchout_speedup")
    if end_to_end.get("backend"):
        notes["end_to_end_over_model_only"] = f"{end_to_end['backend']} {end_to_end['dtype']}"
    for kind, entry in results.get("inference", {}).get("fastest", {}).items():
        values[f"fastest_{kind}_over_torch"] = entry["over_torch"]
        notes[f"fastest_{kind}_over_torch"] = entry["variant"]
    report = {}
    for name, target in (CUDA_TARGETS if cuda else TARGETS).items():
        value = values.get(name)
        if value is None:
            continue
        entry = {"value": value, "target": target, "met": bool(value >= target)}
        if name in notes:
            entry["note"] = notes[name]
        if name == "bfloat16_over_float32" and not bf16_hardware:
            entry["note"] = "no bf16 units on this hardware: bf16 is expected to be slower (target does not apply)"
            entry["met"] = None
        report[name] = entry
    return report


def _machine(device: torch.device) -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            cpu = next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    machine = {
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu_precision": cpu_precision_summary(),
    }
    try:
        import transformers

        machine["transformers"] = transformers.__version__
    except ImportError:
        pass
    return machine


def backend_variant_names(names=None, dtypes=None, strides=None) -> list[str]:
    """`<backend>-<dtype>[-strideK]` for every installed exported-graph back-end (or `names`) x dtype x stride."""
    from maest.inference.backends import EXPORTED_DTYPES, available_backends

    names = [name for name in available_backends() if name != "torch"] if names is None else names
    variants = []
    for backend in names:
        for dtype in dtypes or ("float32", "int8"):
            if dtype in EXPORTED_DTYPES.get(backend, ()):
                variants += [f"{backend}-{dtype}" + (f"-stride{k}" if k > 1 else "") for k in strides or (1, 2, 3)]
    return variants


def end_to_end_backend(inference: dict) -> str:
    """The back-end of the fastest float32 path measured (torch when the fastest is torch itself or compiled)."""
    variant = inference.get("fastest", {}).get("float32", {}).get("variant", "float32")
    backend = variant.split("-")[0]
    return backend if backend in ("onnxruntime", "openvino") else "torch"


def run_benchmark(args, log=None) -> dict:
    """Runs the benchmark described by parsed `maest bench` arguments and returns the results dict."""
    log = log or (lambda message: print(message, file=sys.stderr, flush=True))
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise MAESTError("--device cuda was asked for, but no CUDA GPU is available")
    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = device.type == "cuda"
    if cuda:
        # The float32 reference runs without TF32 (loading a float32 model for inference allows it).
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    model, source = _load_or_build(args, device)
    batch_size = args.batch_size or (64 if cuda else 1 if args.quick else 2)
    rounds = args.rounds or (3 if args.quick else 7)
    num_frames = model.config.max_length
    results = {
        "command": "maest " + " ".join(sys.argv[1:]) if Path(sys.argv[0]).name == "maest" else None,
        "options": {key: value for key, value in vars(args).items() if not callable(value)},
        "machine": _machine(device),
        "model": source,
        "settings": {
            "batch_size": batch_size,
            "rounds": rounds,
            "num_frames": num_frames,
            "seconds_per_input": _segment_seconds(num_frames),
            "quick": bool(args.quick),
            "embedding_block": model.config.embedding_block,
        },
    }
    if cuda:
        results["settings"]["float32_tf32"] = False
    inputs = music_features(model.config, batch_size, seed=args.seed).to(device)
    variants = ["float32", "bfloat16", "int8", "stride2", "stride3", "ast"] + list(args.extra_variants or [])
    variants += backend_variant_names(getattr(args, "backends", None), getattr(args, "dtypes", None), getattr(args, "strides", None))
    results["inference"] = benchmark_inference(
        model, inputs, device, rounds, variants, log, args.peak_size, getattr(args, "graph_cache", None)
    )
    if args.skip_training:
        results["training"] = {"skipped": "--skip-training"}
    else:
        training_rounds = args.training_rounds or (2 if args.quick else 4)
        training_batch = args.training_batch_size or (64 if cuda and not args.quick else 16 if cuda else 1 if args.quick else 2)
        results["training"] = benchmark_training(model, device, training_batch, training_rounds, None, log)
    if args.skip_e2e:
        results["end_to_end"] = {"skipped": "--skip-e2e"}
    elif cuda:
        results["end_to_end"] = benchmark_end_to_end_cuda(
            model, device, batch_size, getattr(args, "e2e_rounds", None) or 2,
            args.e2e_files or (24 if args.quick else 160), log,
            num_workers=getattr(args, "e2e_workers", None),
            track_minutes=2.0 if args.quick else 3.0,
        )  # fmt: skip
    else:
        backend = getattr(args, "e2e_backend", None) or end_to_end_backend(results["inference"])
        minutes = getattr(args, "e2e_minutes", None) or ((None, None) if args.quick else (1.0, 2.0))
        results["end_to_end"] = benchmark_end_to_end(
            model, device, batch_size, getattr(args, "e2e_rounds", None) or (2 if args.quick else 3),
            args.e2e_files or (2 if args.quick else 20), "float32", log, backend=backend, minutes=tuple(minutes),
            cache_dir=getattr(args, "graph_cache", None),
        )  # fmt: skip
    bf16_hardware = device.type == "cuda" or cpu_precision_summary()["amx_bf16"] or cpu_precision_summary()["avx512_bf16"]
    results["targets"] = check_targets(results, bool(bf16_hardware), cuda=device.type == "cuda")
    return results
