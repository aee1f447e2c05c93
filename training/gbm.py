"""The LightGBM stacker: log1p(price) from the other models' estimates and the catalogue features.

It reads the text encoder head's and the lexical model's log prices, the has_image flag, the numeric catalogue features and the price priors (client.priors: brand and
unit-price means of the labelled rows); client.models lists the LightGBM model's inputs, which
are concatenated in that order. Trained on out-of-fold estimates and priors, it learns where each
model is to be trusted (e.g. the lexical model on long descriptions) and corrects them with
quantities, pack counts and what similar brands cost. The fusion MLP's estimate goes to the blend
only: as a fourth stacker input it made the blend no better (README, "Accuracy: what is served
is what was fitted"). The number of rounds is chosen by cross-validation
on the same folds (`lgb.cv`), then the deployed booster is refitted on every labelled row.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import lightgbm as lgb
import numpy as np

from training.folds import Folds


@dataclass(frozen=True)
class GbmSettings:
    """LightGBM parameters (Huber loss on log1p(price): robust to mispriced rows, like SMAPE)."""

    objective: str = "huber"
    learning_rate: float = 0.03
    num_leaves: int = 31
    min_data_in_leaf: int = 20
    feature_fraction: float = 0.9
    bagging_fraction: float = 0.9
    bagging_freq: int = 1
    max_rounds: int = 2000
    early_stopping_rounds: int = 100
    seed: int = 42
    num_threads: int = 0  # 0: LightGBM's default (all cores)

    def params(self) -> dict:
        params = asdict(self)
        for key in ("max_rounds", "early_stopping_rounds"):
            params.pop(key)
        return {**params, "metric": "l1", "verbosity": -1, "deterministic": True, "force_row_wise": True}


def stack_features(text_head: np.ndarray, lexical: np.ndarray, has_image: np.ndarray, numeric_features: np.ndarray,
                   price_priors: np.ndarray) -> np.ndarray:
    """float32 [n, 2 + 1 + F + P]: the stacker's inputs in the served graph's order."""
    columns = [np.asarray(a, dtype=np.float32).reshape(len(numeric_features), -1)
               for a in (text_head, lexical, has_image, numeric_features, price_priors)]
    return np.concatenate(columns, axis=1)


def cross_fit_gbm(features: np.ndarray, log_prices: np.ndarray, folds: Folds,
                  settings: GbmSettings = GbmSettings()) -> tuple[np.ndarray, int]:
    """Out-of-fold stacker estimates of the folds' rows and the round count chosen on them.

    `features` and `log_prices` are indexed by table row; the rounds stop when the folds' mean
    held-out L1 has not improved for `early_stopping_rounds`.

    Returns:
        (float64 [n] OOF log prices, NaN outside the folds; the best round count).
    """
    rows = folds.rows
    dataset = lgb.Dataset(features[rows], label=log_prices[rows], free_raw_data=False)
    positions = [(np.flatnonzero(folds.fold != i), np.flatnonzero(folds.fold == i)) for i in range(folds.k)]
    result = lgb.cv(settings.params(), dataset, num_boost_round=settings.max_rounds, folds=positions,
                    callbacks=[lgb.early_stopping(settings.early_stopping_rounds, verbose=False)],
                    return_cvbooster=True)
    cv_booster = result["cvbooster"]
    best = int(cv_booster.best_iteration)
    oof = np.full(len(features), np.nan)
    for booster, (_, held_out) in zip(cv_booster.boosters, positions):
        oof[rows[held_out]] = booster.predict(features[rows[held_out]], num_iteration=best)
    return oof, best


def train_gbm(features: np.ndarray, log_prices: np.ndarray, train_rows: np.ndarray, rounds: int,
              settings: GbmSettings = GbmSettings()) -> lgb.Booster:
    """The booster fitted on `train_rows` for exactly `rounds` rounds."""
    dataset = lgb.Dataset(features[train_rows], label=log_prices[train_rows])
    return lgb.train(settings.params(), dataset, num_boost_round=max(1, rounds))


def save_gbm(booster: lgb.Booster, path: Path) -> None:
    """Saves in LightGBM's own text format (no pickle)."""
    booster.save_model(str(path))


def load_gbm(path: Path) -> lgb.Booster:
    """The booster `save_gbm` wrote."""
    return lgb.Booster(model_file=str(path))
