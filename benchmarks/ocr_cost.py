"""What OCR costs and what it is worth, before and after, on the same real photos.

    python benchmarks/ocr_cost.py [--photos 0] [--folds 5] [--before-cache OCR_CACHE.jsonl]

Before: rapidocr's own pipeline with its defaults, as the client ran it until now (detector
input with its short side enlarged to 736 px, angle classifier, recogniser batches of 6 lines
padded to at least 320 px). After: client.ppocr.PpOcrReader with the deployment's settings
(`ReaderSettings()`), its networks in ONNX Runtime sessions of this process, one image per core.
Both read the same OCR views (client.images.ocr_view) of the train rows' photos in
../shared/data/amazon2025/images. With --before-cache, the texts read before come from an OCR
cache that the client wrote before (engine key "rapidocr", e.g. a training run's
features/ocr_cache.jsonl): only the photos it lacks are read, and timed, with rapidocr.

Printed: milliseconds per photo (wall time over all photos / photos), characters read, and how
much of the text read before is read after (characters in common over the characters read
before: difflib's matching blocks, per photo, summed). Then what OCR is worth: SMAPE on the rows
with a photo of TF-IDF + Ridge cross-fitted on every train row (K folds grouped by image_link,
as training makes them), the photo rows' text composed with no OCR, the text read before, and the
text read after; per fold min-max beside the pooled figure.
"""

from __future__ import annotations

import argparse
import difflib
import os
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import fields
from pathlib import Path

import numpy as np

from client.blend import smape
from client.images import OCR_MAX_SIDE, ImageFetcher, ImageStatus, link_name, prepare_fetched
from client.models import OCR_RECOGNIZER
from client.ocr import OcrCache, join_lines
from client.ppocr import LocalOcrModels, PpOcrReader, ReaderSettings, graph_characters, ppocr_graphs
from client.table import read_catalog_csv
from client.text import compose_text
from training.folds import Folds, image_groups

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accuracy import DATA, tfidf_ridge  # noqa: E402  (a sibling benchmark script)


def rapidocr_defaults() -> Callable[[np.ndarray], str]:
    """The reader before: rapidocr's RapidOCR with its default configuration."""
    from rapidocr import RapidOCR

    engine = RapidOCR(params={"Global.log_level": "error", "Global.text_score": 0.5})

    def read(rgb: np.ndarray) -> str:
        result = engine(np.ascontiguousarray(rgb[:, :, ::-1]))
        if getattr(result, "txts", None) is None:
            return ""
        return join_lines(zip(result.txts, result.scores, result.boxes, strict=True))

    return read


def served_reader(settings: ReaderSettings) -> tuple[Callable[[np.ndarray], str], int]:
    """The reader after, and how many images it reads at once (one per core)."""
    graphs = ppocr_graphs()
    models = LocalOcrModels({name: graph.SerializeToString() for name, graph in graphs.items()}, threads=1)
    reader = PpOcrReader(models, graph_characters(graphs[OCR_RECOGNIZER]), settings)
    return (lambda rgb: join_lines(reader.read_lines(np.ascontiguousarray(rgb[:, :, ::-1])))), os.cpu_count() or 1


def read_all(read: Callable[[np.ndarray], str], views: dict[str, np.ndarray], workers: int) -> tuple[dict[str, str], float]:
    """Every view's text and the wall seconds it took (one warm-up read first, untimed)."""
    read(next(iter(views.values())))
    started = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        texts = dict(zip(views, pool.map(read, views.values()), strict=True))
    return texts, time.perf_counter() - started


def texts_before(views: dict[str, np.ndarray], cache: Path | None) -> tuple[dict[str, str], float | None]:
    """The texts read before, from `cache` where it has them, the rest read by rapidocr's defaults;
    and rapidocr's milliseconds per photo (None when every text came from the cache)."""
    cached = OcrCache(cache) if cache else None
    texts = {sha: text for sha in views if cached and (text := cached.get("rapidocr", sha)) is not None}
    todo = {sha: view for sha, view in views.items() if sha not in texts}
    if not todo:
        return texts, None
    read, seconds = read_all(rapidocr_defaults(), todo, workers=1)  # it runs its sessions on every core
    return texts | read, 1000 * seconds / len(todo)


def common_characters(before: str, after: str) -> int:
    matcher = difflib.SequenceMatcher(None, before, after, autojunk=False)
    return sum(block.size for block in matcher.get_matching_blocks())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=0, help="read only the first N photos (0: all)")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--before-cache", type=Path, help="OCR cache with the texts read before (engine 'rapidocr')")
    for field in fields(ReaderSettings):
        parser.add_argument(f"--{field.name.replace('_', '-')}", type=type(field.default),
                            default=field.default, help="the reader after (default: the deployment's, %(default)s)")
    args = parser.parse_args(argv)
    settings = ReaderSettings(**{field.name: getattr(args, field.name) for field in fields(ReaderSettings)})

    table = read_catalog_csv(DATA / "train.csv", with_prices=True)
    fetcher = ImageFetcher(DATA / "images")
    sha_of_row: dict[int, str] = {}
    views: dict[str, np.ndarray] = {}
    for row, link in enumerate(table.image_links):
        if not (DATA / "images" / link_name(link)).is_file():  # no photo here: nothing is downloaded
            continue
        prepared = prepare_fetched(fetcher.fetch(link), ocr_max_side=OCR_MAX_SIDE)
        if prepared.status is ImageStatus.OK and prepared.sha256 and prepared.ocr_pixels is not None:
            sha_of_row[row] = prepared.sha256
            if not args.photos or len(views) < args.photos or prepared.sha256 in views:
                views.setdefault(prepared.sha256, prepared.ocr_pixels)
    sha_of_row = {row: sha for row, sha in sha_of_row.items() if sha in views}

    before, before_ms = texts_before(views, args.before_cache)
    read_after, workers = served_reader(settings)
    after, after_s = read_all(read_after, views, workers)
    read_before = sum(len(text) for text in before.values())
    common = sum(common_characters(before[sha], after[sha]) for sha in views)
    print(f"{len(views)} photos (OCR views, longest side <= 640 px), 2-core machine")
    before_time = f"{before_ms:7.1f} ms/photo" if before_ms is not None else "  (from the cache)"
    print(f"  before (rapidocr defaults)   {before_time}   {read_before} characters")
    print(f"  after  (served PP-OCR, {settings.cache_key})")
    print(f"                               {1000 * after_s / len(views):7.1f} ms/photo   "
          f"{sum(len(t) for t in after.values())} characters, {workers} images at once")
    speed_up = f"{before_ms / (1000 * after_s / len(views)):.2f}x" if before_ms is not None else "not measured"
    print(f"  speed-up {speed_up}; text read before that is read after: {common / max(1, read_before):.1%}; "
          f"photos read identically: {sum(before[s] == after[s] for s in views)}/{len(views)}")

    rows = np.arange(len(table))
    folds = Folds.grouped(rows, image_groups(list(table.image_links)), args.folds, args.seed)
    photo_rows = np.asarray(sorted(sha_of_row))
    print(f"SMAPE on the {len(photo_rows)} rows with a photo, TF-IDF + Ridge cross-fitted on all "
          f"{len(table)} rows ({args.folds} folds grouped by image_link, seed {args.seed}):")
    scores: dict[str, list[float]] = {}
    for label, ocr in (("OCR before", before), ("OCR after", after), ("no OCR text", {})):
        texts = [compose_text(table.texts[row], ocr.get(sha_of_row.get(row, ""), "")) for row in rows]
        predicted = np.zeros(len(rows))
        for train_rows, held_out in folds:
            predicted[held_out] = tfidf_ridge([texts[i] for i in train_rows], table.prices[train_rows],
                                              [texts[i] for i in held_out])
        per_fold = [smape(table.prices[np.intersect1d(held_out, photo_rows)],
                          predicted[np.intersect1d(held_out, photo_rows)]) for _, held_out in folds]
        pooled = smape(table.prices[photo_rows], predicted[photo_rows])
        scores[label] = per_fold
        paired = np.subtract(per_fold, scores["OCR before"])
        print(f"  {label:<14}{pooled:7.2f}   folds {min(per_fold):.2f}-{max(per_fold):.2f}   "
              f"minus OCR before, per fold: {paired.min():+.2f} to {paired.max():+.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
