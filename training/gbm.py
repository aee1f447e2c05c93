"""LightGBM on the fusion model's feature vector, predicting log1p(price)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import lightgbm as lgb
import numpy as np
from tqdm.auto import tqdm

from training.fusion import FusionInputs


@dataclass(frozen=True)
class GbmSettings:
    """The seed's parameters."""

    learning_rate: float = 0.03
    num_leaves: int = 128
    min_data_in_leaf: int = 20
    feature_fraction: float = 0.8
    bagging_fraction: float = 0.9
    bagging_freq: int = 1
    max_rounds: int = 1000
    early_stopping_rounds: int = 50
    seed: int = 42
    num_threads: int = 0  # 0: LightGBM's default (all cores)

    def params(self) -> dict:
        params = asdict(self)
        for key in ("max_rounds", "early_stopping_rounds"):
            params.pop(key)
        return {**params, "objective": "regression", "verbosity": -1, "deterministic": True,
                "force_row_wise": True}


def gbm_features(inputs: FusionInputs) -> np.ndarray:
    """The float32 vector LightGBM takes: [image emb, text emb, has_image, numeric features].

    The fusion graph emits the same concatenation as its `gbm_features` output.
    """
    return np.concatenate(
        [
            inputs.image_embedding,
            inputs.text_embedding,
            np.asarray(inputs.has_image, dtype=np.float32).reshape(-1, 1),
            inputs.numeric_features,
        ],
        axis=1,
    ).astype(np.float32)


def train_gbm(
    features: np.ndarray,
    log_prices: np.ndarray,
    train_rows: np.ndarray,
    val_rows: np.ndarray,
    settings: GbmSettings = GbmSettings(),
) -> lgb.Booster:
    """Trains with early stopping on the validation rows; the booster keeps its best iteration."""
    train_set = lgb.Dataset(features[train_rows], label=log_prices[train_rows], free_raw_data=False)
    val_set = lgb.Dataset(features[val_rows], label=log_prices[val_rows], reference=train_set)
    with tqdm(total=settings.max_rounds, desc="LightGBM (stops early)", unit="round") as progress:
        def report(env: lgb.callback.CallbackEnv) -> None:
            _, metric, value, _ = env.evaluation_result_list[0]
            progress.set_postfix({f"blend {metric}": f"{value:.4f}"}, refresh=False)
            progress.update()

        return lgb.train(
            settings.params(),
            train_set,
            num_boost_round=settings.max_rounds,
            valid_sets=[val_set],
            callbacks=[report, lgb.early_stopping(settings.early_stopping_rounds, verbose=False)],
        )


def save_gbm(booster: lgb.Booster, path: Path) -> None:
    """Saves the best iteration in LightGBM's own text format (no pickle)."""
    booster.save_model(str(path), num_iteration=booster.best_iteration or None)


def load_gbm(path: Path) -> lgb.Booster:
    """The booster `save_gbm` wrote."""
    return lgb.Booster(model_file=str(path))
