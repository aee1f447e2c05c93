"""Training and serving prepare a row the same way: one shared path from table rows to inputs."""

from __future__ import annotations

import numpy as np
import pytest

from client.blend import COMPONENT_OUTPUTS, COMPONENTS, RETRIEVAL, component_matrix
from client.bundle import Deployment
from client.images import ImageFetcher
from client.inference import InProcessBackend
from client.models import ENSEMBLE_OUTPUTS
from client.ocr import OcrCache
from client.predict import Predictor
from client.table import read_catalog_csv
from tests.conftest import SAMPLE, TRUNCATED_SAMPLE_IDS
from training.encoders import load_image_encoder, make_tokenizer
from training.features import encode_images, extract_features
from training.run_dir import RunDir


def test_training_features_and_serving_inputs_of_the_same_rows_are_equal(sample_run, deployment, tmp_path):
    """The run's feature store (computed while training, OCR included) against what `client
    predict` prepares for the same rows from scratch (its own, empty OCR cache)."""
    run = RunDir(sample_run)
    config = run.config()
    table = read_catalog_csv(SAMPLE / "train.csv", with_prices=True)
    features = extract_features(table, ImageFetcher(SAMPLE / "images"), run.features, config.feature_settings())
    assert features.chunks_computed == 0  # the training run's own features

    with_image = np.flatnonzero(features.has_image)[:8]
    truncated = [table.sample_ids.index(sample_id) for sample_id in TRUNCATED_SAMPLE_IDS]
    rows = np.sort(np.concatenate([with_image, truncated, np.flatnonzero(features.has_image == 0)[:6]]))
    loaded = Deployment.load(deployment)
    predictor = Predictor(loaded, InProcessBackend(loaded), ImageFetcher(SAMPLE / "images"),
                          OcrCache(tmp_path / "ocr.jsonl"), ocr_workers=1)
    wave = predictor.prepare(table, rows)

    served_ocr_chars = np.asarray(wave.ocr_chars)
    assert (served_ocr_chars > 0).sum() >= 3, "too few photos with text to compare OCR on"
    np.testing.assert_array_equal(served_ocr_chars, [len(features.ocr_texts[r]) for r in rows])
    tokenizer = make_tokenizer(config.text_encoder, config.max_tokens)
    training_tokens = tokenizer.encode([features.texts[r] for r in rows])
    for row, served, trained in zip(rows, wave.token_ids, training_tokens):
        np.testing.assert_array_equal(served, trained, err_msg=f"tokens of row {row}")
    np.testing.assert_array_equal(wave.numeric, features.numeric_features[rows])
    assert wave.image_status == [features.image_status[r] for r in rows]

    served_has_image = np.asarray([p is not None for p in wave.pixels], dtype=np.float32)
    np.testing.assert_array_equal(served_has_image, features.has_image[rows])
    # training keeps the embeddings of its pixels, not the pixels: the served pixels must give them
    encoder, _ = load_image_encoder(config.image_encoder)
    pixels = np.stack([p for p in wave.pixels if p is not None])
    np.testing.assert_allclose(encode_images(encoder, pixels, batch_size=16),
                               features.image_embedding[rows][served_has_image == 1], atol=1e-6)


def test_every_component_comes_from_exactly_one_ensemble_output_or_retrieval():
    assert set(COMPONENT_OUTPUTS) | {RETRIEVAL} == set(COMPONENTS)
    assert set(COMPONENT_OUTPUTS.values()) | {"retrieval_vector"} == set(ENSEMBLE_OUTPUTS)
    columns = component_matrix({name: np.full(2, float(i)) for i, name in enumerate(COMPONENTS)})
    np.testing.assert_array_equal(columns, [list(range(len(COMPONENTS)))] * 2)
    with pytest.raises(ValueError, match="lexical"):
        component_matrix({name: np.zeros(2) for name in COMPONENTS if name != "lexical"})
