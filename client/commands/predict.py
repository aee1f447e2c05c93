"""`client predict INPUT.csv`: a price for every row."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from client.commands.options import add_encoding_option, add_link_options, link_policy, non_negative_int, positive_int
from client.predict import DEFAULT_CACHE_DIR, PredictConfig, predict

# the summary's counts printed when a run ends (--summary writes all of it)
SUMMARY_LINE = ("rows", "predicted_now", "resumed_from_journal", "rows_with_photo", "rows_with_ocr_text",
                "rows_with_warnings")


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
    add_encoding_option(parser)
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
                        help="images read at once: threads for the deployment's served OCR networks, processes "
                             "for other OCR engines (default: the cores, %(default)s)")
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
    print(json.dumps({k: summary[k] for k in SUMMARY_LINE}))
    print(f"wrote {args.output}")
    return 0
