"""`client perf-data INPUT.csv -o rows.json`: perf_analyzer's --input-data from real rows.

The rows are prepared exactly as `client predict` prepares them (photos, OCR, tokens, catalogue
features, price priors); one data entry per row, for the chosen ensemble. Pass the same
--batch-size as perf_analyzer's -b: it batches only entries of equal shape.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from client.bundle import Deployment
from client.commands.options import add_encoding_option, add_link_options, link_policy, positive_int
from client.errors import InputError
from client.images import ImageFetcher
from client.inference import InProcessBackend
from client.ocr import OcrCache
from client.perf_data import ENSEMBLES, perf_requests, write_perf_data
from client.predict import DEFAULT_CACHE_DIR, DEFAULT_OCR_WORKERS, Predictor
from client.table import read_catalog_csv


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("perf-data", help="write perf_analyzer's --input-data JSON from real rows",
                                   description=__doc__)
    parser.add_argument("input", type=Path, help="CSV with sample_id, catalog_content, image_link")
    parser.add_argument("-o", "--output", type=Path, required=True, help="the JSON to write")
    parser.add_argument("-d", "--deployment", type=Path, default=Path("deployment"),
                        help="folder written by export-bundle (default: deployment)")
    parser.add_argument("--ensemble", choices=ENSEMBLES, default=ENSEMBLES[0],
                        help="the ensemble to measure: its rows are those `client predict` sends it, rows with "
                             "a photo for price_ensemble, the others for price_ensemble_text (default: %(default)s)")
    parser.add_argument("--rows", type=positive_int, default=256,
                        help="take the ensemble's rows among the first ROWS rows of the CSV (default: %(default)s)")
    parser.add_argument("--batch-size", type=positive_int, default=1,
                        help="perf_analyzer's -b; above 1, every row is padded to the longest row as `client "
                             "predict` pads a batch (perf_analyzer batches rows of one shape only) "
                             "(default: %(default)s)")
    parser.add_argument("--images", type=Path, help="local folder of images, matched by the last segment of image_link")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR, help="download and OCR cache")
    add_encoding_option(parser)
    add_link_options(parser)
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    if args.images is not None and not args.images.is_dir():
        raise InputError(f"--images {args.images} is not a folder")
    table = read_catalog_csv(args.input, encoding=args.encoding)
    if args.output.exists() and args.output.samefile(args.input):
        raise InputError(f"--output {args.output} is the input CSV: it would be overwritten; name another file")
    deployment = Deployment.load(args.deployment)
    fetcher = ImageFetcher(args.images, cache_dir=args.cache_dir / "images", policy=link_policy(args))
    predictor = Predictor(deployment, InProcessBackend(deployment), fetcher,
                          OcrCache(args.cache_dir / "ocr_cache.jsonl"), DEFAULT_OCR_WORKERS)
    requests = perf_requests(predictor, table, args.rows, args.ensemble, args.batch_size)
    rows = write_perf_data(args.output, requests)
    print(f"wrote {rows} rows for {args.ensemble} to {args.output}; measure with:\n"
          f"  perf_analyzer -m {args.ensemble} -i grpc -u HOST:8001 --input-data {args.output} -b {args.batch_size} "
          "--concurrency-range 1:8")
    return 0
