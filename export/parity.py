"""Parity of exported graphs with their source models, measured on real rows.

Each check compares ONNX Runtime (CPU, the file reloaded from disk) with PyTorch or LightGBM and
records the worst row. Batch-size invariance runs the same rows at several batch sizes.
A missed bound raises ParityError naming the model, the output and the worst row.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import onnxruntime as ort

EMBEDDING_MIN_COSINE = 0.9999
LOG_PRICE_MAX_ABS = 1e-4
GBM_MIN_FRACTION_WITHIN = 0.9999
BATCH_SIZES = (1, 7, 64)


class ParityError(ValueError):
    """An exported graph's outputs are further from the source model's than the bound allows."""


@dataclass
class ParityResult:
    """One output of one model: how far ONNX Runtime is from the source, and where it is worst."""

    model: str
    output: str
    rows: int
    metric: str
    value: float
    bound: float
    worst_row: int
    max_abs_diff: float
    batch_sizes: tuple[int, ...] = ()
    batch_max_abs_diff: float = 0.0
    passed: bool = True

    def as_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        verdict = "ok" if self.passed else "FAILED"
        return (f"{self.model}.{self.output}: {self.metric}={self.value:.6g} (bound {self.bound:g}), "
                f"max|diff|={self.max_abs_diff:.3g}, worst row {self.worst_row}, {self.rows} rows; "
                f"batch sizes {list(self.batch_sizes)} max|diff|={self.batch_max_abs_diff:.3g} [{verdict}]")


def load_session(path: str) -> ort.InferenceSession:
    """A CPU session over an ONNX file on disk."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(path, sess_options=options, providers=["CPUExecutionProvider"])


def run_in_batches(session: ort.InferenceSession, inputs: dict[str, np.ndarray], batch_size: int) -> list[np.ndarray]:
    """All outputs of `session` over the rows of `inputs`, fed `batch_size` rows at a time."""
    rows = len(next(iter(inputs.values())))
    chunks = [
        session.run(None, {name: array[start : start + batch_size] for name, array in inputs.items()})
        for start in range(0, rows, batch_size)
    ]
    return [np.concatenate([chunk[i] for chunk in chunks]) for i in range(len(chunks[0]))]


def _score(metric: str, reference: np.ndarray, exported: np.ndarray) -> tuple[float, int, bool]:
    """(value, worst row, passed) of one comparison."""
    row_diff = np.abs(reference - exported).max(axis=1)
    if metric == "min_cosine":
        norms = np.linalg.norm(reference, axis=1) * np.linalg.norm(exported, axis=1)
        cosines = (reference * exported).sum(axis=1) / np.maximum(norms, 1e-12)
        return float(cosines.min()), int(cosines.argmin()), bool(cosines.min() >= EMBEDDING_MIN_COSINE)
    if metric == "max_abs_diff":
        return float(row_diff.max()), int(row_diff.argmax()), bool(row_diff.max() <= LOG_PRICE_MAX_ABS)
    if metric == "fraction_within":
        fraction = float((row_diff <= LOG_PRICE_MAX_ABS).mean())
        return fraction, int(row_diff.argmax()), fraction >= GBM_MIN_FRACTION_WITHIN
    raise ValueError(f"unknown parity metric {metric!r}; choose one of {', '.join(BOUNDS)}")


BOUNDS = {"min_cosine": EMBEDDING_MIN_COSINE, "max_abs_diff": LOG_PRICE_MAX_ABS,
          "fraction_within": GBM_MIN_FRACTION_WITHIN}


def compare(model: str, output: str, reference: np.ndarray, runs: dict[int, np.ndarray], metric: str) -> ParityResult:
    """Compares the exported model's output, run at each batch size in `runs`, with `reference`.

    Metrics:
        "min_cosine": per-row cosine similarity >= EMBEDDING_MIN_COSINE (embeddings);
        "max_abs_diff": every |difference| <= LOG_PRICE_MAX_ABS (the MLP's log price);
        "fraction_within": at least GBM_MIN_FRACTION_WITHIN of the rows within LOG_PRICE_MAX_ABS
            (LightGBM: ONNX sums its trees in float32, LightGBM in float64).

    Every batch size must meet the bound; the result reports the worst of them, and the largest
    |difference| between the batch sizes' outputs.
    """
    reference = np.asarray(reference, dtype=np.float64).reshape(len(reference), -1)
    outputs = {size: np.asarray(out, dtype=np.float64).reshape(len(out), -1) for size, out in runs.items()}
    scores = {size: _score(metric, reference, out) for size, out in outputs.items()}
    higher_is_better = metric != "max_abs_diff"
    value, worst_row, _ = (min if higher_is_better else max)(scores.values(), key=lambda score: score[0])
    first = next(iter(outputs.values()))
    return ParityResult(
        model=model, output=output, rows=len(reference), metric=metric, value=value, bound=BOUNDS[metric],
        worst_row=worst_row,
        max_abs_diff=max(float(np.abs(reference - out).max()) for out in outputs.values()),
        batch_sizes=tuple(outputs),
        batch_max_abs_diff=max(float(np.abs(out - first).max()) for out in outputs.values()),
        passed=all(passed for _, _, passed in scores.values()),
    )


def raise_on_failure(results: list[ParityResult]) -> None:
    """Raises ParityError listing every failed output."""
    failed = [r for r in results if not r.passed]
    if failed:
        raise ParityError("export parity failed:\n" + "\n".join(r.describe() for r in failed))
