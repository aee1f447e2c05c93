"""Validation SMAPE of the default training, per component and blend, beside TF-IDF + Ridge on
the same rows, for one or more seeds.

    python benchmarks/accuracy.py [--seeds 42 7] [--output runs/accuracy] [--csv ... --images ...]

Each seed gets a full default training run (`train`) in OUTPUT/seed-<seed>, split grouped by
image_link: 20% validation rows, which no model or blend weight sees. A seed whose run folder
already holds a report is not retrained (`--retrain` forces it). Later seeds start from a copy of
the first seed's feature store (image embeddings and OCR do not depend on the seed), so only the
first seed's wall time is a training from scratch.

The baseline (word 1-2-grams + char_wb 2-5-grams TF-IDF, Ridge on log1p(price)) is trained on
all non-validation rows of the same split (fit and blend rows) and scored on its validation rows.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
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


def score_run(run: Path, table: CatalogTable) -> dict[str, float]:
    """The run's validation SMAPE per estimate, TF-IDF + Ridge's on the same rows, wall time."""
    run_dir = RunDir(run)
    report, split = run_dir.read_json(run_dir.report), run_dir.read_json(run_dir.split)
    row_of = {sample_id: i for i, sample_id in enumerate(table.sample_ids)}
    train_rows = [row_of[s] for s in split["fit"] + split["blend"]]
    val_rows = [row_of[s] for s in split["validation"]]
    started = time.perf_counter()
    baseline = tfidf_ridge([table.texts[i] for i in train_rows], table.prices[train_rows],
                           [table.texts[i] for i in val_rows])
    scores = dict(report["validation_smape"])
    scores["tfidf_ridge"] = smape(table.prices[val_rows], baseline)
    scores["median_price"] = report["baseline_median_smape"]
    scores["training_wall_s"] = report["timings"]["total_s"]
    scores["tfidf_ridge_fit_s"] = time.perf_counter() - started
    return scores


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[42], help="one run per seed (two give the spread)")
    parser.add_argument("--output", type=Path, default=Path("runs/accuracy"))
    parser.add_argument("--csv", type=Path, default=DATA / "train.csv")
    parser.add_argument("--images", type=Path, default=DATA / "images")
    parser.add_argument("--retrain", action="store_true", help="retrain seeds that already have a run")
    args = parser.parse_args(argv)

    runs: list[Path] = []
    for seed in args.seeds:
        runs.append(run_seed(args, seed, runs[0] if runs else None))
    table = read_catalog_csv(args.csv, with_prices=True, bad_prices="skip")
    scores = [score_run(run, table) for run in runs]

    first = RunDir(runs[0])
    report = first.read_json(first.report)
    rows = report["rows"]
    print(f"rows: {rows['total']}; split grouped by image_link: {rows['fit']} fit, {rows['blend']} blend, "
          f"{rows['validation']} validation (run {runs[0]})")
    names = [k for k in scores[0] if k not in ("training_wall_s", "tfidf_ridge_fit_s")]
    header = "".join(f"{'seed ' + str(s):>10}" for s in args.seeds)
    print(f"{'validation SMAPE':<20}{header}" + (f"{'spread':>10}" if len(runs) > 1 else ""))
    for name in names:
        values = [s[name] for s in scores]
        spread = f"{max(values) - min(values):>10.2f}" if len(values) > 1 else ""
        print(f"{name:<20}" + "".join(f"{v:>10.2f}" for v in values) + spread)
    fitted = [s["blend_fitted"] for s in scores]
    margin = [s["tfidf_ridge"] - s["blend_fitted"] for s in scores]
    print(f"fitted blend: mean {statistics.mean(fitted):.2f}; better than TF-IDF + Ridge by "
          + ", ".join(f"{m:.2f}" for m in margin) + " points")
    print("training wall time (s): " + ", ".join(
        f"seed {seed} {s['training_wall_s']:.0f}" + (" (feature store copied from the first seed)" if i else "")
        for i, (seed, s) in enumerate(zip(args.seeds, scores))))
    print("blend weights (seed {}): {}".format(
        args.seeds[0], ", ".join(f"{k} {v:.2f}" for k, v in report["blend_weights"]["fitted"].items())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
