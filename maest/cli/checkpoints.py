"""`maest convert`, `maest card` and `maest push`: checkpoints into MAEST directories, their model cards, and the Hub.

Only the standard library is imported at the top; each command imports what it runs (`maest --help` must start
fast). Errors are raised as `maest.utils.errors.MAESTError`s, which `maest.cli.main` prints as one line with exit status 2.
"""

import json
import logging
import sys
from pathlib import Path

from maest.utils.errors import MAESTError


def run_convert(args) -> int:
    # imported here: maest --help must start fast
    from transformers.utils import logging as transformers_logging

    from maest.hub import convert_checkpoint
    from maest.modeling import read_label_file

    transformers_logging.disable_progress_bar()  # a bar for writing one weights file is noise
    _print_log_messages("maest.modeling.label_names")  # e.g. that the Discogs style names were given

    labels = read_label_file(args.labels) if args.labels else None
    model = convert_checkpoint(
        args.source, args.output_dir, labels=labels, preset=args.preset, use_swa=not args.last_weights,
        overwrite=args.overwrite, card=args.card, hub_name=args.hub_name, published=args.published,
    )
    config = model.config
    print(
        f"wrote {args.output_dir}: MAEST {config.num_hidden_layers} blocks x {config.hidden_size}, "
        f"{config.max_length} frames, {config.num_labels} labels"
    )
    if args.card or args.hub_name or args.published:
        print(f"wrote the model card {Path(args.output_dir) / 'README.md'}; upload with: maest push {args.output_dir} "
              f"{args.hub_name or 'REPO_ID'}")
    return 0


def run_push(args) -> int:
    # imported here: maest --help must start fast
    from maest.hub import CARD_NAME, prepare_push, push_to_hub

    plan = prepare_push(args.directory, repo_id=args.repo_id)
    if args.dry_run:
        print(f"would push {len(plan.repo_paths)} files from {plan.directory} to {args.repo_id}:")
        for name in plan.repo_paths:
            generated = " (generated)" if name == CARD_NAME and plan.card_generated else ""
            print(f"  {name}{generated}")
        if plan.skipped:
            print(f"not uploaded: {', '.join(plan.skipped)}")
        return 0
    commit = push_to_hub(
        args.directory, args.repo_id, private=args.private or None, token=args.token,
        commit_message=args.commit_message, revision=args.revision, create_pr=args.create_pr,
    )
    print(f"pushed {len(plan.repo_paths)} files to {args.repo_id}: {getattr(commit, 'commit_url', commit)}")
    if plan.card_generated:
        print(f"the model card was generated ({args.directory} has no {CARD_NAME}; `maest card` writes one to edit)")
    if plan.skipped:
        print(f"not uploaded: {', '.join(plan.skipped)}")
    return 0


def run_card(args) -> int:
    # imported here: maest --help must start fast
    from maest.model_cards import DEFAULT_LICENSE, write_model_card

    target = Path(args.directory) / "README.md"
    if target.exists() and not args.force:
        raise MAESTError(f"{target} exists; pass --force to replace it")
    path = write_model_card(
        args.directory,
        model_name=args.model_name,
        repo_id=args.repo_id,
        published=args.published,
        base_model=args.base_model,
        training_summary=_read_json_file(args.training_summary, "--training-summary"),
        probe_results=args.probe_results,
        evaluation_results=args.evaluation_results,
        license=args.license or DEFAULT_LICENSE,
    )
    print(f"wrote {path}")
    return 0


def _print_log_messages(logger_name: str) -> None:
    """Shows a library logger's INFO messages on stdout for this command."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger(logger_name)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)


def _read_json_file(path: str | None, option: str):
    if path is None:
        return None
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise MAESTError(f"{option} {path}: not a readable JSON file ({error})") from error


def register(subparsers) -> None:
    convert = subparsers.add_parser(
        "convert",
        help="convert an original or AST-format MAEST checkpoint to a MAEST directory",
        description="Convert a released original checkpoint (*-swa.ckpt), a training checkpoint (SWA weights by "
        "default) or an AST-format MAEST directory/Hub repo into a save_pretrained directory. Models with 400 or 519 "
        "outputs and no label names get the published Discogs style names.",
    )
    convert.add_argument("source", help="checkpoint file, AST-format directory or Hub id")
    convert.add_argument("output_dir", help="directory to write (refused if it exists, unless --overwrite)")
    convert.add_argument("--labels", help="label names in output order: a text file (one per line) or a JSON list")
    convert.add_argument("--preset", help="model shape when the file name does not tell it (e.g. maest-30s, maest-tiny)")
    convert.add_argument("--last-weights", action="store_true", help="training checkpoints: the last weights, not SWA")
    convert.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    convert.add_argument("--card", action="store_true", help="also write the model card (README.md) for the Hub")
    convert.add_argument("--hub-name", help="Hub repo the card's examples load from, e.g. my-org/maest-30s (implies --card)")
    convert.add_argument(
        "--published",
        help="released checkpoint the source holds, e.g. discogs-maest-30s-pw-129e or maest-30s, for its card "
        "(default: from the source file name; implies --card)",
    )
    convert.set_defaults(func=run_convert)

    push = subparsers.add_parser(
        "push",
        help="upload a MAEST directory to the Hugging Face Hub (one commit)",
        description="Upload a saved MAEST directory (weights, config with auto_map, feature extractor, code, model "
        "card) to a Hub repo in one commit. The directory is checked first and never modified; a missing README.md "
        "card is generated for the upload.",
    )
    push.add_argument("directory", help="save_pretrained directory (e.g. from `maest convert`)")
    push.add_argument("repo_id", help="Hub repo, e.g. my-org/maest-30s (created if missing)")
    push.add_argument("--private", action="store_true", help="create the repo private")
    push.add_argument("--token", help="Hub token with write access (default: the logged-in one, HF_TOKEN)")
    push.add_argument("--commit-message", help="commit message")
    push.add_argument("--revision", help="branch to commit to")
    push.add_argument("--create-pr", action="store_true", help="open a pull request instead of committing")
    push.add_argument("--dry-run", action="store_true", help="check the directory and list what would be sent")
    push.set_defaults(func=run_push)

    card = subparsers.add_parser(
        "card",
        help="write the model card (README.md) of a MAEST directory",
        description="Write a model card for a saved MAEST directory from its config, an optional training summary "
        "and `maest probe` results.",
    )
    card.add_argument("directory", help="save_pretrained directory")
    card.add_argument("--published", help="released checkpoint it holds, e.g. discogs-maest-30s-pw-129e or maest-30s")
    card.add_argument("--repo-id", help="Hub repo the usage examples load from, e.g. my-org/maest-30s")
    card.add_argument("--model-name", help="card title and model-index name (default: repo or directory name)")
    card.add_argument("--base-model", help="Hub id of the model it was fine-tuned or initialized from")
    card.add_argument("--training-summary", help="JSON file: dict describing the training run")
    card.add_argument(
        "--probe-results", help="JSON file: a `maest probe` results.json (its best configuration), or result dicts"
    )
    card.add_argument("--evaluation-results", help="JSON file: the model's own evaluation results")
    card.add_argument("--license", help="Hub license id (default: the original models' cc-by-nc-sa-4.0)")
    card.add_argument("--force", action="store_true", help="replace an existing README.md")
    card.set_defaults(func=run_card)
