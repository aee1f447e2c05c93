"""Validation SMAPE of a training run beside a TF-IDF + Ridge baseline on the same split.

    python benchmarks/accuracy.py RUN_DIR

The baseline (word 1-2-grams + char 2-5-grams, Ridge on log1p(price)) is trained on the run's
training rows and scored on its validation rows, read from RUN_DIR/split.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np
from scipy.sparse import hstack
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import Ridge

from client.blend import smape, to_price
from client.table import read_catalog_csv


def tfidf_ridge(train_texts: list[str], train_prices: np.ndarray, test_texts: list[str]) -> np.ndarray:
    """TF-IDF word + char n-grams, Ridge on log1p(price); returns predicted prices."""
    word = TfidfVectorizer(ngram_range=(1, 2), min_df=2, max_features=200_000, sublinear_tf=True)
    char = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), min_df=3, max_features=300_000, sublinear_tf=True)
    train = hstack([word.fit_transform(train_texts), char.fit_transform(train_texts)]).tocsr()
    test = hstack([word.transform(test_texts), char.transform(test_texts)]).tocsr()
    model = Ridge(alpha=1.0).fit(train, np.log1p(train_prices))
    return to_price(model.predict(test))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="training output folder")
    args = parser.parse_args(argv)

    run_config = json.loads((args.run / "run.json").read_text())["config"]
    table = read_catalog_csv(run_config["csv"], with_prices=True, bad_prices="skip")
    split = json.loads((args.run / "split.json").read_text())
    row_of = {sid: i for i, sid in enumerate(table.sample_ids)}
    train_rows = [row_of[s] for s in split["train"]]
    val_rows = [row_of[s] for s in split["validation"]]

    with (args.run / "validation_predictions.csv").open(newline="") as handle:
        predictions = list(csv.DictReader(handle))
    assert [p["sample_id"] for p in predictions] == split["validation"]
    prices = np.array([float(p["price"]) for p in predictions])

    started = time.perf_counter()
    baseline = tfidf_ridge([table.texts[i] for i in train_rows], table.prices[train_rows],
                           [table.texts[i] for i in val_rows])
    baseline_seconds = time.perf_counter() - started

    report = json.loads((args.run / "report.json").read_text())
    print(f"validation rows: {len(val_rows)} (training rows: {len(train_rows)}; split grouped by image_link)")
    print(f"{'estimate':<22}{'SMAPE':>8}")
    for name in [k for k in predictions[0] if k not in ("sample_id", "price")]:
        print(f"{name:<22}{smape(prices, np.array([float(p[name]) for p in predictions])):>8.2f}")
    print(f"{'tfidf_ridge':<22}{smape(prices, baseline):>8.2f}   (fit in {baseline_seconds:.0f} s)")
    print(f"{'median_price':<22}{smape(prices, np.full(len(prices), np.median(table.prices[train_rows]))):>8.2f}")
    print(f"training wall time: {report['timings']['total_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
