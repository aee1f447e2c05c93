"""`train`: from a labelled CSV (+ images) to every artifact export needs, and a report.

Rows are split three ways, grouped by image_link (no photo is on two sides):

    fit         every component is trained on these rows, and only on these: the text encoder
                is fine-tuned on them, then the fusion MLP, LightGBM and the lexical model are
                trained on them, and the retrieval index holds them
    blend       unseen by every component: the blend weights are fitted on their predictions
                (the MLP's epoch and LightGBM's round count are also chosen on them; no
                gradient or fitted statistic comes from them)
    validation  only scored: the report's figures

The run folder is described by training.run_dir.RunDir.
"""

from __future__ import annotations

import json
import logging
import random
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
from sklearn.model_selection import GroupShuffleSplit

from client.blend import (
    COMPONENTS,
    RETRIEVAL,
    SEED_WEIGHTS,
    blend,
    component_matrix,
    fit_blend_weights,
    smape,
    to_price,
)
from client.catalog import NUMERIC_FEATURE_NAMES
from client.images import ImageFetcher, summarise
from client.retrieval import NeighbourIndex
from client.table import CatalogTable, read_catalog_csv
from training.config import TrainConfig
from training.encoders import describe_text_encoder, load_text_encoder, make_tokenizer
from training.features import Features, extract_features
from training.finetune import encode_with_head, fine_tune, save_regressor
from training.fusion import predict_fusion, save_fusion, train_fusion
from training.gbm import gbm_features, save_gbm, train_gbm
from training.lexical import fit_lexical, save_lexical
from training.report import package_versions, write_plots, write_validation_predictions
from training.run_dir import RunDir

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Splits:
    """Row indices of the three parts (see the module docstring)."""

    fit: np.ndarray
    blend: np.ndarray
    validation: np.ndarray

    def sample_ids(self, table: CatalogTable) -> dict[str, list[str]]:
        return {name: [table.sample_ids[i] for i in rows] for name, rows in asdict(self).items()}


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


def split_rows(groups: np.ndarray, val_fraction: float, blend_fraction: float, seed: int) -> Splits:
    """Validation rows first, then the rest into fit and blend rows, all grouped."""
    rest, validation = grouped_split(groups, val_fraction, seed)
    fit, blend_rows = grouped_split(groups[rest], blend_fraction, seed)
    return Splits(fit=rest[fit], blend=rest[blend_rows], validation=validation)


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
    run = RunDir(config.output)
    run.root.mkdir(parents=True, exist_ok=True)

    table = read_catalog_csv(config.csv, with_prices=True, bad_prices=config.bad_prices, encoding=config.csv_encoding)
    if config.limit_rows:
        table = table.subset(range(min(config.limit_rows, len(table))))
    if table.skipped:
        logger.warning("skipped %d row(s) without a usable price", len(table.skipped))
    log_prices = np.log1p(table.prices)

    stage = time.perf_counter()
    fetcher = ImageFetcher(config.images_dir, cache_dir=run.image_cache, policy=config.link_policy())
    features = extract_features(table, fetcher, run.features, config.feature_settings())
    timings["features_s"] = time.perf_counter() - stage

    groups = image_groups(table.image_links)
    splits = split_rows(groups, config.val_fraction, config.blend_fraction, config.seed)
    run.split.write_text(json.dumps(splits.sample_ids(table)))

    stage = time.perf_counter()
    tokenizer = make_tokenizer(config.text_encoder, config.max_tokens)
    token_ids = tokenizer.encode(features.texts)
    encoder, _ = load_text_encoder(config.text_encoder)
    regressor, fine_tuning_history = fine_tune(encoder, tokenizer, token_ids, log_prices, splits.fit,
                                               config.fine_tuning)
    save_regressor(regressor, run.text_encoder)
    text_embedding, text_log_price = encode_with_head(regressor, tokenizer, token_ids)
    np.save(run.text_embeddings, text_embedding)
    inputs = features.fusion_inputs(text_embedding)
    timings["fine_tuning_s"] = time.perf_counter() - stage

    stage = time.perf_counter()
    fusion, history = train_fusion(inputs, log_prices, splits.fit, splits.blend, config.fusion)
    save_fusion(fusion, run.fusion_weights, run.fusion_architecture)
    mlp_log_price, vectors = predict_fusion(fusion, inputs)
    timings["fusion_s"] = time.perf_counter() - stage

    stage = time.perf_counter()
    index, retrieval_log_price = retrieval_estimates(vectors, log_prices, groups, splits.fit, config.retrieval_k)
    index.save(run.retrieval)
    timings["retrieval_s"] = time.perf_counter() - stage

    stage = time.perf_counter()
    gbm_matrix = gbm_features(inputs)
    booster = train_gbm(gbm_matrix, log_prices, splits.fit, splits.blend, config.gbm)
    save_gbm(booster, run.lightgbm)
    gbm_log_price = booster.predict(gbm_matrix, num_iteration=booster.best_iteration or None)
    timings["lightgbm_s"] = time.perf_counter() - stage

    stage = time.perf_counter()
    lexical, lexical_log_price = fit_lexical(tokenizer, token_ids, log_prices, splits.fit, config.lexical)
    save_lexical(lexical, run.lexical_weights, run.lexical_settings)
    timings["lexical_s"] = time.perf_counter() - stage

    components = component_matrix({"mlp": mlp_log_price, "lightgbm": gbm_log_price, RETRIEVAL: retrieval_log_price,
                                   "text_head": text_log_price, "lexical": lexical_log_price})
    fitted = fit_blend_weights(components[splits.blend], table.prices[splits.blend])
    blends = {"seed": np.asarray(SEED_WEIGHTS), "fitted": fitted}
    run.write_json(run.blend, {
        "components": list(COMPONENTS),
        "seed_weights": list(SEED_WEIGHTS),
        "fitted_weights": [float(w) for w in fitted],
        "fitted_on": "blend rows (split.json): rows no component was trained on",
        "use": "fitted",
        "retrieval_k": config.retrieval_k,
    })

    val_rows = splits.validation
    val_prices = table.prices[val_rows]
    predictions = {name: to_price(components[val_rows, i]) for i, name in enumerate(COMPONENTS)}
    predictions.update({f"blend_{name}": to_price(blend(components[val_rows], w)) for name, w in blends.items()})
    write_validation_predictions(run.validation_predictions, [table.sample_ids[i] for i in val_rows], val_prices, predictions)
    timings["total_s"] = time.perf_counter() - started

    token_counts = np.asarray([len(ids) for ids in token_ids])
    report = _report(config, table, features, splits, val_prices, predictions, blends, token_counts,
                     {"fine_tuning": fine_tuning_history, "fusion": history,
                      "lightgbm_best_iteration": int(booster.best_iteration or 0)}, timings)
    write_plots(run.plots, val_prices, predictions["blend_fitted"])
    run.write_json(run.report, report)
    run.write_json(run.run_info, {
        "config": config.to_dict(),
        "models": {**features.encoder_identities, "base_text_encoder": describe_text_encoder(config.text_encoder)},
        "numeric_features": list(NUMERIC_FEATURE_NAMES),
        "versions": package_versions(),
    })
    return report


def _report(config, table: CatalogTable, features: Features, splits: Splits, val_prices, predictions, blends,
            token_counts, training, timings) -> dict:
    has_image = features.has_image.astype(bool)
    ocr_rows = sum(1 for text in features.ocr_texts if text)
    return {
        "rows": {"total": len(table), "fit": len(splits.fit), "blend": len(splits.blend),
                 "validation": len(splits.validation), "skipped_bad_price": len(table.skipped)},
        "split": {"grouped_by": "image_link", "val_fraction": config.val_fraction,
                  "blend_fraction": config.blend_fraction, "seed": config.seed},
        "validation_smape": {name: smape(val_prices, pred) for name, pred in predictions.items()},
        "baseline_median_smape": smape(val_prices, np.full(len(val_prices), np.median(table.prices[splits.fit]))),
        "blend_weights": {name: dict(zip(COMPONENTS, map(float, w))) for name, w in blends.items()},
        "images": {**summarise(features.image_status), "with_image": int(has_image.sum())},
        "ocr": {"engine": config.ocr_engine, "rows_with_text": ocr_rows,
                "coverage_of_images": ocr_rows / max(1, int(has_image.sum()))},
        "tokens": {"max_tokens": config.max_tokens, "truncated_rows": int((token_counts >= config.max_tokens).sum())},
        "training": training,
        "feature_store": {"chunks_computed": features.chunks_computed, "chunks_reused": features.chunks_reused},
        "timings": timings,
    }
