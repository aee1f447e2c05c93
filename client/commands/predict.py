"""`client predict INPUT`: a price for every row (CSV, Parquet file or folder; on a Ray cluster with --ray)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from client.commands.options import add_encoding_option, add_link_options, link_policy, non_negative_int, positive_int
from client.distributed import RayOptions, predict_on_ray
from client.predict import DEFAULT_CACHE_DIR, DEFAULT_OCR_WORKERS, PredictConfig, predict

# the summary's figures printed when a run ends (--summary writes all of it; "blocks" with --ray)
SUMMARY_LINE = ("rows", "predicted_now", "resumed_from_journal", "rows_with_photo", "rows_with_ocr_text",
                "rows_with_warnings", "rows_per_second", "blocks")


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("predict", help="predict a price for every row of a catalogue CSV",
                                   description=__doc__)
    parser.add_argument("input", type=Path, help="CSV, Parquet file or folder of Parquet files with sample_id, "
                        "catalog_content, image_link")
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
    parser.add_argument("--ocr-workers", type=positive_int,
                        help="images read at once: threads for the deployment's served OCR networks, processes "
                             f"for other OCR engines (default: the cores, {DEFAULT_OCR_WORKERS}; with --ray, "
                             "--worker-cpus per worker)")
    parser.add_argument("--details", type=Path, help="also write each component's estimate and warnings per row")
    parser.add_argument("--summary", type=Path, help="also write a JSON summary (rows, images, OCR, rows/s)")
    parser.add_argument("--restart", action="store_true", help="ignore the journal of an interrupted run")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    add_link_options(parser)
    distributed = parser.add_argument_group("on a Ray cluster (the ray extra: pip install 'multimodal-price[ray]')")
    distributed.add_argument("--ray", metavar="auto|HOST:PORT|local",
                             help="predict on Ray Data actors, one Predictor each: 'auto' (the cluster ray start "
                                  "started here, or RAY_ADDRESS), a head node's address, or 'local' (a private "
                                  "cluster on this machine's loopback for the run); the deployment, --images and "
                                  "--cache-dir must be at the same paths on every node")
    distributed.add_argument("--workers", type=positive_int, default=RayOptions.workers,
                             help="actors (default: %(default)s)")
    distributed.add_argument("--worker-cpus", type=positive_int, default=RayOptions.worker_cpus,
                             help="CPUs per actor, and its ONNX Runtime threads per model (default: %(default)s)")
    distributed.add_argument("--block-rows", type=positive_int, default=RayOptions.block_rows,
                             help="rows per block: the unit of work, retry and resumption (default: %(default)s)")
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    ocr_workers = args.ocr_workers or (args.worker_cpus if args.ray else DEFAULT_OCR_WORKERS)
    config = PredictConfig(
        input_csv=args.input, output_csv=args.output, deployment=args.deployment, urls=args.url,
        images_dir=args.images, cache_dir=args.cache_dir, batch_size=args.batch_size,
        max_in_flight=args.max_in_flight, wave_rows=args.wave_rows, ocr_workers=ocr_workers, retries=args.retries,
        details_csv=args.details, summary_json=args.summary, restart=args.restart, progress=not args.quiet,
        encoding=args.encoding, link_policy=link_policy(args),
    )
    if args.ray:
        summary = predict_on_ray(config, RayOptions(address=args.ray, workers=args.workers,
                                                    worker_cpus=args.worker_cpus, block_rows=args.block_rows))
    else:
        summary = predict(config)
    print(json.dumps({key: summary[key] for key in SUMMARY_LINE if key in summary}))
    print(f"wrote {args.output}")
    return 0
