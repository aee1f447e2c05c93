"""The lexical component: TF-IDF of hashed word-piece n-grams and a Ridge regression on it.

A word-and-character TF-IDF + Ridge is the strongest plain text baseline of this task and
errs differently from the neural models. To serve it as an ONNX graph that matches training
exactly, it reads the same token ids the text encoder gets (no string ops in the graph): each
1..max_n-gram of word-piece ids is hashed into a fixed number of buckets, counted per row, and
weighted as scikit-learn's TfidfVectorizer does with `sublinear_tf=True, norm="l2"` and smooth
idf. Ridge's prediction is linear, so the graph needs only, per n-gram position, its bucket's
`idf * coefficient` and `idf**2`:

    log_price = intercept + sum_g tf_g * idf_g * coef_g / sqrt(sum_g (tf_g * idf_g) ** 2)

Buckets no training row has get idf 0: like a term outside a vectorizer's vocabulary, an
unseen n-gram changes neither the sum nor the norm.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from scipy.sparse import csr_matrix
from sklearn.linear_model import Ridge
from torch import nn
from tqdm.auto import tqdm

from client.text import TextTokenizer


@dataclass(frozen=True)
class LexicalSettings:
    """The n-gram hashing and the Ridge penalty."""

    max_n: int = 3
    buckets: int = 2**20
    alpha: float = 0.5


def ngram_buckets(input_ids: torch.Tensor, attention_mask: torch.Tensor, max_n: int, vocab_size: int,
                  buckets: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Bucket of every 1..max_n-gram position and whether it lies on real tokens.

    Returns:
        (int64 [batch, max_n * seq] buckets, float32 [batch, max_n * seq] 1 for real n-grams).
    """
    seq = input_ids.shape[1]
    ids = F.pad(input_ids, (0, max_n - 1))
    mask = F.pad(attention_mask, (0, max_n - 1)).to(torch.float32)
    keys, valid = [], []
    key, real = torch.zeros_like(input_ids), torch.ones_like(attention_mask, dtype=torch.float32)
    for n in range(max_n):
        key = key * vocab_size + ids[:, n : n + seq]
        real = real * mask[:, n : n + seq]
        keys.append(key % buckets)
        valid.append(real)
    return torch.cat(keys, dim=1), torch.cat(valid, dim=1)


class LexicalModel(nn.Module):
    """(input_ids, attention_mask) int64 [batch, seq] -> log1p(price) float32 [batch, 1]."""

    def __init__(self, settings: LexicalSettings, vocab_size: int):
        super().__init__()
        self.settings = settings
        self.vocab_size = vocab_size
        self.register_buffer("weighted_coef", torch.zeros(settings.buckets))  # idf * Ridge coefficient
        self.register_buffer("idf_squared", torch.zeros(settings.buckets))
        self.register_buffer("intercept", torch.zeros(1))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        keys, valid = ngram_buckets(input_ids, attention_mask, self.settings.max_n, self.vocab_size,
                                    self.settings.buckets)
        # occurrences of each position's n-gram in its row; each distinct n-gram then counts once
        same = (keys.unsqueeze(2) == keys.unsqueeze(1)).to(torch.float32) * valid.unsqueeze(1)
        counts = same.sum(dim=2).clamp(min=1.0)
        tf = 1.0 + torch.log(counts)
        share = valid / counts
        numerator = (share * tf * self.weighted_coef[keys]).sum(dim=1)
        norm = torch.sqrt((share * tf * tf * self.idf_squared[keys]).sum(dim=1))
        scaled = torch.where(norm > 0, numerator / norm.clamp(min=1e-12), torch.zeros_like(norm))
        return (self.intercept + scaled).unsqueeze(1)


@torch.inference_mode()
def row_buckets(tokenizer: TextTokenizer, token_ids: list[np.ndarray], settings: LexicalSettings,
                vocab_size: int, batch_size: int = 256) -> list[tuple[np.ndarray, np.ndarray]]:
    """(distinct buckets, their counts) of each row, from the same hashing the graph does."""
    out = []
    for start in tqdm(range(0, len(token_ids), batch_size), desc="lexical n-grams", unit="batch"):
        input_ids, attention_mask = tokenizer.pad(token_ids[start : start + batch_size])
        keys, valid = ngram_buckets(torch.from_numpy(input_ids), torch.from_numpy(attention_mask),
                                    settings.max_n, vocab_size, settings.buckets)
        for row_keys, row_valid in zip(keys.numpy(), valid.numpy().astype(bool)):
            out.append(np.unique(row_keys[row_valid], return_counts=True))
    return out


def tfidf_matrix(rows: list[tuple[np.ndarray, np.ndarray]], idf: np.ndarray, buckets: int) -> csr_matrix:
    """Sublinear-tf, idf-weighted, L2-normalised sparse rows (scikit-learn's TfidfVectorizer maths)."""
    indptr = np.cumsum([0] + [len(keys) for keys, _ in rows])
    indices = np.concatenate([keys for keys, _ in rows]) if rows else np.zeros(0, np.int64)
    counts = np.concatenate([c for _, c in rows]).astype(np.float64) if rows else np.zeros(0)
    values = (1.0 + np.log(counts)) * idf[indices]
    matrix = csr_matrix((values, indices, indptr), shape=(len(rows), buckets))
    norms = np.sqrt(np.asarray(matrix.multiply(matrix).sum(axis=1))).ravel()
    return csr_matrix(matrix.multiply(1.0 / np.where(norms > 0, norms, 1.0)[:, None]))


def fit_lexical(tokenizer: TextTokenizer, token_ids: list[np.ndarray], log_prices: np.ndarray,
                train_rows: np.ndarray, settings: LexicalSettings = LexicalSettings()) -> tuple[LexicalModel, np.ndarray]:
    """Fits idf and Ridge on `train_rows`.

    Returns:
        (the model, its log-price prediction for every row, computed with scipy's sparse algebra
        rather than the model's graph; the tests check the two agree).
    """
    vocab_size = tokenizer.tokenizer.get_vocab_size()
    rows = row_buckets(tokenizer, token_ids, settings, vocab_size)
    document_frequency = np.zeros(settings.buckets, dtype=np.int64)
    for row in train_rows:
        document_frequency[rows[row][0]] += 1
    seen = document_frequency > 0
    idf = np.where(seen, np.log((1 + len(train_rows)) / (1 + document_frequency)) + 1.0, 0.0)
    matrix = tfidf_matrix(rows, idf, settings.buckets)
    ridge = Ridge(alpha=settings.alpha).fit(matrix[train_rows], log_prices[train_rows])

    model = LexicalModel(settings, vocab_size)
    model.weighted_coef.copy_(torch.from_numpy((idf * ridge.coef_).astype(np.float32)))
    model.idf_squared.copy_(torch.from_numpy((idf * idf).astype(np.float32)))
    model.intercept.fill_(float(ridge.intercept_))
    return model.eval(), ridge.predict(matrix)


def save_lexical(model: LexicalModel, weights: Path, settings: Path) -> None:
    """Writes the buffers (safetensors) and the settings and vocabulary size (JSON)."""
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    settings.write_text(json.dumps({"settings": asdict(model.settings), "vocab_size": model.vocab_size}, indent=2))


def load_lexical(weights: Path, settings: Path) -> LexicalModel:
    """Rebuilds the model `save_lexical` wrote, in eval mode."""
    raw = json.loads(settings.read_text())
    model = LexicalModel(LexicalSettings(**raw["settings"]), raw["vocab_size"])
    model.load_state_dict(load_file(str(weights)))
    return model.eval()
