"""The training job on the bundled sample: artifacts, report, image coverage, feature-store reuse."""

from __future__ import annotations

import json

import numpy as np
import pytest

from client import rows as rows_module
from client.blend import COMPONENTS
from client.images import ImageFetcher
from client.table import read_catalog_csv
from tests.conftest import SAMPLE, SAMPLE_OCR, TRUNCATED_SAMPLE_IDS
from training import features as features_module
from training.config import TrainConfig
from training.features import extract_features
from training.folds import grouped_split, image_groups


def test_run_writes_every_artifact(sample_run):
    for name in ("text_encoder/model.safetensors", "text_encoder/price_head.safetensors", "text_encoder/tokenizer.json",
                 "text_embeddings.npy", "fusion.safetensors", "fusion.json", "lightgbm.txt", "lexical.safetensors",
                 "lexical.json", "retrieval.faiss", "retrieval_log_prices.npy", "blend.json", "folds.json",
                 "stack_features.npy", "oof_predictions.csv", "validation_predictions.csv", "report.json", "run.json", "plots/predicted_vs_actual.png",
                 "plots/smape_by_price_decile.png"):
        assert (sample_run / name).is_file(), name


def test_report_has_smape_per_component_and_blend(sample_run):
    report = json.loads((sample_run / "report.json").read_text())
    for scores in (report["validation_smape"], {k: v["all"] for k, v in report["oof_smape"].items()}):
        assert set(scores) == {*COMPONENTS, "blend_seed", "blend_fitted"}
        for value in scores.values():
            assert 0 < value < 200
    rows = report["rows"]
    assert rows["labelled"] + rows["validation"] == rows["total"] == 300
    assert min(rows["labelled"], rows["validation"]) > 0
    weights = report["blend_weights"]["fitted"]
    assert min(weights.values()) >= 0 and sum(weights.values()) == pytest.approx(1.0)


def test_truncated_images_make_their_rows_text_only_and_are_counted(sample_run):
    report = json.loads((sample_run / "report.json").read_text())
    assert report["images"]["truncated"] == 2
    assert report["images"]["with_image"] == 58
    table = read_catalog_csv(SAMPLE / "train.csv", with_prices=True)
    config = TrainConfig(csv=SAMPLE / "train.csv", output=sample_run, ocr_engine=SAMPLE_OCR)
    features = extract_features(table, ImageFetcher(SAMPLE / "images"), sample_run / "features", config.feature_settings())
    for sample_id in TRUNCATED_SAMPLE_IDS:
        row = table.sample_ids.index(sample_id)
        assert features.has_image[row] == 0
        assert features.image_status[row] == "truncated"
        assert not features.image_embedding[row].any()


def test_second_run_over_unchanged_store_does_no_encoder_work(sample_run, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("an encoder was loaded although every chunk is cached")

    monkeypatch.setattr(features_module, "load_image_encoder", refuse)
    monkeypatch.setattr(rows_module, "run_ocr", refuse)
    table = read_catalog_csv(SAMPLE / "train.csv", with_prices=True)
    config = TrainConfig(csv=SAMPLE / "train.csv", output=sample_run, ocr_engine=SAMPLE_OCR)
    features = extract_features(table, ImageFetcher(SAMPLE / "images"), sample_run / "features", config.feature_settings())
    assert features.chunks_computed == 0 and features.chunks_reused >= 1
    assert features.image_embedding.shape == (300, 1280)
    assert any("Image text: " in text for text in features.texts)  # OCR text came back from the store


def test_changed_rows_are_recomputed(sample_run, tmp_path):
    table = read_catalog_csv(SAMPLE / "train.csv", with_prices=True).subset(range(20))
    table.texts[0] = "Changed: " + table.texts[0]
    config = TrainConfig(csv=SAMPLE / "train.csv", output=sample_run, ocr_engine="none")
    store = tmp_path / "store"
    first = extract_features(table, ImageFetcher(SAMPLE / "images"), store, config.feature_settings())
    table.texts[1] = "Changed again: " + table.texts[1]
    second = extract_features(table, ImageFetcher(SAMPLE / "images"), store, config.feature_settings())
    assert first.chunks_computed == 1 and second.chunks_computed == 1
    assert first.texts[1] != second.texts[1] and first.texts[2:] == second.texts[2:]
    np.testing.assert_array_equal(first.image_embedding, second.image_embedding)


def test_split_is_grouped_by_image_link():
    links = ["a", "a", "b", "c", "c", "c", "", "", "d", "e"] * 10
    groups = image_groups(links)
    train_rows, val_rows = grouped_split(groups, 0.2, seed=1)
    assert not set(groups[train_rows]) & set(groups[val_rows])
    assert len(train_rows) + len(val_rows) == len(links)
    # rows without a link are their own groups
    assert len({groups[i] for i, link in enumerate(links) if not link}) == 20
