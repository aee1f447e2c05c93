"""The cpu-int8 serving profile against fp32: text-only rows/s through `client predict`
(in-process ONNX Runtime) and SMAPE of the blended prices, same labelled rows, one run.

    export-bundle RUN -o DEPLOY_FP32
    export-bundle RUN -o DEPLOY_INT8 --profile cpu-int8
    python benchmarks/int8_profile.py DEPLOY_FP32 DEPLOY_INT8 [--rows 1000] [--repeats 3]

Rows: the first --rows of ../shared/data/amazon2025/train.csv, without their image links (text
rows: the text encoder is most of their cost). Runs alternate between the two deployments; rows/s
is the median of --repeats runs each. SMAPE is paired: the same rows, their labelled prices; the
difference's standard error is that of the mean per-row SMAPE difference. When the deployments
were trained on these rows, every figure is in-sample: the difference then measures how far
quantisation moves the prices, not held-out accuracy.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

from client.bundle import Deployment
from client.predict import PredictConfig, predict

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "amazon2025"


def write_text_rows(path: Path, rows: int) -> np.ndarray:
    """Writes the first `rows` train rows with empty image links; returns their prices."""
    with (DATA / "train.csv").open(newline="", encoding="utf-8") as handle:
        selected = [row for _, row in zip(range(rows), csv.DictReader(handle))]
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["sample_id", "catalog_content", "image_link"])
        writer.writerows([row["sample_id"], row["catalog_content"], ""] for row in selected)
    return np.array([float(row["price"]) for row in selected])


def run_predict(csv_path: Path, deployment: Path, workdir: Path) -> tuple[float, np.ndarray]:
    """One in-process `client predict` run: (rows/s, prices in input order)."""
    out = workdir / "out.csv"
    summary = predict(PredictConfig(input_csv=csv_path, output_csv=out, deployment=deployment,
                                    cache_dir=workdir / "cache", restart=True, progress=False))
    with out.open(newline="", encoding="utf-8") as handle:
        prices = np.array([float(row["price"]) for row in csv.DictReader(handle)])
    return summary["rows"] / summary["seconds"]["total"], prices


def row_smape(truth: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """Per-row SMAPE terms (0-200); their mean is the SMAPE."""
    return 200 * np.abs(predicted - truth) / (np.abs(truth) + np.abs(predicted))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("fp32", type=Path, help="deployment exported with --profile fp32")
    parser.add_argument("int8", type=Path, help="deployment exported with --profile cpu-int8")
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    deployments = {"fp32": args.fp32, "cpu-int8": args.int8}
    for expected, path in deployments.items():
        if Deployment.load(path).profile != expected:
            parser.error(f"{path} is a {Deployment.load(path).profile} deployment, not {expected}")

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        csv_path = workdir / "rows.csv"
        truth = write_text_rows(csv_path, args.rows)
        rates: dict[str, list[float]] = {name: [] for name in deployments}
        prices: dict[str, np.ndarray] = {}
        for _ in range(args.repeats):
            for name, path in deployments.items():
                rate, prices[name] = run_predict(csv_path, path, workdir)
                rates[name].append(rate)

    smape = {name: row_smape(truth, p) for name, p in prices.items()}
    difference = smape["cpu-int8"] - smape["fp32"]
    log_shift = np.abs(np.log(prices["cpu-int8"]) - np.log(prices["fp32"]))
    print(f"{len(truth)} train.csv rows, text-only, client predict in-process; rows/s: median of {args.repeats} "
          "runs (alternating)")
    for name in deployments:
        print(f"{name:<9} {statistics.median(rates[name]):7.1f} rows/s (runs: "
              f"{', '.join(f'{r:.1f}' for r in rates[name])})   SMAPE {smape[name].mean():.3f}")
    speedup = statistics.median(rates["cpu-int8"]) / statistics.median(rates["fp32"])
    print(f"cpu-int8 / fp32 rows/s: {speedup:.2f}x")
    print(f"SMAPE cpu-int8 - fp32: {difference.mean():+.3f} (paired, standard error "
          f"{difference.std(ddof=1) / np.sqrt(len(difference)):.3f})")
    print(f"|log price| cpu-int8 vs fp32: median {np.median(log_shift):.4f}, 95th percentile "
          f"{np.percentile(log_shift, 95):.4f}, max {log_shift.max():.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
