"""`maest bench`: measures every back-end x dtype x patchout stride side by side in one run, with the accuracy cost
(see `maest.benchmarks.measure`)."""

import argparse
import json
import sys


def bench_command(args) -> int:
    # imported here: maest --help must start fast
    from maest.benchmarks.measure import run_benchmark
    from maest.benchmarks.report import render
    from maest.utils.files import write_text_atomically

    if args.ray:
        return _bench_ray(args)
    results = run_benchmark(args)
    print(render(results), end="")
    if args.output:
        print(f"wrote {write_text_atomically(args.output, json.dumps(results, indent=2) + chr(10))}", file=sys.stderr)
    if args.markdown:
        print(f"wrote {write_text_atomically(args.markdown, render(results, markdown=True))}", file=sys.stderr)
    return 0


def _bench_ray(args) -> int:
    """`maest bench --ray`: only the Ray engine against the one-process engine (`maest.benchmarks.ray_benchmark`)."""
    from maest.benchmarks.ray_benchmark import benchmark_ray_engine, render_ray
    from maest.utils.files import write_text_atomically

    log = lambda message: print(message, file=sys.stderr, flush=True)  # noqa: E731
    results = benchmark_ray_engine(
        preset=args.ray_preset, num_tracks=args.ray_tracks, track_seconds=tuple(args.ray_seconds), rounds=args.rounds or 2, batch_size=args.batch_size or 8,
        log=log, seed=args.seed,
    )  # fmt: skip
    results["command"] = "maest " + " ".join(sys.argv[1:])
    print(render_ray(results), end="")
    if args.output:
        print(f"wrote {write_text_atomically(args.output, json.dumps(results, indent=2) + chr(10))}", file=sys.stderr)
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="measure MAEST's speed (back-ends, precisions, patchout, AST peer, GEMM peak, end-to-end, training)",
        description="How fast MAEST runs on this machine, and what each speed-up costs in accuracy.",
    )
    parser.add_argument("--quick", action="store_true", help="batch 1 and fewer rounds (a few minutes on 2 CPU cores)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--output", "-o", help="write the results as JSON to this file")
    parser.add_argument("--markdown", help="also write the tables as Markdown to this file")
    parser.add_argument("--skip-e2e", action="store_true", help="skip the end-to-end (audio files) measurement")
    parser.add_argument("--skip-training", action="store_true", help="skip the training-speed measurement")
    parser.add_argument("--model", help="a MAEST directory or checkpoint (default: random weights of --preset)")
    parser.add_argument("--batch-size", type=int, help="inputs per batch (default 2, 1 with --quick)")
    parser.add_argument("--rounds", type=int, help="interleaved timing rounds (default 7, 3 with --quick)")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument(
        "--backends", nargs="*", default=None,
        help="exported-graph back-ends to measure (default: the installed ones of onnxruntime, openvino; none: torch only)",
    )  # fmt: skip
    parser.add_argument("--dtypes", nargs="*", default=["float32", "int8"], help="dtypes of the back-ends (default float32 int8)")
    parser.add_argument("--strides", nargs="*", type=int, default=[1, 2, 3], help="patchout time strides of the back-ends")
    parser.add_argument("--graph-cache", help="folder of the exported graphs (default: the back-ends' cache)")
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--preset", default="maest-30s", help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    parser.add_argument("--peak-size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--training-batch-size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--training-rounds", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--e2e-files", type=int, help="end-to-end: number of audio files (default 20, 2 with --quick)")
    parser.add_argument(
        "--e2e-minutes", type=float, nargs=2, metavar=("MIN", "MAX"),
        help="end-to-end: track lengths in minutes, uniform (default 1 2; with --quick one to two segments)",
    )  # fmt: skip
    parser.add_argument(
        "--e2e-backend", choices=("auto", "torch", "onnxruntime", "openvino"),
        help="end-to-end: the back-end (float32) of the files -> embeddings run (default: the fastest float32 path; "
        "auto: what --backend auto measures and chooses here)",
    )  # fmt: skip
    parser.add_argument("--e2e-rounds", type=int, help="end-to-end: interleaved rounds (default 3, 2 with --quick)")
    parser.add_argument(
        "--extra-variants", nargs="*",
        help="more variants: float32-compiled (torch.compile, inductor with freezing), and int8 keeping some Linears "
        "in float32: int8-keep-fc2, int8-keep-first-last, int8-keep-heads",
    )  # fmt: skip
    parser.add_argument(
        "--ray", action="store_true",
        help="measure only the Ray engine (maest embed --engine ray, local cluster) against the one-process engine "
        "over the same tracks: throughput ratio and row equality (needs maest[ray])",
    )  # fmt: skip
    parser.add_argument("--ray-tracks", type=int, default=200, help="--ray: tracks (default 200, 8-10 s each)")
    parser.add_argument("--ray-preset", default="maest-10s", help="--ray: model shape, random weights (default maest-10s)")
    parser.add_argument(
        "--ray-seconds", type=float, nargs=2, default=(8.0, 10.0), metavar=("MIN", "MAX"),
        help="--ray: track lengths in seconds, uniform (default 8 10)",
    )  # fmt: skip
    parser.set_defaults(func=bench_command)
