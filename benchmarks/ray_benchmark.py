"""`maest bench --ray`: the Ray Data engine against the one-process engine on this machine, over the same files.

Both engines embed the same generated tracks (44.1 kHz files in four formats, so decoding and resampling are part of
the work) with the same model and settings into their own Parquet outputs; the rows are compared (cosine per track)
and the wall times are taken in interleaved rounds. Each round of either engine starts from nothing but its inputs:
the one-process run loads its model and starts its loader worker; the Ray run starts its actors (which load their
model) and decoding tasks on a local Ray cluster that is already up, as a real cluster is. The cluster's own start
is timed apart.

    throughput ratio = one-process wall time / Ray wall time   (>= 0.8: Ray's overhead is bounded)
"""

import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from maest.synthetic import synthetic_music

from .measure import _median, _write_audio


def benchmark_ray_engine(
    preset: str = "maest-10s",
    num_tracks: int = 200,
    track_seconds: tuple = (8.0, 10.0),
    rounds: int = 2,
    batch_size: int = 8,
    num_local_cpus: int = 2,
    log=print,
    seed: int = 0,
) -> dict:
    """Times `embed(..., out=)` against `embed_with_ray(..., out=)` over `num_tracks` tracks of `track_seconds`
    (uniform) and compares their rows. Returns the results dict of `maest bench --ray`."""
    import ray

    from maest.feature_extraction import MAESTFeatureExtractor
    from maest.inference import embed, read_output
    from maest.inference.ray_engine import embed_with_ray
    from maest.inference.store import table_paths
    from maest.modeling import MAESTConfig, MAESTForAudioClassification

    with tempfile.TemporaryDirectory(prefix="maest-bench-ray-") as directory:
        directory = Path(directory)
        torch.manual_seed(seed)
        config = MAESTConfig.from_preset(preset)
        MAESTForAudioClassification(config).eval().save_pretrained(directory / "model")
        MAESTFeatureExtractor(max_length=config.max_length).save_pretrained(directory / "model")
        model = str(directory / "model")
        rng = np.random.default_rng(seed)
        audio_seconds = 0.0
        for index in range(num_tracks):
            seconds = float(rng.uniform(*track_seconds))
            audio_seconds += seconds
            path = directory / "audio" / f"track{index:04d}.{('flac', 'mp3', 'wav', 'ogg')[index % 4]}"
            path.parent.mkdir(exist_ok=True)
            _write_audio(path, synthetic_music(seconds, 44100, seed=1000 + index), 44100)
        log(f"ray engine: {num_tracks} tracks, {audio_seconds / 60:.1f} min of audio, {preset}, batch {batch_size}")

        started = time.perf_counter()
        ray.init(address="local", num_cpus=num_local_cpus, include_dashboard=False, log_to_driver=False)
        cluster_start = time.perf_counter() - started
        try:
            times = {"one_process": [], "ray": []}
            outputs = {}
            for round_index in range(rounds):
                for engine in ("one_process", "ray"):
                    out = directory / f"{engine}-{round_index}.parquet"
                    started = time.perf_counter()
                    if engine == "ray":
                        results = embed_with_ray([directory / "audio"], out, model, batch_size=batch_size)
                    else:
                        results = embed([directory / "audio"], out, model, batch_size=batch_size)
                    times[engine].append(time.perf_counter() - started)
                    if results.failed:
                        raise RuntimeError(f"ray benchmark: tracks failed: {results.failed[:3]}")
                    outputs[engine] = read_output(out)
                    log(f"  round {round_index + 1}/{rounds} {engine}: {times[engine][-1]:.1f} s")
        finally:
            ray.shutdown()
    one, theirs = outputs["one_process"], outputs["ray"]
    same_rows = table_paths(one) == table_paths(theirs)
    a = one["embedding"].combine_chunks().flatten().to_numpy().reshape(one.num_rows, -1)
    b = theirs["embedding"].combine_chunks().flatten().to_numpy().reshape(theirs.num_rows, -1)
    cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    ratios = [o / r for o, r in zip(times["one_process"], times["ray"])]
    return {
        "preset": preset,
        "num_tracks": num_tracks,
        "audio_minutes": audio_seconds / 60,
        "track_seconds_range": list(track_seconds),
        "batch_size": batch_size,
        "ray_local_cpus": num_local_cpus,
        "ray_cluster_start_seconds": cluster_start,
        "seconds_rounds": times,
        "tracks_per_second": {engine: num_tracks / _median(values) for engine, values in times.items()},
        "throughput_ratio_ray_over_one_process": _median(ratios),
        "throughput_ratio_rounds": ratios,
        "throughput_ratio_with_cluster_start": _median(times["one_process"]) / (_median(times["ray"]) + cluster_start),
        "same_tracks_same_order": same_rows,
        "embedding_cosine_min": float(cosine.min()),
        "targets": {
            "throughput_ratio": {"value": _median(ratios), "target": 0.8, "met": bool(_median(ratios) >= 0.8)},
            "embedding_cosine_min": {"value": float(cosine.min()), "target": 0.99999, "met": bool(cosine.min() >= 0.99999 and same_rows)},
        },
    }


def render_ray(results: dict) -> str:
    times = results["seconds_rounds"]
    lines = [
        f"Ray engine vs one process: {results['num_tracks']} tracks ({results['audio_minutes']:.1f} min of audio, "
        f"{results['preset']}, batch {results['batch_size']}), local Ray cluster of {results['ray_local_cpus']} CPUs "
        f"(started in {results['ray_cluster_start_seconds']:.1f} s, not counted)",
        "one process: " + ", ".join(f"{t:.1f}" for t in times["one_process"]) + " s; ray: " + ", ".join(f"{t:.1f}" for t in times["ray"]) + " s",
        f"throughput ray / one process: {results['throughput_ratio_ray_over_one_process']:.3f} (rounds "
        + ", ".join(f"{r:.3f}" for r in results["throughput_ratio_rounds"])
        + f"; {results['throughput_ratio_with_cluster_start']:.3f} counting the cluster's start)",
        f"rows: same tracks in the same order: {results['same_tracks_same_order']}; embedding cosine min "
        f"{results['embedding_cosine_min']:.7f}",
    ]
    for name, entry in results["targets"].items():
        lines.append(f"target {name}: {entry['value']:.5f} (>= {entry['target']}) {'met' if entry['met'] else 'NOT met'}")
    return "\n".join(lines) + "\n"


__all__ = ["benchmark_ray_engine", "render_ray"]
