"""The feature store: embeddings, catalogue features and image flags for every row, on disk.

Rows are processed in chunks. A chunk's key is a hash of everything that determines its
features: the rows' ids, texts and image bytes (their SHA-256), the encoders' identities and the
preprocessing settings. A finished chunk is written atomically under its key, so a rerun with
unchanged inputs and models loads it instead of doing the work again, and a run that crashed
resumes at the first unfinished chunk. Files are `.npz` (read with allow_pickle=False) and JSON.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from client.catalog import numeric_feature_matrix
from client.images import IMAGE_SIZE, OCR_MAX_SIDE, ImageFetcher, ImageStatus, prepare_fetched
from client.ocr import OcrCache, run_ocr
from client.table import CatalogTable
from client.text import TextTokenizer, compose_text, length_batches
from training.encoders import (
    ImageEncoder,
    TextEncoder,
    describe_image_encoder,
    describe_text_encoder,
    load_image_encoder,
    load_text_encoder,
)
from training.fusion import FusionInputs

logger = logging.getLogger(__name__)

_ARRAYS = ("image_embedding", "text_embedding", "has_image", "numeric_features", "token_counts")


@dataclass(frozen=True)
class FeatureSettings:
    """What the features depend on besides the rows themselves."""

    image_encoder: str
    text_encoder: str
    ocr_engine: str = "rapidocr"
    max_tokens: int = 128
    image_size: int = IMAGE_SIZE
    chunk_rows: int = 512
    text_batch_size: int = 32
    image_batch_size: int = 16
    ocr_workers: int = 1


@dataclass
class Features:
    """Everything the models learn from, row-aligned with the table it was extracted from."""

    inputs: FusionInputs
    image_status: list[str]
    image_detail: list[str]
    ocr_texts: list[str]
    token_counts: np.ndarray
    chunks_computed: int = 0
    chunks_reused: int = 0
    encoder_identities: dict = field(default_factory=dict)


class _Encoders:
    """Loads each encoder on first use only, so a fully cached run loads none."""

    def __init__(self, settings: FeatureSettings):
        self.settings = settings
        self._image: ImageEncoder | None = None
        self._text: TextEncoder | None = None
        self._tokenizer: TextTokenizer | None = None

    @property
    def image(self) -> ImageEncoder:
        if self._image is None:
            self._image, _ = load_image_encoder(self.settings.image_encoder)
        return self._image

    @property
    def text(self) -> TextEncoder:
        if self._text is None:
            self._text, _, _ = load_text_encoder(self.settings.text_encoder)
        return self._text

    @property
    def tokenizer(self) -> TextTokenizer:
        if self._tokenizer is None:
            self._tokenizer = make_tokenizer(self.settings.text_encoder, self.settings.max_tokens)
        return self._tokenizer


def make_tokenizer(text_encoder: str, max_tokens: int) -> TextTokenizer:
    """The tokenizer of a text encoder, from its `tokenizer.json`."""
    model_dir = describe_text_encoder(text_encoder)["model_dir"]
    special = json.loads((Path(model_dir) / "special_tokens_map.json").read_text())
    pad = special.get("pad_token", "[PAD]")
    pad = pad["content"] if isinstance(pad, dict) else pad
    return TextTokenizer(Path(model_dir) / "tokenizer.json", max_tokens, pad_token=pad)


@torch.inference_mode()
def encode_texts(encoder: TextEncoder, tokenizer: TextTokenizer, texts: list[str], batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings [n, dim] and token counts [n], in batches of similar length."""
    token_ids = tokenizer.encode(texts)
    embeddings = np.zeros((len(texts), encoder.embedding_dim), dtype=np.float32)
    for rows in length_batches([len(ids) for ids in token_ids], batch_size):
        input_ids, attention_mask = tokenizer.pad([token_ids[i] for i in rows])
        embeddings[rows] = encoder(torch.from_numpy(input_ids), torch.from_numpy(attention_mask)).numpy()
    return embeddings, np.asarray([len(ids) for ids in token_ids], dtype=np.int64)


@torch.inference_mode()
def encode_images(encoder: ImageEncoder, pixels: np.ndarray, batch_size: int) -> np.ndarray:
    """Embeddings [n, dim] of uint8 images [n, H, W, 3]."""
    out = np.zeros((len(pixels), encoder.embedding_dim), dtype=np.float32)
    for start in range(0, len(pixels), batch_size):
        batch = torch.from_numpy(np.ascontiguousarray(pixels[start : start + batch_size]))
        out[start : start + batch_size] = encoder(batch).numpy()
    return out


def _chunk_key(settings_and_models: str, table: CatalogTable, rows: range, image_shas: list[str | None]) -> str:
    digest = hashlib.sha256(settings_and_models.encode())
    for row, sha in zip(rows, image_shas):
        for part in (table.sample_ids[row], table.texts[row], table.image_links[row], sha or ""):
            digest.update(part.encode())
            digest.update(b"\x00")
    return digest.hexdigest()[:32]


def _write_chunk(directory: Path, key: str, arrays: dict[str, np.ndarray], meta: dict) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f".{key}.{os.getpid()}.tmp.npz"
    np.savez(tmp, **arrays)
    os.replace(tmp, directory / f"{key}.npz")
    tmp_meta = directory / f".{key}.{os.getpid()}.tmp.json"
    tmp_meta.write_text(json.dumps(meta))
    os.replace(tmp_meta, directory / f"{key}.json")  # written last: marks the chunk complete


def _read_chunk(directory: Path, key: str) -> tuple[dict[str, np.ndarray], dict] | None:
    meta_path = directory / f"{key}.json"
    if not meta_path.exists():
        return None
    with np.load(directory / f"{key}.npz", allow_pickle=False) as data:
        arrays = {name: data[name] for name in _ARRAYS}
    return arrays, json.loads(meta_path.read_text())


def extract_features(
    table: CatalogTable,
    fetcher: ImageFetcher,
    store: Path,
    settings: FeatureSettings,
) -> Features:
    """Computes (or reloads) the features of every row of `table`.

    Args:
        table: the rows.
        fetcher: resolves each row's `image_link` to image bytes.
        store: the feature-store folder (chunks, OCR cache, manifest).
        settings: encoders and preprocessing.

    Returns:
        Row-aligned features; `chunks_computed` / `chunks_reused` tell what was redone.
    """
    identities = {
        "image_encoder": describe_image_encoder(settings.image_encoder),
        "text_encoder": {k: v for k, v in describe_text_encoder(settings.text_encoder).items() if k != "model_dir"},
    }
    fingerprint = json.dumps({"settings": asdict(settings), "models": identities}, sort_keys=True)
    encoders = _Encoders(settings)
    ocr_cache = OcrCache(store / "ocr_cache.jsonl")
    chunk_dir = store / "chunks"
    parts: list[tuple[dict[str, np.ndarray], dict]] = []
    computed = reused = 0

    starts = range(0, len(table), settings.chunk_rows)
    for start in tqdm(starts, desc="features", unit="chunk", total=len(starts)):
        rows = range(start, min(start + settings.chunk_rows, len(table)))
        fetched = fetcher.fetch_many([table.image_links[r] for r in rows])
        key = _chunk_key(fingerprint, table, rows, [f.sha256 for f in fetched])
        cached = _read_chunk(chunk_dir, key)
        if cached is None:
            cached = _compute_chunk(table, rows, fetched, settings, encoders, ocr_cache)
            _write_chunk(chunk_dir, key, *cached)
            computed += 1
        else:
            reused += 1
        parts.append(cached)

    arrays = {name: np.concatenate([p[0][name] for p in parts]) for name in _ARRAYS}
    meta = {name: [v for p in parts for v in p[1][name]] for name in ("image_status", "image_detail", "ocr_texts")}
    (store / "manifest.json").write_text(
        json.dumps({"settings": asdict(settings), "models": identities, "rows": len(table)}, indent=2)
    )
    return Features(
        inputs=FusionInputs(
            image_embedding=arrays["image_embedding"],
            text_embedding=arrays["text_embedding"],
            has_image=arrays["has_image"],
            numeric_features=arrays["numeric_features"],
        ),
        image_status=meta["image_status"],
        image_detail=meta["image_detail"],
        ocr_texts=meta["ocr_texts"],
        token_counts=arrays["token_counts"],
        chunks_computed=computed,
        chunks_reused=reused,
        encoder_identities=identities,
    )


def _compute_chunk(table, rows, fetched, settings, encoders, ocr_cache) -> tuple[dict[str, np.ndarray], dict]:
    ocr_side = OCR_MAX_SIDE if settings.ocr_engine != "none" else None
    prepared = [prepare_fetched(f, size=settings.image_size, ocr_max_side=ocr_side) for f in fetched]
    ocr_inputs = {p.sha256: p.ocr_pixels for p in prepared if p.has_image and p.ocr_pixels is not None}
    ocr_by_sha = run_ocr(settings.ocr_engine, list(ocr_inputs.items()), ocr_cache, workers=settings.ocr_workers)
    ocr_texts = [ocr_by_sha.get(p.sha256, "") if p.has_image else "" for p in prepared]

    has_image = np.asarray([p.has_image for p in prepared], dtype=np.float32)
    image_embedding = np.zeros((len(rows), describe_image_encoder(settings.image_encoder)["embedding_dim"]), np.float32)
    with_image = np.flatnonzero(has_image)
    if len(with_image):
        pixels = np.stack([prepared[i].pixels for i in with_image])
        image_embedding[with_image] = encode_images(encoders.image, pixels, settings.image_batch_size)

    texts = [compose_text(table.texts[r], ocr) for r, ocr in zip(rows, ocr_texts)]
    text_embedding, token_counts = encode_texts(encoders.text, encoders.tokenizer, texts, settings.text_batch_size)
    arrays = {
        "image_embedding": image_embedding,
        "text_embedding": text_embedding,
        "has_image": has_image,
        "numeric_features": numeric_feature_matrix([table.texts[r] for r in rows]),
        "token_counts": token_counts,
    }
    meta = {
        "image_status": [ImageStatus(p.status).value for p in prepared],
        "image_detail": [p.detail for p in prepared],
        "ocr_texts": ocr_texts,
    }
    return arrays, meta
