"""`maest tag`, `maest embed` and `maest export-onnx`: the command line of collection runs (`maest.inference`).

Exit status (see `maest.cli.common`): 0 when every track was analyzed, 1 when some failed (they are listed, in
`OUT.failed.tsv` too, and the others are written), 2 for a usage or set-up error (bad option, unknown model, output
made with other settings or being written by another run, a full disk), 130 when interrupted (the finished tracks
are kept; rerun the same command to continue).
"""

import argparse
import csv
import json
import os
import signal
import sys

from .common import EXIT_INTERRUPTED, EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE

# The library's own (`maest.utils.constants` imports nothing: --help starts fast); CollectionSettings checks the back-end, so
# that a wrong name is one line, as every other bad setting.
from maest.utils.constants import BACKEND_CHOICES, DEFAULT_BACKEND, DEFAULT_MODEL


def _display_path(path: str) -> str:
    relative = os.path.relpath(path) if os.path.isabs(path) else path
    return path if relative.startswith("..") else relative


def _printable(text: str) -> str:
    """A message for stderr: the undecodable bytes of a non-UTF-8 file name shown as `\\xNN` (the exact names are
    in the output files)."""
    return os.fsencode(text).decode("utf-8", "backslashreplace")


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


def _common_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="+", metavar="PATH", help="audio files and directories (searched recursively)")
    parser.add_argument("--model", default=DEFAULT_MODEL, help=f"MAEST directory, Hub id or checkpoint (default: {DEFAULT_MODEL})")
    parser.add_argument(
        "--last-segment",
        choices=("auto", "pad", "drop"),
        default="auto",
        help="the partial last segment of a track: auto (default) keeps it, padded, if it holds at least half a "
        "segment of audio; pad always keeps it; drop drops it. A track shorter than one segment is one padded segment",
    )
    parser.add_argument(
        "--inference-patchout-time-stride", type=int, default=None, metavar="K",
        help="keep every K-th patch column (faster, slightly less accurate; default: the model's, 1)",
    )
    parser.add_argument("--batch-size", type=int, default=8, help="segments per model call (default 8)")
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")
    parser.add_argument(
        "--dtype", choices=("auto", "float32", "bfloat16", "int8"), default="auto",
        help="inference precision (default auto: bfloat16 on a CUDA GPU that supports it, else float32; float32 on "
        "CUDA uses TF32); the dtype used is recorded in the output's settings",
    )  # fmt: skip
    parser.add_argument(
        "--compile", action="store_true",
        help="compile the model (torch.compile, one graph): pays on a GPU for runs of many batches (see README, Speed)",
    )
    parser.add_argument(
        "--backend", default=DEFAULT_BACKEND, metavar="{" + ",".join(BACKEND_CHOICES) + "}",
        help=f"what runs the model (default {DEFAULT_BACKEND}): onnxruntime / openvino run an exported graph on CPU "
        "(built on first use, cached in $MAEST_CACHE/graphs, default ~/.cache/maest/graphs; pip install 'maest[onnx]' "
        "/ 'maest[openvino]'), auto the fastest installed one for --dtype on the device (see README, Speed)",
    )  # fmt: skip
    parser.add_argument(
        "--num-workers", type=int, default=None,
        help="processes decoding audio and computing features in parallel with the model (default: by device)",
    )
    parser.add_argument("--min-duration", type=float, default=1.0, help="tracks shorter than this (seconds) are skipped as failed")
    parser.add_argument("--per-segment", action="store_true", help="also store each segment's vector")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output and discard its progress store")
    parser.add_argument(
        "--flush-every", type=int, default=32, metavar="N",
        help="with --out: save finished tracks to the progress store every N tracks (and every 30 s; default 32)",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    _ray_options(parser)


def _ray_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "Ray engine (--engine ray; pip install 'maest[ray]')",
        "decoding on Ray tasks, the model on a pool of Ray actors; same settings, output and failure rules as the "
        "local engine. PATHs may also be URIs of any fsspec filesystem (s3://bucket/music/, file:///...)",
    )
    group.add_argument(
        "--engine", choices=("local", "ray"), default="local",
        help="local (default): this process and its loader workers; ray: a Ray cluster (a new local one unless "
        "--ray-address, or RAY_ADDRESS with --ray-address auto)",
    )  # fmt: skip
    group.add_argument("--ray-address", default=None, metavar="ADDRESS", help="the Ray cluster to use: auto, ray://HOST:10001, HOST:6379")
    group.add_argument("--num-actors", type=int, default=None, help="model actors (default: one per --num-gpus GPUs, else 1)")
    group.add_argument("--num-gpus", type=float, default=None, help="GPUs per model actor (default 1 where the cluster has GPUs, else 0)")
    group.add_argument(
        "--num-cpus", type=float, default=None,
        help="CPUs per model actor (default 1); a CPU actor runs torch on this many threads (default: all cores of its machine)",
    )  # fmt: skip
    group.add_argument("--decode-cpus", type=float, default=1.0, help="CPUs per decoding task, one batch of tracks each (default 1)")
    group.add_argument("--tracks-per-batch", type=int, default=None, help="tracks per decoding task, per model-actor call and per part file (default: --batch-size, at least 4)")


def _analyze(args, **settings):
    """One collection run of the parsed command line on its engine."""
    if args.engine == "ray":
        from maest.inference.ray_engine import analyze_with_ray  # imported here: maest --help must start fast

        ray = dict(
            num_actors=args.num_actors, num_gpus=args.num_gpus, num_cpus=args.num_cpus, decode_cpus=args.decode_cpus,
            tracks_per_batch=args.tracks_per_batch, address=args.ray_address,
        )  # fmt: skip
        return analyze_with_ray(args.paths, args.out, args.model, on_failure=_report_failure, **ray, **settings)
    from maest.inference import CollectionError, analyze

    ray_only = ("num_actors", "num_gpus", "num_cpus", "tracks_per_batch", "ray_address")
    given = [name for name in ray_only if getattr(args, name) is not None] + (["decode_cpus"] * (args.decode_cpus != 1.0))
    if given:
        raise CollectionError(f"--{given[0].replace('_', '-')} is an option of the Ray engine: add --engine ray")
    return analyze(args.paths, args.model, out=args.out, on_failure=_report_failure, **settings)


def _input_names(args) -> list[str]:
    from maest.inference.job import expand_inputs

    if args.engine == "ray":
        from maest.inference.ray_engine import expand_ray_inputs

        return expand_ray_inputs(args.paths).names
    return expand_inputs(args.paths).names


def _settings(args, **task) -> dict:
    """The `CollectionSettings` options of the parsed command line."""
    return dict(
        per_segment=args.per_segment, inference_patchout_time_stride=args.inference_patchout_time_stride,
        last_segment=args.last_segment, min_duration=args.min_duration, batch_size=args.batch_size,
        num_workers=args.num_workers, device=args.device, dtype=args.dtype, compile=args.compile, backend=args.backend,
        progress=not args.quiet, overwrite=args.overwrite, flush_every_tracks=args.flush_every, **task,
    )


def _report_failure(failure) -> None:
    from tqdm.auto import tqdm  # imported here: maest --help must start fast

    tqdm.write(f"failed: {_printable(failure.reason)}", file=sys.stderr)


def _summary(results, out=None) -> int:
    failed = len(results.failed)
    skipped = f" ({results.skipped} already done)" if results.skipped else ""
    where = f"; failures listed in {out}.failed.tsv" if failed and out else ""
    print(f"{results.num_ok} tracks ok{skipped}, {failed} failed{where}", file=sys.stderr)
    return EXIT_SOME_FAILED if failed else EXIT_OK


def _collection_command(function):
    """Runs a collection subcommand: file names that are not UTF-8 print as their bytes; an interrupt is reported
    once, and further Ctrl-C are ignored while the process ends (what the first one kept is saved by then)."""

    def command(args) -> int:
        if hasattr(sys.stdout, "reconfigure"):  # (stderr already shows such bytes as \xNN)
            sys.stdout.reconfigure(errors="surrogateescape")
        if args.quiet:
            from transformers.utils import logging as transformers_logging  # imported here: maest --help must start fast

            transformers_logging.disable_progress_bar()
        try:
            return function(args)
        except KeyboardInterrupt:
            for signum in (signal.SIGINT, signal.SIGTERM):
                signal.signal(signum, signal.SIG_IGN)
            out = getattr(args, "out", None)
            if out:
                print(f"interrupted: finished tracks are kept in {out}.partial; rerun the same command to continue", file=sys.stderr)
            else:
                print("interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED

    return command


# ------------------------------------------------------------------------------------------------------- tag
def _tag(args) -> int:
    # imported here: maest --help must start fast
    from maest.inference import CollectionError
    from maest.inference.distributed import is_launched

    if is_launched():  # every launched process would run the whole collection into the same output
        raise CollectionError("maest tag runs in one process; to share a collection between processes use maest embed")
    if args.top_k < 1:
        raise CollectionError(f"--top-k must be >= 1, got {args.top_k}")
    names = _input_names(args)
    if args.plot:
        if len(names) != 1:
            raise CollectionError("--plot draws the timeline of one track; pass a single audio file")
        args.per_segment = True
    results = _analyze(args, **_settings(args, scores=True, embedding=False))
    results.only(names)  # the output file may hold other tracks too (earlier runs): print this call's
    _print_tags(results, args.top_k, args.format)
    if args.plot and len(results):
        from maest.inference.plot import plot_timeline

        plotted = plot_timeline(
            results.segment_scores[0], results.labels, results.metadata["segment_seconds"], args.plot,
            top_k=args.top_k, title=os.path.basename(results.paths[0]),
        )
        print(f"wrote {args.plot} ({', '.join(plotted)})", file=sys.stderr)
    return _summary(results, args.out)


def _print_tags(results, top_k: int, output_format: str) -> None:
    rows = list(zip(results.paths, results.durations.tolist(), results.num_segments.tolist(), results.top(top_k)))
    if output_format == "json":
        # JSON keeps a non-UTF-8 file name exactly, as the surrogate escapes "\udcXX" (json.loads gives it back).
        items = [
            {
                "path": path,
                "duration": duration,
                "num_segments": num_segments,
                "tags": [{"label": label, "score": round(score, 6)} for label, score in top],
            }
            for path, duration, num_segments, top in rows
        ]
        json.dump(items, sys.stdout, indent=1)
        sys.stdout.write("\n")
    elif output_format == "csv":
        writer = csv.writer(sys.stdout)
        writer.writerow(["path", "duration", "num_segments", "rank", "label", "score"])
        for path, duration, num_segments, top in rows:
            for rank, (label, score) in enumerate(top, 1):
                writer.writerow([path, f"{duration:.3f}", num_segments, rank, label, f"{score:.6f}"])
    else:
        for path, duration, num_segments, top in rows:
            print(f"{_display_path(path)}  ({_duration(duration)}, {num_segments} segment{'s' * (num_segments != 1)})")
            for label, score in top:
                print(f"  {score:.3f}  {label}")


# ------------------------------------------------------------------------------------------------------- embed
def _embed(args) -> int:
    # imported here: maest --help must start fast
    from maest.inference import CollectionError
    from maest.inference.distributed import is_launched

    if args.engine == "ray" and (args.devices is not None or is_launched()):
        raise CollectionError("--engine ray places the work on the Ray cluster itself: leave out --devices and the launcher")
    if args.devices is not None or is_launched():
        return _embed_processes(args)
    results = _analyze(args, **_embedding_settings(args))
    _print_written(args.out, results)
    return _summary(results, args.out)


def _embedding_settings(args) -> dict:
    return _settings(args, scores=False, embedding=True, block=args.block, tokens=args.tokens)


def _print_written(out, results, processes: str = "") -> None:
    settings = results.metadata["settings"]
    print(
        f"wrote {out}: {len(results)} tracks x {results.table['embedding'].type.list_size} dims (block "
        f"{settings['block']}, tokens {','.join(settings['tokens'])}){processes}",
        file=sys.stderr,
    )


def _embed_processes(args) -> int:
    """`maest embed` under a launcher or with `--devices`: the job's summary and failed tracks are printed once, by
    the main process; every process returns the same exit status (1 when a track failed anywhere)."""
    # imported here: maest --help must start fast
    from maest.inference.distributed import PeerSetupError, analyze_distributed, exit_together, is_launched

    main = not is_launched() or int(os.environ.get("RANK", "0")) == 0
    if not main:
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()
    try:
        job = analyze_distributed(args.paths, args.out, args.model, devices=args.devices, **_embedding_settings(args))
    except PeerSetupError:
        status = EXIT_USAGE  # the process whose set-up failed printed the reason
    else:
        status = EXIT_SOME_FAILED if job.failed else EXIT_OK
        if job.is_main_process:
            for item in job.failed:
                print(f"failed: {_printable(item['reason'])}", file=sys.stderr)
            plural = "es" * (job.num_processes != 1)
            _print_written(args.out, job.results, f"; {job.processed} tracks processed by {job.num_processes} process{plural}")
            status = _summary(job.results, args.out)
    if is_launched():
        exit_together(status)
    return status


# ------------------------------------------------------------------------------------------------------- export
def _export_onnx(args) -> int:
    from maest.inference.loading import export_onnx  # imported here: maest --help must start fast

    path = export_onnx(
        args.model, args.out, block=args.block, tokens=args.tokens,
        inference_patchout_time_stride=args.inference_patchout_time_stride, opset_version=args.opset,
        overwrite=args.overwrite,
    )
    print(f"wrote {path}: input_values (batch, frames, 96) -> logits (batch, labels), embedding (batch, dim)", file=sys.stderr)
    return EXIT_OK


def register(subparsers) -> None:
    tag = subparsers.add_parser(
        "tag",
        help="style tags of whole tracks (files or directories)",
        description="Tags whole tracks: the model runs on consecutive segments of its length, and a track's scores "
        "are the mean of the per-segment sigmoid activations.",
    )
    _common_options(tag)
    tag.add_argument("--top-k", type=int, default=5, help="labels per track (default 5)")
    tag.add_argument("--format", choices=("table", "json", "csv"), default="table", help="what to print (default table)")
    tag.add_argument("--plot", metavar="OUT.png", help="draw the timeline of the top styles per segment of one track")
    tag.add_argument("--out", help="also write all scores to a .parquet or .npz file (resumable)")
    tag.set_defaults(func=_collection_command(_tag))

    embed = subparsers.add_parser(
        "embed",
        help="track (and segment) embeddings of files or directories, to Parquet or NPZ",
        description="Embeds whole tracks: the paper's block embedding of each consecutive segment, averaged per "
        "track. Resumable: an interrupted run continues where it stopped; tracks already in OUT are skipped.",
    )
    _common_options(embed)
    embed.add_argument("--out", required=True, help="output file, .parquet or .npz")
    embed.add_argument("--block", type=int, default=None, help="0-based block (default: the model's embedding_block, 6 of 12)")
    embed.add_argument("--tokens", default="cls,dist,mean", help="tokens to concatenate: cls,dist,mean (default) or a subset")
    embed.add_argument(
        "--devices", default=None, metavar="LIST|N",
        help="one worker process per device on this machine, e.g. cuda:0,cuda:1 or 2 (the first 2 GPUs) or cpu,cpu; "
        "under torchrun / accelerate launch leave it out: each launched process takes its share of the tracks",
    )
    embed.set_defaults(func=_collection_command(_embed))

    export = subparsers.add_parser(
        "export-onnx",
        help="export a MAEST model to ONNX (dynamic batch and frames)",
        description="Exports input_values (batch, frames, 96) -> logits and the block embedding to ONNX.",
    )
    export.add_argument("model", help="MAEST directory (or Hub id / checkpoint)")
    export.add_argument("out", help="the .onnx file to write")
    export.add_argument("--block", type=int, default=None, help="block of the embedding output (default: embedding_block)")
    export.add_argument("--tokens", default="cls,dist,mean", help="tokens of the embedding output")
    export.add_argument("--inference-patchout-time-stride", type=int, default=None, metavar="K", help="fixed in the graph")
    export.add_argument("--opset", type=int, default=None, help="ONNX opset (default: the exporter's)")
    export.add_argument("--overwrite", action="store_true", help="replace OUT if it exists (refused otherwise)")
    export.set_defaults(func=_export_onnx)
