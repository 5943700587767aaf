"""The `maest` command. Each subpackage registers its own subcommands next to the code they run."""

import argparse
import importlib
import sys

# Modules with a `register(subparsers)` function that adds their subcommands.
COMMAND_MODULES = (
    "maest.modeling.cli",
    "maest.inference.cli",
    "maest.inference.benchmark",
    "maest.training.cli",
    "maest.training.probe",
    "maest.hub",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="maest", description="MAEST: music style tagging and embeddings, training and evaluation."
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        status = args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(status or 0)


if __name__ == "__main__":
    sys.exit(main())
