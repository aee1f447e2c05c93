"""Time and peak memory of the worst image shapes through decode -> OCR view -> RapidOCR.

Each shape runs in a fresh process (so its peak RSS is its own), after one warm-up image that
loads the OCR models; the figures are the median of --runs runs.

    python benchmarks/worst_images.py --runs 3
"""

from __future__ import annotations

import argparse
import io
import json
import resource
import statistics
import subprocess
import sys
import time

SHAPES = [(1, 5000, "blank"), (5000, 1, "blank"), (40, 2000, "text"), (2000, 40, "text"),
          (6000, 6000, "text"), (640, 640, "dense text"), (200, 200, "dense text")]


def measure_one(width: int, height: int, kind: str) -> dict:
    """Decode, prepare and OCR one synthetic PNG in this process."""
    from PIL import Image, ImageDraw

    from client.images import decode_image, ocr_view, prepare_image
    from client.ocr import make_ocr_engine

    image = Image.new("RGB", (width, height), "white")
    if kind != "blank":
        step = 12 if kind == "dense text" else 60
        draw = ImageDraw.Draw(image)
        for y in range(0, height, step):
            draw.text((2, y), "PRICE 12.99 OZ PACK OF 6 " * (width // 150 + 1), fill="black")
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    engine = make_ocr_engine("rapidocr")
    engine.read(ocr_view(Image.new("RGB", (300, 300), "white")))  # loads the models
    loaded_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    decoded, _, _ = decode_image(buffer.getvalue())
    view = ocr_view(decoded)
    prepare_image(decoded)
    text = engine.read(view)
    seconds = time.perf_counter() - started
    return {"shape": f"{width}x{height} {kind}", "ocr_view": f"{view.shape[1]}x{view.shape[0]}",
            "seconds": seconds, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "rss_after_model_load_mib": loaded_rss / 1024, "characters_read": len(text)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="runs per shape; the median is printed (default: 3)")
    parser.add_argument("--one", nargs=3, metavar=("WIDTH", "HEIGHT", "KIND"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(measure_one(int(args.one[0]), int(args.one[1]), args.one[2])))
        return 0
    print(f"{'image':<22} {'OCR view':>9} {'seconds':>8} {'peak RSS MiB':>13} {'chars':>6}")
    for width, height, kind in SHAPES:
        runs = [json.loads(subprocess.run([sys.executable, __file__, "--one", str(width), str(height), kind],
                                          check=True, capture_output=True, text=True).stdout)
                for _ in range(args.runs)]
        print(f"{runs[0]['shape']:<22} {runs[0]['ocr_view']:>9} {statistics.median(r['seconds'] for r in runs):>8.2f} "
              f"{statistics.median(r['peak_rss_mib'] for r in runs):>13.0f} {runs[0]['characters_read']:>6}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
