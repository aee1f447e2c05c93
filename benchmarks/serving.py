"""Ensemble throughput over gRPC on the real Triton server, beside in-process ONNX Runtime.

    python benchmarks/serving.py DEPLOYMENT [--csv FILE] [--rows 256] [--repeats 3]

The same real rows are batched by the client (length-sorted), then sent to the text-only
ensemble at concurrency 1, 8 and 32 with batches of 1 and 32 rows, and run through the same
ensemble steps in-process. Prints rows/s (median of the repeats) and the ratio to in-process.
Server and client share this machine's cores.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from client.bundle import Deployment
from client.images import ImageFetcher
from client.inference import InProcessBackend, TritonBackend
from client.models import TEXT_ONLY_ENSEMBLE
from client.ocr import OcrCache
from client.predict import Predictor
from client.serve import LocalTritonServer
from client.table import read_catalog_csv

PROJECT = Path(__file__).resolve().parents[1]
DEFAULT_CSV = PROJECT.parent / "shared" / "data" / "amazon2025" / "test.csv"


def build_requests(deployment: Deployment, csv_path: Path, rows: int, batch_size: int) -> list[dict[str, np.ndarray]]:
    table = read_catalog_csv(csv_path)
    with tempfile.TemporaryDirectory() as cache:
        predictor = Predictor(deployment, InProcessBackend(deployment), ImageFetcher(None, max_host_failures=1),
                              OcrCache(Path(cache) / "ocr.jsonl"), 1)
        wave = predictor.prepare(table, np.arange(min(rows, len(table))))
    wave.pixels = [None] * len(wave.pixels)  # the text-only ensemble for every row
    return [inputs for _, _, inputs in predictor.batches(wave, batch_size)]


def rows_per_second(elapsed: float, requests: list[dict[str, np.ndarray]]) -> float:
    return sum(len(r["input_ids"]) for r in requests) / elapsed


def time_in_process(backend: InProcessBackend, requests) -> float:
    started = time.perf_counter()
    for inputs in requests:
        backend.run(TEXT_ONLY_ENSEMBLE, inputs)
    return rows_per_second(time.perf_counter() - started, requests)


async def time_triton(url: str, requests, concurrency: int) -> float:
    backend = TritonBackend([url], retries=0)
    limit = asyncio.Semaphore(concurrency)

    async def send(inputs):
        async with limit:
            await backend.infer(TEXT_ONLY_ENSEMBLE, inputs)

    try:
        await send(requests[0])  # connection set-up
        started = time.perf_counter()
        await asyncio.gather(*(send(r) for r in requests))
        return rows_per_second(time.perf_counter() - started, requests)
    finally:
        await backend.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("deployment", type=Path)
    parser.add_argument("--csv", type=Path, default=DEFAULT_CSV if DEFAULT_CSV.exists() else PROJECT / "sample" / "test.csv")
    parser.add_argument("--rows", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--server-threads", type=int, default=2, help="ONNX Runtime threads per model instance")
    args = parser.parse_args(argv)

    deployment = Deployment.load(args.deployment)
    local = InProcessBackend(deployment)
    results = []
    with LocalTritonServer(deployment.repository, ort_threads=args.server_threads) as server:
        for batch_size in (1, 32):
            requests = build_requests(deployment, args.csv, args.rows, batch_size)
            local_rate = statistics.median(time_in_process(local, requests) for _ in range(args.repeats))
            results.append(("in-process", batch_size, "-", local_rate, 1.0))
            for concurrency in (1, 8, 32):
                rate = statistics.median(
                    asyncio.run(time_triton(server.url, requests, concurrency)) for _ in range(args.repeats))
                results.append(("triton-grpc", batch_size, concurrency, rate, rate / local_rate))
    print(f"{args.rows} rows of {args.csv.name}, text-only ensemble, median of {args.repeats} runs")
    print(f"{'mode':<12}{'batch':>6}{'concurrency':>13}{'rows/s':>10}{'vs in-process':>15}")
    for mode, batch, concurrency, rate, ratio in results:
        print(f"{mode:<12}{batch:>6}{concurrency:>13}{rate:>10.1f}{ratio:>14.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
