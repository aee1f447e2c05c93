"""CSV input: unusable files are refused before any work, naming the rows."""

from __future__ import annotations

import pytest

from client.errors import InputError
from client.table import read_catalog_csv
from tests.conftest import SAMPLE


def write(tmp_path, text: str):
    path = tmp_path / "input.csv"
    path.write_text(text, encoding="utf-8")
    return path


def test_reads_the_bundled_sample_with_prices():
    table = read_catalog_csv(SAMPLE / "train.csv", with_prices=True)
    assert len(table) == 300
    assert table.prices is not None and (table.prices > 0).all()
    assert table.row_numbers[:3] == [1, 2, 3]


def test_missing_column_is_named(tmp_path):
    path = write(tmp_path, "sample_id,catalog_content\n1,abc\n")
    with pytest.raises(InputError, match="missing required column.*image_link"):
        read_catalog_csv(path)


def test_missing_price_column_only_matters_for_training(tmp_path):
    path = write(tmp_path, "sample_id,catalog_content,image_link\n1,abc,\n")
    assert len(read_catalog_csv(path)) == 1
    with pytest.raises(InputError, match="price"):
        read_catalog_csv(path, with_prices=True)


def test_duplicate_ids_are_refused_with_their_rows(tmp_path):
    path = write(tmp_path, "sample_id,catalog_content,image_link\n7,a,\n8,b,\n7,\"multi\nline\",\n9,c,\n8,d,\n")
    with pytest.raises(InputError) as error:
        read_catalog_csv(path)
    message = str(error.value)
    assert "'7' in rows 1, 3" in message
    assert "'8' in rows 2, 5" in message


def test_empty_file_and_header_only_are_refused(tmp_path):
    with pytest.raises(InputError, match="empty"):
        read_catalog_csv(write(tmp_path, ""))
    with pytest.raises(InputError, match="no rows"):
        read_catalog_csv(write(tmp_path, "sample_id,catalog_content,image_link\n"))


BAD_PRICES = (
    "sample_id,catalog_content,image_link,price\n"
    "1,a,,3.5\n2,b,,\n3,c,,abc\n4,d,,0\n5,e,,-2\n6,f,,12\n"
)


def test_bad_prices_are_refused_with_row_numbers(tmp_path):
    with pytest.raises(InputError) as error:
        read_catalog_csv(write(tmp_path, BAD_PRICES), with_prices=True)
    message = str(error.value)
    assert "4 row(s) without a usable price" in message
    for expected in ("row 2: price is missing", "row 3: price 'abc' is not a number",
                     "row 4: price '0' is not a positive", "row 5: price '-2' is not a positive"):
        assert expected in message


def test_bad_prices_are_skipped_only_when_asked_and_reported(tmp_path):
    table = read_catalog_csv(write(tmp_path, BAD_PRICES), with_prices=True, bad_prices="skip")
    assert table.sample_ids == ["1", "6"]
    assert table.prices.tolist() == [3.5, 12.0]
    assert [row for row, _ in table.skipped] == [2, 3, 4, 5]
