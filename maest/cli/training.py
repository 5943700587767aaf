"""`maest pretrain`, `maest probe` and `maest demo`."""

import argparse
import dataclasses
import logging
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from maest.utils.constants import MAX_SEED, POSTER_TOKEN_SETS, PROBE_KINDS, PROBE_TASKS

if TYPE_CHECKING:  # the annotation only: importing it at run time would load torch for every `maest --help`
    from maest.training.config import PretrainConfig


def seed_value(text: str) -> int:
    """argparse type of --seed: an integer that numpy accepts as a seed (a negative one was an exit 70)."""
    try:
        seed = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
    if not 0 <= seed <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"must be in [0, {MAX_SEED}], got {seed}")
    return seed


def setup_logging() -> None:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO, stream=sys.stderr)
    for noisy in ("datasets", "httpx", "urllib3", "fsspec", "accelerate"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


# ----------------------------------------------------------------------------------------------- pretrain
def parse_pretrain_arguments(argv: list[str], prog: str = "maest pretrain") -> "PretrainConfig":
    """`[CONFIG_FILE] [--key value ...]` -> `PretrainConfig`: the file's settings, then the command line's on top.

    The file may also be given as `--config FILE`. Parsed by `HfArgumentParser` (`--help` lists every setting);
    usage errors exit through argparse (status 2), bad values raise `ConfigError`.
    """
    # imported here: maest --help must start fast
    from transformers import HfArgumentParser

    from maest.training.config import ConfigError, PretrainConfig

    argv = list(argv)
    config_file = None
    if argv and not argv[0].startswith("-"):
        config_file = argv.pop(0)
    parser = HfArgumentParser(
        PretrainConfig, prog=prog, usage=f"{prog} [CONFIG.yaml] [--key value ...]", description=PARSER_DESCRIPTION,
        epilog=PARSER_EPILOG, formatter_class=HelpFormatter,
    )
    parser.add_argument("--config", help="the YAML/JSON file of settings (or give it first, without --config)")
    known, _ = parser.parse_known_args(argv)
    if known.config is not None:
        if config_file is not None:
            raise ConfigError(f"two config files given: {config_file} and --config {known.config}")
        config_file = known.config
    if config_file is not None:
        parser.set_defaults(**dataclasses.asdict(PretrainConfig.from_file(config_file)))
    try:
        config, _ = parser.parse_args_into_dataclasses(argv, look_for_args_file=False)
    except ConfigError as error:
        raise ConfigError(f"command line: {error}") from None
    return config


PARSER_DESCRIPTION = """\
Pre-trains MAEST with the paper's recipe on streamed tagged audio (Accelerate; works under
accelerate launch and torchrun). Settings: a YAML or JSON file of PretrainConfig keys, given
first, then --key value overrides:

  maest pretrain CONFIG.yaml --learning_rate 1e-3 --batch_size 8 --model '{hidden_size: 192}'
  maest pretrain --config CONFIG.yaml --output_dir runs/a --overwrite
  maest pretrain runs/a/pretrain_config.yaml --resume

Numbers take any notation (2e-5, 2.0e-5, 0.00002, 200_000). An example config ships in
maest/training/pretrain-maest-30s.yaml."""
PARSER_EPILOG = """\
--resume (no value) continues from the latest checkpoint in output_dir; an output_dir that holds
an earlier run is refused unless --resume or --overwrite is given. Booleans: --swa false, --no_swa."""


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults in the option list; the description and epilog keep their lines (the examples)."""


def run_pretrain(args) -> int:
    from maest.training.pretrain import pretrain  # imported here: maest --help must start fast

    config = parse_pretrain_arguments(args.settings)
    setup_logging()
    result = pretrain(config)
    if result is not None:
        print(f"saved {result}")
    return 0


def register_pretrain(subparsers) -> None:
    # The settings are PretrainConfig's fields, parsed by transformers' HfArgumentParser when the command runs
    # (building that parser here would import transformers for every `maest --help`). This parser passes every
    # argument through: with "+" as its only prefix character, "--key" is not an option of its own.
    parser = subparsers.add_parser(
        "pretrain",
        help="supervised MAEST pre-training on streamed tagged audio (Accelerate; works under accelerate launch/torchrun)",
        description="maest pretrain [CONFIG.yaml] [--key value ...]: see `maest pretrain --help`.",
        prefix_chars="+",
        add_help=False,
    )
    parser.add_argument("settings", nargs=argparse.REMAINDER, help="CONFIG.yaml --learning_rate 1e-3 ...")
    parser.set_defaults(func=run_pretrain)


# ----------------------------------------------------------------------------------------------- demo
def run_demo(args) -> int:
    # imported here: maest --help must start fast
    from maest.demo import run_demo as demo
    from maest.utils.errors import MAESTError

    if Path(args.output_dir).exists() and not Path(args.output_dir).is_dir():
        raise MAESTError(f"--output-dir {args.output_dir} is a file, not a folder")
    setup_logging()
    result = demo(output_dir=args.output_dir, quick=args.quick, seed=args.seed, keep_corpus=not args.regenerate)
    print(result.table)
    print()
    print(f"Tagged {result.tagged_file} (true tags: {', '.join(result.true_tags)}):")
    for tag in result.predicted_tags:
        print(f"  {tag['label']:<10} {tag['score']:.3f}")
    print(f"Heatmap: {result.heatmap}")
    print(f"Model with its card: {result.model_dir}")
    timings = ", ".join(f"{k} {v:.0f} s" for k, v in result.timings.items() if k != "total")
    print(f"Time: {result.timings['total']:.0f} s ({timings})")
    print(result.verdict)
    sys.stdout.flush()
    return 0 if result.passed else 1


def register_demo(subparsers) -> None:
    demo = subparsers.add_parser(
        "demo",
        help="end-to-end demo: synthesize a tagged music corpus, pre-train a small MAEST on it, probe it",
        description=(
            "Writes a small synthetic multi-label music corpus, pre-trains a small MAEST on its style/instrument tags "
            "through the streaming trainer, then probes the embeddings on held-out tags (tempo class, mode) against "
            "a random-initialized twin and log-mel statistics, saves the block x token heatmap and the model with "
            "its card, and tags one file. Exit status 0 when the pre-trained model beats both baselines, 1 when not."
        ),
    )
    demo.add_argument("--output-dir", default="demo_output")
    demo.add_argument("--seed", type=seed_value, default=0)
    demo.add_argument("--quick", action="store_true", help="a much smaller run (for tests)")
    demo.add_argument("--regenerate", action="store_true", help="rewrite the corpus even if it exists")
    demo.set_defaults(func=run_demo)


# ----------------------------------------------------------------------------------------------- probe
def run_probe(args) -> int:
    # imported here: maest --help must start fast
    from maest.modeling import read_label_file
    from maest.training.evaluation.probe import probe_dataset
    from maest.training.evaluation.report import markdown_tables

    if args.sweep:
        args.blocks = args.blocks or "all"
        args.tokens = args.tokens or ",".join(POSTER_TOKEN_SETS)
    token_sets = [name.strip() for name in (args.tokens or "cda").split(",") if name.strip()]
    report = probe_dataset(
        args.model,
        args.data,
        blocks=args.blocks,
        token_sets=token_sets,
        kind=args.probe,
        label_column=args.label_column,
        audio_column=args.audio_column,
        task=args.task,
        label_names=read_label_file(args.label_names) if args.label_names else None,
        output_dir=args.output_dir,
        cache_dir=None if args.no_cache else args.cache_dir,
        validation_fraction=args.validation_fraction,
        test_fraction=args.test_fraction,
        seed=args.seed,
        extraction_batch_size=args.extraction_batch_size,
        device=args.device,
        config_name=args.config_name,
        progress=not args.quiet,
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        weight_decay=args.weight_decay,
        overwrite=args.overwrite,
    )
    print_probe_report(report, markdown_tables)
    return 0


def print_probe_report(report: dict, markdown_tables) -> None:
    settings = report["settings"]
    for split, note in settings["carved_splits"].items():
        print(f"note: no {split} split in the data; {note}")
    for split, problems in settings["skipped_tracks"].items():
        if problems["unreadable_audio"] or problems["missing_labels"]:
            print(
                f"note: {split}: skipped {len(problems['unreadable_audio'])} unreadable tracks and "
                f"{problems['missing_labels']} without labels"
            )
    print(
        "tracks: "
        + ", ".join(f"{split} {count}" for split, count in settings["num_tracks"].items())
        + f"; {len(settings['labels'])} labels ({settings['task']})"
    )
    print(markdown_tables(report["rows"], report["title"]))
    best = max(report["rows"], key=lambda row: -math.inf if row["roc_auc"] is None else row["roc_auc"])
    print(
        f"best: block {best['block']} {best['tokens']}: ROC-AUC {100 * (best['roc_auc'] or math.nan):.2f}, "
        f"mAP {100 * (best['average_precision'] or math.nan):.2f} (epoch {best['best_epoch']})"
    )
    if report["paths"]:
        print("wrote " + ", ".join(str(path) for path in report["paths"].values()))


def register_probe(subparsers) -> None:
    parser = subparsers.add_parser(
        "probe",
        help="evaluate MAEST embeddings on a labeled dataset with the paper's probes (one config or a sweep)",
        description="Embed a labeled dataset (train/validation/test splits; any `datasets` source) with a MAEST model "
        "(mean over consecutive segments per track, cached on disk), train the paper's probe per (block, token set) "
        "with model selection on validation ROC-AUC, and report test macro ROC-AUC and mAP. Writes results.json, "
        "results.md and the poster's heatmap (heatmap.png). Blocks are 1-based as on the poster (block b = "
        "hidden_states[b]); tokens: c = cls, d = dist, a = average of the patch tokens.",
    )
    parser.add_argument(
        "--model", required=True, help="MAEST directory, Hub id, AST-format repo or original checkpoint"
    )
    parser.add_argument(
        "--data",
        required=True,
        help="dataset: Hub id, audiofolder/Parquet folder, save_to_disk folder or Parquet file(s)",
    )
    parser.add_argument("--config-name", help="the Hub dataset's configuration")
    parser.add_argument(
        "--blocks",
        help="blocks, 1-based: '1-12', '7', '1,4,7-9' or 'all' (default: the model's embedding block, 7 of 12)",
    )
    parser.add_argument(
        "--tokens", help="comma-separated token sets of c, d, a: 'cda' (default) or 'c,d,a,cd,ca,da,cda'"
    )
    parser.add_argument("--sweep", action="store_true", help="the poster's sweep: every block x c,d,a,cd,ca,da,cda")
    parser.add_argument(
        "--probe", choices=PROBE_KINDS, default="mlp", help="probe: mlp (512 hidden, dropout 0.5) or linear"
    )
    parser.add_argument("--label-column", help="label column (default: tags, labels, label, genre or genres)")
    parser.add_argument("--audio-column", default="audio")
    parser.add_argument(
        "--task", choices=PROBE_TASKS, default="auto", help="multilabel (BCE) or multiclass (CE); auto from the labels"
    )
    parser.add_argument(
        "--label-names", help="label names file (one per line, or JSON list), e.g. for multi-hot labels"
    )
    parser.add_argument("--output-dir", default="probe-results", help="where results.json, results.md, heatmap.png go")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace the results of an earlier probe in --output-dir (else refused)"
    )
    parser.add_argument(
        "--cache-dir", default=str(Path("~/.cache/maest/embeddings").expanduser()), help="embedding cache"
    )
    parser.add_argument("--no-cache", action="store_true", help="do not read or write the embedding cache")
    parser.add_argument(
        "--validation-fraction", type=float, default=0.15, help="carved from train when there is no validation split"
    )
    parser.add_argument(
        "--test-fraction", type=float, default=0.15, help="carved from train when there is no test split"
    )
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--weight-decay", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--extraction-batch-size", type=int, default=8, help="segments per forward pass")
    parser.add_argument("--device", help="device for the model (default: cuda when available)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(func=run_probe)


def register(subparsers) -> None:
    register_pretrain(subparsers)
    register_probe(subparsers)
    register_demo(subparsers)
