"""Reading catalogue CSV and Parquet files, refusing unusable ones before any work is done.

Parsing is strict: a wrong encoding, an unclosed quote, a row with too few or too many fields
or a field that swallowed whole lines of the file is an error naming the line, never a row
silently lost or shifted. Problems of the file's structure are reported by physical line
number ("line 7"); problems of the content by data-row number ("row 3": the third product in
the file, the header not counted, whatever line breaks its text contains). Parquet input (a
file, or a folder of files as large catalogues are stored) is checked the same way for its
columns and sample_ids; it needs pyarrow (the `ray` extra).
"""

from __future__ import annotations

import codecs
import csv
import io
import math
import re
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from client.errors import InputError, MissingDependencyError

REQUIRED_COLUMNS = ("sample_id", "catalog_content", "image_link")
PRICE_COLUMN = "price"
PARQUET_SUFFIX = ".parquet"
BadPricePolicy = Literal["refuse", "skip"]
_MAX_LISTED = 10

DEFAULT_ENCODING = "utf-8"
"""What a CSV is read as unless it starts with a UTF-16/32 byte-order mark or another
encoding is named; a UTF-8 byte-order mark is accepted and dropped."""

# Longest BOMs first: the UTF-32-LE mark begins with the UTF-16-LE one.
_BOMS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"),
         (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"), (codecs.BOM_UTF8, "utf-8-sig"))
_ENCODING_HINT = "save the file as UTF-8, or name its encoding (--encoding cp1252, latin-1, utf-16, ...)"
_LINK_START = re.compile(r"^(https?|file)://", re.IGNORECASE)

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


def _list_problems(problems: list[str]) -> str:
    more = f"; and {len(problems) - _MAX_LISTED} more" if len(problems) > _MAX_LISTED else ""
    return "; ".join(problems[:_MAX_LISTED]) + more


def _decode(data: bytes, path: Path, encoding: str | None) -> str:
    """The file's text: in `encoding`, else by its byte-order mark, else UTF-8."""
    if encoding is None:
        encoding = next((name for bom, name in _BOMS if data.startswith(bom)), DEFAULT_ENCODING)
    try:
        codec = codecs.lookup(encoding).name
    except LookupError:
        raise InputError(f"unknown encoding {encoding!r}; common ones: utf-8, cp1252, latin-1, utf-16") from None
    if codec == "utf-8":
        codec = "utf-8-sig"  # a UTF-8 byte-order mark is no part of the first column's name
    try:
        return data.decode(codec)
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise InputError(
            f"{path}: line {line}: byte(s) {data[error.start:error.end]!r} at byte {error.start} are not "
            f"valid {encoding}: {_ENCODING_HINT}"
        ) from None


def _parse_records(text: str, path: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """The header and every non-blank record with the line it starts on; strict CSV.

    Raises:
        InputError: a CSV syntax error (an unclosed quote, a quote inside an unquoted field,
            a NUL character), naming its line.
    """
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    records: list[tuple[int, list[str]]] = []
    while True:
        first_line = reader.line_num + 1
        try:
            record = next(reader)
        except StopIteration:
            break
        except csv.Error as error:
            hint = " (a quote that is never closed?)" if "unexpected end of data" in str(error) else ""
            raise InputError(f"{path}: line {first_line}: malformed CSV: {error}{hint}") from None
        if any(field.strip() for field in record):
            records.append((first_line, record))
    if not records:
        raise InputError(f"{path}: the file is empty (no header row)")
    (_, header), *rows = records
    return header, rows


def _swallowed_line(fields: list[str], header: list[str], link_column: int) -> int | None:
    """Where a quoted field holds a whole other row of the file (the sign of an unclosed quote
    that swallowed the rows after it): that line's offset from the record's first line."""
    offset = 0
    for value in fields:
        for number, line in enumerate(value.split("\n")[1:], start=1):
            parsed = next(csv.reader([line]), [])
            if (len(parsed) == len(header) and parsed[0].strip() and " " not in parsed[0].strip()
                    and _LINK_START.match(parsed[link_column].strip())):
                return offset + number
        offset += value.count("\n")
    return None


def _structure_problems(header: list[str], rows: list[tuple[int, list[str]]], link_column: int) -> list[str]:
    problems = []
    for line, fields in rows:
        if len(fields) != len(header):
            problems.append(
                f"line {line}: {len(fields)} field(s), the header has {len(header)} "
                f"({'an unquoted comma in a text?' if len(fields) > len(header) else 'a field missing?'})"
            )
            continue
        swallowed = _swallowed_line(fields, header, link_column)
        if swallowed is not None:
            problems.append(
                f"line {line}: a quoted field runs on over line {line + swallowed}, which reads as a row of "
                "its own (a quote that is never closed?)"
            )
        elif "\n" in fields[0] or "\n" in fields[link_column].strip():
            problems.append(f"line {line}: a line break inside sample_id or image_link (a misplaced quote?)")
    return problems


def _check_sample_ids(path: Path, sample_ids: list[str], numbering: str = "") -> None:
    """Refuses empty and repeated sample_ids, naming their data-row numbers (1-based).

    Raises:
        InputError: a sample_id is empty or repeated; `numbering` is added to the message.
    """
    first_seen: dict[str, int] = {}
    duplicates: dict[str, list[int]] = defaultdict(list)
    empty_ids: list[int] = []
    for number, sample_id in enumerate(sample_ids, start=1):
        if not sample_id:
            empty_ids.append(number)
        elif sample_id in first_seen:
            duplicates[sample_id].append(number)
        else:
            first_seen[sample_id] = number
    if empty_ids:
        raise InputError(f"{path}: empty sample_id in {_describe_rows(empty_ids)}{numbering}")
    if duplicates:
        details = "; ".join(
            f"{sid!r} in rows {first_seen[sid]}, {', '.join(map(str, rows))}"
            for sid, rows in list(duplicates.items())[:_MAX_LISTED]
        )
        more = len(duplicates) - _MAX_LISTED
        raise InputError(
            f"{path}: {len(duplicates)} duplicate sample_id(s): {details}"
            + (f" and {more} more" if more > 0 else "") + numbering
        )


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
    encoding: str | None = None,
) -> CatalogTable:
    """Reads and validates a catalogue CSV.

    Args:
        path: the CSV file (header row first).
        with_prices: read it as training data: a `price` column is required.
        bad_prices: what to do with a row whose price is missing, non-numeric or <= 0:
            "refuse" raises, "skip" drops the row and records it in `CatalogTable.skipped`.
        encoding: the file's text encoding; None reads UTF-8 (or UTF-16/32 when the file
            starts with their byte-order mark).

    Returns:
        The validated table.

    Raises:
        InputError: the file is empty or unreadable, is not valid text in its encoding, is
            malformed CSV (unclosed quotes, rows with the wrong number of fields), lacks a
            required column, repeats a `sample_id`, or (with `bad_prices="refuse"`) has bad
            prices. The message names the lines or rows.
    """
    if bad_prices not in ("refuse", "skip"):
        raise ValueError(f"bad_prices must be 'refuse' or 'skip', not {bad_prices!r}")
    path = Path(path)
    if path.exists() and not path.is_file():  # a folder, a device such as /dev/zero, a pipe
        raise InputError(f"{path}: not a regular file")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"{path}: cannot be read ({exc.strerror or exc})") from exc
    header, rows = _parse_records(_decode(data, path, encoding), path)
    header = [name.strip() for name in header]
    required = REQUIRED_COLUMNS + ((PRICE_COLUMN,) if with_prices else ())
    missing = [c for c in required if c not in header]
    if missing:
        raise InputError(
            f"{path}: missing required column(s) {', '.join(missing)}; the header has {', '.join(header)}"
        )
    repeated = sorted({name for name in header if header.count(name) > 1})
    if repeated:
        raise InputError(f"{path}: the header names column(s) {', '.join(repeated)} more than once")
    if not rows:
        raise InputError(f"{path}: the file has a header but no rows")
    problems = _structure_problems(header, rows, header.index("image_link"))
    if problems:
        raise InputError(f"{path}: {len(problems)} malformed line(s): {_list_problems(problems)}")
    records = [dict(zip(header, fields)) for _, fields in rows]

    _check_sample_ids(path, [(record.get("sample_id") or "").strip() for record in records])

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
        listed = _list_problems([f"row {n}: {why}" for n, why in bad])
        raise InputError(
            f"{path}: {len(bad)} row(s) without a usable price ({listed}). "
            "Fix them, or skip them explicitly (--skip-bad-prices)."
        )
    if with_prices:
        table.prices = np.asarray(prices, dtype=np.float64)
        table.skipped = bad
        if not table.sample_ids:
            raise InputError(f"{path}: no row has a usable price")
    return table


def is_parquet(path: Path) -> bool:
    """Whether an input is read as Parquet: a `.parquet` file, or a folder of them."""
    return path.is_dir() or path.suffix.lower() == PARQUET_SUFFIX


def catalog_files(path: Path) -> list[Path]:
    """The files an input consists of: the file itself, or a folder's `*.parquet` files in name order.

    Raises:
        InputError: the folder holds no `.parquet` file.
    """
    if not path.is_dir():
        return [path]
    files = sorted(path.glob(f"*{PARQUET_SUFFIX}"))
    if not files:
        raise InputError(f"{path}: a folder without {PARQUET_SUFFIX} files")
    return files


def read_catalog(path: str | Path, *, encoding: str | None = None) -> CatalogTable:
    """Reads the catalogue to predict: a CSV file, a Parquet file or a folder of Parquet files.

    Args:
        path: the input.
        encoding: a CSV's text encoding (see `read_catalog_csv`); Parquet stores UTF-8.

    Raises:
        InputError: the input is unusable (see `read_catalog_csv` and `read_catalog_parquet`).
        MissingDependencyError: the input is Parquet and pyarrow is not installed.
    """
    path = Path(path)
    return read_catalog_parquet(path) if is_parquet(path) else read_catalog_csv(path, encoding=encoding)


def _as_text(value: object) -> str:
    """A Parquet cell as the CSV reader would give it: "" for a null, numbers as their digits."""
    return "" if value is None else str(value)


def read_catalog_parquet(path: str | Path) -> CatalogTable:
    """Reads and validates a Parquet catalogue: one file, or a folder of `*.parquet` files read in
    name order as one table.

    Columns other than the required ones are not read. Nulls read as empty text; a numeric
    sample_id reads as its digits.

    Raises:
        InputError: a file is not Parquet or lacks a required column, there are no rows, or a
            sample_id is empty or repeated (rows numbered across the files, in name order).
        MissingDependencyError: pyarrow is not installed.
    """
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as error:
        raise MissingDependencyError(
            f"reading Parquet ({path}) needs pyarrow: pip install 'multimodal-price[ray]'"
        ) from error
    path = Path(path)
    files = catalog_files(path)
    columns: dict[str, list[str]] = {name: [] for name in REQUIRED_COLUMNS}
    for file in files:
        try:
            names = pq.read_schema(file).names
            missing = [c for c in REQUIRED_COLUMNS if c not in names]
            if missing:
                raise InputError(
                    f"{file}: missing required column(s) {', '.join(missing)}; the file has {', '.join(names)}"
                )
            part = pq.read_table(file, columns=list(REQUIRED_COLUMNS))
        except (OSError, pa.ArrowException) as error:
            raise InputError(f"{file}: not a readable Parquet file ({error})") from None
        for name in REQUIRED_COLUMNS:
            columns[name].extend(_as_text(value) for value in part.column(name).to_pylist())
    if not columns["sample_id"]:
        raise InputError(f"{path}: no rows")
    sample_ids = [sample_id.strip() for sample_id in columns["sample_id"]]
    numbering = f" (rows numbered across its {len(files)} files in name order)" if len(files) > 1 else ""
    _check_sample_ids(path, sample_ids, numbering)
    return CatalogTable(
        sample_ids=sample_ids,
        texts=columns["catalog_content"],
        image_links=[link.strip() for link in columns["image_link"]],
        row_numbers=list(range(1, len(sample_ids) + 1)),
    )
