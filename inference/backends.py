"""Inference back-ends: the same `InferenceModel.run` contract, run by torch or from an exported graph by ONNX Runtime
or OpenVINO (`--backend torch|onnxruntime|openvino|auto`).

`load_backend(inference_model, backend, dtype)` returns an `InferenceModel` whose `run(segments, scores, embedding,
block, tokens)` takes the same `(batch, frames, 96)` features and returns the same dict of float32 CPU tensors. For
ONNX Runtime and OpenVINO the model is exported once per model, settings and the versions that build the graph
(`GraphKey`: the weights' digest, inference patchout strides, block, tokens, outputs, dtype; torch's version, the
exporter, and for int8 ONNX Runtime's, the quantizer), into a cache folder (`$MAEST_CACHE` or `~/.cache/maest`,
subfolder `graphs`). Both runtimes read the same `.onnx` file (an ONNX graph does not depend on the runtime that runs
it). Batch and frames are dynamic.

The graph cache (`GraphCache`) trusts nothing it did not check: an entry is used only when its `key.json` names the
asked key and the graph file has the size and SHA-256 recorded there. A truncated, garbage, empty or foreign entry
(another model's graph copied over it) is rebuilt, saying so in the log. Graphs are built in a temporary folder under
a per-graph lock (`flock`: concurrent processes wait for one build instead of exporting twice; the kernel releases it
when a build is killed) and renamed into place; the temporary folders of killed builds are removed by the next build.
A cache folder that cannot be written (read-only, a file, a full disk) falls back to a temporary cache for the
process, with one warning. The runtimes' compiled forms are cached per machine beside each graph: ONNX Runtime's
optimized model (`SessionOptions.optimized_model_filepath`, checked like the graph) and OpenVINO's model cache
(`CACHE_DIR`), so a second process starts without optimizing or compiling again.

dtypes: ``float32`` everywhere; ``int8`` on ONNX Runtime and OpenVINO is ONNX Runtime's dynamic quantization of the
MatMul weights (int8, one scale per output channel; activations quantized per call), the same scheme as torch's
`--dtype int8`; ``bfloat16`` on OpenVINO sets its bf16 inference-precision hint (pays only with AMX / AVX512-BF16).

`auto` chooses by measurement on this machine: on CPU, for float32 and int8, the first graph the model needs is
timed under every installed runtime and torch (a short calibration: one segment, one warm-up and two timed calls
each, interleaved, the fastest call of each counted), and the fastest runs it. The choice is cached per machine
(CPU model, flags and cores), thread count, model digest, settings and runtime versions (`$MAEST_CACHE/backend-choice`)
and said once in the log. Where measuring is impossible (every runtime fails to build or run), `auto` takes the fixed
order `AUTO_ORDER` (float32: ONNX Runtime, OpenVINO, torch; int8: ONNX Runtime, OpenVINO, torch). bfloat16 and CUDA
devices run under torch. A runtime that is not installed is passed over, saying so once. A named back-end that cannot
run (not installed, another dtype, CUDA) is an error, never replaced.
"""

import contextlib
import copy
import ctypes
import fcntl
import functools
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from maest.modeling import parse_embedding_tokens
from maest.utils.constants import BACKEND_CHOICES, BACKENDS
from maest.utils.errors import MAESTError, one_line
from maest.utils.files import write_text_atomically

from .model import InferenceModel, weights_digest
from .onnx_export import export_graph
from .precision import cpu_flags, prepare_model


logger = logging.getLogger(__name__)

# BACKENDS and BACKEND_CHOICES (imported above) are defined in `maest.utils.constants`, which the CLI reads too.
# The dtypes each exported-graph runtime runs (torch runs every dtype of `maest.inference.precision`).
EXPORTED_DTYPES = {"onnxruntime": ("float32", "int8"), "openvino": ("float32", "int8", "bfloat16")}
# `auto`'s candidates on CPU per dtype, and their order where they cannot be measured (ONNX Runtime was the faster
# float32 runtime on the busy 2-core Zen 4 machine, OpenVINO on the same machine idle: README "Speed"); other dtypes run
# on torch.
AUTO_ORDER = {"float32": ("onnxruntime", "openvino", "torch"), "int8": ("onnxruntime", "openvino", "torch")}
GRAPH_FORMAT = 3  # bump when the exported graph or the cache's layout changes, so that cached graphs are rebuilt
GRAPH_FILE = "model.onnx"
KEY_FILE = "key.json"
# `auto`'s calibration: calls per candidate after one warm-up call (the fastest counts: other load only slows calls).
CALIBRATION_CALLS = 2


class BackendError(MAESTError, ValueError):
    """A back-end that does not exist, is not installed, or cannot run the asked dtype or device."""


class GraphCacheError(MAESTError, OSError):
    """A graph could neither be read from the cache nor written anywhere (the message says where and why)."""


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


def auto_candidates(dtype: str, device="cpu") -> list[str]:
    """The back-ends `auto` chooses among for `dtype` on `device` (installed ones, in the fixed order); says once
    per process which runtimes it passes over because they are not installed."""
    if torch.device(device).type != "cpu" or dtype not in AUTO_ORDER:
        return ["torch"]
    order = AUTO_ORDER[dtype]
    missing = [name for name in order if name != "torch" and runtime_version(name) is None]
    candidates = [name for name in order if name not in missing]
    if missing and tuple(missing) not in _fallbacks_reported:
        _fallbacks_reported.add(tuple(missing))
        install = " or ".join(f"pip install 'maest[{_extra(name)}]'" for name in missing)
        warnings.warn(
            f"backend auto: {' and '.join(sorted(missing))} not installed ({install} for a faster CPU path); "
            f"{'running on torch' if candidates == ['torch'] else 'choosing among ' + ', '.join(candidates)}",
            UserWarning,
            stacklevel=3,
        )
    return candidates


def resolve_backend(backend: str = "auto", dtype: str = "float32", device="cpu") -> str:
    """What runs `dtype` on `device`, as far as it can be told before the model is loaded.

    A named back-end is itself, or an error (`BackendError`) when it is not installed, does not run `dtype`, or is an
    exported one asked for on CUDA: an explicit choice is never replaced silently. ``"auto"`` is ``"torch"`` where
    torch is its only candidate (bfloat16, CUDA, no exported runtime installed) and stays ``"auto"`` otherwise: the
    choice is then measured on the model (`load_backend`), which is loaded at float32 for it.
    """
    if backend not in BACKEND_CHOICES:
        raise BackendError(f"unknown backend {backend!r}: choose one of {', '.join(BACKEND_CHOICES)}")
    if backend == "torch":
        return "torch"
    if backend == "auto":
        return "torch" if auto_candidates(dtype, device) == ["torch"] else "auto"
    if torch.device(device).type != "cpu":
        raise BackendError(f"backend {backend!r} runs on CPU only, not on {device!r}: use --backend torch (or auto)")
    if dtype not in EXPORTED_DTYPES[backend]:
        raise BackendError(
            f"backend {backend!r} does not run dtype {dtype!r}: choose {', '.join(EXPORTED_DTYPES[backend])}"
        )
    if runtime_version(backend) is None:
        raise BackendError(
            f"backend {backend!r} is not installed: pip install 'maest[{_extra(backend)}]', or use --backend torch"
        )
    return backend


# ---------------------------------------------------------------------------------------------------- identity
def maest_cache_dir() -> Path:
    """The folder of maest's caches: `$MAEST_CACHE` (an empty value counts as unset), default `~/.cache/maest`."""
    return Path(os.environ.get("MAEST_CACHE") or Path.home() / ".cache" / "maest").expanduser()


def graph_cache_dir() -> Path:
    """Where exported graphs are cached: `$MAEST_CACHE/graphs` (default `~/.cache/maest/graphs`)."""
    return maest_cache_dir() / "graphs"


@functools.lru_cache(maxsize=1)
def machine_fingerprint() -> str:
    """What a compiled graph and a speed measurement depend on: the CPU model, its feature flags and core count."""
    model = ""
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as cpuinfo:
            model = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), "")
    text = json.dumps([model, sorted(cpu_flags()), os.cpu_count()])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def file_sha256(path) -> str:
    with open(path, "rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


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

    def as_json(self) -> dict:
        return json.loads(json.dumps(asdict(self), default=list))

    def folder_name(self) -> str:
        text = json.dumps(self.as_json(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:24]


def quantize_graph_int8(source: Path, out: Path) -> Path:
    """ONNX Runtime's dynamic int8 quantization of the MatMuls with weights (int8 weights, one scale per output
    channel; uint8 activations quantized per call). Attention's score matmuls, the patch convolution, GELU and layer
    norms stay in float32, as in torch's dynamic int8."""
    from onnxruntime.quantization import QuantType, quantize_dynamic  # optional extra maest[onnx]

    quantize_dynamic(str(source), str(out), weight_type=QuantType.QInt8, per_channel=True, op_types_to_quantize=["MatMul"])
    return out


# ---------------------------------------------------------------------------------------------------- graph cache
_temporary_cache_folder = None  # this process's stand-in for a graph cache that cannot be written


def _temporary_cache() -> Path:
    global _temporary_cache_folder
    if _temporary_cache_folder is None:  # removed when the process ends
        _temporary_cache_folder = tempfile.TemporaryDirectory(prefix="maest-graphs-")
    return Path(_temporary_cache_folder.name)


@contextlib.contextmanager
def _flock(path: Path, blocking: bool = True):
    """An exclusive `flock` on `path` (created); yields False instead of waiting when `blocking` is off and another
    process holds it."""
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(descriptor)  # (releases the lock)


class GraphCache:
    """The exported graphs of one cache folder (see the module docstring): `graph(model, key)` is the checked `.onnx`
    file for `key`, built when it is missing or damaged."""

    BUILDING, DISCARDED = ".building-", ".discarded-"

    def __init__(self, directory=None):
        self.directory = Path(directory) if directory is not None else graph_cache_dir()
        self.swept = False

    def entry(self, key: GraphKey) -> Path:
        return self.directory / key.folder_name()

    @staticmethod
    def record(folder: Path) -> dict:
        """An entry's `key.json`: `{"key": GraphKey fields, "graph": {"file", "bytes", "sha256"}}`."""
        return json.loads((folder / KEY_FILE).read_text())

    def check(self, key: GraphKey) -> str | None:
        """Why the cached entry of `key` cannot be used (None: it can): missing, a key file that names another graph
        (a foreign or older entry), a graph of another size or checksum than written (truncated, garbage, empty or
        replaced)."""
        folder = self.entry(key)
        if not folder.exists():
            return "missing"
        try:
            record = self.record(folder)
        except (OSError, ValueError) as error:
            return f"its {KEY_FILE} cannot be read ({one_line(error)})"
        if not isinstance(record, dict) or record.get("key") != key.as_json():
            return f"its {KEY_FILE} names another graph (a foreign or older entry)"
        written = record.get("graph") if isinstance(record.get("graph"), dict) else {}
        try:
            size = (folder / GRAPH_FILE).stat().st_size
        except OSError as error:
            return f"its graph cannot be read ({error.strerror})"
        if size != written.get("bytes"):
            return f"its graph has {size} bytes where {written.get('bytes')} were written (truncated or replaced)"
        if file_sha256(folder / GRAPH_FILE) != written.get("sha256"):
            return "its graph's SHA-256 differs from the one written (damaged or replaced)"
        return None

    def graph(self, model: torch.nn.Module, key: GraphKey, example_frames: int) -> Path:
        """The checked `.onnx` file of `key`: read from the cache, or exported (int8: quantized from the cached
        float32 graph of the same settings) into it. A folder that cannot be written is replaced by a temporary one
        for this process (one warning)."""
        if not self.swept:  # the leftovers of killed builds go with the next use of the cache
            self.swept = True
            with contextlib.suppress(OSError):
                self.remove_stale_builds()
        if self.check(key) is None:
            return self.entry(key) / GRAPH_FILE
        try:
            return self._build(model, key, example_frames)
        except OSError as error:
            if isinstance(error, GraphCacheError) or self.directory == _temporary_cache():
                raise GraphCacheError(f"cannot write the exported graph to {self.directory}: {one_line(error)}") from error
            logger.warning(
                f"graph cache {self.directory} cannot be written ({one_line(error)}): using a temporary cache for "
                f"this process; set MAEST_CACHE to a writable folder to keep exported graphs between runs"
            )
            self.directory = _temporary_cache()
            return self.graph(model, key, example_frames)

    def _build(self, model, key: GraphKey, example_frames: int) -> Path:
        source = None
        if key.dtype == "int8":  # one export serves both dtypes
            source = self.graph(model, replace(key, dtype="float32", quantizer=""), example_frames)
        self.directory.mkdir(parents=True, exist_ok=True)
        folder = self.entry(key)
        with _flock(self.directory / f".{folder.name}.lock"):  # one build of a graph at a time; others wait for it
            self.remove_stale_builds(holding=folder.name)
            problem = self.check(key)
            if problem is None:  # built by another process while this one waited
                return folder / GRAPH_FILE
            if problem != "missing":
                logger.warning(f"graph cache: {folder} is not usable ({problem}); rebuilding it")
                self._discard(folder)
            building = Path(tempfile.mkdtemp(prefix=f".{folder.name}{self.BUILDING}", dir=self.directory))
            try:
                graph = building / GRAPH_FILE
                if source is not None:
                    quantize_graph_int8(source, graph)
                else:
                    export_graph(model, graph, key.block, key.tokens, key.outputs, example_frames=example_frames)
                written = {"file": GRAPH_FILE, "bytes": graph.stat().st_size, "sha256": file_sha256(graph)}
                (building / KEY_FILE).write_text(json.dumps({"key": key.as_json(), "graph": written}, indent=2) + "\n")
                os.rename(building, folder)
            finally:
                shutil.rmtree(building, ignore_errors=True)
        return folder / GRAPH_FILE

    def _discard(self, path: Path) -> None:
        """Moves a damaged entry out of the way at once (renaming is atomic), then deletes it."""
        moved = self.directory / f".{path.name}{self.DISCARDED}{os.getpid()}-{time.monotonic_ns()}"
        os.rename(path, moved)
        if moved.is_dir() and not moved.is_symlink():
            shutil.rmtree(moved, ignore_errors=True)
        else:
            moved.unlink()

    def remove_stale_builds(self, holding: str | None = None) -> list[Path]:
        """Deletes the temporary folders of builds that ended without finishing (a killed export): those whose
        graph's lock no process holds (`holding`: the graph whose lock this process holds). Returns them."""
        removed = []
        for path in self.directory.iterdir():
            if not path.name.startswith(".") or not (self.BUILDING in path.name or self.DISCARDED in path.name):
                continue
            name = path.name[1:].split(".", 1)[0]
            # (a second descriptor of a lock this process holds would not get it: flock locks open files)
            with contextlib.nullcontext(True) if name == holding else _flock(self.directory / f".{name}.lock", False) as idle:
                if idle:
                    shutil.rmtree(path, ignore_errors=True)
                    removed.append(path)
        return removed


# ---------------------------------------------------------------------------------------------------- runtimes
class OnnxRuntimeSession:
    """One ONNX Runtime CPU session: `(input_values numpy) -> list of numpy outputs`.

    With `cache`, ONNX Runtime's optimized model (all graph optimizations, for this machine: it may hold
    CPU-specific kernels) is kept beside the graph, with its size and SHA-256, and later sessions load it without
    optimizing again.
    """

    def __init__(self, graph: Path, threads: int, cache: bool = True):
        import onnxruntime  # optional extra maest[onnx]

        self.optimized = graph.parent / f"onnxruntime-{onnxruntime.__version__}-{machine_fingerprint()}.onnx"
        self.session = self._cached(onnxruntime, graph, threads) if cache else None
        if self.session is None:
            options = self._options(onnxruntime, threads, onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL)
            writing = None
            if cache and os.access(graph.parent, os.W_OK):
                writing = self.optimized.with_name(f".{self.optimized.name}.{os.getpid()}.tmp")
                options.optimized_model_filepath = str(writing)
                options.log_severity_level = 3  # (not its warning that an optimized model is machine-specific)
            try:
                self.session = onnxruntime.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
                if writing is not None and writing.is_file():
                    self._keep(writing)
            finally:
                if writing is not None:
                    writing.unlink(missing_ok=True)

    @staticmethod
    def _options(onnxruntime, threads: int, level):
        options = onnxruntime.SessionOptions()
        options.graph_optimization_level = level
        options.intra_op_num_threads = threads
        return options

    def _record(self) -> Path:
        return self.optimized.with_suffix(".json")

    def _cached(self, onnxruntime, graph: Path, threads: int):
        """A session from the optimized model, when there is one whose size and checksum are the ones written and
        that was made from this graph (else None: the caller optimizes again and rewrites it)."""
        try:
            record = json.loads(self._record().read_text())
            graph_sha256 = GraphCache.record(graph.parent)["graph"]["sha256"]
            if record.get("graph_sha256") != graph_sha256 or self.optimized.stat().st_size != record.get("bytes"):
                raise ValueError("not the optimized form of this graph")
            if file_sha256(self.optimized) != record.get("sha256"):
                raise ValueError("checksum differs")
            options = self._options(onnxruntime, threads, onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL)
            return onnxruntime.InferenceSession(str(self.optimized), options, providers=["CPUExecutionProvider"])
        except FileNotFoundError:
            return None
        except Exception as error:  # a damaged record or file (any runtime error): optimize again
            logger.warning(f"graph cache: ONNX Runtime's optimized model {self.optimized} is not usable ({one_line(error)}); optimizing again")
            return None

    def _keep(self, written: Path) -> None:
        with contextlib.suppress(OSError, KeyError, ValueError):
            record = {
                "graph_sha256": GraphCache.record(self.optimized.parent)["graph"]["sha256"],
                "bytes": written.stat().st_size,
                "sha256": file_sha256(written),
            }
            os.replace(written, self.optimized)
            write_text_atomically(self._record(), json.dumps(record, indent=2) + "\n", fsync=False)

    def __call__(self, input_values):
        return self.session.run(None, {"input_values": input_values})


class _SignalStack(ctypes.Structure):
    _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int), ("ss_size", ctypes.c_size_t)]  # stack_t


@functools.cache
def _libc_sigaltstack():
    """libc's `sigaltstack`, or None where there is none (Windows)."""
    with contextlib.suppress(OSError, AttributeError):
        function = ctypes.CDLL(None, use_errno=True).sigaltstack
        function.argtypes = [ctypes.POINTER(_SignalStack), ctypes.POINTER(_SignalStack)]
        return function
    return None


@contextlib.contextmanager
def calling_threads_signal_stack_kept():
    """Runs the block with the calling thread's alternate signal stack put back as it was afterwards.

    OpenVINO's CPU plugin (2026.4) gives the thread that compiles a model an alternate signal stack of its own and
    frees that memory when the model goes, without always giving the thread back its previous one (with two compiled
    models of one process, never). The kernel then builds the frame of the next signal whose handler asks for the
    alternate stack (every Python handler: Ctrl-C's, the DataLoader's SIGCHLD) in freed memory: the process dies with
    SIGSEGV, or the frame overwrites whatever was mapped there since. Signal frames fit the thread's own stack (or
    the stack it had, such as `faulthandler`'s), so nothing is lost by keeping that one.
    """
    sigaltstack = _libc_sigaltstack()
    before = _SignalStack()
    if sigaltstack is None or sigaltstack(None, ctypes.byref(before)) != 0:
        yield
        return
    try:
        yield
    finally:
        now = _SignalStack()
        if sigaltstack(None, ctypes.byref(now)) == 0 and (now.ss_sp, now.ss_size, now.ss_flags) != (before.ss_sp, before.ss_size, before.ss_flags):
            before.ss_flags &= ~1  # SS_ONSTACK is a state the kernel reports, not a flag one may set
            sigaltstack(ctypes.byref(before), None)


class OpenVINOSession:
    """One OpenVINO CPU compiled model (dynamic shapes): `(input_values numpy) -> list of numpy outputs`.

    With `cache`, OpenVINO's model cache (`CACHE_DIR`, per machine, beside the graph) keeps the compiled model, so a
    later process imports it instead of compiling (OpenVINO recompiles over a damaged cache file by itself).
    """

    def __init__(self, graph: Path, threads: int, dtype: str, cache: bool = True):
        import openvino  # optional extra maest[openvino]

        core = openvino.Core()
        if cache and os.access(graph.parent, os.W_OK):
            core.set_property({"CACHE_DIR": str(graph.parent / f"openvino-{openvino.__version__.split('-')[0]}-{machine_fingerprint()}")})
        # f32 by default: OpenVINO would otherwise run float32 graphs in bf16 on CPUs with AMX.
        precision = "bf16" if dtype == "bfloat16" else "f32"
        config = {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads}
        with calling_threads_signal_stack_kept():
            self.compiled = core.compile_model(str(graph), "CPU", config)
            self.request = self.compiled.create_infer_request()

    def __call__(self, input_values):
        results = self.request.infer({"input_values": input_values}, share_inputs=True)
        return [results[output].copy() for output in self.compiled.outputs]


# ---------------------------------------------------------------------------------------------------- auto
def _choice_file(key: GraphKey, candidates: list, threads: int) -> Path:
    what = {
        "machine": machine_fingerprint(), "threads": threads, "graph": key.as_json(),
        "runtimes": {name: runtime_version(name) for name in candidates}, "calls": CALIBRATION_CALLS,
    }  # fmt: skip
    name = hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:24]
    return maest_cache_dir() / "backend-choice" / f"{name}.json"


def _read_choice(path: Path, candidates: list) -> dict | None:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if isinstance(record, dict) and record.get("choice") in candidates and isinstance(record.get("seconds"), dict):
        return record
    return None


def _describe(record: dict) -> str:
    seconds = record["seconds"]
    fastest = ", ".join(f"{name} {value:.2f} s" for name, value in sorted(seconds.items(), key=lambda item: item[1]))
    return f"{fastest} per segment, measured here {record.get('measured', '')}".rstrip()


@dataclass
class ExportedInferenceModel(InferenceModel):
    """An `InferenceModel` whose `run` executes exported graphs under ONNX Runtime or OpenVINO (CPU).

    `model` stays the float32 torch model (the source of the graphs, config and labels). One graph per (block, tokens,
    outputs) that `run` is asked for, built or read from the cache on first use. With `backend="auto"`, the first
    graph is timed under each of `candidates` (see the module docstring) and `backend` becomes the fastest; when that
    is torch, `run` is the torch model's (at `dtype`).
    """

    backend: str = "onnxruntime"
    cache_dir: Path | None = None
    threads: int = field(default_factory=torch.get_num_threads)
    sessions: dict = field(default_factory=dict, repr=False)
    digest: str | None = field(default=None, repr=False)
    candidates: tuple = ()
    torch_model: InferenceModel | None = field(default=None, repr=False)
    graph_cache: GraphCache | None = field(default=None, repr=False)

    def __post_init__(self):
        self.graph_cache = GraphCache(self.cache_dir)

    def graph_key(self, block: int, tokens: tuple, outputs: str) -> GraphKey:
        config = self.config
        return GraphKey(
            model=self.digest or weights_digest(self.model),
            time_stride=int(config.inference_patchout_time_stride),
            frequency_stride=int(config.inference_patchout_freq_stride),
            block=block,
            tokens=tokens,
            outputs=outputs,
            dtype="int8" if self.dtype == "int8" else "float32",  # bfloat16 is OpenVINO's hint on the float32 graph
            quantizer=f"onnxruntime {runtime_version('onnxruntime')}" if self.dtype == "int8" else "",
        )

    def graph_file(self, key: GraphKey) -> Path:
        """The checked `.onnx` file of `key` (built on first use)."""
        return self.graph_cache.graph(self.model, key, self.segment_frames)

    def _open(self, backend: str, key: GraphKey):
        if backend == "torch":
            return self._torch()
        if backend == "onnxruntime":
            return OnnxRuntimeSession(self.graph_file(key), self.threads)
        return OpenVINOSession(self.graph_file(key), self.threads, self.dtype)

    def _torch(self) -> InferenceModel:
        if self.torch_model is None:
            source = InferenceModel(self.model, self.feature_extractor, self.name, self.device, "float32")
            self.torch_model = load_backend(source, "torch", self.dtype)
        return self.torch_model

    def session(self, block: int, tokens: tuple, outputs: str):
        """The runtime session for one graph (built on first use; None where torch runs)."""
        key = self.graph_key(block, tokens, outputs)
        if key not in self.sessions:
            if self.backend == "auto":
                self.sessions[key] = self._choose(key)
            elif self.backend == "torch":
                self.sessions[key] = None
            else:
                self.sessions[key] = self._open(self.backend, key)
        return self.sessions[key]

    def _choose(self, key: GraphKey):
        """`auto`: the fastest of `candidates` on this graph (measured, or read from an earlier measurement); returns
        its session, and sets `backend`."""
        choice_file = _choice_file(key, list(self.candidates), self.threads)
        record = _read_choice(choice_file, list(self.candidates))
        opened = {}
        if record is None:
            try:
                record, opened = self._measure(key)
            except Exception as error:  # nothing could be measured: the fixed order
                self.backend = self.candidates[0]
                logger.warning(f"backend auto: could not measure the back-ends here ({one_line(error)}); running on {self.backend}")
                return self._open(self.backend, key)
            try:
                write_text_atomically(choice_file, json.dumps(record, indent=2) + "\n", fsync=False)
            except OSError as error:
                logger.warning(f"backend auto: cannot keep the measurement in {choice_file} ({one_line(error)}); measuring again next time")
        self.backend = record["choice"]
        logger.warning(f"backend auto: {self.backend} ({_describe(record)})")
        if self.backend == "torch":
            return None
        return opened.get(self.backend) or self._open(self.backend, key)

    def _measure(self, key: GraphKey) -> tuple[dict, dict]:
        """Times one segment under every candidate that builds: one warm-up call, then `CALIBRATION_CALLS` rounds
        that call each once (interleaved, so that other load on the machine is spread over all of them)."""
        segment = torch.randn(1, self.segment_frames, self.config.num_mel_bins, generator=torch.Generator().manual_seed(0))
        block, tokens, outputs = key.block, key.tokens, key.outputs
        opened, calls = {}, {}
        for name in self.candidates:
            try:
                runner = self._open(name, key)
                if name == "torch":
                    calls[name] = lambda runner=runner: runner.run(segment, "scores" in outputs, "embedding" in outputs, block, tokens)
                else:
                    values = segment.numpy()
                    calls[name] = lambda runner=runner: runner(values)
                calls[name]()  # warm-up
                opened[name] = runner
            except Exception as error:
                calls.pop(name, None)
                logger.warning(f"backend auto: {name} cannot run this model ({one_line(error)}); passing it over")
        if not calls:
            raise BackendError("no back-end could run the model")
        seconds = {name: float("inf") for name in calls}
        for _ in range(CALIBRATION_CALLS):
            for name, call in calls.items():
                start = time.perf_counter()
                call()
                seconds[name] = min(seconds[name], time.perf_counter() - start)
        choice = min(seconds, key=seconds.get)
        record = {"choice": choice, "seconds": seconds, "measured": time.strftime("%Y-%m-%d"), "threads": self.threads}
        return record, opened

    def _outputs_session(self, scores: bool, embedding: bool, block, tokens):
        outputs = ",".join(name for name, wanted in (("scores", scores), ("embedding", embedding)) if wanted)
        return outputs, self.session(self.resolve_block(block), parse_embedding_tokens(tokens), outputs)

    def prepare(self, scores: bool = True, embedding: bool = False, block=None, tokens="cls,dist,mean") -> None:
        """Builds (or reads from the cache) and compiles the graph that `run` with these arguments uses (and, for
        `auto`, chooses the back-end)."""
        if scores or embedding:
            self._outputs_session(scores, embedding, block, tokens)

    @property
    def weights_digest(self) -> str:
        """The `weights_digest` of the model that runs (the float32 source of the graphs; torch's own at `dtype`
        where `auto` chose torch, the same as `--backend torch` gives)."""
        if self.backend == "torch":
            return self._torch().weights_digest
        return self.digest or weights_digest(self.model)

    @property
    def graph_digests(self) -> dict:
        """The SHA-256 of each graph this model has run, by its cache key's folder name (recorded in outputs)."""
        digests = {}
        for key, session in self.sessions.items():
            if session is not None and not isinstance(session, InferenceModel):
                with contextlib.suppress(OSError, ValueError, KeyError):
                    digests[key.folder_name()] = GraphCache.record(self.graph_cache.entry(key))["graph"]["sha256"]
        return digests

    def run(self, segments: torch.Tensor, scores: bool = True, embedding: bool = False, block=None, tokens="cls,dist,mean"):
        """Same contract as `InferenceModel.run`: `(batch, frames, 96)` features -> `{"scores": (batch, num_labels),
        "embedding": (batch, len(tokens) * hidden_size)}` (the asked ones), float32 CPU tensors."""
        if not (scores or embedding):
            return {}
        outputs, session = self._outputs_session(scores, embedding, block, tokens)
        if self.backend == "torch":
            return self._torch().run(segments, scores, embedding, block, tokens)
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
        backend: ``"torch"``, ``"onnxruntime"``, ``"openvino"`` or ``"auto"`` (see `resolve_backend`; `auto` with
            an exported runtime installed gives an `ExportedInferenceModel` that chooses on its first graph).
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
        if chosen == "auto":  # torch's own model at another dtype: nothing to measure it against
            return source
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
        candidates=tuple(auto_candidates(dtype, source.device)) if chosen == "auto" else (),
    )


__all__ = [
    "AUTO_ORDER",
    "BACKENDS",
    "BACKEND_CHOICES",
    "BackendError",
    "ExportedInferenceModel",
    "GraphCache",
    "GraphCacheError",
    "GraphKey",
    "auto_candidates",
    "available_backends",
    "graph_cache_dir",
    "load_backend",
    "machine_fingerprint",
    "maest_cache_dir",
    "quantize_graph_int8",
    "resolve_backend",
    "runtime_version",
    "weights_digest",
]
