"""Fine-tuning the text encoder: seeded, learning, and saved as the encoder export reads."""

from __future__ import annotations

import numpy as np
import torch

from client.images import ImageFetcher
from client.table import read_catalog_csv
from tests.conftest import SAMPLE, SAMPLE_OCR
from training.config import TrainConfig
from training.encoders import load_text_encoder, make_tokenizer
from training.features import extract_features
from training.finetune import FineTuneSettings, encode_with_head, fine_tune, load_regressor
from training.run_dir import RunDir


def _tune(token_ids, log_prices, rows, seed):
    encoder, _ = load_text_encoder()
    tokenizer = make_tokenizer("all-MiniLM-L6-v2", 32)
    settings = FineTuneSettings(epochs=2, batch_size=16, learning_rate=1e-4, seed=seed)
    return fine_tune(encoder, tokenizer, token_ids, log_prices, rows, settings)


def test_fine_tuning_is_seeded_and_lowers_the_loss():
    table = read_catalog_csv(SAMPLE / "train.csv", with_prices=True)
    token_ids = make_tokenizer("all-MiniLM-L6-v2", 32).encode(table.texts)
    log_prices, rows = np.log1p(table.prices), np.arange(64)
    first, history = _tune(token_ids, log_prices, rows, seed=3)
    second, _ = _tune(token_ids, log_prices, rows, seed=3)
    assert history[1]["train_l1"] < history[0]["train_l1"]
    for (name, a), (_, b) in zip(first.state_dict().items(), second.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    base, _ = load_text_encoder()
    assert not torch.equal(base.transformer.embeddings.word_embeddings.weight,
                           first.encoder.transformer.embeddings.word_embeddings.weight)


def test_saved_encoder_reproduces_the_runs_text_embeddings(sample_run):
    run = RunDir(sample_run)
    model, identity = load_regressor(run.text_encoder)
    table = read_catalog_csv(SAMPLE / "train.csv", with_prices=True)
    tokenizer = make_tokenizer(str(run.text_encoder), 128)
    rows = [0, 1, 2, 150, 299]
    features = extract_features(table, ImageFetcher(SAMPLE / "images"), run.features,
                                TrainConfig(csv=SAMPLE / "train.csv", output=sample_run, ocr_engine=SAMPLE_OCR).feature_settings())
    embeddings, _ = encode_with_head(model, tokenizer, tokenizer.encode([features.texts[i] for i in rows]))
    np.testing.assert_allclose(embeddings, np.load(run.text_embeddings)[rows], atol=1e-5)
    assert identity["embedding_dim"] == 384
