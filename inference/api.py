"""Python API for whole-track tagging and embeddings of music collections.

```python
from maest.inference import load_model, tag, embed

model = load_model("path/to/maest-dir")                # or the default Hub model, cached
results = tag(["song.mp3", "album/"], model=model)     # files and directories (recursive)
results.top(5)                                         # per track: [(label, score), ...]
results = embed(["album/"], model=model, block=6)      # in memory: results.embeddings (tracks, dim)
tag(["album/"], model="path/to/maest-dir", backend="onnxruntime")  # an exported graph on CPU (maest[onnx])
embed(["album/"], out="album.parquet", model=model)    # to a file; resumable, skips finished tracks
tag([waveform], sampling_rate=44100, model=model)      # arrays too
```

One bad track never stops a run: it is listed in `results.failed` (and `OUT.failed.tsv`) with the reason, and the
others are analyzed.
"""

from .engine import TrackFailure
from .job import (
    CollectionSettings,
    InferenceResults,
    expand_inputs,
    load_run_model,
    run_in_memory,
    run_one_process,
)
from .model import DEFAULT_MODEL, InferenceModel


def analyze(
    inputs,
    model: str | InferenceModel = DEFAULT_MODEL,
    *,
    out=None,
    sampling_rate: int | None = None,
    on_failure=None,
    **options,
) -> InferenceResults:
    """Whole-track scores and/or embeddings of files, directories (recursive) or arrays in one process; the engine
    behind `tag` and `embed` (see those, and `CollectionSettings` for every option).

    With `out`, rows go to a Parquet/NPZ file through a resumable progress store: tracks finished in `out` or in its
    progress store are skipped, and the final file is written atomically. `maest.inference.analyze_distributed`
    runs the same job over several processes.

    Args:
        on_failure: called with each failed track's `TrackFailure` (`name`, `reason`) as it fails.
    """
    settings = CollectionSettings.from_options(model=model, out=out, **options)
    inputs = expand_inputs(inputs, sampling_rate)  # before loading the model: a typo fails at once
    inference_model = load_run_model(settings)
    if out is None:
        return run_in_memory(settings, inputs, inference_model, on_failure=on_failure)
    return run_one_process(settings, inputs, inference_model, on_failure=on_failure)


def tag(
    inputs,
    model: str | InferenceModel = DEFAULT_MODEL,
    *,
    sampling_rate: int | None = None,
    out=None,
    per_segment: bool = True,
    last_segment: str = "auto",
    **options,
) -> InferenceResults:
    """Style scores of whole tracks: the mean over the track's consecutive segments of the sigmoid activations.

    Args:
        inputs: file paths, directories (walked recursively for audio files), or arrays (with `sampling_rate`);
            results come in this order.
        model: a Hub id / directory / checkpoint, or a model from `load_model`.
        sampling_rate: the rate of array inputs.
        out: optional `.parquet` / `.npz` file for the rows (resumable).
        per_segment: keep the per-segment activations (`results.segment_scores`).
        last_segment: `"auto"` (default: keep a partial last segment with at least half a segment of audio,
            padded), `"pad"` (always keep it) or `"drop"`; a track shorter than one segment is always one padded
            segment.
        **options: `batch_size` (segments per model call, 8), `num_workers` (decoding/feature processes; by
            default 1-2 on CPU, up to 8 with CUDA, 0 for arrays), `device`, `dtype`, `backend` (`"torch"` by default,
            `"onnxruntime"`, `"openvino"` or `"auto"`: see `load_model`), `inference_patchout_time_stride`,
            `min_duration` (seconds, 1.0: shorter tracks fail), `progress`, `overwrite`, `on_failure`
            (see `CollectionSettings`).

    Returns:
        `InferenceResults`: `.scores`, `.top(k)`, `.segment_scores`, `.failed`.
    """
    return analyze(
        inputs, model, out=out, sampling_rate=sampling_rate, scores=True, embedding=False, per_segment=per_segment,
        last_segment=last_segment, **options
    )


def embed(
    inputs,
    out=None,
    model: str | InferenceModel = DEFAULT_MODEL,
    *,
    sampling_rate: int | None = None,
    block: int | None = None,
    tokens="cls,dist,mean",
    per_segment: bool = False,
    last_segment: str = "auto",
    **options,
) -> InferenceResults:
    """Track embeddings: the mean over the track's segments of the paper's block embedding.

    Args:
        inputs: file paths, directories (recursive) or arrays (with `sampling_rate`).
        out: `None` for results in memory, or a `.parquet` / `.npz` file (atomic, resumable: tracks already
            finished in it or in its `OUT.partial/` store are skipped; other settings are refused unless
            `overwrite=True`; a second run on the same `out` is refused while the first runs).
        block: 0-based block (`config.embedding_block`, the paper's 7th block of 12, by default).
        tokens: `"cls,dist,mean"` (default; 3 x hidden size), any subset, or letters like `"cd"`.
        per_segment: also keep each segment's embedding (`segment_embeddings`).
        **options: see `tag`.

    Returns:
        `InferenceResults`: `.embeddings` `(tracks, dim)`, `.paths`, `.durations`, `.segment_embeddings`, `.failed`.
    """
    return analyze(
        inputs, model, out=out, sampling_rate=sampling_rate, scores=False, embedding=True, block=block, tokens=tokens,
        per_segment=per_segment, last_segment=last_segment, **options
    )


__all__ = ["InferenceResults", "TrackFailure", "analyze", "embed", "tag"]
