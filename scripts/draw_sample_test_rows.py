"""Draws the bundled sample's test rows: labelled rows of ../shared/data/amazon2025 whose photo is
available, held out of sample/train.csv, written without their price.

    python scripts/draw_sample_test_rows.py [--rows 30] [--seed 2025]

Writes sample/test.csv and the rows' photos into sample/images/ (downscaled to at most 384 px on
the long side, JPEG quality 85, as the training rows' photos), so that `make sample` predicts
rows from their photos without network. A drawn row shares neither its sample_id nor its photo
with a training row of the sample, and its photo decodes whole (the truncated ones are left to
the training rows).
"""

from __future__ import annotations

import argparse
import csv
import random
import sys
from pathlib import Path

from PIL import Image

PROJECT = Path(__file__).resolve().parents[1]
SAMPLE = PROJECT / "sample"
SHARED_DATA = PROJECT.parent / "shared" / "data" / "amazon2025"
MAX_SIDE = 384
COLUMNS = ("sample_id", "catalog_content", "image_link")


def photo_name(link: str) -> str:
    return link.rsplit("/", 1)[-1]


def decodes_whole(path: Path) -> bool:
    try:
        with Image.open(path) as image:
            image.load()
    except OSError:
        return False
    return True


def copy_photo(source: Path, target: Path) -> None:
    """Copies a photo, downscaled to at most MAX_SIDE on its long side when it is larger."""
    with Image.open(source) as image:
        if max(image.size) <= MAX_SIDE:
            target.write_bytes(source.read_bytes())
            return
        image = image.convert("RGB")
        image.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.LANCZOS)
        image.save(target, "JPEG", quality=85)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=30)
    parser.add_argument("--seed", type=int, default=2025)
    args = parser.parse_args(argv)
    if not SHARED_DATA.is_dir():
        print(f"draw_sample_test_rows: needs {SHARED_DATA}", file=sys.stderr)
        return 2

    with (SAMPLE / "train.csv").open(newline="", encoding="utf-8") as handle:
        training = list(csv.DictReader(handle))
    with (SHARED_DATA / "train.csv").open(newline="", encoding="utf-8") as handle:
        labelled = list(csv.DictReader(handle))
    taken_ids = {row["sample_id"] for row in training}
    taken_photos = {photo_name(row["image_link"]) for row in training}
    photos = SHARED_DATA / "images"
    candidates = [row for row in labelled if row["sample_id"] not in taken_ids
                  and photo_name(row["image_link"]) not in taken_photos
                  and (photos / photo_name(row["image_link"])).is_file()]
    random.Random(args.seed).shuffle(candidates)

    drawn: list[dict[str, str]] = []
    drawn_photos: set[str] = set()
    for row in candidates:
        if len(drawn) == args.rows:
            break
        name = photo_name(row["image_link"])
        if name in drawn_photos or not decodes_whole(photos / name):
            continue
        copy_photo(photos / name, SAMPLE / "images" / name)
        drawn.append(row)
        drawn_photos.add(name)

    with (SAMPLE / "test.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(drawn)
    print(f"wrote {len(drawn)} rows to {SAMPLE / 'test.csv'} and their photos to {SAMPLE / 'images'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
