"""Reading catalogue CSV files, refusing unusable ones before any work is done.

Rows are numbered from 1 in messages, counting data rows only (the header is not a row), so
"row 3" is the third product in the file whatever line breaks its text contains.
"""

from __future__ import annotations

import csv
import math
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from client.errors import InputError

REQUIRED_COLUMNS = ("sample_id", "catalog_content", "image_link")
PRICE_COLUMN = "price"
BadPricePolicy = Literal["refuse", "skip"]
_MAX_LISTED = 10

# Catalogue texts can be long; the csv module's default field limit is 128 KiB.
csv.field_size_limit(min(sys.maxsize, 2**31 - 1))


@dataclass
class CatalogTable:
    """The rows of a catalogue CSV, column by column.

    Attributes:
        sample_ids: one id per row, unique.
        texts: `catalog_content` per row ("" where empty).
        image_links: `image_link` per row ("" where empty).
        row_numbers: each kept row's 1-based data-row number in the file.
        prices: float64 prices when the file was read as training data, else None.
        skipped: (row number, reason) of rows dropped by `bad_prices="skip"`.
    """

    sample_ids: list[str]
    texts: list[str]
    image_links: list[str]
    row_numbers: list[int]
    prices: np.ndarray | None = None
    skipped: list[tuple[int, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.sample_ids)

    def subset(self, indices: np.ndarray | list[int]) -> CatalogTable:
        """Returns the rows at `indices`, in that order."""
        idx = [int(i) for i in indices]
        return CatalogTable(
            sample_ids=[self.sample_ids[i] for i in idx],
            texts=[self.texts[i] for i in idx],
            image_links=[self.image_links[i] for i in idx],
            row_numbers=[self.row_numbers[i] for i in idx],
            prices=None if self.prices is None else self.prices[idx],
        )


def _describe_rows(rows: list[int]) -> str:
    listed = ", ".join(str(r) for r in rows[:_MAX_LISTED])
    more = f" and {len(rows) - _MAX_LISTED} more" if len(rows) > _MAX_LISTED else ""
    return f"row{'s' if len(rows) > 1 else ''} {listed}{more}"


def _parse_price(raw: str | None) -> tuple[float | None, str]:
    if raw is None or raw.strip() == "":
        return None, "price is missing"
    try:
        value = float(raw)
    except ValueError:
        return None, f"price {raw!r} is not a number"
    if not math.isfinite(value) or value <= 0:
        return None, f"price {raw!r} is not a positive number"
    return value, ""


def read_catalog_csv(
    path: str | Path,
    *,
    with_prices: bool = False,
    bad_prices: BadPricePolicy = "refuse",
) -> CatalogTable:
    """Reads and validates a catalogue CSV.

    Args:
        path: the CSV file (UTF-8, header row first).
        with_prices: read it as training data: a `price` column is required.
        bad_prices: what to do with a row whose price is missing, non-numeric or <= 0:
            "refuse" raises, "skip" drops the row and records it in `CatalogTable.skipped`.

    Returns:
        The validated table.

    Raises:
        InputError: the file is empty or unreadable, lacks a required column, repeats a
            `sample_id`, or (with `bad_prices="refuse"`) has bad prices. The message names
            the rows.
    """
    if bad_prices not in ("refuse", "skip"):
        raise ValueError(f"bad_prices must be 'refuse' or 'skip', not {bad_prices!r}")
    path = Path(path)
    try:
        handle = path.open(newline="", encoding="utf-8-sig")
    except OSError as exc:
        raise InputError(f"{path}: cannot be read ({exc.strerror or exc})") from exc
    with handle:
        reader = csv.DictReader(handle)
        header = reader.fieldnames
        if not header:
            raise InputError(f"{path}: the file is empty (no header row)")
        required = REQUIRED_COLUMNS + ((PRICE_COLUMN,) if with_prices else ())
        missing = [c for c in required if c not in header]
        if missing:
            raise InputError(
                f"{path}: missing required column(s) {', '.join(missing)}; "
                f"the header has {', '.join(header)}"
            )
        records = list(reader)
    if not records:
        raise InputError(f"{path}: the file has a header but no rows")

    first_seen: dict[str, int] = {}
    duplicates: dict[str, list[int]] = defaultdict(list)
    empty_ids: list[int] = []
    for number, record in enumerate(records, start=1):
        sample_id = (record.get("sample_id") or "").strip()
        if not sample_id:
            empty_ids.append(number)
        elif sample_id in first_seen:
            duplicates[sample_id].append(number)
        else:
            first_seen[sample_id] = number
    if empty_ids:
        raise InputError(f"{path}: empty sample_id in {_describe_rows(empty_ids)}")
    if duplicates:
        details = "; ".join(
            f"{sid!r} in rows {first_seen[sid]}, {', '.join(map(str, rows))}"
            for sid, rows in list(duplicates.items())[:_MAX_LISTED]
        )
        more = len(duplicates) - _MAX_LISTED
        raise InputError(
            f"{path}: {len(duplicates)} duplicate sample_id(s): {details}"
            + (f" and {more} more" if more > 0 else "")
        )

    table = CatalogTable(sample_ids=[], texts=[], image_links=[], row_numbers=[])
    prices: list[float] = []
    bad: list[tuple[int, str]] = []
    for number, record in enumerate(records, start=1):
        if with_prices:
            price, problem = _parse_price(record.get(PRICE_COLUMN))
            if price is None:
                bad.append((number, problem))
                continue
            prices.append(price)
        table.sample_ids.append(record["sample_id"].strip())
        table.texts.append(record.get("catalog_content") or "")
        table.image_links.append((record.get("image_link") or "").strip())
        table.row_numbers.append(number)
    if bad and bad_prices == "refuse":
        listed = "; ".join(f"row {n}: {why}" for n, why in bad[:_MAX_LISTED])
        more = f"; and {len(bad) - _MAX_LISTED} more" if len(bad) > _MAX_LISTED else ""
        raise InputError(
            f"{path}: {len(bad)} row(s) without a usable price ({listed}{more}). "
            "Fix them, or skip them explicitly (--skip-bad-prices)."
        )
    if with_prices:
        table.prices = np.asarray(prices, dtype=np.float64)
        table.skipped = bad
        if not table.sample_ids:
            raise InputError(f"{path}: no row has a usable price")
    return table
