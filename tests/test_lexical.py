"""The lexical model: hashed word-piece n-gram TF-IDF + Ridge, checked against scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import Ridge

from client.table import read_catalog_csv
from tests.conftest import SAMPLE
from training.encoders import make_tokenizer
from training.lexical import LexicalSettings, fit_lexical, load_lexical, ngram_buckets, save_lexical


@pytest.fixture(scope="module")
def tokenised():
    table = read_catalog_csv(SAMPLE / "train.csv", with_prices=True)
    tokenizer = make_tokenizer("all-MiniLM-L6-v2", 128)
    return tokenizer, tokenizer.encode(table.texts), np.log1p(table.prices)


def bucket_words(tokenizer, token_ids, settings: LexicalSettings) -> list[list[str]]:
    """Each row's n-gram buckets as words, for scikit-learn's own vectorizer."""
    vocab_size = tokenizer.tokenizer.get_vocab_size()
    input_ids, attention_mask = tokenizer.pad(token_ids)
    keys, valid = ngram_buckets(torch.from_numpy(input_ids), torch.from_numpy(attention_mask), settings.max_n,
                                vocab_size, settings.buckets)
    return [[str(k) for k in row[ok]] for row, ok in zip(keys.numpy(), valid.numpy().astype(bool))]


def test_predictions_equal_scikit_learns_tfidf_and_ridge(tokenised):
    tokenizer, token_ids, log_prices = tokenised
    settings = LexicalSettings(buckets=2**16, alpha=0.5)
    train_rows, other_rows = np.arange(200), np.arange(200, 300)
    model, reference = fit_lexical(tokenizer, token_ids, log_prices, train_rows, settings)

    words = bucket_words(tokenizer, token_ids, settings)
    # the comparison covers rows with repeated n-grams, where sublinear tf matters
    assert sum(len(row) != len(set(row)) for row in words) > 100
    vectorizer = TfidfVectorizer(analyzer=lambda row: row, sublinear_tf=True)
    matrix = vectorizer.fit([words[i] for i in train_rows]).transform(words)
    ridge = Ridge(alpha=settings.alpha).fit(matrix[train_rows], log_prices[train_rows])
    expected = ridge.predict(matrix)
    np.testing.assert_allclose(reference, expected, atol=1e-5)

    input_ids, attention_mask = tokenizer.pad([token_ids[i] for i in other_rows])
    with torch.no_grad():
        graph = model(torch.from_numpy(input_ids), torch.from_numpy(attention_mask)).numpy()[:, 0]
    np.testing.assert_allclose(graph, expected[other_rows], atol=1e-4)
    assert np.std(expected[other_rows]) > 0.1  # the model says something row-specific


def test_unseen_text_gets_the_intercept(tokenised, tmp_path):
    tokenizer, token_ids, log_prices = tokenised
    model, _ = fit_lexical(tokenizer, token_ids, log_prices, np.arange(300), LexicalSettings(buckets=2**16))
    save_lexical(model, tmp_path / "lexical.safetensors", tmp_path / "lexical.json")
    reloaded = load_lexical(tmp_path / "lexical.safetensors", tmp_path / "lexical.json")
    padding = torch.full((2, 5), tokenizer.pad_id, dtype=torch.int64)
    with torch.no_grad():
        out = reloaded(padding, torch.zeros_like(padding))
    np.testing.assert_allclose(out.numpy()[:, 0], float(model.intercept), rtol=1e-6)
