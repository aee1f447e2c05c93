"""Rows with photos through `client predict`, the way they arrive in real use: every photo behind
an http link, downloaded, decoded and read by OCR with empty caches, beside the same rows
text-only, and the cost of each stage measured alone on the same photos.

    python benchmarks/photo_rows.py DEPLOYMENT [--rows 256] [--repeats 3] [--delay-ms 50] [--triton]
        [--baseline CODE_DIR BASELINE_DEPLOYMENT]

The photos are the train rows' photos in ../shared/data/amazon2025/images, served by an HTTP
server on 127.0.0.1 that waits --delay-ms before each answer (a stand-in for a CDN's latency).
Each run is a `client predict` process of its own, with an empty download and OCR cache; the
modes take turns within each repeat. --baseline also runs another checkout's client (CODE_DIR,
e.g. a `git worktree` of an older commit) with the deployment that checkout exported, on the same
rows in the same turns. Nothing leaves the machine.
"""

from __future__ import annotations

import argparse
import csv
import http.server
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import numpy as np

from client.bundle import Deployment
from client.images import OCR_MAX_SIDE, ImageFetcher, ImageStatus, prepare_fetched
from client.links import LinkPolicy
from client.models import OCR_MODELS
from client.ocr import RapidOcrEngine, run_ocr
from client.ppocr import LocalOcrModels
from client.predict import DEFAULT_OCR_WORKERS
from client.rows import prepare_rows
from client.serve import LocalTritonServer
from client.table import read_catalog_csv
from client.text import length_batches
from export.parity import load_session

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "amazon2025"
LOOPBACK = LinkPolicy.from_options(networks=["127.0.0.0/8"])


class _DelayedImageHandler(http.server.SimpleHTTPRequestHandler):
    """Serves the photos folder over keep-alive HTTP/1.1, each answer after a fixed delay."""

    protocol_version = "HTTP/1.1"
    delay_s = 0.0

    def do_GET(self) -> None:
        time.sleep(self.delay_s)
        super().do_GET()

    def log_message(self, format: str, *args) -> None:
        pass


@contextmanager
def photo_server(folder: Path, delay_s: float) -> Iterator[str]:
    """An HTTP server on 127.0.0.1 serving `folder`; yields its base URL."""
    handler = type("Handler", (_DelayedImageHandler,), {"delay_s": delay_s})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(handler, directory=str(folder)))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def write_rows(path: Path, base_url: str | None, limit: int) -> None:
    """The first `limit` train rows with a photo; links point at the loopback server, or are
    blank for the text-only copy (base_url None)."""
    with (DATA / "train.csv").open(newline="", encoding="utf-8") as handle:
        rows = [r for r in csv.DictReader(handle) if (DATA / "images" / r["image_link"].rsplit("/", 1)[-1]).exists()]
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["sample_id", "catalog_content", "image_link"])
        for row in rows[:limit]:
            name = row["image_link"].rsplit("/", 1)[-1]
            writer.writerow([row["sample_id"], row["catalog_content"], f"{base_url}/{name}" if base_url else ""])


def client_predict(code: Path, csv_path: Path, deployment: Path, workdir: Path, urls: list[str]) -> dict:
    """One `client predict` process of the checkout at `code`, with empty caches; its summary."""
    cache = Path(tempfile.mkdtemp(dir=workdir))
    command = [sys.executable, "-m", "client", "predict", str(csv_path), "-o", str(cache / "out.csv"),
               "-d", str(deployment), "--cache-dir", str(cache), "--summary", str(cache / "summary.json"),
               "--allow-network", "127.0.0.0/8", "-q", *(option for url in urls for option in ("--url", url))]
    subprocess.run(command, cwd=code, env={**os.environ, "PYTHONPATH": str(code)}, check=True,
                   stdout=subprocess.DEVNULL)
    return json.loads((cache / "summary.json").read_text())


def stage_seconds(csv_path: Path, deployment: Deployment) -> dict[str, float]:
    """Each stage alone over the same rows, caches empty: seconds in all, per stage."""
    table = read_catalog_csv(csv_path)
    links = list(table.image_links)
    fetcher = ImageFetcher(policy=LOOPBACK)
    timings: dict[str, float] = {}

    def timed(name: str, work: Callable):
        started = time.perf_counter()
        result = work()
        timings[name] = time.perf_counter() - started
        return result

    fetched = timed("download (8 threads)", lambda: fetcher.fetch_many(links))
    prepared = timed("decode and resize", lambda: [prepare_fetched(f, ocr_max_side=OCR_MAX_SIDE) for f in fetched])
    readable = [(p.sha256, p.ocr_pixels) for p in prepared if p.status is ImageStatus.OK]
    # as `client predict` runs it in-process: the deployment's graphs, built before the clock starts
    engine = RapidOcrEngine(run=LocalOcrModels({name: deployment.model_path(name) for name in OCR_MODELS}, threads=1),
                            characters=deployment.ocr_characters())
    timed(f"OCR ({DEFAULT_OCR_WORKERS} images at once)", lambda: run_ocr(engine, readable, workers=DEFAULT_OCR_WORKERS))
    pixels = np.stack([p.pixels for p in prepared if p.pixels is not None])
    image_session = load_session(str(deployment.model_path("image_encoder")))
    timed("image encoder (batches of 32)",
          lambda: [image_session.run(None, {"image": pixels[i : i + 32]}) for i in range(0, len(pixels), 32)])
    tokenizer = deployment.tokenizer()
    rows = prepare_rows(table, range(len(table)), ImageFetcher(), ocr_engine="none", tokenizer=tokenizer)
    text_session = load_session(str(deployment.model_path("text_encoder")))

    def encode_texts() -> None:
        for batch in length_batches([len(ids) for ids in rows.token_ids], 32):
            input_ids, attention_mask = tokenizer.pad([rows.token_ids[i] for i in batch])
            text_session.run(None, {"input_ids": input_ids, "attention_mask": attention_mask})

    timed("text encoder (batches of 32)", encode_texts)
    return timings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("deployment", type=Path)
    parser.add_argument("--rows", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--delay-ms", type=float, default=50.0, help="the photo server's delay per answer")
    parser.add_argument("--triton", action="store_true", help="also through a local Triton server over gRPC")
    parser.add_argument("--server-threads", type=int, default=2)
    parser.add_argument("--baseline", nargs=2, type=Path, metavar=("CODE_DIR", "DEPLOYMENT"),
                        help="also another checkout's client, with the deployment it exported")
    args = parser.parse_args(argv)

    deployment = Deployment.load(args.deployment)
    runs: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp, photo_server(DATA / "images", args.delay_ms / 1000) as base_url:
        workdir = Path(tmp)
        photo_csv, text_csv = workdir / "photo_rows.csv", workdir / "text_rows.csv"
        write_rows(photo_csv, base_url, args.rows)
        write_rows(text_csv, None, args.rows)
        modes = {"photo rows, in-process": (ROOT, photo_csv, args.deployment, []),
                 "same rows text-only, in-process": (ROOT, text_csv, args.deployment, [])}
        if args.baseline:
            modes["photo rows, in-process, baseline"] = (args.baseline[0].resolve(), photo_csv, args.baseline[1], [])
        server = LocalTritonServer(deployment.repository, ort_threads=args.server_threads) if args.triton else None
        if server is not None:
            server.start()
            modes["photo rows, Triton gRPC"] = (ROOT, photo_csv, args.deployment, [server.url])
        try:
            for _ in range(args.repeats):
                for mode, (code, csv_path, deployment_dir, urls) in modes.items():
                    runs.setdefault(mode, []).append(client_predict(code, csv_path, deployment_dir, workdir, urls))
        finally:
            if server is not None:
                server.stop()
        stages = stage_seconds(photo_csv, deployment)

    photos = runs["photo rows, in-process"][0]["images"]["ok"]
    print(f"{args.rows} train rows with a photo link ({photos} decodable), photo server delay {args.delay_ms:g} ms, "
          f"empty caches, median of {args.repeats} runs")
    rates = {}
    for mode, summaries in runs.items():
        rates[mode] = statistics.median(s["rows_per_second"] for s in summaries)
        prepare = statistics.median(s["seconds"]["prepare"] for s in summaries)
        each = ", ".join(f"{s['rows_per_second']:.2f}" for s in summaries)
        print(f"  {mode:<34}{rates[mode]:>7.2f} rows/s   row preparation {prepare:6.1f} s   (runs: {each})")
    print(f"  photo rows / text-only rows: {rates['photo rows, in-process'] / rates['same rows text-only, in-process']:.2f}x")
    if args.baseline:
        print(f"  photo rows, this code / baseline ({args.baseline[0]}): "
              f"{rates['photo rows, in-process'] / rates['photo rows, in-process, baseline']:.2f}x")
    if server is not None:
        print(f"  photo rows, Triton / in-process: {rates['photo rows, Triton gRPC'] / rates['photo rows, in-process']:.2f}x")
    print("stages alone, same rows (ms per photo; text encoder ms per row), one run:")
    for stage, seconds in stages.items():
        print(f"  {stage:<34}{1000 * seconds / (args.rows if stage.startswith('text') else photos):>8.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
