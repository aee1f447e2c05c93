"""Price priors: what the labelled rows say about a row's brand and unit price, as features.

For each row, smoothed means over the labelled rows that share a key with it (target encoding):

    brand1..3        log price of the rows whose item name starts with the same 1, 2 or 3 words
    unit_family      log price per canonical unit (gram, millilitre, item...) of the rows of the
                     same unit family, and the price it implies for this row's quantity
    unit_brand2      the same per brand (first 2 words) and unit family

each with the log of the number of rows behind it. A key with few rows is pulled towards the
mean of all rows (`SMOOTHING` pseudo-rows). Training fits the tables on other folds' rows for
its out-of-fold features (no row sees its own price) and on every labelled row for serving; the
client computes the features from the bundle's tables and sends them to the LightGBM stacker.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from client.catalog import UnitFamily, parse_catalog

SMOOTHING = 5.0
_QUANTITY_FAMILIES = (UnitFamily.MASS, UnitFamily.VOLUME, UnitFamily.COUNT, UnitFamily.LENGTH)
_WORD = re.compile(r"[a-z0-9&'’]+")
BRAND_TABLES = ("brand1", "brand2", "brand3")
UNIT_TABLES = ("unit_family", "unit_brand2")
PRIOR_FEATURE_NAMES: tuple[str, ...] = (
    *(f"{table}_{part}" for table in BRAND_TABLES for part in ("log_price", "log_count")),
    *(f"{table}_{part}" for table in UNIT_TABLES for part in ("log_unit_price", "implied_log_price", "log_count")),
)


@dataclass(frozen=True)
class PriorKeys:
    """The keys one catalogue text is looked up by, and its quantity (log1p of canonical units,
    None when it has no measurable quantity)."""

    brands: tuple[str, str, str]
    family: str
    log_quantity: float | None

    @classmethod
    def of(cls, text: str) -> PriorKeys:
        fields = parse_catalog(text)
        words = _WORD.findall(fields.item_name.lower())
        brands = tuple(" ".join(words[:n]) for n in (1, 2, 3))
        quantity = fields.canonical_value or 0.0
        measurable = quantity > 0 and fields.unit_family in _QUANTITY_FAMILIES
        return cls(brands, fields.unit_family.value, math.log1p(quantity) if measurable else None)

    def key(self, table: str) -> str:
        if table in BRAND_TABLES:
            return self.brands[BRAND_TABLES.index(table)]
        return self.family if table == "unit_family" else f"{self.brands[1]}|{self.family}"


@dataclass
class MeanTable:
    """Sum and count of a target per key, and the mean of all rows it was fitted on."""

    prior: float
    sums: dict[str, list[float]]  # key -> [sum, count]

    @classmethod
    def fit(cls, keys: list[str], targets: list[float]) -> MeanTable:
        sums: dict[str, list[float]] = {}
        for key, target in zip(keys, targets):
            entry = sums.setdefault(key, [0.0, 0.0])
            entry[0] += target
            entry[1] += 1
        return cls(float(np.mean(targets)) if targets else 0.0, sums)

    def lookup(self, key: str) -> tuple[float, float]:
        """(smoothed mean, count) of `key`; the prior and 0 for an unknown or empty key."""
        total, count = self.sums.get(key, (0.0, 0.0)) if key else (0.0, 0.0)
        return (total + SMOOTHING * self.prior) / (count + SMOOTHING), count


@dataclass
class PricePriors:
    """The fitted tables, by name (BRAND_TABLES: log price; UNIT_TABLES: log price per unit)."""

    tables: dict[str, MeanTable]

    @classmethod
    def fit(cls, texts: list[str], log_prices: np.ndarray) -> PricePriors:
        """Fits every table on these labelled rows."""
        keys = [PriorKeys.of(text) for text in texts]
        tables = {name: MeanTable.fit([k.key(name) for k in keys], list(map(float, log_prices)))
                  for name in BRAND_TABLES}
        measured = [(k, float(y) - k.log_quantity) for k, y in zip(keys, log_prices) if k.log_quantity is not None]
        for name in UNIT_TABLES:
            tables[name] = MeanTable.fit([k.key(name) for k, _ in measured], [t for _, t in measured])
        return cls(tables)

    def features(self, texts: list[str]) -> np.ndarray:
        """float32 [n, len(PRIOR_FEATURE_NAMES)] for these catalogue texts."""
        rows = []
        for keys in map(PriorKeys.of, texts):
            row = []
            for name in BRAND_TABLES:
                mean, count = self.tables[name].lookup(keys.key(name))
                row += [mean, math.log1p(count)]
            brand2_log_price = row[2]
            for name in UNIT_TABLES:
                mean, count = self.tables[name].lookup(keys.key(name))
                # without a quantity there is nothing to multiply: the brand's own price stands in
                implied = mean + keys.log_quantity if keys.log_quantity is not None else brand2_log_price
                row += [mean, implied, math.log1p(count)]
            rows.append(row)
        return np.asarray(rows, dtype=np.float32).reshape(len(rows), len(PRIOR_FEATURE_NAMES))

    def save(self, path: Path) -> None:
        """Writes the tables as JSON."""
        path.write_text(json.dumps({"smoothing": SMOOTHING, "tables": {
            name: {"prior": table.prior, "sums": table.sums} for name, table in self.tables.items()}}))

    @classmethod
    def load(cls, path: Path) -> PricePriors:
        """The tables `save` wrote.

        Raises:
            ValueError: the file was written with other tables or another smoothing.
        """
        raw = json.loads(path.read_text(encoding="utf-8"))
        if raw.get("smoothing") != SMOOTHING or set(raw.get("tables", {})) != {*BRAND_TABLES, *UNIT_TABLES}:
            raise ValueError(f"{path}: not the price priors this version computes; export the deployment again")
        return cls({name: MeanTable(float(t["prior"]), t["sums"]) for name, t in raw["tables"].items()})
