"""Fine-tuning the text encoder: seeded, learning, and saved as the encoder export reads."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from client.images import ImageFetcher
from client.table import read_catalog_csv
from tests.conftest import SAMPLE, SAMPLE_OCR
from training.config import TrainConfig
from training.encoders import load_text_encoder, make_tokenizer
from training.features import extract_features
from training.finetune import (
    BF16_CPU_FLAGS,
    FineTuneSettings,
    encode_with_head,
    fine_tune,
    load_regressor,
    resolve_precision,
)
from training.run_dir import RunDir


def _tune(token_ids, log_prices, rows, seed, precision="fp32"):
    encoder, _ = load_text_encoder()
    tokenizer = make_tokenizer("all-MiniLM-L6-v2", 32)
    settings = FineTuneSettings(epochs=2, batch_size=16, learning_rate=1e-4, precision=precision, seed=seed)
    return fine_tune(encoder, tokenizer, token_ids, log_prices, rows, settings)


@pytest.fixture(scope="module")
def sample_tokens():
    table = read_catalog_csv(SAMPLE / "train.csv", with_prices=True)
    return make_tokenizer("all-MiniLM-L6-v2", 32).encode(table.texts), np.log1p(table.prices)


def test_fine_tuning_is_seeded_and_lowers_the_loss(sample_tokens):
    token_ids, log_prices = sample_tokens
    rows = np.arange(64)
    first, history = _tune(token_ids, log_prices, rows, seed=3)
    second, _ = _tune(token_ids, log_prices, rows, seed=3)
    assert history[1]["train_l1"] < history[0]["train_l1"]
    for (name, a), (_, b) in zip(first.state_dict().items(), second.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    base, _ = load_text_encoder()
    assert not torch.equal(base.transformer.embeddings.word_embeddings.weight,
                           first.encoder.transformer.embeddings.word_embeddings.weight)


def test_bf16_steps_learn_and_keep_float32_weights(sample_tokens):
    token_ids, log_prices = sample_tokens
    rows = np.arange(64)
    bf16, history = _tune(token_ids, log_prices, rows, seed=3, precision="bf16")
    fp32, _ = _tune(token_ids, log_prices, rows, seed=3, precision="fp32")
    assert history[1]["train_l1"] < history[0]["train_l1"]
    assert {p.dtype for p in bf16.parameters()} == {torch.float32}
    # autocast really ran: the same seed and batches in float32 end elsewhere
    assert not torch.equal(bf16.head.weight, fp32.head.weight)


def test_auto_precision_follows_the_hardware():
    cpu = torch.device("cpu")
    for flag in sorted(BF16_CPU_FLAGS):
        assert resolve_precision("auto", cpu, frozenset({"avx2", "avx512_vnni", flag})) == "bf16"
    assert resolve_precision("auto", cpu, frozenset({"avx2", "avx512_vnni", "avx_vnni"})) == "fp32"
    assert resolve_precision("fp32", cpu, frozenset(BF16_CPU_FLAGS)) == "fp32"
    assert resolve_precision("bf16", cpu, frozenset()) == "bf16"
    with pytest.raises(ValueError, match="auto, fp32, bf16"):
        resolve_precision("fp16", cpu)


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


def test_text_stage_outputs_are_kept_per_resolved_precision(sample_tokens, tmp_path, monkeypatch):
    """The same `auto` setting on a CPU with and without native bfloat16 trains differently, so a text stage
    cached on one machine is not reused on the other."""
    import training.finetune
    import training.pipeline
    from training.folds import Folds

    token_ids, log_prices = sample_tokens
    rows = np.arange(len(token_ids))
    folds = Folds.grouped(rows, rows, k=3, seed=0)
    config = TrainConfig(csv=SAMPLE / "train.csv", output=tmp_path, fine_tuning=FineTuneSettings(precision="auto"))
    monkeypatch.setattr(training.pipeline, "training_device", lambda: torch.device("cpu"))
    fingerprints = {}
    for flags in (frozenset({"avx2", "amx_bf16"}), frozenset({"avx2"})):
        monkeypatch.setattr(training.finetune, "cpu_flags", lambda flags=flags: flags)
        stage = training.pipeline.TextEncoderStage(config, make_tokenizer("all-MiniLM-L6-v2", 32), token_ids,
                                                   log_prices)
        fingerprints[stage.precision] = stage.fingerprint(folds)
    assert set(fingerprints) == {"bf16", "fp32"}
    assert fingerprints["bf16"] != fingerprints["fp32"]
