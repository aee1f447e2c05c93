"""End-to-end rows/s of `client predict`, beside the seed's per-row eager PyTorch loop and the
text encoder's own ONNX Runtime session, on the same rows, in one run.

    python benchmarks/predict_e2e.py RUN_DIR DEPLOYMENT [--rows 1000] [--repeats 3] [--images]

Default rows: the first --rows of ../shared/data/amazon2025/test.csv (text-only). With
--images: train rows whose photo is in ../shared/data/amazon2025/images. OCR is read once before
timing (a warm cache for every mode alike); its cost per image is printed separately.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from client.blend import blend, to_price
from client.bundle import Deployment
from client.catalog import numeric_features
from client.images import OCR_MAX_SIDE, ImageFetcher, prepare_fetched
from client.ocr import OcrCache, run_ocr
from client.predict import PredictConfig, predict
from client.serve import LocalTritonServer
from client.table import CatalogTable, read_catalog_csv
from client.text import compose_text, length_batches
from export.parity import load_session
from training.encoders import load_image_encoder
from training.finetune import load_regressor
from training.fusion import load_fusion
from training.gbm import load_gbm
from training.lexical import load_lexical
from training.pipeline import RUN_FILE, TEXT_ENCODER_DIR

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "amazon2025"


def select_rows(args, workdir: Path) -> tuple[Path, Path | None]:
    """Writes the benchmark's input CSV; returns it and the images folder."""
    source = DATA / ("train.csv" if args.images else "test.csv")
    images = DATA / "images" if args.images else None
    with source.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    if args.images:
        rows = [r for r in rows if (images / r["image_link"].rsplit("/", 1)[-1]).exists()]
    path = workdir / "rows.csv"
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["sample_id", "catalog_content", "image_link"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows[: args.rows])
    return path, images


@torch.inference_mode()
def per_row_loop(run_dir: Path, deployment: Deployment, table: CatalogTable, fetcher: ImageFetcher,
                 ocr_cache: OcrCache) -> float:
    """The seed's prediction loop: one row at a time through eager PyTorch, LightGBM and FAISS."""
    config = json.loads((run_dir / RUN_FILE).read_text())["config"]
    image_encoder, _ = load_image_encoder(config["image_encoder"])
    text_model, _ = load_regressor(run_dir / TEXT_ENCODER_DIR)
    fusion, booster, lexical = load_fusion(run_dir), load_gbm(run_dir), load_lexical(run_dir)
    tokenizer, index = deployment.tokenizer(), deployment.neighbour_index()
    settings = deployment.settings
    started = time.perf_counter()
    for row in range(len(table)):
        image = prepare_fetched(fetcher.fetch(table.image_links[row]), ocr_max_side=OCR_MAX_SIDE)
        ocr = (ocr_cache.get(settings.ocr_engine, image.sha256) or "") if image.has_image else ""
        ids = tokenizer.encode([compose_text(table.texts[row], ocr)])
        input_ids, attention_mask = (torch.from_numpy(a) for a in tokenizer.pad(ids))
        if image.has_image:
            image_embedding = image_encoder(torch.from_numpy(image.pixels[None]))
        else:
            image_embedding = torch.zeros(1, settings.image_dim)
        text_embedding, text_log_price = text_model(input_ids, attention_mask)
        log_price, vector, features = fusion(
            image_embedding, text_embedding,
            torch.tensor([[float(image.has_image)]]), torch.from_numpy(numeric_features(table.texts[row])[None]),
        )
        gbm = booster.predict(features.numpy())
        retrieval = index.estimate(vector.numpy(), k=settings.retrieval_k)
        components = [float(log_price), float(gbm[0]), float(retrieval[0]), float(text_log_price),
                      float(lexical(input_ids, attention_mask))]
        to_price(blend(np.array([components]), deployment.blend_weights))
    return len(table) / (time.perf_counter() - started)


def text_encoder_session(deployment: Deployment, table: CatalogTable, ocr_texts: list[str], batch_size: int = 32) -> float:
    """The text encoder's own ONNX Runtime session over the same texts, length-sorted batches."""
    session = load_session(str(deployment.model_path("text_encoder")))
    tokenizer = deployment.tokenizer()
    started = time.perf_counter()
    ids = tokenizer.encode([compose_text(t, o) for t, o in zip(table.texts, ocr_texts)])
    for batch in length_batches([len(i) for i in ids], batch_size):
        input_ids, attention_mask = tokenizer.pad([ids[i] for i in batch])
        session.run(None, {"input_ids": input_ids, "attention_mask": attention_mask})
    return len(table) / (time.perf_counter() - started)


def client_predict(csv_path: Path, deployment_dir: Path, images: Path | None, cache: Path, urls: list[str]) -> float:
    out = cache.parent / "out.csv"
    summary = predict(PredictConfig(input_csv=csv_path, output_csv=out, deployment=deployment_dir, urls=urls,
                                    images_dir=images, cache_dir=cache, restart=True, progress=False))
    return summary["rows"] / summary["seconds"]["total"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="training output folder (for the eager PyTorch loop)")
    parser.add_argument("deployment", type=Path)
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--images", action="store_true", help="train rows with photos instead of test.csv")
    parser.add_argument("--server-threads", type=int, default=2)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        csv_path, images = select_rows(args, workdir)
        table = read_catalog_csv(csv_path)
        deployment = Deployment.load(args.deployment)
        cache = workdir / "cache"
        fetcher = ImageFetcher(images, cache_dir=cache / "images")
        ocr_cache = OcrCache(cache / "ocr_cache.jsonl")
        prepared = [prepare_fetched(f, ocr_max_side=OCR_MAX_SIDE) for f in fetcher.fetch_many(table.image_links)]
        started = time.perf_counter()
        with_pixels = [(p.sha256, p.ocr_pixels) for p in prepared if p.has_image]
        texts = run_ocr(deployment.settings.ocr_engine, with_pixels, ocr_cache)
        ocr_seconds = time.perf_counter() - started
        ocr_texts = [texts.get(p.sha256, "") if p.has_image else "" for p in prepared]

        rates: dict[str, list[float]] = {k: [] for k in ("per-row eager PyTorch loop", "text encoder ORT session",
                                                          "client predict, in-process", "client predict, Triton gRPC")}
        with LocalTritonServer(deployment.repository, ort_threads=args.server_threads) as server:
            for _ in range(args.repeats):
                rates["per-row eager PyTorch loop"].append(per_row_loop(args.run, deployment, table, fetcher, ocr_cache))
                rates["text encoder ORT session"].append(text_encoder_session(deployment, table, ocr_texts))
                rates["client predict, in-process"].append(client_predict(csv_path, args.deployment, images, cache, []))
                rates["client predict, Triton gRPC"].append(
                    client_predict(csv_path, args.deployment, images, cache, [server.url]))
    median = {k: statistics.median(v) for k, v in rates.items()}
    print(f"{len(table)} rows ({'train rows with photos' if args.images else 'test.csv, text-only'}), "
          f"median of {args.repeats} runs; rows with a photo: {len(with_pixels)}"
          + (f", OCR {ocr_seconds / max(1, len(with_pixels)):.2f} s/photo before timing" if with_pixels else ""))
    for name, rate in median.items():
        print(f"{name:<30}{rate:>9.1f} rows/s   (runs: {', '.join(f'{r:.1f}' for r in rates[name])})")
    client = median["client predict, in-process"]
    print(f"client in-process / per-row loop:       {client / median['per-row eager PyTorch loop']:.2f}x")
    print(f"client in-process / text encoder alone: {client / median['text encoder ORT session']:.2f}x")
    print(f"client Triton / client in-process:      {median['client predict, Triton gRPC'] / client:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
