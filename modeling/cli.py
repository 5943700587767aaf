"""`maest convert`: any published MAEST checkpoint -> a `save_pretrained` directory."""

import argparse
from pathlib import Path


def convert(source: str, output_dir: str, labels_file: str | None = None, preset: str | None = None,
            use_swa: bool = True, feature_extractor_kwargs: dict | None = None, card: bool = False,
            hub_name: str | None = None, published: str | None = None):
    """Converts an original checkpoint file (`*.ckpt`, `*.pt`) or an AST-format MAEST repo into a MAEST directory
    with the model and its feature extractor. Returns the loaded model.

    With `card=True` (implied by `hub_name` or `published`) the directory also gets its model card (`README.md`),
    ready for `maest push`: `published` names the released checkpoint it holds (`discogs-maest-30s-pw-129e` or
    `maest-30s`; found from the source's name when it is a released one), and `hub_name` is the Hub repo the card's
    examples load from (e.g. `my-org/maest-30s`)."""
    from maest import MAESTFeatureExtractor, MAESTForAudioClassification

    from .conversion import find_foreign_checkpoint, load_original_checkpoint, read_labels

    labels = read_labels(labels_file) if labels_file else None
    foreign = find_foreign_checkpoint(source)
    if foreign is not None and foreign[0] == "original":
        model = load_original_checkpoint(source, use_swa=use_swa, labels=labels, preset=preset)
    else:
        model = MAESTForAudioClassification.from_pretrained(source)
        if labels is not None:
            if len(labels) != model.config.num_labels:
                raise ValueError(f"{len(labels)} labels given for a model with {model.config.num_labels} outputs")
            model.config.id2label = dict(enumerate(labels))
            model.config.label2id = {label: index for index, label in enumerate(labels)}
    output_dir = Path(output_dir)
    model.save_pretrained(output_dir)
    MAESTFeatureExtractor(max_length=model.config.max_length, **(feature_extractor_kwargs or {})).save_pretrained(output_dir)
    if card or hub_name or published:
        _write_card(source, output_dir, model, hub_name=hub_name, published=published)
    return model


def _write_card(source: str, output_dir: Path, model, hub_name: str | None, published: str | None) -> Path:
    """The released checkpoint's card when the source is one (or `published` names one); otherwise a card for a
    converted model, naming the source."""
    from maest.model_cards import find_published, write_model_card

    if published is None:
        try:
            published = find_published(source).checkpoint
        except ValueError:
            published = None  # not a released checkpoint: a generic card
    if published is not None:
        return write_model_card(output_dir, model.config, repo_id=hub_name, published=published)
    return write_model_card(
        output_dir,
        model.config,
        repo_id=hub_name,
        training_summary={"converted from": Path(source).name if Path(source).exists() else source},
    )


def _run(args) -> int:
    model = convert(
        args.source, args.output_dir, labels_file=args.labels, preset=args.preset, use_swa=not args.last_weights,
        card=args.card, hub_name=args.hub_name, published=args.published,
    )
    print(
        f"wrote {args.output_dir}: MAEST {model.config.num_hidden_layers} blocks x {model.config.hidden_size}, "
        f"{model.config.max_length} frames, {model.config.num_labels} labels"
    )
    if args.card or args.hub_name or args.published:
        print(f"wrote the model card {Path(args.output_dir) / 'README.md'}; upload with: maest push {args.output_dir} "
              f"{args.hub_name or 'REPO_ID'}")
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "convert",
        help="convert an original or AST-format MAEST checkpoint to a MAEST directory",
        description="Convert a released original checkpoint (*-swa.ckpt), a training checkpoint (SWA weights by "
        "default) or an AST-format MAEST directory/Hub repo into a save_pretrained directory.",
    )
    parser.add_argument("source", help="checkpoint file, AST-format directory or Hub id")
    parser.add_argument("output_dir", help="directory to write")
    parser.add_argument("--labels", help="label names: a text file (one per line) or a JSON list")
    parser.add_argument("--preset", help="model shape when the file name does not tell it (e.g. maest-30s, maest-tiny)")
    parser.add_argument("--last-weights", action="store_true", help="training checkpoints: the last weights, not SWA")
    parser.add_argument("--card", action="store_true", help="also write the model card (README.md) for the Hub")
    parser.add_argument("--hub-name", help="Hub repo the card's examples load from, e.g. my-org/maest-30s (implies --card)")
    parser.add_argument(
        "--published",
        help="released checkpoint the source holds, e.g. discogs-maest-30s-pw-129e or maest-30s, for its card "
        "(default: from the source file name; implies --card)",
    )
    parser.set_defaults(func=_run)
