"""`client predict INPUT.csv`: a price for every row."""

from __future__ import annotations

import argparse
import ipaddress
import json
from pathlib import Path

from client.links import LinkPolicy
from client.predict import DEFAULT_CACHE_DIR, PredictConfig, predict


def positive_int(text: str) -> int:
    """argparse type: an integer of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def non_negative_int(text: str) -> int:
    """argparse type: an integer of at least 0."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {value}")
    return value


def network(text: str) -> str:
    """argparse type: an IP network in CIDR form."""
    try:
        ipaddress.ip_network(text, strict=False)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


def add_link_options(parser: argparse.ArgumentParser) -> None:
    """The options that widen which image links may be followed (see client.links)."""
    group = parser.add_argument_group("image links (untrusted input: by default only http(s) to public addresses)")
    group.add_argument("--allow-local-files", action="store_true",
                       help="follow file:// links and local paths in the CSV (--images needs no such permission)")
    group.add_argument("--allow-private-addresses", action="store_true",
                       help="fetch from loopback, private and link-local addresses too")
    group.add_argument("--allow-network", action="append", default=[], metavar="CIDR", type=network,
                       help="fetch from this non-public network too (repeatable), e.g. 10.20.0.0/16")


def link_policy(args: argparse.Namespace) -> LinkPolicy:
    return LinkPolicy.from_options(args.allow_local_files, args.allow_private_addresses, args.allow_network)


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("predict", help="predict a price for every row of a catalogue CSV",
                                   description=__doc__)
    parser.add_argument("input", type=Path, help="CSV with sample_id, catalog_content, image_link")
    parser.add_argument("-o", "--output", type=Path, default=Path("predictions.csv"),
                        help="output CSV: sample_id,price (default: predictions.csv)")
    parser.add_argument("-d", "--deployment", type=Path, default=Path("deployment"),
                        help="folder written by export-bundle (default: deployment)")
    parser.add_argument("--url", action="append", default=[], metavar="HOST:PORT",
                        help="Triton gRPC endpoint; repeat to spread batches over several servers. "
                             "Without it, the models run in-process with ONNX Runtime.")
    parser.add_argument("--images", type=Path, help="local folder of images, matched by the last segment of image_link")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR, help="download and OCR cache")
    parser.add_argument("--encoding", help="the input CSV's text encoding, e.g. cp1252 or utf-16 "
                        "(default: UTF-8, or UTF-16/32 when the file starts with their byte-order mark)")
    parser.add_argument("--batch-size", type=positive_int, default=PredictConfig.batch_size,
                        help="rows per request (default: %(default)s)")
    parser.add_argument("--max-in-flight", type=positive_int, default=PredictConfig.max_in_flight,
                        help="requests in flight (default: %(default)s)")
    parser.add_argument("--wave-rows", type=positive_int, default=PredictConfig.wave_rows,
                        help="rows prepared together (images, OCR) while the previous ones are inferred; "
                             "bounds memory (default: %(default)s)")
    parser.add_argument("--retries", type=non_negative_int, default=PredictConfig.retries,
                        help="attempts per batch after the first while servers are unavailable (default: %(default)s)")
    parser.add_argument("--ocr-workers", type=positive_int, default=PredictConfig.ocr_workers,
                        help="OCR processes (default: %(default)s)")
    parser.add_argument("--details", type=Path, help="also write each component's estimate and warnings per row")
    parser.add_argument("--summary", type=Path, help="also write a JSON summary (rows, images, OCR, rows/s)")
    parser.add_argument("--restart", action="store_true", help="ignore the journal of an interrupted run")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    add_link_options(parser)
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    summary = predict(PredictConfig(
        input_csv=args.input, output_csv=args.output, deployment=args.deployment, urls=args.url,
        images_dir=args.images, cache_dir=args.cache_dir, batch_size=args.batch_size,
        max_in_flight=args.max_in_flight, wave_rows=args.wave_rows, ocr_workers=args.ocr_workers, retries=args.retries, details_csv=args.details,
        summary_json=args.summary, restart=args.restart, progress=not args.quiet, encoding=args.encoding,
        link_policy=link_policy(args),
    ))
    print(json.dumps({k: summary[k] for k in ("rows", "predicted_now", "resumed_from_journal", "rows_with_warnings")}))
    print(f"wrote {args.output}")
    return 0
