"""Price priors: smoothed brand and unit-price means, computed the same way for training and serving."""

from __future__ import annotations

import math

import numpy as np
import pytest

from client.priors import PRIOR_FEATURE_NAMES, SMOOTHING, PricePriors, PriorKeys
from client.table import read_catalog_csv
from tests.conftest import SAMPLE


def catalog(name: str, value: str = "", unit: str = "") -> str:
    return f"Item Name: {name}\nValue: {value}\nUnit: {unit}\n"


def test_brand_means_are_smoothed_towards_the_mean_of_all_rows():
    texts = [catalog("Acme Cocoa Mix"), catalog("Acme Cocoa Powder"), catalog("Zeta Tea")]
    log_prices = np.array([2.0, 4.0, 0.0])
    features = dict(zip(PRIOR_FEATURE_NAMES, PricePriors.fit(texts, log_prices).features([catalog("Acme Gum")])[0]))
    prior = log_prices.mean()
    assert features["brand1_log_price"] == pytest.approx((6.0 + SMOOTHING * prior) / (2 + SMOOTHING))
    assert features["brand1_log_count"] == pytest.approx(math.log1p(2))
    assert features["brand2_log_price"] == pytest.approx(prior)  # "acme gum": no row
    assert features["brand2_log_count"] == 0


def test_unit_prices_imply_a_price_for_the_rows_quantity():
    texts = [catalog("Acme Oil", "16", "Fl Oz"), catalog("Acme Oil Big", "32", "Fl Oz")]
    log_prices = np.log1p(np.array([8.0, 14.0]))
    priors = PricePriors.fit(texts, log_prices)
    query = catalog("Acme Oil Small", "8", "Fl Oz")
    keys = PriorKeys.of(query)
    features = dict(zip(PRIOR_FEATURE_NAMES, priors.features([query])[0]))
    assert keys.family == "volume" and keys.log_quantity == pytest.approx(math.log1p(8 * 29.5735295625))
    assert features["unit_family_implied_log_price"] == pytest.approx(
        features["unit_family_log_unit_price"] + keys.log_quantity, abs=1e-5)
    # no quantity: the implied price falls back to the brand's own
    no_quantity = dict(zip(PRIOR_FEATURE_NAMES, priors.features([catalog("Acme Oil Gift")])[0]))
    assert no_quantity["unit_brand2_implied_log_price"] == no_quantity["brand2_log_price"]


def test_saved_priors_give_the_same_features_on_real_rows(tmp_path):
    table = read_catalog_csv(SAMPLE / "train.csv", with_prices=True)
    priors = PricePriors.fit(table.texts[:200], np.log1p(table.prices[:200]))
    priors.save(tmp_path / "priors.json")
    expected = priors.features(table.texts[200:])
    assert expected.shape == (100, len(PRIOR_FEATURE_NAMES)) and np.isfinite(expected).all()
    assert expected[:, PRIOR_FEATURE_NAMES.index("brand1_log_count")].max() > 0  # some brands recur
    np.testing.assert_array_equal(PricePriors.load(tmp_path / "priors.json").features(table.texts[200:]), expected)


def test_priors_of_another_version_are_refused(tmp_path):
    path = tmp_path / "priors.json"
    path.write_text('{"smoothing": 1.0, "tables": {}}')
    with pytest.raises(ValueError, match="export the deployment again"):
        PricePriors.load(path)
