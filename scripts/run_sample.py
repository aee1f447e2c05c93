"""The main job on the bundled sample: train, export, serve on the real Triton server, predict.

    python scripts/run_sample.py [--workdir DIR]

Writes DIR/run (training), DIR/deployment (export) and DIR/predictions.csv (default DIR: build).
The sample's test rows have their photos in sample/images, so the prediction reads them (image
encoder and OCR) as it would read downloaded ones. It ends with what the rows got, the training
run's out-of-fold accuracy, where to look next and how long it took.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from client.cli import main as client_main
from client.serve import LocalTritonServer
from export.cli import main as export_main
from training.cli import main as train_main

SAMPLE = Path(__file__).resolve().parents[1] / "sample"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("build"))
    args = parser.parse_args(argv)
    started = time.perf_counter()
    run, deployment = args.workdir / "run", args.workdir / "deployment"
    predictions = args.workdir / "predictions.csv"
    details, summary = args.workdir / "predictions.details.csv", args.workdir / "predictions.summary.json"

    steps = [
        # with OCR, which training leaves off by default (it made the blend no better): the
        # sample shows every part of the product, the photos' text read through Triton included
        ("train", lambda: train_main([str(SAMPLE / "train.csv"), "-o", str(run), "--images", str(SAMPLE / "images"),
                                      "--ocr", "rapidocr"])),
        ("export", lambda: export_main([str(run), "-o", str(deployment)])),
    ]
    for name, step in steps:
        print(f"== {name}", flush=True)
        if step() != 0:
            return 1
    print("== serve + predict (real tritonserver on CPU, gRPC)", flush=True)
    with LocalTritonServer(deployment / "model_repository", log_path=args.workdir / "tritonserver.log") as server:
        status = client_main([
            "predict", str(SAMPLE / "test.csv"), "-o", str(predictions), "-d", str(deployment),
            "--url", server.url, "--images", str(SAMPLE / "images"), "--details", str(details),
            "--summary", str(summary),
        ])
    if status != 0:
        return status
    print_outcome(json.loads(summary.read_text()), json.loads((run / "report.json").read_text()))
    print(f"""
== where to look next
  {predictions}  a price per row
  {details}  each component's estimate, the photo's status, OCR characters, warnings
  {summary}  counts and timings of the prediction
  {deployment / "MODEL_CARD.md"}  what was trained on what, accuracy, export parity
  {run / "report.json"}  out-of-fold SMAPE per component and fold, timings; plots in {run / "plots"}
make sample's job took {time.perf_counter() - started:.0f} s""")
    return 0


def print_outcome(summary: dict, report: dict) -> None:
    """The rows' coverage by photo and OCR, and the training run's out-of-fold SMAPE table."""
    print(f"\n== {summary['rows']} rows predicted: {summary['rows_with_photo']} from their photo, "
          f"{summary['rows_with_ocr_text']} with text read off the photo (OCR), "
          f"{summary['rows_with_warnings']} with a warning")
    folds = report["folds"]["k"]
    print(f"\n== out-of-fold SMAPE of the training run ({report['rows']['labelled']} labelled rows, {folds} folds; "
          "0-200, lower is better; a sample this small says little about accuracy)")
    width = max(map(len, report["oof_smape"]))
    for name, score in report["oof_smape"].items():
        print(f"  {name:<{width}}  {score['all']:6.2f}  (folds {min(score['folds']):.2f}-{max(score['folds']):.2f})")
    print(f"  {'median price':<{width}}  {report['baseline_median_smape']:6.2f}  (the other folds' median, for reference)")


if __name__ == "__main__":
    sys.exit(main())
