"""Blending the components' log-price estimates, and the challenge metric."""

from __future__ import annotations

import itertools
from collections.abc import Mapping

import numpy as np

COMPONENTS = ("mlp", "lightgbm", "retrieval", "text_head", "lexical")
RETRIEVAL = "retrieval"  # the one component computed by the client (FAISS search), not by the ensemble
# the ensemble output each other component's log price is read from
COMPONENT_OUTPUTS = {"mlp": "mlp_log_price", "lightgbm": "gbm_log_price", "text_head": "text_log_price",
                     "lexical": "lexical_log_price"}
# the seed design's fixed blend: MLP, LightGBM and retrieval only
SEED_WEIGHTS = (0.5, 0.3, 0.2, 0.0, 0.0)
MIN_PRICE = 0.01


def smape_terms(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """Each row's term of the SMAPE (0-200): their mean is the SMAPE, their differences pair two estimates."""
    y_true = np.asarray(y_true, dtype=np.float64)
    y_pred = np.asarray(y_pred, dtype=np.float64)
    denominator = (np.abs(y_true) + np.abs(y_pred)) / 2
    return 100.0 * np.abs(y_pred - y_true) / np.maximum(denominator, 1e-12)


def smape(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Symmetric mean absolute percentage error on a 0-200 scale."""
    return float(np.mean(smape_terms(y_true, y_pred)))


def to_price(log_price: np.ndarray) -> np.ndarray:
    """expm1 of a log1p price, floored at MIN_PRICE so every price is positive and finite."""
    log_price = np.nan_to_num(np.asarray(log_price, dtype=np.float64), nan=0.0, posinf=20.0, neginf=0.0)
    return np.maximum(np.expm1(np.clip(log_price, None, 20.0)), MIN_PRICE)


def component_matrix(log_prices: Mapping[str, np.ndarray]) -> np.ndarray:
    """The components' estimates as columns in COMPONENTS order, the layout `blend` takes.

    Args:
        log_prices: float [n] (or [n, 1]) log-price estimates by component name.

    Returns:
        float64 [n, len(COMPONENTS)].

    Raises:
        ValueError: a component is missing or unknown.
    """
    if set(log_prices) != set(COMPONENTS):
        raise ValueError(f"blend components must be exactly {', '.join(COMPONENTS)}; got {', '.join(log_prices)}")
    return np.column_stack([np.asarray(log_prices[name], dtype=np.float64).reshape(-1) for name in COMPONENTS])


def blend(log_prices: np.ndarray, weights: tuple[float, ...] | np.ndarray) -> np.ndarray:
    """Weighted sum in log space of the component estimates.

    Args:
        log_prices: float [n, len(weights)], one column per component, in COMPONENTS order.
        weights: non-negative, summing to 1.
    """
    weights = np.asarray(weights, dtype=np.float64)
    return np.asarray(log_prices, dtype=np.float64) @ weights


def fit_blend_weights(log_prices: np.ndarray, prices: np.ndarray, step: float = 0.05) -> np.ndarray:
    """Non-negative weights summing to 1 that minimise SMAPE, by search over a simplex grid.

    Args:
        log_prices: float [n, c] component estimates for rows no component was fitted on.
        prices: float [n] true prices of those rows.
        step: grid spacing of each weight.

    Returns:
        float64 [c] weights.
    """
    columns = np.asarray(log_prices).shape[1]
    ticks = int(round(1 / step))
    best, best_score = None, np.inf
    for combo in itertools.product(range(ticks + 1), repeat=columns - 1):
        if sum(combo) > ticks:
            continue
        weights = np.array([*combo, ticks - sum(combo)], dtype=np.float64) / ticks
        score = smape(prices, to_price(blend(log_prices, weights)))
        if score < best_score - 1e-12:
            best, best_score = weights, score
    return best
