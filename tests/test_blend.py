"""Blend weights and the metric."""

from __future__ import annotations

import numpy as np
import pytest

from client.blend import MIN_PRICE, blend, fit_blend_weights, smape, to_price


def test_smape_known_values():
    assert smape(np.array([100.0]), np.array([100.0])) == 0.0
    assert smape(np.array([100.0]), np.array([50.0])) == pytest.approx(200 * 50 / 150)
    assert smape(np.array([1.0, 1.0]), np.array([3.0, 1.0])) == pytest.approx(50.0)


def test_fitted_weights_are_non_negative_sum_to_one_and_find_the_good_component():
    rng = np.random.default_rng(1)
    prices = rng.uniform(2, 100, size=400)
    good = np.log1p(prices) + rng.normal(0, 0.05, size=400)
    bad = np.log1p(prices) + rng.normal(0, 1.0, size=400)
    weights = fit_blend_weights(np.column_stack([bad, good, bad[::-1]]), prices)
    assert (weights >= 0).all() and weights.sum() == pytest.approx(1.0)
    assert weights[1] >= 0.8


def test_prices_are_always_positive_and_finite():
    prices = to_price(np.array([-5.0, 0.0, np.nan, np.inf, 3.0]))
    assert np.isfinite(prices).all() and (prices >= MIN_PRICE).all()
    assert blend(np.array([[1.0, 2.0, 3.0]]), (0.5, 0.3, 0.2))[0] == pytest.approx(1.7)
