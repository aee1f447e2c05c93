"""Catalogue parsing on real strings of the challenge data, messy units and pack counts included."""

from __future__ import annotations

import math

import numpy as np
import pytest

from client.catalog import (
    NUMERIC_FEATURE_NAMES,
    UnitFamily,
    normalise_unit,
    numeric_feature_matrix,
    parse_catalog,
    parse_pack_count,
)

TACO = "Item Name: La Victoria Green Taco Sauce Mild, 12 Ounce (Pack of 6)\nValue: 72.0\nUnit: Fl Oz\n"
COOKIES = (
    "Item Name: Salerno Cookies, The Original Butter Cookies, 8 Ounce (Pack of 4)\n"
    "Bullet Point 1: Original Butter Cookies: Classic butter cookies made with real butter\n"
    "Bullet Point 2: Variety Pack: Includes 4 boxes with 32 cookies total\n"
    "Value: 32.0\nUnit: Ounce\n"
)
# No Value/Unit lines: the quantity comes from the item name.
BLUE_CHEESE = (
    "Item Name: Judee’s Blue Cheese Powder 11.25 oz - Gluten-Free and Nut-Free - Made in USA\n"
    "Bullet Point 1: Add to your favorite appetizers, dips & spreads."
)


def test_value_is_converted_to_the_canonical_unit_of_its_family():
    taco = parse_catalog(TACO)
    assert taco.unit_family is UnitFamily.VOLUME
    assert taco.canonical_value == pytest.approx(72 * 29.5735295625)
    assert taco.pack_count == 6
    cookies = parse_catalog(COOKIES)
    assert cookies.unit_family is UnitFamily.MASS
    assert cookies.canonical_value == pytest.approx(32 * 28.349523125)
    assert cookies.pack_count == 4
    assert len(cookies.bullet_points) == 2


def test_quantity_falls_back_to_the_item_name():
    fields = parse_catalog(BLUE_CHEESE)
    assert fields.value == pytest.approx(11.25)
    assert fields.unit_family is UnitFamily.MASS
    assert fields.canonical_value == pytest.approx(11.25 * 28.349523125)


@pytest.mark.parametrize(
    ("unit", "family", "factor"),
    [
        ("Ounce", UnitFamily.MASS, 28.349523125), ("oz", UnitFamily.MASS, 28.349523125),
        ("OZ", UnitFamily.MASS, 28.349523125), ("Fl. Oz", UnitFamily.VOLUME, 29.5735295625),
        ("FL Oz", UnitFamily.VOLUME, 29.5735295625), ("Fluid Ounce", UnitFamily.VOLUME, 29.5735295625),
        ("pound", UnitFamily.MASS, 453.59237), ("gramm", UnitFamily.MASS, 1.0),
        ("millilitre", UnitFamily.VOLUME, 1.0), ("Liters", UnitFamily.VOLUME, 1000.0),
        ("COUNT", UnitFamily.COUNT, 1.0), ("ct", UnitFamily.COUNT, 1.0), ("Tea Bags", UnitFamily.COUNT, 1.0),
        ("20 oz.", UnitFamily.MASS, 28.349523125),
    ],
)
def test_messy_units_seen_in_the_data(unit, family, factor):
    got_family, got_factor = normalise_unit(unit)
    assert got_family is family
    assert got_factor == pytest.approx(factor)


@pytest.mark.parametrize("unit", ["None", "", "n/a"])
def test_missing_units(unit):
    family, factor = normalise_unit(unit)
    assert family is UnitFamily.MISSING and math.isnan(factor)


def test_unknown_unit_is_other():
    assert normalise_unit("Each / Pack: 1")[0] is UnitFamily.OTHER


@pytest.mark.parametrize(
    ("text", "count"),
    [
        ("Bear Creek Soup, 1.9 Ounce (Pack of 6)", 6),
        ("Energy Drink, 16 fl oz, 12-Pack", 12),
        ("Green Tea Bags, 100 Count", 100),
        ("K-Cup Pods 24 ct", 24),
        ("Case of 8 jars", 8),
        ("Olive Oil 500ml", 1),
    ],
)
def test_pack_counts(text, count):
    assert parse_pack_count(text) == count


def test_numeric_features_are_named_finite_and_reflect_the_catalogue():
    matrix = numeric_feature_matrix([TACO, COOKIES, BLUE_CHEESE, ""])
    assert matrix.shape == (4, len(NUMERIC_FEATURE_NAMES))
    assert matrix.dtype == np.float32 and np.isfinite(matrix).all()
    column = dict(zip(NUMERIC_FEATURE_NAMES, matrix.T))
    assert column["log_pack_count"][0] == pytest.approx(math.log1p(6))
    assert column["unit_volume"].tolist() == [1, 0, 0, 0]
    assert column["unit_missing"][3] == 1
    assert column["bullet_count"].tolist() == [0, 2, 1, 0]
    # the per-item quantity divides the total by the pack count
    assert column["log_value_per_item"][0] == pytest.approx(math.log1p(72 * 29.5735295625 / 6), rel=1e-6)
