"""The folder a training run writes and export reads.

::

    features/               feature store (image embeddings, OCR cache, catalogue features)
    image_cache/            downloaded images
    The deployed models, each refitted on every labelled row:
    text_encoder/           the fine-tuned text encoder (sentence-transformers folder + tokenizer)
                            and its price head
    text_embeddings.npy     its embedding of every row
    text_stage.npz, .json   the text encoder stage's outputs (each fold's encoder on every labelled
                            row, the refit on every row), under a fingerprint of what they depend
                            on (reused by a rerun that changes later stages only)
    fusion.safetensors      fusion MLP weights + fusion.json (architecture)
    lightgbm.txt            the LightGBM stacker (its own text format)
    price_priors.json       the brand and unit-price tables the stacker's priors come from
    lexical.safetensors     hashed n-gram TF-IDF + Ridge + lexical.json (settings)
    retrieval.faiss         FAISS IndexFlatIP of the labelled rows' retrieval vectors
    retrieval_*.npy         their log prices and image groups
    blend.json              seed and fitted blend weights (fitted on the OOF estimates)

    What the cross-fitting measured:
    folds.json              the fold of every labelled sample id, and the held-out validation ids
    stack_features.npy      the stacker's OOF input rows (labelled rows, in table order)
    oof_predictions.csv     every labelled row's out-of-fold estimate per component and blend
    validation_predictions.csv  the deployed models' predictions of the validation rows (if any)
    report.json, plots/     OOF SMAPE per component and blend with the folds' spread (and beside it
                            the validation rows' score, if any), timings
    run.json                settings, seeds, package versions, model identities
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from client.errors import InputError
from client.files import atomic_write
from training.config import TrainConfig


@dataclass(frozen=True)
class RunDir:
    """A training run's folder: the path of every artifact, and its records read back.

    Args:
        root: the folder `train` wrote (or is writing).
    """

    root: Path

    @property
    def features(self) -> Path:
        return self.root / "features"

    @property
    def image_cache(self) -> Path:
        return self.root / "image_cache"

    @property
    def text_encoder(self) -> Path:
        return self.root / "text_encoder"

    @property
    def text_embeddings(self) -> Path:
        return self.root / "text_embeddings.npy"

    @property
    def text_stage(self) -> Path:
        return self.root / "text_stage.npz"

    def write_text_stage(self, fingerprint: str, per_fold: np.ndarray, served: np.ndarray,
                         history: list[dict]) -> None:
        """Keeps the text encoder stage's outputs; the JSON, written last, marks them complete."""
        with atomic_write(self.text_stage, "wb") as handle:
            np.savez(handle, per_fold=per_fold, served=served)
        self.write_json(self.text_stage.with_suffix(".json"), {"fingerprint": fingerprint, "history": history})

    def read_text_stage(self, fingerprint: str) -> tuple[np.ndarray, np.ndarray, list[dict]] | None:
        """The outputs `write_text_stage` kept under this fingerprint, or None."""
        record_path = self.text_stage.with_suffix(".json")
        if not (record_path.is_file() and self.text_stage.is_file() and self.text_encoder.is_dir()):
            return None
        record = self.read_json(record_path)
        if record.get("fingerprint") != fingerprint:
            return None
        with np.load(self.text_stage, allow_pickle=False) as data:
            return data["per_fold"], data["served"], record["history"]

    @property
    def fusion_weights(self) -> Path:
        return self.root / "fusion.safetensors"

    @property
    def fusion_architecture(self) -> Path:
        return self.root / "fusion.json"

    @property
    def lightgbm(self) -> Path:
        return self.root / "lightgbm.txt"

    @property
    def price_priors(self) -> Path:
        return self.root / "price_priors.json"

    @property
    def lexical_weights(self) -> Path:
        return self.root / "lexical.safetensors"

    @property
    def lexical_settings(self) -> Path:
        return self.root / "lexical.json"

    @property
    def retrieval(self) -> Path:
        """The folder of the retrieval index's files (client.retrieval.NeighbourIndex)."""
        return self.root

    @property
    def blend(self) -> Path:
        return self.root / "blend.json"

    @property
    def folds(self) -> Path:
        return self.root / "folds.json"

    @property
    def stack_features(self) -> Path:
        return self.root / "stack_features.npy"

    @property
    def oof_predictions(self) -> Path:
        return self.root / "oof_predictions.csv"

    @property
    def validation_predictions(self) -> Path:
        return self.root / "validation_predictions.csv"

    @property
    def report(self) -> Path:
        return self.root / "report.json"

    @property
    def plots(self) -> Path:
        return self.root / "plots"

    @property
    def run_info(self) -> Path:
        return self.root / "run.json"

    def write_json(self, path: Path, content: dict[str, Any]) -> None:
        """Writes one of the run's JSON records (indented, paths as strings)."""
        path.write_text(json.dumps(content, indent=2, default=str))

    def read_json(self, path: Path) -> dict[str, Any]:
        """Reads one of the run's JSON records.

        Raises:
            FileNotFoundError: naming the file, when the folder is no finished training run.
            InputError: the file is not JSON (a run cut short while writing it, or edited).
        """
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: is {self.root} a folder written by `train` that finished?")
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise InputError(f"{path} is unreadable ({error}): train the run again") from None

    def config(self) -> TrainConfig:
        """The run's settings as recorded in run.json, with `output` where the run is now."""
        config = TrainConfig.from_dict(self.read_json(self.run_info)["config"])
        config.output = self.root
        return config

    def model_identities(self) -> dict[str, Any]:
        """The identities of the encoders the run used (run.json's "models")."""
        return self.read_json(self.run_info)["models"]
