"""`train`: from a labelled CSV (+ images) to every artifact export needs, and a report.

Output folder::

    features/               feature store (chunks, OCR cache, manifest)
    fusion.safetensors      fusion MLP weights + fusion.json (architecture)
    lightgbm.txt            LightGBM model (its own text format)
    retrieval.faiss         FAISS IndexFlatIP of the training rows' retrieval vectors
    retrieval_*.npy         their log prices and image groups
    blend.json              seed and fitted blend weights
    split.json              training / validation sample ids
    validation_predictions.csv
    report.json, plots/     SMAPE per component and blend, coverage, timings
    run.json                settings, seeds, package versions, model identities
"""

from __future__ import annotations

import json
import logging
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from sklearn.model_selection import GroupShuffleSplit

from client.blend import COMPONENTS, SEED_WEIGHTS, blend, fit_blend_weights, smape, to_price
from client.catalog import NUMERIC_FEATURE_NAMES
from client.images import ImageFetcher, summarise
from client.retrieval import DEFAULT_K, NeighbourIndex
from client.table import BadPricePolicy, CatalogTable, read_catalog_csv
from training.encoders import OFFLINE_IMAGE_ENCODER, OFFLINE_TEXT_ENCODER
from training.features import Features, FeatureSettings, extract_features
from training.fusion import FusionTraining, predict_fusion, save_fusion, train_fusion
from training.gbm import GbmSettings, gbm_features, save_gbm, train_gbm
from training.report import package_versions, write_plots, write_validation_predictions

logger = logging.getLogger(__name__)

RUN_FILE = "run.json"
REPORT_FILE = "report.json"
BLEND_FILE = "blend.json"
SPLIT_FILE = "split.json"


@dataclass
class TrainConfig:
    """Everything a training run depends on; recorded in run.json."""

    csv: Path
    output: Path
    images_dir: Path | None = None
    image_encoder: str = OFFLINE_IMAGE_ENCODER
    text_encoder: str = OFFLINE_TEXT_ENCODER
    ocr_engine: str = "rapidocr"
    max_tokens: int = 128
    val_fraction: float = 0.2
    seed: int = 42
    bad_prices: BadPricePolicy = "refuse"
    limit_rows: int | None = None
    fusion: FusionTraining = field(default_factory=FusionTraining)
    gbm: GbmSettings = field(default_factory=GbmSettings)
    retrieval_k: int = DEFAULT_K

    def feature_settings(self) -> FeatureSettings:
        return FeatureSettings(
            image_encoder=self.image_encoder,
            text_encoder=self.text_encoder,
            ocr_engine=self.ocr_engine,
            max_tokens=self.max_tokens,
        )


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def image_groups(links: list[str]) -> np.ndarray:
    """One integer per row; rows sharing an image link share it, rows without a link get their own."""
    codes: dict[str, int] = {}
    groups = np.empty(len(links), dtype=np.int64)
    for row, link in enumerate(links):
        key = link if link else f"\x00row{row}"
        groups[row] = codes.setdefault(key, len(codes))
    return groups


def grouped_split(groups: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Training and validation row indices; no group is on both sides."""
    splitter = GroupShuffleSplit(n_splits=1, test_size=val_fraction, random_state=seed)
    train_rows, val_rows = next(splitter.split(np.zeros(len(groups)), groups=groups))
    return np.sort(train_rows), np.sort(val_rows)


def retrieval_estimates(
    vectors: np.ndarray, log_prices: np.ndarray, groups: np.ndarray, train_rows: np.ndarray, k: int
) -> tuple[NeighbourIndex, np.ndarray]:
    """The index over the training rows, and a retrieval estimate for every row.

    A row's estimate never counts the row itself or rows sharing its image.
    """
    index = NeighbourIndex(vectors[train_rows], log_prices[train_rows], groups[train_rows])
    return index, index.estimate(vectors, k=k, query_groups=groups)


def train(config: TrainConfig) -> dict:
    """Runs the whole training job; returns the report (also written to report.json)."""
    started = time.perf_counter()
    timings: dict[str, float] = {}
    seed_everything(config.seed)
    out = config.output
    out.mkdir(parents=True, exist_ok=True)

    table = read_catalog_csv(config.csv, with_prices=True, bad_prices=config.bad_prices)
    if config.limit_rows:
        table = table.subset(range(min(config.limit_rows, len(table))))
    if table.skipped:
        logger.warning("skipped %d row(s) without a usable price", len(table.skipped))
    log_prices = np.log1p(table.prices)

    stage = time.perf_counter()
    fetcher = ImageFetcher(config.images_dir, cache_dir=out / "image_cache")
    features = extract_features(table, fetcher, out / "features", config.feature_settings())
    timings["features_s"] = time.perf_counter() - stage

    groups = image_groups(table.image_links)
    train_rows, val_rows = grouped_split(groups, config.val_fraction, config.seed)
    (out / SPLIT_FILE).write_text(json.dumps({
        "train": [table.sample_ids[i] for i in train_rows],
        "validation": [table.sample_ids[i] for i in val_rows],
    }))

    stage = time.perf_counter()
    fusion, history = train_fusion(features.inputs, log_prices, train_rows, val_rows, config.fusion)
    save_fusion(fusion, out)
    mlp_log_price, vectors = predict_fusion(fusion, features.inputs)
    timings["fusion_s"] = time.perf_counter() - stage

    stage = time.perf_counter()
    index, retrieval_log_price = retrieval_estimates(vectors, log_prices, groups, train_rows, config.retrieval_k)
    index.save(out)
    timings["retrieval_s"] = time.perf_counter() - stage

    stage = time.perf_counter()
    gbm_matrix = gbm_features(features.inputs)
    booster = train_gbm(gbm_matrix, log_prices, train_rows, val_rows, config.gbm)
    save_gbm(booster, out)
    gbm_log_price = booster.predict(gbm_matrix, num_iteration=booster.best_iteration or None)
    timings["lightgbm_s"] = time.perf_counter() - stage

    components = np.column_stack([mlp_log_price, gbm_log_price, retrieval_log_price])
    val_prices = table.prices[val_rows]
    fitted = fit_blend_weights(components[val_rows], val_prices)
    blends = {"seed": np.asarray(SEED_WEIGHTS), "fitted": fitted}
    (out / BLEND_FILE).write_text(json.dumps({
        "components": list(COMPONENTS),
        "seed_weights": list(SEED_WEIGHTS),
        "fitted_weights": [float(w) for w in fitted],
        "fitted_on": "validation rows",
        "use": "fitted",
        "retrieval_k": config.retrieval_k,
    }, indent=2))

    predictions = {name: to_price(components[val_rows, i]) for i, name in enumerate(COMPONENTS)}
    predictions.update({f"blend_{name}": to_price(blend(components[val_rows], w)) for name, w in blends.items()})
    write_validation_predictions(out, [table.sample_ids[i] for i in val_rows], val_prices, predictions)
    timings["total_s"] = time.perf_counter() - started

    report = _report(config, table, features, train_rows, val_rows, val_prices, predictions, blends,
                     history, booster.best_iteration, timings)
    write_plots(out / "plots", val_prices, predictions["blend_fitted"])
    (out / REPORT_FILE).write_text(json.dumps(report, indent=2))
    (out / RUN_FILE).write_text(json.dumps({
        "config": asdict(config),
        "models": features.encoder_identities,
        "numeric_features": list(NUMERIC_FEATURE_NAMES),
        "versions": package_versions(),
    }, indent=2, default=str))
    return report


def _report(config, table: CatalogTable, features: Features, train_rows, val_rows, val_prices,
            predictions, blends, history, best_iteration, timings) -> dict:
    has_image = features.inputs.has_image.astype(bool)
    ocr_rows = sum(1 for text in features.ocr_texts if text)
    return {
        "rows": {"total": len(table), "train": len(train_rows), "validation": len(val_rows),
                 "skipped_bad_price": len(table.skipped)},
        "split": {"grouped_by": "image_link", "val_fraction": config.val_fraction, "seed": config.seed},
        "validation_smape": {name: smape(val_prices, pred) for name, pred in predictions.items()},
        "baseline_median_smape": smape(val_prices, np.full(len(val_prices), np.median(table.prices[train_rows]))),
        "blend_weights": {name: dict(zip(COMPONENTS, map(float, w))) for name, w in blends.items()},
        "images": {**summarise(features.image_status), "with_image": int(has_image.sum())},
        "ocr": {"engine": config.ocr_engine, "rows_with_text": ocr_rows,
                "coverage_of_images": ocr_rows / max(1, int(has_image.sum()))},
        "tokens": {"max_tokens": config.max_tokens,
                   "truncated_rows": int((features.token_counts >= config.max_tokens).sum())},
        "fusion_history": history,
        "lightgbm_best_iteration": int(best_iteration or 0),
        "feature_store": {"chunks_computed": features.chunks_computed, "chunks_reused": features.chunks_reused},
        "timings": timings,
    }

