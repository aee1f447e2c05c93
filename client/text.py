"""The text a model reads, its tokenisation, and batching rows of similar length.

Tokenisation uses the `tokenizers` library with the encoder's own `tokenizer.json`, so the
client needs neither torch nor transformers, and training tokenises with the same code.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

OCR_SEPARATOR = "\nImage text: "
MAX_TEXT_CHARS = 20_000


def compose_text(catalog_content: str, ocr_text: str = "") -> str:
    """The text the text encoder reads: the catalogue text, then any text read off the image.

    Very long catalogue texts are cut to MAX_TEXT_CHARS characters: the encoder truncates to
    its token limit anyway, and this bounds tokenisation time.
    """
    text = (catalog_content or "").strip()[:MAX_TEXT_CHARS]
    ocr_text = (ocr_text or "").strip()
    return f"{text}{OCR_SEPARATOR}{ocr_text}" if ocr_text else text


class TextTokenizer:
    """A fast tokenizer that truncates to `max_tokens` and pads each batch to its longest row.

    Args:
        tokenizer_file: the encoder's `tokenizer.json`.
        max_tokens: the longest token sequence the encoder gets (special tokens included).
        pad_token: the padding token; its id fills padded positions (masked out anyway).
    """

    def __init__(self, tokenizer_file: str | Path, max_tokens: int, pad_token: str = "[PAD]"):
        self.tokenizer = Tokenizer.from_file(str(tokenizer_file))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_length=max_tokens)
        self.max_tokens = max_tokens
        pad_id = self.tokenizer.token_to_id(pad_token)
        if pad_id is None:
            raise ValueError(f"pad token {pad_token!r} is not in the vocabulary of {tokenizer_file}")
        self.pad_id = pad_id

    def encode(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Token ids (int64) per text, truncated, unpadded."""
        encodings = self.tokenizer.encode_batch(list(texts))
        return [np.asarray(e.ids, dtype=np.int64) for e in encodings]

    def pad(self, token_ids: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Pads to the longest row: (input_ids, attention_mask), both int64 [batch, longest]."""
        longest = max(len(ids) for ids in token_ids)
        input_ids = np.full((len(token_ids), longest), self.pad_id, dtype=np.int64)
        attention_mask = np.zeros((len(token_ids), longest), dtype=np.int64)
        for row, ids in enumerate(token_ids):
            input_ids[row, : len(ids)] = ids
            attention_mask[row, : len(ids)] = 1
        return input_ids, attention_mask


def length_batches(lengths: Sequence[int], batch_size: int) -> list[np.ndarray]:
    """Groups row indices into batches of similar token length.

    Padding is wasted compute on a CPU and wasted bandwidth on a GPU, so rows are sorted by
    length (stable, so ties keep input order) and cut into batches of `batch_size`.

    Returns:
        Index arrays; together they hold every row exactly once.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, not {batch_size}")
    order = np.argsort(np.asarray(lengths), kind="stable")
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
