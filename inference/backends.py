"""Inference back-ends: the same `InferenceModel.run` contract, run by torch or from an exported graph by ONNX Runtime
or OpenVINO (`--backend torch|onnxruntime|openvino|auto`).

`load_backend(inference_model, backend, dtype)` returns an `InferenceModel` whose `run(segments, scores, embedding,
block, tokens)` takes the same `(batch, frames, 96)` features and returns the same dict of float32 CPU tensors. For
ONNX Runtime and OpenVINO the model is exported once per model, settings and the versions that build the graph
(`export_graph`: the weights' digest, inference patchout strides, block, tokens, outputs, dtype; torch's version, the
exporter, and for int8 ONNX Runtime's, the quantizer), into a cache folder (`$MAEST_CACHE` or `~/.cache/maest`,
subfolder `graphs`), built in a temporary folder and renamed into place, so concurrent jobs never read half a graph.
Both runtimes read the same `.onnx` file (an ONNX graph does not depend on the runtime that runs it). Batch and frames
are dynamic.

dtypes: ``float32`` everywhere; ``int8`` on ONNX Runtime and OpenVINO is ONNX Runtime's dynamic quantization of the
MatMul weights (int8, one scale per output channel; activations quantized per call), the same scheme as torch's
`--dtype int8`; ``bfloat16`` on OpenVINO sets its bf16 inference-precision hint (pays only with AMX / AVX512-BF16).

`auto` picks by this rule (backed by two `maest bench` runs on 2-core AMD EPYCs, benchmarks/results.md and README
"Speed"): on CPU, float32 runs fastest under OpenVINO (1.32x torch; ONNX Runtime 1.25x), then ONNX Runtime, then torch;
int8 under ONNX Runtime (2.46x torch float32; OpenVINO reading the same quantized graph 1.17x), then OpenVINO, then
torch; bfloat16 and CUDA devices run under torch. A runtime that is not installed is passed over for the next one,
saying so once. A named back-end that cannot run (not installed, another dtype, CUDA) is an error, never replaced.
"""

import copy
import hashlib
import json
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from maest.errors import MAESTError
from maest.modeling import parse_embedding_tokens

from .model import InferenceModel
from .onnx_export import export_graph
from .precision import prepare_model


BACKENDS = ("torch", "onnxruntime", "openvino")
BACKEND_CHOICES = ("auto",) + BACKENDS
# The dtypes each exported-graph runtime runs (torch runs every dtype of `maest.inference.precision`).
EXPORTED_DTYPES = {"onnxruntime": ("float32", "int8"), "openvino": ("float32", "int8", "bfloat16")}
# `auto`'s order of preference on CPU per dtype, fastest first (see the module docstring); other dtypes run on torch.
AUTO_ORDER = {"float32": ("openvino", "onnxruntime", "torch"), "int8": ("onnxruntime", "openvino", "torch")}
GRAPH_FORMAT = 2  # bump when the exported graph changes, so that cached graphs are rebuilt


class BackendError(MAESTError, ValueError):
    """A back-end that does not exist, is not installed, or cannot run the asked dtype or device."""


def runtime_version(backend: str) -> str | None:
    """The installed version of a back-end's runtime, or None when it is not installed."""
    try:
        if backend == "torch":
            return torch.__version__
        if backend == "onnxruntime":
            import onnxruntime  # optional extra maest[onnx]

            return onnxruntime.__version__
        if backend == "openvino":
            import openvino  # optional extra maest[openvino]

            return openvino.__version__
    except ImportError:
        return None
    raise BackendError(f"Unknown backend {backend!r}: choose one of {', '.join(BACKEND_CHOICES)}")


def available_backends() -> list[str]:
    """The back-ends whose runtime is installed here (torch always)."""
    return [backend for backend in BACKENDS if runtime_version(backend) is not None]


_fallbacks_reported: set = set()


def _extra(backend: str) -> str:
    return "onnx" if backend == "onnxruntime" else backend


def resolve_backend(backend: str = "auto", dtype: str = "float32", device="cpu") -> str:
    """The back-end that runs `dtype` on `device`.

    A named back-end is itself, or an error (`BackendError`) when it is not installed, does not run `dtype`, or is an
    exported one asked for on CUDA: an explicit choice is never replaced silently. ``"auto"`` follows the module's
    rule: on CPU, float32 and int8 run on the first installed one of `AUTO_ORDER[dtype]`; bfloat16 and CUDA devices
    run on torch. When `auto` passes over a runtime that is not installed it says so, once per process.
    """
    if backend not in BACKEND_CHOICES:
        raise BackendError(f"unknown backend {backend!r}: choose one of {', '.join(BACKEND_CHOICES)}")
    cpu = torch.device(device).type == "cpu"
    if backend == "torch":
        return "torch"
    if backend != "auto":
        if not cpu:
            raise BackendError(
                f"backend {backend!r} runs on CPU only, not on {device!r}: use --backend torch (or auto)"
            )
        if dtype not in EXPORTED_DTYPES[backend]:
            raise BackendError(
                f"backend {backend!r} does not run dtype {dtype!r}: choose {', '.join(EXPORTED_DTYPES[backend])}"
            )
        if runtime_version(backend) is None:
            raise BackendError(
                f"backend {backend!r} is not installed: pip install 'maest[{_extra(backend)}]', or use --backend torch"
            )
        return backend
    if not cpu or dtype not in AUTO_ORDER:
        return "torch"
    order = AUTO_ORDER[dtype]
    missing = [name for name in order if name != "torch" and runtime_version(name) is None]
    chosen = next(name for name in order if name not in missing)
    passed_over = sorted(missing[: order.index(chosen)])
    if passed_over and (tuple(passed_over), chosen) not in _fallbacks_reported:
        _fallbacks_reported.add((tuple(passed_over), chosen))
        install = " or ".join(f"pip install 'maest[{_extra(name)}]'" for name in passed_over)
        warnings.warn(
            f"backend auto: {' and '.join(passed_over)} not installed ({install} for a faster CPU path); running on "
            f"{chosen}",
            UserWarning,
            stacklevel=2,
        )
    return chosen


def graph_cache_dir() -> Path:
    """Where exported graphs are cached: `$MAEST_CACHE/graphs` (default `~/.cache/maest/graphs`)."""
    return Path(os.environ.get("MAEST_CACHE", Path.home() / ".cache" / "maest")).expanduser() / "graphs"


def weights_digest(model: torch.nn.Module) -> str:
    """A SHA-256 digest of a model's config and float32 weights (names, shapes, values): the model's identity in the
    graph cache (two fine-tunings of one checkpoint differ, two loads of one directory do not)."""
    digest = hashlib.sha256(model.config.to_json_string(use_diff=False).encode())
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().float().contiguous().cpu().numpy().tobytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class GraphKey:
    """Everything an exported graph depends on; its digest names the graph's cache folder."""

    model: str
    time_stride: int
    frequency_stride: int
    block: int
    tokens: tuple
    outputs: str
    dtype: str
    quantizer: str = ""  # int8: ONNX Runtime's version (its quantizer writes the graph); float32: none
    torch: str = torch.__version__
    format: int = GRAPH_FORMAT

    def folder_name(self) -> str:
        text = json.dumps(self.__dict__, sort_keys=True, default=list)
        return hashlib.sha256(text.encode()).hexdigest()[:24]


def quantize_graph_int8(source: Path, out: Path) -> Path:
    """ONNX Runtime's dynamic int8 quantization of the MatMuls with weights (int8 weights, one scale per output
    channel; uint8 activations quantized per call). Attention's score matmuls, the patch convolution, GELU and layer
    norms stay in float32, as in torch's dynamic int8."""
    from onnxruntime.quantization import QuantType, quantize_dynamic  # optional extra maest[onnx]

    quantize_dynamic(str(source), str(out), weight_type=QuantType.QInt8, per_channel=True, op_types_to_quantize=["MatMul"])
    return out


def build_graph(model: torch.nn.Module, key: GraphKey, example_frames: int, cache_dir: Path | None = None) -> Path:
    """The cached `.onnx` file for `key`, exported (and quantized for int8) on first use into a temporary folder that
    is then renamed into place (a concurrent build of the same graph keeps the first finished one)."""
    cache_dir = Path(cache_dir) if cache_dir is not None else graph_cache_dir()
    folder = cache_dir / key.folder_name()
    graph = folder / "model.onnx"
    if graph.is_file():
        return graph
    # int8 is quantized from the (cached) float32 graph of the same settings: one export serves both.
    float32_graph = None
    if key.dtype == "int8":
        float32_graph = build_graph(model, replace(key, dtype="float32", quantizer=""), example_frames, cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=cache_dir))
    try:
        if float32_graph is not None:
            quantize_graph_int8(float32_graph, building / "model.onnx")
        else:
            export_graph(
                model, building / "model.onnx", key.block, key.tokens, key.outputs, example_frames=example_frames
            )
        (building / "key.json").write_text(json.dumps(key.__dict__, indent=2, default=list) + "\n")
        try:
            os.rename(building, folder)
        except OSError:  # another process finished the same graph first
            if not graph.is_file():
                raise
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return graph


class OnnxRuntimeSession:
    """One ONNX Runtime CPU session: `(input_values numpy) -> list of numpy outputs`."""

    def __init__(self, graph: Path, threads: int):
        import onnxruntime  # optional extra maest[onnx]

        options = onnxruntime.SessionOptions()
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads
        self.session = onnxruntime.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])

    def __call__(self, input_values):
        return self.session.run(None, {"input_values": input_values})


class OpenVINOSession:
    """One OpenVINO CPU compiled model (dynamic shapes): `(input_values numpy) -> list of numpy outputs`."""

    def __init__(self, graph: Path, threads: int, dtype: str):
        import openvino  # optional extra maest[openvino]

        core = openvino.Core()
        # f32 by default: OpenVINO would otherwise run float32 graphs in bf16 on CPUs with AMX.
        precision = "bf16" if dtype == "bfloat16" else "f32"
        config = {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads}
        self.compiled = core.compile_model(core.read_model(str(graph)), "CPU", config)
        self.request = self.compiled.create_infer_request()

    def __call__(self, input_values):
        results = self.request.infer({"input_values": input_values}, share_inputs=True)
        return [results[output].copy() for output in self.compiled.outputs]


@dataclass
class ExportedInferenceModel(InferenceModel):
    """An `InferenceModel` whose `run` executes exported graphs under ONNX Runtime or OpenVINO (CPU).

    `model` stays the float32 torch model (the source of the graphs, config and labels). One graph per (block, tokens,
    outputs) that `run` is asked for, built or read from the cache on first use.
    """

    backend: str = "onnxruntime"
    cache_dir: Path | None = None
    threads: int = field(default_factory=torch.get_num_threads)
    sessions: dict = field(default_factory=dict, repr=False)
    digest: str | None = field(default=None, repr=False)

    def session(self, block: int, tokens: tuple, outputs: str):
        """The runtime session for one graph (built on first use)."""
        config = self.config
        key = GraphKey(
            model=self.digest or "",
            time_stride=int(config.inference_patchout_time_stride),
            frequency_stride=int(config.inference_patchout_freq_stride),
            block=block,
            tokens=tokens,
            outputs=outputs,
            dtype="int8" if self.dtype == "int8" else "float32",  # bfloat16 is OpenVINO's hint on the float32 graph
            quantizer=f"onnxruntime {runtime_version('onnxruntime')}" if self.dtype == "int8" else "",
        )
        if key not in self.sessions:
            graph = build_graph(self.model, key, self.segment_frames, self.cache_dir)
            if self.backend == "onnxruntime":
                self.sessions[key] = OnnxRuntimeSession(graph, self.threads)
            else:
                self.sessions[key] = OpenVINOSession(graph, self.threads, self.dtype)
        return self.sessions[key]

    def _outputs_session(self, scores: bool, embedding: bool, block, tokens):
        outputs = ",".join(name for name, wanted in (("scores", scores), ("embedding", embedding)) if wanted)
        return outputs, self.session(self.resolve_block(block), parse_embedding_tokens(tokens), outputs)

    def prepare(self, scores: bool = True, embedding: bool = False, block=None, tokens="cls,dist,mean") -> None:
        """Builds (or reads from the cache) and compiles the graph that `run` with these arguments uses."""
        if scores or embedding:
            self._outputs_session(scores, embedding, block, tokens)

    def run(self, segments: torch.Tensor, scores: bool = True, embedding: bool = False, block=None, tokens="cls,dist,mean"):
        """Same contract as `InferenceModel.run`: `(batch, frames, 96)` features -> `{"scores": (batch, num_labels),
        "embedding": (batch, len(tokens) * hidden_size)}` (the asked ones), float32 CPU tensors."""
        if not (scores or embedding):
            return {}
        outputs, session = self._outputs_session(scores, embedding, block, tokens)
        values = session(segments.detach().to("cpu", torch.float32).contiguous().numpy())
        results = dict(zip(outputs.split(","), (torch.from_numpy(value) for value in values)))
        if scores:
            results["scores"] = torch.sigmoid(results["scores"].float())
        return results


def load_backend(
    inference_model: InferenceModel,
    backend: str = "auto",
    dtype: str | None = None,
    cache_dir=None,
    threads: int | None = None,
) -> InferenceModel:
    """The model of `inference_model` run by `backend` at `dtype` (the same `run` contract).

    Args:
        inference_model: from `load_model` at float32 (any dtype for the torch back-end), or an
            `ExportedInferenceModel` (its float32 torch model is the source).
        backend: ``"torch"``, ``"onnxruntime"``, ``"openvino"`` or ``"auto"`` (see `resolve_backend`).
        dtype: ``"float32"``, ``"int8"`` or ``"bfloat16"`` (default: `inference_model.dtype`).
        cache_dir: the graph cache folder (default `graph_cache_dir()`).
        threads: the runtime's intra-op threads (default `torch.get_num_threads()`).

    Returns:
        `inference_model` itself when it already is `backend` at `dtype`, a torch model at another dtype, or an
        `ExportedInferenceModel`.

    Raises:
        BackendError: an unknown back-end, a dtype it does not run, an exported back-end on CUDA, or a model that is
            not float32 for an exported back-end.
    """
    dtype = dtype or inference_model.dtype
    chosen = resolve_backend(backend, dtype, inference_model.device)
    if chosen == inference_model.backend and dtype == inference_model.dtype:
        return inference_model
    source = inference_model
    if isinstance(inference_model, ExportedInferenceModel):  # its torch model is float32
        source = InferenceModel(
            inference_model.model, inference_model.feature_extractor, inference_model.name, inference_model.device,
            "float32",
        )  # fmt: skip
    if chosen == "torch":
        if dtype == source.dtype:
            return source
        if source.dtype != "float32":
            raise BackendError(f"the torch back-end can change dtype only from a float32 model, not {source.dtype!r}")
        model = prepare_model(copy.deepcopy(source.model), dtype, str(source.device))
        return InferenceModel(model, source.feature_extractor, source.name, source.device, dtype)
    if source.dtype != "float32":
        raise BackendError(
            f"backend {chosen!r} exports a float32 model; load it with dtype 'float32', not {source.dtype!r}"
        )
    return ExportedInferenceModel(
        source.model,
        source.feature_extractor,
        source.name,
        source.device,
        dtype,
        backend=chosen,
        cache_dir=Path(cache_dir) if cache_dir is not None else None,
        threads=threads or torch.get_num_threads(),
        digest=weights_digest(source.model),
    )


__all__ = [
    "AUTO_ORDER",
    "BACKENDS",
    "BACKEND_CHOICES",
    "BackendError",
    "ExportedInferenceModel",
    "GraphKey",
    "available_backends",
    "build_graph",
    "graph_cache_dir",
    "load_backend",
    "quantize_graph_int8",
    "resolve_backend",
    "runtime_version",
    "weights_digest",
]
