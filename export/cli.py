"""`export-bundle`: export a training run to ONNX, check parity, write the deployment folder.

Exports the image encoder, the fine-tuned text encoder with its price head, the lexical model,
the fusion MLP and LightGBM to ONNX; checks each graph, reloaded from disk, against its source
model on real rows of the training data at several batch sizes; writes the Triton model
repository, the client bundle (tokenizer, retrieval index, blend weights, settings, manifest with
checksums) and MODEL_CARD.md. Fails, naming the model, output and worst row, when a graph misses
its parity bound.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from client.cpu import cpu_flags
from client.errors import BundleError, InputError, MissingDependencyError
from export.parity import ParityError
from export.pipeline import PARITY_ROWS, export_run
from export.profiles import AUTO, PROFILES, choose_profile
from training.cli import HelpFormatter


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="export-bundle", description=__doc__.split(":", 1)[1].strip(),
                                     formatter_class=HelpFormatter)
    parser.add_argument("run", type=Path, help="training run folder (written by `train`)")
    parser.add_argument("-o", "--output", type=Path, default=Path("deployment"),
                        help="deployment folder to write, replaced if it exists: model_repository/, bundle/, "
                             "MODEL_CARD.md")
    parser.add_argument("--tensorrt-fp16", action="store_true",
                        help="enable TensorRT FP16 in the GPU configs (check its parity on the GPU it runs on)")
    parser.add_argument("--profile", choices=[AUTO, *PROFILES], default=AUTO,
                        help="serving profile: fp32 (every graph in float32: for a GPU, and the exact "
                             "reference), cpu-int8 (the text encoder quantised to INT8 for CPU serving, 7-bit "
                             "weights, any x86-64 CPU), cpu-int8-vnni (8-bit weights, CPUs with VNNI); auto: "
                             "fp32 where ONNX Runtime has CUDA, else the INT8 profile this CPU supports")
    parser.add_argument("--parity-rows", type=int, default=PARITY_ROWS,
                        help="real rows for the encoders' and lexical model's parity checks (fusion and "
                             "LightGBM: every row)")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="log each parity figure as it is measured (default: printed at the end)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    if args.profile == AUTO:
        import onnxruntime

        profile, reason = choose_profile("CUDAExecutionProvider" in onnxruntime.get_available_providers(), cpu_flags())
        reason = f"auto: {reason}"
    else:
        profile, reason = PROFILES[args.profile], "asked for"
    try:
        result = export_run(args.run, args.output, tensorrt_fp16=args.tensorrt_fp16, parity_rows=args.parity_rows,
                            profile=profile, profile_reason=reason)
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
    print(f"serving profile {profile.name} ({reason})")
    print(f"wrote {result.root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
