"""Calibrates the INT8 OCR networks: writes client/ppocr_detector_calibration.json and
client/ppocr_recognizer_calibration.json.

    python scripts/calibrate_ocr.py [--images DIR] [--photos 120] [--output-dir client]

Reads real product photos' OCR views with the FP32 graphs, exactly as they are served (detector
input, boxes, crops, lines batched by width), records every detector and recogniser input, and
lets ONNX Runtime's static quantisation collect each activation's range over them. The photos
are every 7th of the train rows' photos, sorted by file name. Run it again only when the graphs,
the reader's settings or ONNX Runtime's version change (the ranges are kept by the names of the
tensors of the graphs being quantised; tests/test_ocr.py fails when a convolution is left
unquantised); the files are committed so that every export builds the same INT8 graphs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from client.images import OCR_MAX_SIDE, ImageFetcher, ImageStatus, prepare_fetched
from client.models import OCR_DETECTOR, OCR_RECOGNIZER
from client.ppocr import (
    DETECTOR_CALIBRATION,
    RECOGNIZER_CALIBRATION,
    LocalOcrModels,
    PpOcrReader,
    graph_characters,
    ppocr_graphs,
    quantize_detector,
    quantize_recognizer,
)

DEFAULT_IMAGES = Path(__file__).resolve().parents[2] / "shared" / "data" / "amazon2025" / "images"
QUANTIZERS = {OCR_DETECTOR: (quantize_detector, DETECTOR_CALIBRATION.name),
              OCR_RECOGNIZER: (quantize_recognizer, RECOGNIZER_CALIBRATION.name)}


def network_inputs(images: Path, photos: int) -> dict[str, list[dict[str, np.ndarray]]]:
    """Every input the FP32 reader sends to each network for the chosen photos, by model name."""
    graphs = ppocr_graphs(int8=False)
    models = LocalOcrModels({name: graph.SerializeToString() for name, graph in graphs.items()})
    recorded: dict[str, list[dict[str, np.ndarray]]] = {name: [] for name in QUANTIZERS}

    def recording(model: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        recorded[model].append(inputs)
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
    parser.add_argument("--output-dir", type=Path, default=RECOGNIZER_CALIBRATION.parent,
                        help="where the two calibration files are written")
    args = parser.parse_args(argv)
    inputs = network_inputs(args.images, args.photos)
    if not inputs[OCR_RECOGNIZER]:
        print(f"calibrate_ocr: no text found on the photos in {args.images}", file=sys.stderr)
        return 1
    fp32 = ppocr_graphs(int8=False)
    for model, (quantize, file_name) in QUANTIZERS.items():
        output = args.output_dir / file_name
        output.unlink(missing_ok=True)  # a cache that exists would be reused, not recomputed
        quantize(fp32[model], output, calibration_inputs=inputs[model])
        images = sum(len(next(iter(batch.values()))) for batch in inputs[model])
        print(f"wrote {output}: ranges from {len(inputs[model])} {model} batches, {images} images or text lines")
    return 0


if __name__ == "__main__":
    sys.exit(main())
