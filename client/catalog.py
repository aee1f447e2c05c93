"""Parsing `catalog_content` into fields and numeric features.

This is the one implementation: training computes the features the models learn from with it,
and the client computes the features it sends to the server with it.

A catalogue text looks like::

    Item Name: La Victoria Green Taco Sauce Mild, 12 Ounce (Pack of 6)
    Bullet Point 1: ...
    Product Description: ...
    Value: 72.0
    Unit: Fl Oz

Values are converted to a canonical unit per family: grams for mass, millilitres for volume,
items for counts.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from enum import Enum

import numpy as np


class UnitFamily(str, Enum):
    MASS = "mass"
    VOLUME = "volume"
    COUNT = "count"
    LENGTH = "length"
    OTHER = "other"
    MISSING = "missing"


# unit spelling (lower case, without dots) -> (family, factor to the canonical unit)
UNIT_TABLE: dict[str, tuple[UnitFamily, float]] = {
    **{u: (UnitFamily.MASS, 28.349523125) for u in ("ounce", "ounces", "oz", "onzas", "wt oz")},
    **{u: (UnitFamily.MASS, 453.59237) for u in ("pound", "pounds", "lb", "lbs")},
    **{u: (UnitFamily.MASS, 1.0) for u in ("gram", "grams", "gramm", "gr", "g")},
    **{u: (UnitFamily.MASS, 1000.0) for u in ("kilogram", "kilograms", "kg")},
    **{u: (UnitFamily.MASS, 0.001) for u in ("milligram", "milligrams", "mg")},
    **{
        u: (UnitFamily.VOLUME, 29.5735295625)
        for u in ("fl oz", "fluid ounce", "fluid ounces", "fl ounce", "floz")
    },
    **{u: (UnitFamily.VOLUME, 1.0) for u in ("millilitre", "milliliter", "milliliters", "ml")},
    **{u: (UnitFamily.VOLUME, 1000.0) for u in ("liter", "liters", "litre", "litres", "l")},
    **{u: (UnitFamily.VOLUME, 3785.411784) for u in ("gallon", "gallons", "gal")},
    **{u: (UnitFamily.VOLUME, 946.352946) for u in ("quart", "quarts", "qt")},
    **{u: (UnitFamily.VOLUME, 473.176473) for u in ("pint", "pints", "pt")},
    **{u: (UnitFamily.VOLUME, 236.5882365) for u in ("cup", "cups")},
    **{
        u: (UnitFamily.COUNT, 1.0)
        for u in (
            "count", "counts", "ct", "each", "ea", "piece", "pieces", "pcs", "pack", "packs",
            "can", "cans", "jar", "jars", "bottle", "bottles", "bag", "bags", "tea bags", "box",
            "boxes", "unit", "units", "capsule", "capsules", "tablet", "tablets", "pod", "pods",
            "sachet", "sachets", "packet", "packets", "carton", "cartons",
        )
    },
    **{u: (UnitFamily.LENGTH, 25.4) for u in ("inch", "inches", "in")},
    **{u: (UnitFamily.LENGTH, 304.8) for u in ("foot", "feet", "ft")},
    **{u: (UnitFamily.LENGTH, 10.0) for u in ("centimeter", "centimeters", "cm")},
    **{u: (UnitFamily.LENGTH, 1.0) for u in ("millimeter", "millimeters", "mm")},
}
_NO_UNIT = {"", "none", "null", "n/a", "na", "nan"}

_FIELD = re.compile(r"^(Item Name|Bullet Point \d+|Product Description|Value|Unit):\s*", re.M)
_NUMBER = r"(\d+(?:[.,]\d+)?)"
# Pack counts, most specific first; each captures the number of items in the pack.
_PACK_PATTERNS = [
    re.compile(p, re.I)
    for p in (
        r"\bpack\s+of\s+(\d+)",
        r"\b(?:set|case|box|bundle)\s+of\s+(\d+)",
        r"\b(\d+)\s*-?\s*(?:pack|pk|packs)\b",
        r"\b(\d+)\s*(?:count|ct)\b",
        r"\b(\d+)\s*-?\s*(?:pieces|pcs|piece)\b",
    )
]
_QUANTITY_IN_TITLE = re.compile(
    _NUMBER + r"\s*-?\s*(fl\.?\s*oz|fluid\s+ounces?|ounces?|oz|pounds?|lbs?|grams?|g|kg|ml|"
    r"millilit(?:er|re)s?|lit(?:er|re)s?|l|gallons?|count|ct)\b",
    re.I,
)


@dataclass(frozen=True)
class CatalogFields:
    """The structured parts of one catalogue text."""

    item_name: str
    bullet_points: tuple[str, ...]
    description: str
    value: float | None
    unit: str
    unit_family: UnitFamily
    canonical_value: float | None
    pack_count: int


def normalise_unit(unit: str) -> tuple[UnitFamily, float]:
    """Maps a unit as written in catalogues to its family and factor to the canonical unit.

    Args:
        unit: e.g. "Fl Oz", "ounce", "COUNT", "Fl. Oz", "20 oz.".

    Returns:
        (family, factor); factor is nan for OTHER and MISSING.
    """
    key = re.sub(r"[.\s]+", " ", unit.lower()).strip()
    key = re.sub(r"^\d+(?:[.,]\d+)?\s*", "", key)  # "20 oz" -> "oz"
    if key in _NO_UNIT:
        return UnitFamily.MISSING, math.nan
    if key in UNIT_TABLE:
        return UNIT_TABLE[key]
    if key.rstrip("s") in UNIT_TABLE:
        return UNIT_TABLE[key.rstrip("s")]
    return UnitFamily.OTHER, math.nan


def _to_float(text: str) -> float | None:
    try:
        value = float(text.replace(",", "."))
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def parse_pack_count(text: str) -> int:
    """The number of items in a pack ("Pack of 6", "12-Pack", "24 Count"), 1 when unstated."""
    for pattern in _PACK_PATTERNS:
        match = pattern.search(text)
        if match:
            count = int(match.group(1))
            if 1 <= count <= 10_000:
                return count
    return 1


def parse_catalog(text: str) -> CatalogFields:
    """Splits a catalogue text into its fields and converts its quantity.

    When the `Value:`/`Unit:` lines are missing, the first quantity in the item name
    ("11.25 oz") is used instead.
    """
    text = text if isinstance(text, str) else ""
    parts: dict[str, str] = {}
    bullets: list[str] = []
    matches = list(_FIELD.finditer(text))
    for i, match in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
        body = text[match.end() : end].strip()
        name = match.group(1)
        if name.startswith("Bullet Point"):
            bullets.append(body)
        else:
            parts.setdefault(name, body)
    item_name = parts.get("Item Name", "" if matches else text.strip())

    value = _to_float(parts.get("Value", ""))
    unit = parts.get("Unit", "")
    family, factor = normalise_unit(unit)
    if value is None or family in (UnitFamily.MISSING, UnitFamily.OTHER):
        title_quantity = _QUANTITY_IN_TITLE.search(item_name)
        if title_quantity:
            value = _to_float(title_quantity.group(1))
            unit = title_quantity.group(2)
            family, factor = normalise_unit(unit)
    canonical = value * factor if value is not None and math.isfinite(factor) else None

    return CatalogFields(
        item_name=item_name,
        bullet_points=tuple(bullets),
        description=parts.get("Product Description", ""),
        value=value,
        unit=unit,
        unit_family=family,
        canonical_value=canonical,
        pack_count=parse_pack_count(item_name) if item_name else parse_pack_count(text),
    )


_FAMILIES = tuple(UnitFamily)
NUMERIC_FEATURE_NAMES: tuple[str, ...] = (
    "log_canonical_value",
    "log_value_per_item",
    "log_raw_value",
    *(f"unit_{family.value}" for family in _FAMILIES),
    "log_pack_count",
    "bullet_count",
    "has_description",
    "log_text_chars",
    "log_item_name_words",
    "log_numbers_in_text",
)


def numeric_features(text: str) -> np.ndarray:
    """The numeric feature vector of one catalogue text, float32, named by NUMERIC_FEATURE_NAMES.

    Missing quantities are 0 (with the unit family telling the model why).
    """
    fields = parse_catalog(text)
    canonical = fields.canonical_value or 0.0
    family_onehot = [1.0 if fields.unit_family is f else 0.0 for f in _FAMILIES]
    vector = [
        math.log1p(max(canonical, 0.0)),
        math.log1p(max(canonical, 0.0) / fields.pack_count),
        math.log1p(max(fields.value or 0.0, 0.0)),
        *family_onehot,
        math.log1p(fields.pack_count),
        float(len(fields.bullet_points)),
        1.0 if fields.description else 0.0,
        math.log1p(len(text) if isinstance(text, str) else 0),
        math.log1p(len(fields.item_name.split())),
        math.log1p(len(re.findall(r"\d+(?:\.\d+)?", text if isinstance(text, str) else ""))),
    ]
    return np.asarray(vector, dtype=np.float32)


def numeric_feature_matrix(texts: list[str]) -> np.ndarray:
    """`numeric_features` for many texts: float32 [len(texts), len(NUMERIC_FEATURE_NAMES)]."""
    if not texts:
        return np.zeros((0, len(NUMERIC_FEATURE_NAMES)), dtype=np.float32)
    return np.stack([numeric_features(t) for t in texts])
