"""The feature store: image embeddings, OCR text, catalogue features and image flags for every
row, on disk. Text embeddings are not stored: the text encoder is fine-tuned in each run.

Rows are processed in chunks. A chunk's key is a hash of everything that determines its
features: the rows' ids, texts and image bytes (their SHA-256), the encoders' identities and the
preprocessing settings. A finished chunk is written atomically under its key, so a rerun with
unchanged inputs and models loads it instead of doing the work again, and a run that crashed
resumes at the first unfinished chunk. Files are `.npz` (read with allow_pickle=False) and JSON.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from client.files import atomic_write
from client.images import IMAGE_SIZE, ImageFetcher
from client.ocr import OcrCache, ocr_cache_key
from client.rows import prepare_rows
from client.table import CatalogTable
from training.encoders import ImageEncoder, describe_image_encoder, load_image_encoder
from training.fusion import FusionInputs

logger = logging.getLogger(__name__)

_ARRAYS = ("image_embedding", "has_image", "numeric_features")
_META = ("texts", "image_status", "image_detail", "ocr_texts")
# part of every chunk key: a change of what a chunk holds must not reuse older chunks
_STORE_VERSION = 2


@dataclass(frozen=True)
class FeatureSettings:
    """What the features depend on besides the rows themselves."""

    image_encoder: str
    ocr_engine: str = "none"
    image_size: int = IMAGE_SIZE
    chunk_rows: int = 512
    image_batch_size: int = 16
    ocr_workers: int = 1


@dataclass
class Features:
    """Everything the models learn from, row-aligned with the table it was extracted from."""

    image_embedding: np.ndarray
    has_image: np.ndarray
    numeric_features: np.ndarray
    texts: list[str]  # catalogue text + OCR text, as the text models read it
    image_status: list[str]
    image_detail: list[str]
    ocr_texts: list[str]
    chunks_computed: int = 0
    chunks_reused: int = 0
    encoder_identities: dict = field(default_factory=dict)

    def fusion_inputs(self, text_embedding: np.ndarray) -> FusionInputs:
        """The fusion model's inputs, with the text embeddings of the (fine-tuned) encoder."""
        return FusionInputs(self.image_embedding, text_embedding, self.has_image, self.numeric_features)


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
    with atomic_write(directory / f"{key}.npz", "wb") as handle:
        np.savez(handle, **arrays)
    with atomic_write(directory / f"{key}.json", encoding="utf-8") as handle:  # written last: marks the chunk complete
        handle.write(json.dumps(meta))


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
    identities = {"image_encoder": describe_image_encoder(settings.image_encoder)}
    fingerprint = json.dumps({"settings": asdict(settings), "models": identities, "store_version": _STORE_VERSION,
                              "ocr": ocr_cache_key(settings.ocr_engine)}, sort_keys=True)
    # loaded on first use only, so a fully cached run loads no encoder
    image_encoder = functools.cache(lambda: load_image_encoder(settings.image_encoder)[0])
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
        if cached is None:  # prepare_rows fetches again: reads of local or cached files, cheap beside encoding
            cached = _compute_chunk(table, rows, fetcher, settings, image_encoder, ocr_cache)
            _write_chunk(chunk_dir, key, *cached)
            computed += 1
        else:
            reused += 1
        parts.append(cached)

    arrays = {name: np.concatenate([p[0][name] for p in parts]) for name in _ARRAYS}
    meta = {name: [v for p in parts for v in p[1][name]] for name in _META}
    (store / "manifest.json").write_text(
        json.dumps({"settings": asdict(settings), "models": identities, "rows": len(table)}, indent=2)
    )
    return Features(
        **arrays,
        **meta,
        chunks_computed=computed,
        chunks_reused=reused,
        encoder_identities=identities,
    )


def _compute_chunk(table: CatalogTable, rows: range, fetcher: ImageFetcher, settings: FeatureSettings,
                   image_encoder: Callable[[], ImageEncoder], ocr_cache: OcrCache) -> tuple[dict[str, np.ndarray], dict]:
    prepared = prepare_rows(table, rows, fetcher, ocr_engine=settings.ocr_engine, ocr_cache=ocr_cache,
                            image_size=settings.image_size, ocr_workers=settings.ocr_workers)
    has_image = prepared.has_image
    image_embedding = np.zeros((len(rows), describe_image_encoder(settings.image_encoder)["embedding_dim"]), np.float32)
    with_image = np.flatnonzero(has_image)
    if len(with_image):
        pixels = np.stack([prepared.images[i].pixels for i in with_image])
        image_embedding[with_image] = encode_images(image_encoder(), pixels, settings.image_batch_size)

    arrays = {"image_embedding": image_embedding, "has_image": has_image, "numeric_features": prepared.numeric_features}
    meta = {
        "texts": prepared.texts,
        "image_status": prepared.image_status,
        "image_detail": [image.detail for image in prepared.images],
        "ocr_texts": prepared.ocr_texts,
    }
    return arrays, meta
