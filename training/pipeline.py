"""`train`: from a labelled CSV (+ images) to every artifact export needs, and a report.

Every labelled row trains the deployed models, and every accuracy figure is out of fold:

1. the rows are cut into K folds grouped by image_link (training.folds), after an optional
   held-out validation part (`val_fraction`, 0 by default);
2. each model is cross-fitted: for each fold it is fitted on the other folds and predicts the
   fold, so every row gets an out-of-fold (OOF) estimate from a model that never saw it. The
   stages that learn from the fine-tuned text encoder's embeddings (the fusion MLP, and
   retrieval over its vectors) learn in fold f from fold f's encoder on the rows it was
   fine-tuned on and are scored on that encoder's embeddings of fold f: in every fold, inputs of
   the kind the deployed MLP is fitted on (the refitted encoder's embeddings of its own training
   rows) and is served (its embeddings of new rows). The MLP's epoch count and the LightGBM
   stacker's round count are chosen on the OOF estimates;
3. each model is refitted on every labelled row with those settings: that is what export exports;
4. the blend weights are fitted on the OOF estimates, and the report gives each component's and
   the blend's OOF SMAPE with its spread over the folds (and, with validation rows, the deployed
   models' score on them beside it).

The LightGBM stacker learns from the text head's and lexical model's OOF estimates and the OOF price priors
(training.gbm, client.priors); retrieval
searches the refitted fusion MLP's vectors of every labelled row. The run folder is described by
training.run_dir.RunDir.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch

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
from client.ocr import ocr_cache_key
from client.priors import PricePriors
from client.retrieval import NeighbourIndex
from client.table import CatalogTable, read_catalog_csv
from client.text import TextTokenizer
from training.config import TrainConfig
from training.encoders import describe_text_encoder, load_text_encoder, make_tokenizer
from training.features import Features, extract_features
from training.finetune import (
    PriceRegressor,
    encode_with_head,
    fine_tune,
    resolve_precision,
    save_regressor,
    training_device,
)
from training.folds import Folds, cross_fit, cross_fit_every_row, grouped_split, image_groups, per_fold_smape
from training.fusion import FusionInputs, FusionMLP, predict_fusion, save_fusion, train_fusion
from training.gbm import cross_fit_gbm, save_gbm, stack_features, train_gbm
from training.lexical import fit_lexical, save_lexical
from training.report import package_versions, write_plots, write_predictions
from training.run_dir import RunDir

logger = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def read_training_table(config: TrainConfig) -> CatalogTable:
    """The labelled rows a run trains on (the first `limit_rows` when set)."""
    table = read_catalog_csv(config.csv, with_prices=True, bad_prices=config.bad_prices, encoding=config.csv_encoding)
    if config.limit_rows:
        table = table.subset(range(min(config.limit_rows, len(table))))
    return table


def fit_price_priors(texts: list[str], log_prices: np.ndarray, train_rows: np.ndarray) -> PricePriors:
    """The brand and unit-price tables of `train_rows` (client.priors)."""
    return PricePriors.fit([texts[i] for i in train_rows], log_prices[train_rows])


def make_folds(groups: np.ndarray, config: TrainConfig) -> tuple[Folds, np.ndarray]:
    """The K folds over the labelled rows, and the held-out validation rows (maybe none)."""
    rows = np.arange(len(groups))
    validation = np.zeros(0, dtype=np.int64)
    if config.val_fraction > 0:
        rows, validation = grouped_split(groups, config.val_fraction, config.seed)
    return Folds.grouped(rows, groups, config.folds, config.seed), validation


@dataclass
class TextStageOutputs:
    """What the fine-tuned text encoders make of the rows; each row of an array is
    (head log price, embedding...).

    Attributes:
        per_fold: float32 [k, n, 1 + dim]: in [f], the encoder fine-tuned without fold f on every
            labelled row (NaN on the validation rows).
        served: [n, 1 + dim]: the refitted (deployed) encoder on every row.
        history: the refit's fine-tuning history.
    """

    per_fold: np.ndarray
    served: np.ndarray
    history: list[dict]

    def out_of_fold(self, folds: Folds) -> np.ndarray:
        """[n, 1 + dim]: each labelled row from the encoder that never saw it; NaN elsewhere."""
        oof = np.full(self.served.shape, np.nan, dtype=np.float32)
        oof[folds.rows] = self.per_fold[folds.fold, folds.rows]
        return oof


class TextEncoderStage:
    """The fine-tuned text encoder, cross-fitted on the K folds, then refitted on every labelled row.

    Its outputs are kept in the run folder under a fingerprint of everything they depend on, so a
    rerun that changes only later stages (MLP, stacker, blend) does not fine-tune again.
    """

    # part of the fingerprint: a change of what the stage keeps must not reuse older outputs
    OUTPUTS_VERSION = 2

    def __init__(self, config: TrainConfig, tokenizer: TextTokenizer, token_ids: list[np.ndarray],
                 log_prices: np.ndarray):
        self.config, self.tokenizer, self.token_ids, self.log_prices = config, tokenizer, token_ids, log_prices
        # "auto" resolved once, here: every fit, the fingerprint and the report read the same precision
        self.settings = replace(config.fine_tuning,
                                precision=resolve_precision(config.fine_tuning.precision, training_device()))
        self.reused = False

    @property
    def precision(self) -> str:
        """The precision the encoders are fine-tuned in: "fp32" or "bf16"."""
        return self.settings.precision

    def run(self, run: RunDir, folds: Folds) -> TextStageOutputs:
        fingerprint = self.fingerprint(folds)
        cached = run.read_text_stage(fingerprint)
        if cached is not None:
            logger.info("text encoder: reusing the fine-tuned outputs in %s", run.text_stage)
            self.reused = True
            return TextStageOutputs(*cached)
        per_fold = cross_fit_every_row(
            folds, lambda train_rows, rows: self.encode(self.fit(train_rows)[0], rows), len(self.token_ids))
        regressor, history = self.fit(folds.rows)
        save_regressor(regressor, run.text_encoder)
        served = self.encode(regressor, np.arange(len(self.token_ids)))
        np.save(run.text_embeddings, served[:, 1:].astype(np.float32))
        run.write_text_stage(fingerprint, per_fold, served, history)
        return TextStageOutputs(per_fold, served, history)

    def fingerprint(self, folds: Folds) -> str:
        digest = hashlib.sha256(json.dumps({
            "encoder": describe_text_encoder(self.config.text_encoder), "outputs": self.OUTPUTS_VERSION,
            "fine_tuning": asdict(self.settings), "max_tokens": self.config.max_tokens,
        }, sort_keys=True).encode())
        for array in (*self.token_ids, self.log_prices, folds.rows, folds.fold):
            digest.update(np.ascontiguousarray(array).tobytes())
            digest.update(b"\x00")
        return digest.hexdigest()

    def fit(self, train_rows: np.ndarray) -> tuple[PriceRegressor, list[dict]]:
        encoder, _ = load_text_encoder(self.config.text_encoder)  # fresh pretrained weights each time
        return fine_tune(encoder, self.tokenizer, self.token_ids, self.log_prices, train_rows, self.settings)

    def encode(self, model: PriceRegressor, rows: np.ndarray) -> np.ndarray:
        """[len(rows), 1 + dim]: the head's log price, then the embedding."""
        embedding, log_price = encode_with_head(model, self.tokenizer, [self.token_ids[i] for i in rows])
        return np.column_stack([log_price, embedding])


class FusionStage:
    """The fusion MLP and the retrieval estimate that searches its vectors.

    In each fold the MLP is trained for `max_epochs`, and after every epoch the fold's rows get
    an MLP estimate and a retrieval estimate (an index of the other folds' rows); the epoch count
    with the best pooled OOF SMAPE is chosen for both.
    """

    def __init__(self, config: TrainConfig, log_prices: np.ndarray, groups: np.ndarray):
        self.config, self.log_prices, self.groups = config, log_prices, groups

    def fit(self, inputs: FusionInputs, train_rows: np.ndarray, epochs: int | None = None,
            on_epoch: Callable[[int, FusionMLP], None] | None = None) -> tuple[FusionMLP, list[dict]]:
        return train_fusion(inputs, self.log_prices, train_rows, self.config.fusion, epochs=epochs, on_epoch=on_epoch)

    def index(self, vectors: np.ndarray, rows: np.ndarray) -> NeighbourIndex:
        return NeighbourIndex(vectors[rows], self.log_prices[rows], self.groups[rows])

    def retrieve(self, index: NeighbourIndex, vectors: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Retrieval estimates of `rows`; a row never counts rows sharing its image."""
        return index.estimate(vectors[rows], k=self.config.retrieval_k, query_groups=self.groups[rows])

    def cross_fit(self, inputs_per_fold: list[FusionInputs], folds: Folds) -> tuple[np.ndarray, np.ndarray, int]:
        """(OOF MLP log prices, OOF retrieval log prices, the chosen epoch count); in fold f the
        MLP learns from and estimates with `inputs_per_fold[f]` (fold f's text encoder)."""
        def fit_predict(train_rows: np.ndarray, held_out: np.ndarray) -> np.ndarray:
            inputs = inputs_per_fold[folds.fold_of(held_out)]
            per_epoch = []

            def score(epoch: int, model: FusionMLP) -> None:
                log_price, vectors = predict_fusion(model, inputs)
                retrieval = self.retrieve(self.index(vectors, train_rows), vectors, held_out)
                per_epoch.append(np.column_stack([log_price[held_out], retrieval]))

            self.fit(inputs, train_rows, on_epoch=score)
            return np.stack(per_epoch, axis=1)  # [held-out rows, epochs, (mlp, retrieval)]

        oof = cross_fit(folds, fit_predict, len(inputs_per_fold[0]))
        prices = np.expm1(self.log_prices[folds.rows])
        scores = [smape(prices, to_price(oof[folds.rows, epoch, 0])) for epoch in range(oof.shape[1])]
        best = int(np.argmin(scores))
        return oof[:, best, 0], oof[:, best, 1], best + 1


def train(config: TrainConfig) -> dict:
    """Runs the whole training job; returns the report (also written to report.json)."""
    started = time.perf_counter()
    timings: dict[str, float] = {}
    seed_everything(config.seed)
    run = RunDir(config.output)
    run.root.mkdir(parents=True, exist_ok=True)

    table = read_training_table(config)
    if table.skipped:
        logger.warning("skipped %d row(s) without a usable price", len(table.skipped))
    log_prices = np.log1p(table.prices)

    stage = time.perf_counter()
    fetcher = ImageFetcher(config.images_dir, cache_dir=run.image_cache, policy=config.link_policy())
    features = extract_features(table, fetcher, run.features, config.feature_settings())
    timings["features_s"] = time.perf_counter() - stage

    groups = image_groups(table.image_links)
    folds, validation = make_folds(groups, config)
    labelled = folds.rows
    labelled_ids = [table.sample_ids[i] for i in labelled]
    run.write_json(run.folds, {"k": folds.k, "grouped_by": "image_link",
                               "fold": dict(zip(labelled_ids, map(int, folds.fold))),
                               "validation": [table.sample_ids[i] for i in validation]})

    stage = time.perf_counter()
    tokenizer = make_tokenizer(config.text_encoder, config.max_tokens)
    token_ids = tokenizer.encode(features.texts)
    text = TextEncoderStage(config, tokenizer, token_ids, log_prices)
    text_outputs = text.run(run, folds)
    oof_text, served_text = text_outputs.out_of_fold(folds), text_outputs.served
    timings["fine_tuning_s"] = time.perf_counter() - stage

    stage = time.perf_counter()
    fusion_stage = FusionStage(config, log_prices, groups)
    inputs_per_fold = [features.fusion_inputs(np.nan_to_num(fold_text[:, 1:])) for fold_text in text_outputs.per_fold]
    oof_mlp, oof_retrieval, fusion_epochs = fusion_stage.cross_fit(inputs_per_fold, folds)
    served_inputs = features.fusion_inputs(served_text[:, 1:].astype(np.float32))
    fusion, fusion_history = fusion_stage.fit(served_inputs, labelled, epochs=fusion_epochs)
    save_fusion(fusion, run.fusion_weights, run.fusion_architecture)
    served_mlp, served_vectors = predict_fusion(fusion, served_inputs)
    index = fusion_stage.index(served_vectors, labelled)
    index.save(run.retrieval)
    served_retrieval = np.full(len(table), np.nan)
    served_retrieval[validation] = fusion_stage.retrieve(index, served_vectors, validation)
    timings["fusion_and_retrieval_s"] = time.perf_counter() - stage

    stage = time.perf_counter()
    oof_lexical = cross_fit(folds, lambda train_rows, held_out: fit_lexical(
        tokenizer, token_ids, log_prices, train_rows, config.lexical)[1][held_out], len(table))
    lexical, served_lexical = fit_lexical(tokenizer, token_ids, log_prices, labelled, config.lexical)
    save_lexical(lexical, run.lexical_weights, run.lexical_settings)
    timings["lexical_s"] = time.perf_counter() - stage

    stage = time.perf_counter()
    oof_priors = cross_fit(folds, lambda train_rows, held_out: fit_price_priors(table.texts, log_prices, train_rows)
                           .features([table.texts[i] for i in held_out]), len(table))
    priors = fit_price_priors(table.texts, log_prices, labelled)
    priors.save(run.price_priors)
    served_priors = priors.features(table.texts)
    oof_stack = stack_features(oof_text[:, 0], oof_lexical, features.has_image, features.numeric_features, oof_priors)
    np.save(run.stack_features, oof_stack[labelled])
    oof_gbm, gbm_rounds = cross_fit_gbm(oof_stack, log_prices, folds, config.gbm)
    booster = train_gbm(oof_stack, log_prices, labelled, gbm_rounds, config.gbm)
    save_gbm(booster, run.lightgbm)
    served_stack = stack_features(served_text[:, 0], served_lexical, features.has_image, features.numeric_features,
                                  served_priors)
    served_gbm = booster.predict(served_stack)
    timings["lightgbm_s"] = time.perf_counter() - stage

    oof = component_matrix({"mlp": oof_mlp, "lightgbm": oof_gbm, RETRIEVAL: oof_retrieval,
                            "text_head": oof_text[:, 0], "lexical": oof_lexical})
    served = component_matrix({"mlp": served_mlp, "lightgbm": served_gbm, RETRIEVAL: served_retrieval,
                               "text_head": served_text[:, 0], "lexical": served_lexical})
    fitted = fit_blend_weights(oof[labelled], table.prices[labelled])
    blends = {"seed": np.asarray(SEED_WEIGHTS), "fitted": fitted}
    run.write_json(run.blend, {
        "components": list(COMPONENTS),
        "seed_weights": list(SEED_WEIGHTS),
        "fitted_weights": [float(w) for w in fitted],
        "fitted_on": f"out-of-fold estimates of all {len(labelled)} labelled rows ({folds.k} folds)",
        "use": "fitted",
        "retrieval_k": config.retrieval_k,
    })

    oof_predictions = _predictions(oof, blends)
    write_predictions(run.oof_predictions, [table.sample_ids[i] for i in labelled], table.prices[labelled],
                      {name: values[labelled] for name, values in oof_predictions.items()},
                      folds=folds.fold)
    served_predictions = _predictions(served, blends)
    if len(validation):
        write_predictions(run.validation_predictions, [table.sample_ids[i] for i in validation],
                          table.prices[validation], {name: values[validation] for name, values in
                                                     served_predictions.items()})
    timings["total_s"] = time.perf_counter() - started

    token_counts = np.asarray([len(ids) for ids in token_ids])
    report = {
        "rows": {"total": len(table), "labelled": len(labelled), "validation": len(validation),
                 "skipped_bad_price": len(table.skipped)},
        "folds": {"k": folds.k, "grouped_by": "image_link",
                  "seed": config.seed, "val_fraction": config.val_fraction},
        "oof_smape": _scores(folds, table.prices, oof_predictions),
        "blend_cross_fitted_smape": _cross_fitted_blend(folds, oof, table.prices),
        "validation_smape": {name: smape(table.prices[validation], values[validation])
                             for name, values in served_predictions.items()} if len(validation) else {},
        "baseline_median_smape": _median_baseline(folds, table.prices),
        "blend_weights": {name: dict(zip(COMPONENTS, map(float, w))) for name, w in blends.items()},
        **_coverage(config, features, token_counts),
        "training": {"fine_tuning": text_outputs.history,
                     "fine_tuning_precision": text.precision,
                     "fusion": fusion_history, "fusion_epochs": fusion_epochs, "lightgbm_rounds": gbm_rounds},
        "feature_store": {"chunks_computed": features.chunks_computed, "chunks_reused": features.chunks_reused},
        "text_stage_reused": text.reused,
        "timings": timings,
    }
    write_plots(run.plots, table.prices[labelled], oof_predictions["blend_fitted"][labelled])
    run.write_json(run.report, report)
    run.write_json(run.run_info, {
        "config": config.to_dict(),
        "models": {**features.encoder_identities, "base_text_encoder": describe_text_encoder(config.text_encoder)},
        "numeric_features": list(NUMERIC_FEATURE_NAMES),
        "versions": package_versions(),
    })
    return report


def _predictions(components: np.ndarray, blends: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Prices of each component and each blend, for every row of `components`."""
    prices = {name: to_price(components[:, i]) for i, name in enumerate(COMPONENTS)}
    prices.update({f"blend_{name}": to_price(blend(components, w)) for name, w in blends.items()})
    return prices


def _scores(folds: Folds, prices: np.ndarray, predictions: dict[str, np.ndarray]) -> dict[str, dict]:
    """SMAPE over all labelled rows, per fold and the folds' spread (max - min)."""
    scores = {}
    for name, predicted in predictions.items():
        per_fold = per_fold_smape(folds, prices, predicted)
        scores[name] = {"all": smape(prices[folds.rows], predicted[folds.rows]), "folds": per_fold,
                        "spread": max(per_fold) - min(per_fold)}
    return scores


def _cross_fitted_blend(folds: Folds, oof: np.ndarray, prices: np.ndarray) -> dict:
    """The blend scored on each fold with weights fitted on the other folds' OOF estimates:
    the figure that no choice made on the scored rows flatters."""
    predicted = np.full(len(prices), np.nan)
    for train_rows, held_out in folds:
        weights = fit_blend_weights(oof[train_rows], prices[train_rows])
        predicted[held_out] = to_price(blend(oof[held_out], weights))
    per_fold = per_fold_smape(folds, prices, predicted)
    return {"all": smape(prices[folds.rows], predicted[folds.rows]), "folds": per_fold,
            "spread": max(per_fold) - min(per_fold)}


def _median_baseline(folds: Folds, prices: np.ndarray) -> float:
    """SMAPE of predicting, in each fold, the other folds' median price."""
    predicted = np.zeros(len(prices))
    for train_rows, held_out in folds:
        predicted[held_out] = np.median(prices[train_rows])
    return smape(prices[folds.rows], predicted[folds.rows])


def _coverage(config: TrainConfig, features: Features, token_counts: np.ndarray) -> dict:
    has_image = features.has_image.astype(bool)
    ocr_rows = sum(1 for text in features.ocr_texts if text)
    return {
        "images": {**summarise(features.image_status), "with_image": int(has_image.sum())},
        "ocr": {"engine": config.ocr_engine, "reader": ocr_cache_key(config.ocr_engine), "rows_with_text": ocr_rows,
                "coverage_of_images": ocr_rows / max(1, int(has_image.sum()))},
        "tokens": {"max_tokens": config.max_tokens, "truncated_rows": int((token_counts >= config.max_tokens).sum())},
    }

