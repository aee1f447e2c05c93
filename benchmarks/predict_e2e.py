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
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from client.blend import RETRIEVAL, blend, component_matrix, to_price
from client.bundle import Deployment
from client.images import ImageFetcher
from client.models import FUSION, IMAGE_ENCODER, LEXICAL, LIGHTGBM, TEXT_ENCODER
from client.ocr import OcrCache
from client.predict import PredictConfig, predict
from client.rows import prepare_rows
from client.serve import LocalTritonServer
from client.table import CatalogTable, read_catalog_csv
from client.text import length_batches
from export.parity import load_session
from export.pipeline import load_run
from training.gbm import stack_features

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
    models = load_run(run_dir).models
    image_encoder, text_model, fusion, booster, lexical = (
        models[name] for name in (IMAGE_ENCODER, TEXT_ENCODER, FUSION, LIGHTGBM, LEXICAL))
    tokenizer, index, priors = deployment.tokenizer(), deployment.neighbour_index(), deployment.price_priors()
    settings = deployment.settings
    started = time.perf_counter()
    for row in range(len(table)):
        prepared = prepare_rows(table, [row], fetcher, ocr_engine=settings.ocr_engine, ocr_cache=ocr_cache,
                                image_size=settings.image_size, tokenizer=tokenizer)
        (image,) = prepared.images
        input_ids, attention_mask = (torch.from_numpy(a) for a in tokenizer.pad(prepared.token_ids))
        if image.has_image:
            image_embedding = image_encoder(torch.from_numpy(image.pixels[None]))
        else:
            image_embedding = torch.zeros(1, settings.image_dim)
        text_embedding, text_log_price = text_model(input_ids, attention_mask)
        log_price, vector = fusion(
            image_embedding, text_embedding,
            torch.from_numpy(prepared.has_image[:, None]), torch.from_numpy(prepared.numeric_features),
        )
        lexical_log_price = lexical(input_ids, attention_mask).numpy()
        gbm = booster.predict(stack_features(text_log_price.numpy(), lexical_log_price, prepared.has_image,
                                             prepared.numeric_features, priors.features([table.texts[row]])))
        retrieval = index.estimate(vector.numpy(), k=settings.retrieval_k)
        components = component_matrix({"mlp": log_price.numpy(), "lightgbm": gbm, RETRIEVAL: retrieval,
                                       "text_head": text_log_price.numpy(), "lexical": lexical_log_price})
        to_price(blend(components, deployment.blend_weights))
    return len(table) / (time.perf_counter() - started)


def text_encoder_session(deployment: Deployment, texts: list[str], batch_size: int = 32) -> float:
    """The text encoder's own ONNX Runtime session over the same texts, length-sorted batches."""
    session = load_session(str(deployment.model_path("text_encoder")))
    tokenizer = deployment.tokenizer()
    started = time.perf_counter()
    ids = tokenizer.encode(texts)
    for batch in length_batches([len(i) for i in ids], batch_size):
        input_ids, attention_mask = tokenizer.pad([ids[i] for i in batch])
        session.run(None, {"input_ids": input_ids, "attention_mask": attention_mask})
    return len(texts) / (time.perf_counter() - started)


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
        started = time.perf_counter()
        prepared = prepare_rows(table, range(len(table)), fetcher, ocr_engine=deployment.settings.ocr_engine,
                                ocr_cache=ocr_cache, image_size=deployment.settings.image_size)
        prepare_seconds = time.perf_counter() - started
        photos = int(prepared.has_image.sum())

        rates: dict[str, list[float]] = {k: [] for k in ("per-row eager PyTorch loop", "text encoder ORT session",
                                                          "client predict, in-process", "client predict, Triton gRPC")}
        with LocalTritonServer(deployment.repository, ort_threads=args.server_threads) as server:
            for _ in range(args.repeats):
                rates["per-row eager PyTorch loop"].append(per_row_loop(args.run, deployment, table, fetcher, ocr_cache))
                rates["text encoder ORT session"].append(text_encoder_session(deployment, prepared.texts))
                rates["client predict, in-process"].append(client_predict(csv_path, args.deployment, images, cache, []))
                rates["client predict, Triton gRPC"].append(
                    client_predict(csv_path, args.deployment, images, cache, [server.url]))
    median = {k: statistics.median(v) for k, v in rates.items()}
    print(f"{len(table)} rows ({'train rows with photos' if args.images else 'test.csv, text-only'}), "
          f"median of {args.repeats} runs; rows with a photo: {photos}"
          + (f", image loading and OCR {prepare_seconds / photos:.2f} s/photo before timing" if photos else ""))
    for name, rate in median.items():
        print(f"{name:<30}{rate:>9.1f} rows/s   (runs: {', '.join(f'{r:.1f}' for r in rates[name])})")
    client = median["client predict, in-process"]
    print(f"client in-process / per-row loop:       {client / median['per-row eager PyTorch loop']:.2f}x")
    print(f"client in-process / text encoder alone: {client / median['text encoder ORT session']:.2f}x")
    print(f"client Triton / client in-process:      {median['client predict, Triton gRPC'] / client:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
