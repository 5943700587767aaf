"""`maest pretrain` and `maest demo`."""

import argparse
import logging
import sys


def _setup_logging():
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO, stream=sys.stderr)
    for noisy in ("datasets", "httpx", "urllib3", "fsspec", "accelerate"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def run_pretrain(args) -> int:
    from .data import DataQualityError
    from .pretrain import PretrainConfig, parse_overrides, pretrain

    _setup_logging()
    try:
        overrides = parse_overrides(args.overrides)
        if args.output_dir:
            overrides["output_dir"] = args.output_dir
        if args.resume is not None:
            overrides["resume"] = args.resume
        config = PretrainConfig.from_file(args.config, overrides)
    except (OSError, ValueError) as error:
        print(f"maest pretrain: {error}", file=sys.stderr)
        return 2
    try:
        result = pretrain(config)
    except DataQualityError as error:
        print(f"maest pretrain: {error}", file=sys.stderr)
        return 1
    if result is not None:
        print(f"saved {result}")
    return 0


def run_demo(args) -> int:
    from .demo import run_demo as demo

    _setup_logging()
    return demo(output_dir=args.output_dir, quick=args.quick, seed=args.seed, keep_corpus=not args.regenerate)


def _collect_overrides(parser: argparse.ArgumentParser) -> None:
    """Lets `maest pretrain` take any `--key value` setting: the arguments the parser does not know are kept as
    `args.overrides` (and validated against `PretrainConfig`) instead of being rejected."""
    parse_known_args = parser.parse_known_args

    def parse_and_collect(args=None, namespace=None):
        namespace, extras = parse_known_args(args, namespace)
        namespace.overrides = list(getattr(namespace, "overrides", []) or []) + list(extras)
        return namespace, []

    parser.parse_known_args = parse_and_collect
    parser.epilog = "Any other --key value pair overrides the setting `key` of the config file."


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "pretrain",
        help="supervised MAEST pre-training on streamed tagged audio (Accelerate; works under accelerate launch/torchrun)",
        description=(
            "Pre-trains MAEST with the paper's recipe. Settings come from a YAML file (keys of "
            "maest.training.pretrain.PretrainConfig) and `--key value` overrides, e.g. `--batch_size 8 "
            "--model.hidden_size 192`. Example configs ship in maest/training/*.yaml."
        ),
    )
    parser.add_argument("--config", help="YAML file of settings")
    parser.add_argument("--output-dir", dest="output_dir", help="where checkpoints, logs and the final model go")
    parser.add_argument("--resume", nargs="?", const="latest", default=None,
                        help="continue from the latest checkpoint in the output directory (or the given one)")
    parser.set_defaults(func=run_pretrain, overrides=[])
    _collect_overrides(parser)

    demo = subparsers.add_parser(
        "demo",
        help="end-to-end demo: synthesize a tagged music corpus, pre-train a small MAEST on it, probe it",
        description=(
            "Writes a small synthetic multi-label music corpus, pre-trains a small MAEST on its style/instrument tags "
            "through the streaming trainer, then probes the embeddings on held-out tags (tempo class, mode) against "
            "a random-initialized twin and log-mel statistics, saves the block x token heatmap and the model with "
            "its card, and tags one file."
        ),
    )
    demo.add_argument("--output-dir", default="demo_output")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--quick", action="store_true", help="a much smaller run (for tests)")
    demo.add_argument("--regenerate", action="store_true", help="rewrite the corpus even if it exists")
    demo.set_defaults(func=run_demo)
