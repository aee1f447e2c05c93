"""Out-of-fold SMAPE of the default training, per component and blend, beside TF-IDF + Ridge
cross-fitted on the same folds.

    python benchmarks/accuracy.py [--seeds 42] [--output runs/accuracy] [--csv ... --images ...]

Each seed gets a full default training run (`train`: K folds grouped by image_link, every model
cross-fitted, then refitted on all rows) in OUTPUT/seed-<seed>. A seed whose run folder already
holds a report is not retrained (`--retrain` forces it). Later seeds start from a copy of the
first seed's feature store (image embeddings and OCR do not depend on the seed).

The baseline (word 1-2-grams + char_wb 2-5-grams TF-IDF, Ridge alpha 1 on log1p(price)) is fitted
on each fold's other folds, vocabulary included, and scores that fold's rows: the same rows and
folds as the run's OOF estimates (read from its folds.json and oof_predictions.csv). The margin
of each estimate over the baseline is also given fold by fold (paired: fold difficulty cancels).
"""

from __future__ import annotations

import argparse
import csv
import shutil
import sys
import time
from pathlib import Path

import numpy as np
from scipy.sparse import hstack
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import Ridge

from client.blend import smape, to_price
from client.table import CatalogTable, read_catalog_csv
from training.config import TrainConfig
from training.pipeline import train
from training.run_dir import RunDir

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "amazon2025"


def tfidf_ridge(train_texts: list[str], train_prices: np.ndarray, test_texts: list[str]) -> np.ndarray:
    """TF-IDF word + char n-grams, Ridge on log1p(price); returns predicted prices."""
    word = TfidfVectorizer(ngram_range=(1, 2), min_df=2, max_features=200_000, sublinear_tf=True)
    char = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), min_df=3, max_features=300_000, sublinear_tf=True)
    train_matrix = hstack([word.fit_transform(train_texts), char.fit_transform(train_texts)]).tocsr()
    test_matrix = hstack([word.transform(test_texts), char.transform(test_texts)]).tocsr()
    model = Ridge(alpha=1.0).fit(train_matrix, np.log1p(train_prices))
    return to_price(model.predict(test_matrix))


def run_seed(args, seed: int, first_run: Path | None) -> Path:
    run = RunDir(args.output / f"seed-{seed}")
    if run.report.is_file() and not args.retrain:
        return run.root
    if first_run is not None and not run.features.exists():
        shutil.copytree(RunDir(first_run).features, run.features)
    train(TrainConfig(csv=args.csv, output=run.root, images_dir=args.images, seed=seed))
    return run.root


def score_run(run: Path, table: CatalogTable) -> dict[str, np.ndarray]:
    """Per-fold SMAPE [k] of every OOF estimate of the run and of the cross-fitted baseline."""
    run_dir = RunDir(run)
    with run_dir.oof_predictions.open(newline="") as handle:
        records = list(csv.DictReader(handle))
    row_of = {sample_id: i for i, sample_id in enumerate(table.sample_ids)}
    rows = np.asarray([row_of[r["sample_id"]] for r in records])
    fold = np.asarray([int(r["fold"]) for r in records])
    names = [name for name in records[0] if name not in ("sample_id", "price", "fold")]
    predicted = {name: np.asarray([float(r[name]) for r in records]) for name in names}
    started = time.perf_counter()
    baseline = np.zeros(len(rows))
    for k in range(fold.max() + 1):
        train_rows, held_out = rows[fold != k], rows[fold == k]
        baseline[fold == k] = tfidf_ridge([table.texts[i] for i in train_rows], table.prices[train_rows],
                                          [table.texts[i] for i in held_out])
    predicted["tfidf_ridge (same folds)"] = baseline
    print(f"TF-IDF + Ridge cross-fitted in {time.perf_counter() - started:.0f} s")
    prices = table.prices[rows]
    scores = {name: np.asarray([smape(prices[fold == k], values[fold == k]) for k in range(fold.max() + 1)])
              for name, values in predicted.items()}
    scores["all"] = {name: smape(prices, values) for name, values in predicted.items()}
    return scores


def print_run(seed: int, run: Path, scores: dict) -> None:
    report = RunDir(run).read_json(RunDir(run).report)
    overall = scores.pop("all")
    baseline = scores["tfidf_ridge (same folds)"]
    honest = report["blend_cross_fitted_smape"]
    print(f"\nseed {seed}: {report['rows']['labelled']} labelled rows, {report['folds']['k']} folds grouped by "
          f"image_link (the text encoder fine-tuned in each); run {run}")
    print(f"{'OOF SMAPE':<38}{'all rows':>9}{'folds min-max':>16}{'margin':>9}{'paired margin min-max':>24}")
    rows = [(name, overall[name], per_fold) for name, per_fold in scores.items()]
    rows.append(("blend, weights fitted on other folds", honest["all"], np.asarray(honest["folds"])))
    for name, value, per_fold in rows:
        paired = baseline - per_fold
        print(f"{name:<38}{value:>9.2f}{per_fold.min():>9.2f}-{per_fold.max():<6.2f}"
              f"{overall['tfidf_ridge (same folds)'] - value:>9.2f}{paired.min():>14.2f} to {paired.max():.2f}")
    print(f"median price (other folds): {report['baseline_median_smape']:.2f}")
    print("blend weights: " + ", ".join(f"{k} {v:.2f}" for k, v in report["blend_weights"]["fitted"].items()))
    timings = report["timings"]
    print("training wall time (s): " + ", ".join(f"{k.removesuffix('_s')} {v:.0f}" for k, v in timings.items())
          + f"; feature store chunks computed {report['feature_store']['chunks_computed']}, "
            f"reused {report['feature_store']['chunks_reused']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[42], help="one run per seed")
    parser.add_argument("--output", type=Path, default=Path("runs/accuracy"))
    parser.add_argument("--csv", type=Path, default=DATA / "train.csv")
    parser.add_argument("--images", type=Path, default=DATA / "images")
    parser.add_argument("--retrain", action="store_true", help="retrain seeds that already have a run")
    args = parser.parse_args(argv)

    table = read_catalog_csv(args.csv, with_prices=True, bad_prices="skip")
    runs: list[Path] = []
    for seed in args.seeds:
        runs.append(run_seed(args, seed, runs[0] if runs else None))
        print_run(seed, runs[-1], score_run(runs[-1], table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
