"""Parity of exported graphs with their source models, measured on real rows.

Each check compares ONNX Runtime (CPU, the file reloaded from disk) with PyTorch or LightGBM and
records the worst row. Batch-size invariance runs the same rows at several batch sizes.
A missed bound raises ParityError naming the model, the output and the worst row.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from typing import ClassVar

import numpy as np
import onnxruntime as ort

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


class Tolerance(ABC):
    """How close an exported output must stay to its source model's output: a metric and its bound."""

    metric: ClassVar[str]
    bound: float

    @abstractmethod
    def score(self, reference: np.ndarray, exported: np.ndarray) -> tuple[float, int, bool]:
        """(metric value, worst row, passed) of float64 [rows, width] outputs."""

    def worst(self, values: list[float]) -> float:
        """The worst of several metric values."""
        return max(values)


@dataclass(frozen=True)
class MinCosine(Tolerance):
    """Every row's cosine similarity to the source is at least `bound` (embeddings)."""

    metric: ClassVar[str] = "min_cosine"
    bound: float = 0.9999

    def score(self, reference: np.ndarray, exported: np.ndarray) -> tuple[float, int, bool]:
        norms = np.linalg.norm(reference, axis=1) * np.linalg.norm(exported, axis=1)
        cosines = (reference * exported).sum(axis=1) / np.maximum(norms, 1e-12)
        return float(cosines.min()), int(cosines.argmin()), bool(cosines.min() >= self.bound)

    def worst(self, values: list[float]) -> float:
        return min(values)


@dataclass(frozen=True)
class MaxAbsDiff(Tolerance):
    """Every |difference| is at most `bound` (log prices, feature vectors)."""

    metric: ClassVar[str] = "max_abs_diff"
    bound: float = 1e-4

    def score(self, reference: np.ndarray, exported: np.ndarray) -> tuple[float, int, bool]:
        row_diff = np.abs(reference - exported).max(axis=1)
        return float(row_diff.max()), int(row_diff.argmax()), bool(row_diff.max() <= self.bound)


@dataclass(frozen=True)
class FractionWithin(Tolerance):
    """At least `bound` of the rows are within `atol` (LightGBM: ONNX sums its trees in float32,
    LightGBM in float64, so a rare row may land across a threshold)."""

    metric: ClassVar[str] = "fraction_within"
    bound: float = 0.9999
    atol: float = 1e-4

    def score(self, reference: np.ndarray, exported: np.ndarray) -> tuple[float, int, bool]:
        row_diff = np.abs(reference - exported).max(axis=1)
        fraction = float((row_diff <= self.atol).mean())
        return fraction, int(row_diff.argmax()), fraction >= self.bound

    def worst(self, values: list[float]) -> float:
        return min(values)


def compare(model: str, output: str, reference: np.ndarray, runs: dict[int, np.ndarray],
            tolerance: Tolerance) -> ParityResult:
    """Compares the exported model's output, run at each batch size in `runs`, with `reference`.

    Every batch size must meet the tolerance; the result reports the worst of them, and the
    largest |difference| between the batch sizes' outputs.
    """
    reference = np.asarray(reference, dtype=np.float64).reshape(len(reference), -1)
    outputs = {size: np.asarray(out, dtype=np.float64).reshape(len(out), -1) for size, out in runs.items()}
    scores = {size: tolerance.score(reference, out) for size, out in outputs.items()}
    value = tolerance.worst([score[0] for score in scores.values()])
    worst_row = next(row for score, row, _ in scores.values() if score == value)
    first = next(iter(outputs.values()))
    return ParityResult(
        model=model, output=output, rows=len(reference), metric=tolerance.metric, value=value,
        bound=tolerance.bound, worst_row=worst_row,
        max_abs_diff=max(float(np.abs(reference - out).max()) for out in outputs.values()),
        batch_sizes=tuple(outputs),
        batch_max_abs_diff=max(float(np.abs(out - first).max()) for out in outputs.values()),
        passed=all(passed for _, _, passed in scores.values()),
    )


def check_graph(model: str, path: str, inputs: dict[str, np.ndarray], references: dict[str, np.ndarray],
                tolerances: dict[str, Tolerance]) -> list[ParityResult]:
    """Runs the ONNX file at `path` on `inputs` at every size of BATCH_SIZES and compares each
    output with its reference under its tolerance.

    Raises:
        ValueError: the references do not name exactly the graph's outputs.
    """
    session = load_session(path)
    names = [output.name for output in session.get_outputs()]
    if set(references) != set(names):
        raise ValueError(f"{model}: references for {sorted(references)}, but the graph's outputs are {names}")
    runs = {size: dict(zip(names, run_in_batches(session, inputs, size))) for size in BATCH_SIZES}
    return [compare(model, name, references[name], {size: run[name] for size, run in runs.items()},
                    tolerances[name]) for name in names]


def raise_on_failure(results: list[ParityResult]) -> None:
    """Raises ParityError listing every failed output."""
    failed = [r for r in results if not r.passed]
    if failed:
        raise ParityError("export parity failed:\n" + "\n".join(r.describe() for r in failed))
