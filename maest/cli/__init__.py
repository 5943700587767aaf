"""The `maest` command: all command-line code lives in this package, one module per area.

Each module has a `register(subparsers)` function that adds its subcommands; it imports only the standard library at
the top, and each subcommand imports the library code it runs when it runs, so `maest --help` starts in well under a
second. Library modules raise (`maest.utils.errors.MAESTError` for user errors); only this package prints and chooses exit
statuses (see `maest.cli.common`).
"""

import argparse
import importlib
import sys

from .common import run_command

# Modules with a `register(subparsers)` function that adds their subcommands.
COMMAND_MODULES = (
    "maest.cli.checkpoints",
    "maest.cli.collection",
    "maest.cli.bench",
    "maest.cli.training",
    "maest.cli.similarity",
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
    return run_command(args.func, args)


if __name__ == "__main__":
    sys.exit(main())
