"""`maest index`, `maest similar` and `maest app`: similarity search over embeddings, and the web app."""

import argparse
import csv
import json
import os
import sys

from .common import EXIT_OK, EXIT_SOME_FAILED


def register(subparsers) -> None:
    index = subparsers.add_parser("index", help="build or update a similarity index from `maest embed` output")
    index.add_argument("embeddings", help="a .parquet/.npz file written by `maest embed`")
    index.add_argument("--out", required=True, help="the index directory (updated in place when it exists)")
    index.add_argument("--per-segment", action="store_true", help="index every segment (needs `maest embed --per-segment`)")
    index.add_argument("--overwrite", action="store_true", help="build from scratch even if OUT holds an index (a damaged one too)")
    index.add_argument("--exact-max", type=int, default=None, help="largest collection searched exactly (default 10000, at least 100)")
    index.set_defaults(func=run_index)

    similar = subparsers.add_parser(
        "similar", help="nearest neighbours of audio files or indexed tracks",
        description="Nearest neighbours of audio files (embedded with the index's model and settings) or of tracks "
        "already in the index. Exit status 1 when some audio files could not be embedded (they are listed as "
        "'failed:'; the others' neighbours are printed), 2 for a missing or damaged index or a bad option.",
    )
    similar.add_argument("queries", nargs="+", metavar="QUERY", help="an audio file, or a path already in the index")
    similar.add_argument("--index", required=True, help="the index directory (`maest index`)")
    similar.add_argument("--top-k", type=int, default=10)
    similar.add_argument("--format", choices=("table", "json", "csv"), default="table")
    similar.set_defaults(func=run_similar)

    app = subparsers.add_parser(
        "app", help="the web app: styles, timeline and similar tracks of an uploaded track",
        description="Serves the web app. It serves no file of the disk but its own temporary folder (uploads, results, "
        "copies of the neighbours' audio), bounded by --temp-limit-mb and removed when it stops.",
    )
    app.add_argument("--model", default=None, help="a MAEST directory or Hub id (default: the index's model)")
    app.add_argument("--index", default=None, help="an index directory for the neighbours")
    app.add_argument("--port", type=int, default=7860)
    app.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1: this machine only; any "
                     "other host needs --auth or --no-auth)")
    app.add_argument("--auth", default=os.environ.get("MAEST_APP_AUTH"), metavar="USER:PASSWORD",
                     help="require this login (default: $MAEST_APP_AUTH, which keeps the password out of the process "
                     "list); needed for a --host other than 127.0.0.1")
    app.add_argument("--no-auth", action="store_true",
                     help="serve a non-loopback --host without a login (anyone reaching the port can use the app)")
    app.add_argument("--top-k", type=int, default=5)
    app.add_argument("--max-upload-mb", type=int, default=200, help="largest upload accepted (default 200)")
    app.add_argument("--temp-limit-mb", type=int, default=1024,
                     help="bound of the app's temporary files; the oldest are removed beyond it (default 1024)")
    app.set_defaults(func=run_app)


def run_index(args: argparse.Namespace) -> int:
    # imported here: maest --help must start fast
    from maest.similarity import EXACT_MAX_VECTORS, build_index

    update = build_index(
        args.embeddings, args.out, per_segment=args.per_segment, overwrite=args.overwrite,
        exact_max_vectors=EXACT_MAX_VECTORS if args.exact_max is None else args.exact_max,
    )
    if update.duplicates:
        print(f"{args.embeddings}: {update.duplicates} rows repeat a track listed again later; each track was indexed "
              "once, from its last row", file=sys.stderr)
    if update.repaired:
        print(f"{update.directory} was damaged ({update.repaired}): rebuilt from {args.embeddings}", file=sys.stderr)
    recall = "exact search" if update.kind == "exact" else f"recall@10 {update.recall:.3f} vs exact (nprobe {update.nprobe})"
    action = "built" if update.rebuilt else "updated"
    print(
        f"{action} {update.directory}: {update.size} vectors ({update.kind}, {recall}); {update.added} added, "
        f"{update.replaced} replaced, {update.removed} removed in {update.seconds:.1f} s"
    )
    return EXIT_OK


def run_similar(args: argparse.Namespace) -> int:
    """Exit status 1 when some audio files could not be embedded: the others' neighbours are printed."""
    # imported here: maest --help must start fast
    from maest.similarity import SimilarityIndex, SimilarityIndexError

    if args.top_k < 1:
        raise SimilarityIndexError(f"--top-k must be at least 1, got {args.top_k}")
    index = SimilarityIndex.open(args.index)
    indexed = set(index.paths())
    in_index = [query for query in args.queries if query in indexed or os.path.abspath(query) in indexed]
    files = [query for query in args.queries if query not in in_index]
    missing = [query for query in files if not os.path.isfile(query)]
    if missing:
        raise FileNotFoundError(f"{missing[0]}: neither an audio file nor a track in the index {args.index}")
    results = dict(zip(in_index, index.search_paths(in_index, args.top_k)))
    failures = []
    if files:
        results.update(zip(files, index.search_audio(files, args.top_k, failures=failures)))
    print_neighbours([neighbour for query in args.queries for neighbour in results[query]], args.format, index.per_segment)
    for failure in failures:
        print(f"failed: {failure['reason']}", file=sys.stderr)
    return EXIT_SOME_FAILED if failures else EXIT_OK


def print_neighbours(neighbours, output_format: str, per_segment: bool) -> None:
    fields = ["query", "rank", "path", "score"] + (["segment", "start_seconds"] if per_segment else [])
    rows = [{name: neighbour.to_dict()[name] for name in fields} for neighbour in neighbours]
    if output_format == "json":
        print(json.dumps(rows, indent=1))
    elif output_format == "csv":
        writer = csv.DictWriter(sys.stdout, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    else:
        query = None
        for row in rows:
            if row["query"] != query:
                query = row["query"]
                print(f"{query}:")
            where = f"  @{row['start_seconds']:.1f} s" if per_segment else ""
            print(f"  {row['rank']:3d}  {row['score']:.4f}  {row['path']}{where}")


def run_app(args: argparse.Namespace) -> int:
    # imported here: maest --help must start fast (and gradio is an optional extra)
    from maest.app import launch_app, parse_auth

    launch_app(
        model=args.model, index=args.index, host=args.host, port=args.port, top_k=args.top_k,
        auth=parse_auth(args.auth), allow_unauthenticated=args.no_auth, max_upload_mb=args.max_upload_mb,
        temp_limit_mb=args.temp_limit_mb,
    )
    return EXIT_OK
