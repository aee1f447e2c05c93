"""Serving profiles side by side: text-only rows/s through `client predict` (in-process ONNX
Runtime) and SMAPE of the blended prices on the same labelled rows, one run.

    export-bundle RUN -o DEPLOY_FP32 --profile fp32
    export-bundle RUN -o DEPLOY_INT8 --profile cpu-int8
    export-bundle RUN -o DEPLOY_VNNI --profile cpu-int8-vnni
    python benchmarks/int8_profile.py DEPLOY_FP32 DEPLOY_INT8 [DEPLOY_VNNI ...] [--heldout RUN]
        [--rows 1000] [--repeats 3]

The first deployment is the reference (fp32). Rows: with --heldout, the rows the training run
RUN held out (`train --val-fraction`, its folds.json): held-out accuracy, what a new row gets.
Without it, the first --rows of ../shared/data/amazon2025/train.csv: when the deployments were
trained on them, the SMAPE figures are in-sample and measure how far quantisation moves prices,
not accuracy.

- rows/s: the rows without their image links (text rows: the text encoder is most of their
  cost), the deployments taking turns, median of --repeats runs each;
- SMAPE: the rows with their photos (../shared/data/amazon2025/images), one run each, sharing one
  download and OCR cache (read once before, untimed: every profile serves the same OCR graphs).
  Paired against the reference: the same rows, their labelled prices; the difference's standard
  error is that of the mean per-row difference.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

from client.blend import smape_terms
from client.bundle import Deployment
from client.cpu import cpu_model, has_vnni
from client.predict import PredictConfig, predict

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "amazon2025"


def labelled_rows(heldout: Path | None, rows: int) -> list[dict]:
    """The run's held-out rows (all of them), or the first `rows` train rows."""
    with (DATA / "train.csv").open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if heldout is None:
            return [row for _, row in zip(range(rows), reader)]
        validation = set(json.loads((heldout / "folds.json").read_text())["validation"])
        return [row for row in reader if row["sample_id"] in validation]


def write_rows(path: Path, rows: list[dict], with_links: bool) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["sample_id", "catalog_content", "image_link"])
        writer.writerows([row["sample_id"], row["catalog_content"], row["image_link"] if with_links else ""]
                         for row in rows)


def run_predict(csv_path: Path, deployment: Path, cache: Path) -> tuple[float, np.ndarray]:
    """One in-process `client predict` run: (rows/s, prices in input order)."""
    out = cache.parent / "out.csv"
    summary = predict(PredictConfig(input_csv=csv_path, output_csv=out, deployment=deployment,
                                    images_dir=DATA / "images", cache_dir=cache, restart=True, progress=False))
    with out.open(newline="", encoding="utf-8") as handle:
        prices = np.array([float(row["price"]) for row in csv.DictReader(handle)])
    return summary["rows"] / summary["seconds"]["total"], prices


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("deployments", type=Path, nargs="+", help="the fp32 reference first, then the others")
    parser.add_argument("--heldout", type=Path, metavar="RUN", help="score the rows this training run held out")
    parser.add_argument("--rows", type=int, default=1000, help="without --heldout: the first train rows")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    if len(args.deployments) < 2:
        parser.error("give the fp32 reference and at least one other deployment")
    names = [Deployment.load(path).profile for path in args.deployments]
    if names[0] != "fp32" or len(set(names)) != len(names):
        parser.error(f"the first deployment must be fp32 and each profile given once, not {names}")

    rows = labelled_rows(args.heldout, args.rows)
    truth = np.array([float(row["price"]) for row in rows])
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        text_csv, photo_csv = workdir / "text_rows.csv", workdir / "photo_rows.csv"
        write_rows(text_csv, rows, with_links=False)
        write_rows(photo_csv, rows, with_links=True)
        run_predict(photo_csv, args.deployments[0], workdir / "cache")  # reads every photo once
        prices = {name: run_predict(photo_csv, path, workdir / "cache")[1] for name, path in zip(names, args.deployments)}
        rates: dict[str, list[float]] = {name: [] for name in names}
        for _ in range(args.repeats):
            for name, path in zip(names, args.deployments):
                rates[name].append(run_predict(text_csv, path, workdir / "text-cache")[0])

    which = f"held-out rows of {args.heldout}" if args.heldout else "train.csv rows (in-sample if trained on them)"
    print(f"{len(truth)} {which}; CPU: {cpu_model()}, VNNI: {'yes' if has_vnni() else 'no'}")
    print(f"rows/s: text-only, client predict in-process, median of {args.repeats} runs (taking turns); "
          "SMAPE: the same rows with their photos")
    reference = names[0]
    smape = {name: smape_terms(truth, p) for name, p in prices.items()}
    for name in names:
        speedup = statistics.median(rates[name]) / statistics.median(rates[reference])
        line = (f"  {name:<14}{statistics.median(rates[name]):7.1f} rows/s ({speedup:.2f}x)  "
                f"(runs: {', '.join(f'{r:.1f}' for r in rates[name])})   SMAPE {smape[name].mean():.3f}")
        if name != reference:
            difference = smape[name] - smape[reference]
            log_shift = np.abs(np.log(prices[name]) - np.log(prices[reference]))
            line += (f"  vs fp32 {difference.mean():+.3f} (se {difference.std(ddof=1) / np.sqrt(len(difference)):.3f});"
                     f" |log price| shift median {np.median(log_shift):.4f}, max {log_shift.max():.4f}")
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
