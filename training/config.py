"""What a training run depends on, as recorded in its run.json.

Naming: a `*Config` holds a command's arguments (`TrainConfig` here, `client.predict.PredictConfig`
for predictions), a `*Settings` the knobs of one stage (features, fine-tuning, fusion MLP,
LightGBM, lexical model), and `FusionArchitecture` the shape of a network.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from client.links import LinkPolicy
from client.retrieval import DEFAULT_K
from client.table import BadPricePolicy
from training.encoders import OFFLINE_IMAGE_ENCODER, OFFLINE_TEXT_ENCODER
from training.features import FeatureSettings
from training.finetune import FineTuneSettings
from training.fusion import FusionSettings
from training.gbm import GbmSettings
from training.lexical import LexicalSettings

_STAGES = {"fine_tuning": FineTuneSettings, "fusion": FusionSettings, "gbm": GbmSettings, "lexical": LexicalSettings}


@dataclass
class TrainConfig:
    """Everything a training run depends on; recorded in run.json."""

    csv: Path
    output: Path
    images_dir: Path | None = None
    image_encoder: str = OFFLINE_IMAGE_ENCODER
    text_encoder: str = OFFLINE_TEXT_ENCODER
    # OCR off by default: with the text read off the photos the blend was no better, out of fold
    # or held out (README, "What OCR is worth"), and OCR is most of a photo row's cost
    ocr_engine: str = "none"
    max_tokens: int = 128
    folds: int = 5
    val_fraction: float = 0.0  # an optional held-out part, scored by the deployed (refitted) models only
    seed: int = 42
    bad_prices: BadPricePolicy = "refuse"
    limit_rows: int | None = None
    fine_tuning: FineTuneSettings = field(default_factory=FineTuneSettings)
    fusion: FusionSettings = field(default_factory=FusionSettings)
    gbm: GbmSettings = field(default_factory=GbmSettings)
    lexical: LexicalSettings = field(default_factory=LexicalSettings)
    retrieval_k: int = DEFAULT_K
    csv_encoding: str | None = None
    allow_local_files: bool = False
    allow_private_addresses: bool = False
    allowed_networks: tuple[str, ...] = ()

    def link_policy(self) -> LinkPolicy:
        """Which image links the run may follow (see client.links)."""
        return LinkPolicy.from_options(self.allow_local_files, self.allow_private_addresses, self.allowed_networks)

    def feature_settings(self) -> FeatureSettings:
        """The settings the feature store depends on."""
        return FeatureSettings(image_encoder=self.image_encoder, ocr_engine=self.ocr_engine)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: paths as strings, stage settings as nested objects."""
        raw = asdict(self)
        for name in ("csv", "output", "images_dir"):
            raw[name] = str(raw[name]) if raw[name] is not None else None
        return raw

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> TrainConfig:
        """The inverse of `to_dict`.

        Raises:
            ValueError: a key that is no field of TrainConfig.
        """
        unknown = set(raw) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown training settings {sorted(unknown)}; known: {sorted(cls.__dataclass_fields__)}")
        values = {**raw, "csv": Path(raw["csv"]), "output": Path(raw["output"]),
                  "images_dir": Path(raw["images_dir"]) if raw.get("images_dir") else None,
                  "allowed_networks": tuple(raw.get("allowed_networks", ()))}
        for name, settings in _STAGES.items():
            if name in raw:
                values[name] = settings(**raw[name])
        return cls(**values)
