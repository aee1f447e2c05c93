"""Calibrates the INT8 OCR recogniser: writes client/ppocr_recognizer_calibration.json.

    python scripts/calibrate_ocr.py [--images DIR] [--photos 120]

Reads real product photos' OCR views with the FP32 graphs, exactly as they are served (detector,
boxes, crops, lines batched by width), records every recogniser input, and lets ONNX Runtime's
static quantisation collect each activation's range over them (min/max, moving average). The
photos are every 7th of the train rows' photos, sorted by file name. Run it again only when the
graphs, the reader's settings or ONNX Runtime's version change (the ranges are kept by the names
of the tensors of ONNX Runtime's fused graph; tests/test_ocr.py fails when a convolution is left
unquantised); the file is committed so that every export builds the same INT8 graph.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from client.images import OCR_MAX_SIDE, ImageFetcher, ImageStatus, prepare_fetched
from client.models import OCR_RECOGNIZER
from client.ppocr import (
    RECOGNIZER_CALIBRATION,
    LocalOcrModels,
    PpOcrReader,
    graph_characters,
    ppocr_graphs,
    quantize_recognizer,
)

DEFAULT_IMAGES = Path(__file__).resolve().parents[2] / "shared" / "data" / "amazon2025" / "images"


def recognizer_inputs(images: Path, photos: int) -> list[dict[str, np.ndarray]]:
    """Every batch of text lines the FP32 reader sends to the recogniser for the chosen photos."""
    graphs = ppocr_graphs(int8_recognizer=False)
    models = LocalOcrModels({name: graph.SerializeToString() for name, graph in graphs.items()})
    recorded: list[dict[str, np.ndarray]] = []

    def recording(model: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if model == OCR_RECOGNIZER:
            recorded.append(inputs)
        return models(model, inputs)

    reader = PpOcrReader(recording, graph_characters(graphs[OCR_RECOGNIZER]))
    fetcher = ImageFetcher(images)
    for name in sorted(path.name for path in images.glob("*.jpg"))[::7][:photos]:
        prepared = prepare_fetched(fetcher.fetch(name), ocr_max_side=OCR_MAX_SIDE)
        if prepared.status is ImageStatus.OK and prepared.ocr_pixels is not None:
            reader.read_lines(np.ascontiguousarray(prepared.ocr_pixels[:, :, ::-1]))
    return recorded


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, default=DEFAULT_IMAGES, help="folder of product photos (*.jpg)")
    parser.add_argument("--photos", type=int, default=120)
    parser.add_argument("-o", "--output", type=Path, default=RECOGNIZER_CALIBRATION)
    args = parser.parse_args(argv)
    inputs = recognizer_inputs(args.images, args.photos)
    if not inputs:
        print(f"calibrate_ocr: no text found on the photos in {args.images}", file=sys.stderr)
        return 1
    args.output.unlink(missing_ok=True)  # a cache that exists would be reused, not recomputed
    recognizer = ppocr_graphs(int8_recognizer=False)[OCR_RECOGNIZER]
    quantize_recognizer(recognizer, args.output, calibration_inputs=inputs)
    print(f"wrote {args.output}: ranges from {len(inputs)} batches of text lines "
          f"({sum(len(batch['text_lines']) for batch in inputs)} lines)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
