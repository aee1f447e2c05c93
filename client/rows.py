"""From table rows to model inputs: the one path training and serving share.

Per row: the image is fetched, decoded and resized (with a bounded view for OCR when an OCR
engine is used), the text on the image is read (once per distinct image, by its SHA-256, through
the OCR cache), the catalogue text and the OCR text are composed into the text the text models
read, and the catalogue's numeric features are computed. Training's feature store, `client
predict` and the benchmarks all call `prepare_rows`, so a row cannot be prepared one way for
training and another way for serving.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from client.catalog import numeric_feature_matrix
from client.images import IMAGE_SIZE, OCR_MAX_SIDE, ImageFetcher, PreparedImage, load_images, stream_images
from client.ocr import NoOcr, OcrCache, OcrEngine, run_ocr
from client.table import CatalogTable
from client.text import TextTokenizer, compose_text


@dataclass
class PreparedRows:
    """The model inputs of a set of rows, in the order they were asked for.

    Attributes:
        images: one prepared image per row (`pixels` None for a text-only row, with the reason).
        ocr_texts: the text read off each row's image ("" without an image or without OCR).
        texts: catalogue text + OCR text, as the text models read it.
        numeric_features: float32 [rows, len(NUMERIC_FEATURE_NAMES)] catalogue features.
        token_ids: each text's token ids (int64, unpadded), when a tokenizer was given.
    """

    images: list[PreparedImage]
    ocr_texts: list[str]
    texts: list[str]
    numeric_features: np.ndarray
    token_ids: list[np.ndarray] | None = None

    @property
    def has_image(self) -> np.ndarray:
        """float32 [rows]: 1 where the row has a usable image (the models' has_image flag)."""
        return np.asarray([image.has_image for image in self.images], dtype=np.float32)

    @property
    def image_status(self) -> list[str]:
        """Each row's image status value ("ok", "truncated", ...)."""
        return [image.status.value for image in self.images]


def prepare_rows(
    table: CatalogTable,
    rows: Sequence[int],
    fetcher: ImageFetcher,
    *,
    ocr_engine: str | OcrEngine,
    ocr_cache: OcrCache | None = None,
    image_size: int = IMAGE_SIZE,
    ocr_workers: int = 1,
    tokenizer: TextTokenizer | None = None,
    stop: threading.Event | None = None,
) -> PreparedRows:
    """Prepares the model inputs of `rows` of `table`.

    Args:
        table: the catalogue rows.
        rows: indices into `table`, in the order wanted.
        fetcher: resolves image links to bytes.
        ocr_engine: an OCR engine, or the name of one of client.ocr.OCR_ENGINES; "none" reads no
            text and builds no OCR view.
        ocr_cache: OCR results by image SHA-256, looked up first and filled.
        image_size: side of the image encoder's square uint8 input.
        ocr_workers: OCR processes for an engine name (1: in this process), threads for an engine.
        tokenizer: when given, `token_ids` holds each composed text's tokens.
        stop: when it is set, no further image is fetched or read; the result is then
            incomplete and meant to be discarded.

    Returns:
        The rows' inputs; images that cannot be used make their rows text-only, never an error.
    """
    catalog = [table.texts[row] for row in rows]
    links = [table.image_links[row] for row in rows]
    reads_nothing = (ocr_engine if isinstance(ocr_engine, str) else ocr_engine.name) == NoOcr.name
    if reads_nothing:
        images, read = load_images(fetcher, links, size=image_size, stop=stop), {}
    else:
        images, read = _load_and_read(fetcher, links, image_size, ocr_engine, ocr_cache, ocr_workers, stop)
    ocr_texts = [read.get(image.sha256, "") if image.has_image else "" for image in images]
    texts = [compose_text(content, ocr) for content, ocr in zip(catalog, ocr_texts)]
    return PreparedRows(
        images=images,
        ocr_texts=ocr_texts,
        texts=texts,
        numeric_features=numeric_feature_matrix(catalog),
        token_ids=tokenizer.encode(texts) if tokenizer is not None else None,
    )


def _load_and_read(
    fetcher: ImageFetcher,
    links: list,
    image_size: int,
    ocr_engine: str | OcrEngine,
    ocr_cache: OcrCache | None,
    ocr_workers: int,
    stop: threading.Event | None,
) -> tuple[list[PreparedImage], dict[str, str]]:
    """The images of `links` and the text read off them: each image goes to OCR as soon as it
    is downloaded and decoded, so downloads overlap with the reading of earlier images."""
    images: list[PreparedImage | None] = [None] * len(links)

    def views() -> Iterator[tuple[str, np.ndarray]]:
        for positions, image in stream_images(fetcher, links, size=image_size, ocr_max_side=OCR_MAX_SIDE, stop=stop):
            for position in positions:
                images[position] = image
            if image.has_image and image.ocr_pixels is not None:
                yield image.sha256, image.ocr_pixels

    read = run_ocr(ocr_engine, views(), ocr_cache, workers=ocr_workers, stop=stop)
    return images, read  # type: ignore[return-value]  # run_ocr consumed every image
