"""Which rows a model may learn from: an optional held-out validation part, and K folds over
the rest, all grouped by image_link (rows that share a photo are always on the same side).

Cross-fitting: for each fold, a model is fitted on the other folds' rows and predicts the fold's
rows, so every labelled row gets an out-of-fold (OOF) prediction from a model that never saw it.
The deployed models are then refitted on every labelled row.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
from sklearn.model_selection import GroupKFold, GroupShuffleSplit

from client.blend import smape


def image_groups(links: list[str]) -> np.ndarray:
    """One integer per row; rows sharing an image link share it, rows without a link get their own."""
    codes: dict[str, int] = {}
    groups = np.empty(len(links), dtype=np.int64)
    for row, link in enumerate(links):
        key = link if link else f"\x00row{row}"
        groups[row] = codes.setdefault(key, len(codes))
    return groups


def grouped_split(groups: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Training and validation row indices; no group is on both sides."""
    splitter = GroupShuffleSplit(n_splits=1, test_size=val_fraction, random_state=seed)
    train_rows, val_rows = next(splitter.split(np.zeros(len(groups)), groups=groups))
    return np.sort(train_rows), np.sort(val_rows)


@dataclass(frozen=True)
class Folds:
    """K grouped folds over the labelled rows of a run.

    Attributes:
        rows: the labelled rows the folds cover (indices into the table), sorted.
        fold: the fold of each of those rows, aligned with `rows`.
    """

    rows: np.ndarray
    fold: np.ndarray

    @classmethod
    def grouped(cls, rows: np.ndarray, groups: np.ndarray, k: int, seed: int) -> Folds:
        """Shuffled K-fold of `rows`, grouped by `groups[rows]`.

        Raises:
            ValueError: fewer than 2 folds, or fewer groups than folds.
        """
        if k < 2:
            raise ValueError(f"cross-fitting needs at least 2 folds, not {k}")
        rows = np.sort(np.asarray(rows))
        if len(np.unique(groups[rows])) < k:
            raise ValueError(f"{k} folds need at least {k} distinct image links among {len(rows)} labelled rows")
        fold = np.empty(len(rows), dtype=np.int64)
        splitter = GroupKFold(n_splits=k, shuffle=True, random_state=seed)
        for index, (_, held_out) in enumerate(splitter.split(rows, groups=groups[rows])):
            fold[held_out] = index
        return cls(rows, fold)

    @property
    def k(self) -> int:
        return int(self.fold.max()) + 1

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(training rows, held-out rows) of each fold, as table indices."""
        for index in range(self.k):
            yield self.rows[self.fold != index], self.rows[self.fold == index]

    def fold_of(self, held_out: np.ndarray) -> int:
        """The index of the fold whose held-out rows (as `__iter__` yields them) these are."""
        return int(self.fold[np.searchsorted(self.rows, held_out[0])])


def cross_fit(folds: Folds, fit_predict: Callable[[np.ndarray, np.ndarray], np.ndarray],
              n_rows: int) -> np.ndarray:
    """Out-of-fold predictions: `fit_predict(train_rows, held_out_rows)` fits on the first and
    returns predictions for the second (one value or one array per row), once per fold.

    Returns:
        float64 [n_rows, ...]: each labelled row's OOF prediction; NaN for rows outside the folds.
    """
    oof = None
    for train_rows, held_out in folds:
        predicted = np.asarray(fit_predict(train_rows, held_out), dtype=np.float64)
        if oof is None:
            oof = np.full((n_rows, *predicted.shape[1:]), np.nan)
        oof[held_out] = predicted
    return oof


def cross_fit_every_row(folds: Folds, fit_predict: Callable[[np.ndarray, np.ndarray], np.ndarray],
                        n_rows: int) -> np.ndarray:
    """Each fold's model on every labelled row: `fit_predict(train_rows, rows)` fits on the first
    and returns predictions for all of `rows` (`folds.rows`), once per fold.

    A later stage cross-fitted on the same folds then learns, in fold f, from what fold f's model
    makes of the rows it was fitted on, and is scored on what it makes of rows it never saw: the
    same kind of inputs as the refit on every row feeds the deployed stage.

    Returns:
        float32 [k, n_rows, ...]: fold f's predictions in [f]; NaN for rows outside the folds.
    """
    every_row = None
    for index, (train_rows, _) in enumerate(folds):
        predicted = np.asarray(fit_predict(train_rows, folds.rows), dtype=np.float32)
        if every_row is None:
            every_row = np.full((folds.k, n_rows, *predicted.shape[1:]), np.nan, dtype=np.float32)
        every_row[index, folds.rows] = predicted
    return every_row


def per_fold_smape(folds: Folds, prices: np.ndarray, predicted: np.ndarray) -> list[float]:
    """SMAPE of each fold's held-out rows (prices and predictions indexed by table row)."""
    return [smape(prices[held_out], predicted[held_out]) for _, held_out in folds]
