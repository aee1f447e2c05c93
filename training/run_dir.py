"""The folder a training run writes and export reads.

::

    features/               feature store (image embeddings, OCR cache, catalogue features)
    image_cache/            downloaded images
    text_encoder/           the fine-tuned text encoder (sentence-transformers folder + tokenizer)
                            and its price head
    text_embeddings.npy     its embedding of every row
    fusion.safetensors      fusion MLP weights + fusion.json (architecture)
    lightgbm.txt            LightGBM model (its own text format)
    lexical.safetensors     hashed n-gram TF-IDF + Ridge + lexical.json (settings)
    retrieval.faiss         FAISS IndexFlatIP of the fit rows' retrieval vectors
    retrieval_*.npy         their log prices and image groups
    blend.json              seed and fitted blend weights
    split.json              fit / blend / validation sample ids
    validation_predictions.csv
    report.json, plots/     SMAPE per component and blend, coverage, timings
    run.json                settings, seeds, package versions, model identities
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from client.errors import InputError
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
    def fusion_weights(self) -> Path:
        return self.root / "fusion.safetensors"

    @property
    def fusion_architecture(self) -> Path:
        return self.root / "fusion.json"

    @property
    def lightgbm(self) -> Path:
        return self.root / "lightgbm.txt"

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
    def split(self) -> Path:
        return self.root / "split.json"

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
