"""`export-bundle`: export a training run to ONNX, check parity, write the deployment folder."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from client.errors import BundleError, InputError, MissingDependencyError
from export.parity import ParityError
from export.pipeline import PARITY_ROWS, export_run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="export-bundle", description=__doc__.split(":", 1)[1].strip())
    parser.add_argument("run", type=Path, help="training output folder (written by `train`)")
    parser.add_argument("-o", "--output", type=Path, default=Path("deployment"),
                        help="deployment folder to write: model_repository/, bundle/, MODEL_CARD.md (default: deployment)")
    parser.add_argument("--tensorrt-fp16", action="store_true",
                        help="enable TensorRT FP16 in the GPU configs (check its parity on the GPU it runs on)")
    parser.add_argument("--parity-rows", type=int, default=PARITY_ROWS, help="real rows for the encoders' parity checks")
    parser.add_argument("-v", "--verbose", action="count", default=0)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    try:
        result = export_run(args.run, args.output, tensorrt_fp16=args.tensorrt_fp16, parity_rows=args.parity_rows)
    except ParityError as exc:
        print(f"export-bundle: {exc}", file=sys.stderr)
        return 1
    except (InputError, BundleError, MissingDependencyError) as exc:
        print(f"export-bundle: error: {exc}", file=sys.stderr)
        return 2
    except (OSError, KeyError) as exc:  # a run folder with files missing or written by another version
        print(f"export-bundle: error: {args.run} is an incomplete or unreadable training run: {exc!r}",
              file=sys.stderr)
        return 2
    for parity in result.parity:
        print(parity.describe())
    print(f"wrote {result.root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
