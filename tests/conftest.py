"""Session-scoped fixtures for the heavy parts: one training run on the bundled sample, its
export, and a real Triton server over that export."""

from __future__ import annotations

import csv
import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no model hub here: fail fast instead of retrying

PROJECT = Path(__file__).resolve().parents[1]
SAMPLE = PROJECT / "sample"
SHARED_DATA = PROJECT.parent / "shared" / "data" / "amazon2025"

# The two truncated photos of the bundled sample (kept exactly as published).
TRUNCATED_SAMPLE_IDS = ("41876", "127274")


# Real product photos: the 845 of ../shared/data/amazon2025 where they are beside the checkout,
# else the bundled sample's. The photos that tests name are in both folders, byte for byte.
PHOTOS = SHARED_DATA / "images" if (SHARED_DATA / "images").is_dir() else SAMPLE / "images"
# the sample run reads its photos' text although training's default does not: the tests cover
# the OCR path (training, export, in-process and Triton serving)
SAMPLE_OCR = "rapidocr"


def input_ids(path: Path) -> list[str]:
    """The sample_ids of a catalogue CSV, in file order."""
    with path.open(newline="", encoding="utf-8") as handle:
        return [row["sample_id"] for row in csv.DictReader(handle)]


@pytest.fixture(scope="session")
def sample_run(tmp_path_factory) -> Path:
    """A small but complete training run on the bundled sample, with OCR: 3 folds (1 fine-tuning
    epoch), up to 3 MLP epochs and 100 stacker rounds, 20% of the rows held out as validation rows."""
    from training.config import TrainConfig
    from training.finetune import FineTuneSettings
    from training.fusion import FusionSettings
    from training.gbm import GbmSettings
    from training.pipeline import train

    output = tmp_path_factory.mktemp("run")
    train(TrainConfig(
        csv=SAMPLE / "train.csv", output=output, images_dir=SAMPLE / "images", ocr_engine=SAMPLE_OCR,
        folds=3,
        val_fraction=0.2, fine_tuning=FineTuneSettings(epochs=1), fusion=FusionSettings(max_epochs=3),
        gbm=GbmSettings(max_rounds=100),
    ))
    return output


@pytest.fixture(scope="session")
def deployment(sample_run, tmp_path_factory) -> Path:
    """The export of `sample_run`: model_repository/, bundle/, MODEL_CARD.md."""
    from export.pipeline import export_run

    output = tmp_path_factory.mktemp("deploy") / "deployment"
    export_run(sample_run, output)
    return output


@pytest.fixture
def deployment_copy(deployment, tmp_path) -> Path:
    """A private copy of the deployment, for tests that change files."""
    return Path(shutil.copytree(deployment, tmp_path / "deployment"))


@pytest.fixture(scope="session")
def triton_server(deployment, tmp_path_factory):
    """The real tritonserver (nvidia-pytriton's CPU build) serving the deployment over gRPC."""
    from client.serve import LocalTritonServer

    server = LocalTritonServer(deployment / "model_repository", work_dir=tmp_path_factory.mktemp("triton"))
    server.start()
    yield server
    server.stop()
