"""Rows/s of `client predict --ray` with 1 and 2 workers beside the single-process `client
predict`, same rows, same machine, in-process ONNX Runtime.

    python benchmarks/ray_predict.py DEPLOYMENT [--rows 1000] [--repeats 3] [--block-rows 128]

Rows: the first --rows of ../shared/data/amazon2025/test.csv (text-only: no photo is available
offline), else of sample/test.csv. The Ray runs go to a private cluster on this machine
(client.ray_cluster: loopback only, as many CPUs as the machine has), started once; each run
connects, starts its actors (each loads the deployment) and predicts, and its rows/s counts all
of that, as a user's run does. Each mode first runs once on 8 rows, not counted (the
deployment's files in the page cache, Ray's worker processes started). Modes alternate; rows/s
is the median of --repeats runs. Every run must give the single process's
prices (checked).
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import sys
import tempfile
from pathlib import Path

from client.distributed import RayOptions, predict_on_ray
from client.predict import PredictConfig, predict
from client.ray_cluster import LocalRayCluster

PROJECT = Path(__file__).resolve().parents[1]
DATA = PROJECT.parent / "shared" / "data" / "amazon2025"


def write_rows(path: Path, rows: int) -> None:
    """The first `rows` rows of the test set, image links blanked."""
    source = DATA / "test.csv" if (DATA / "test.csv").exists() else PROJECT / "sample" / "test.csv"
    with source.open(newline="", encoding="utf-8") as handle:
        selected = [row for _, row in zip(range(rows), csv.DictReader(handle))]
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["sample_id", "catalog_content", "image_link"])
        writer.writerows([row["sample_id"], row["catalog_content"], ""] for row in selected)


def run(config: PredictConfig, options: RayOptions | None) -> tuple[float, list[str]]:
    """One run: (rows/s, the output's lines)."""
    summary = predict(config) if options is None else predict_on_ray(config, options)
    return summary["rows_per_second"], config.output_csv.read_text().splitlines()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("deployment", type=Path)
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--block-rows", type=int, default=128)
    args = parser.parse_args(argv)
    cores = os.cpu_count() or 1
    modes: dict[str, RayOptions | None] = {
        "single process (ONNX Runtime on every core)": None,
        "--ray, 1 worker of 1 CPU": RayOptions(workers=1, worker_cpus=1, block_rows=args.block_rows),
        f"--ray, 1 worker of {cores} CPUs": RayOptions(workers=1, worker_cpus=cores, block_rows=args.block_rows),
        f"--ray, {cores} workers of 1 CPU": RayOptions(workers=cores, worker_cpus=1, block_rows=args.block_rows),
    }
    with tempfile.TemporaryDirectory() as tmp, LocalRayCluster(num_cpus=cores) as cluster:
        workdir = Path(tmp)
        rows_csv, one_block_csv = workdir / "rows.csv", workdir / "one_block.csv"
        write_rows(rows_csv, args.rows)
        write_rows(one_block_csv, 8)
        for options in modes.values():
            if options is not None:
                options.address = cluster.address

        def config(input_csv: Path, name: str) -> PredictConfig:
            return PredictConfig(input_csv=input_csv, output_csv=workdir / f"{name}.csv", deployment=args.deployment,
                                 cache_dir=workdir / "cache", restart=True, progress=False)

        rates: dict[str, list[float]] = {mode: [] for mode in modes}
        reference: list[str] | None = None
        for options in modes.values():
            run(config(one_block_csv, "warm-up"), options)
        for _ in range(args.repeats):
            for mode, options in modes.items():
                rate, lines = run(config(rows_csv, "out"), options)
                reference = reference or lines
                if lines != reference:
                    raise SystemExit(f"{mode}: prices differ from the first run's")
                rates[mode].append(rate)

    print(f"{args.rows} text-only rows, blocks of {args.block_rows}, in-process ONNX Runtime, {cores} cores; "
          f"rows/s: median of {args.repeats} runs (modes alternating)")
    for mode in modes:
        print(f"{mode:<45} {statistics.median(rates[mode]):7.1f} rows/s (runs: "
              f"{', '.join(f'{r:.1f}' for r in rates[mode])})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
