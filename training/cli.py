"""`train`: train every model of the price predictor on a labelled catalogue CSV (+ images).

Extracts image embeddings, OCR text and catalogue features; cross-fits every model on K folds
grouped by image_link (the fine-tuned text encoder, the fusion MLP, retrieval, the lexical model
and the LightGBM stacker), so each labelled row gets out-of-fold estimates from models that never
saw it; fits the blend weights on those; then refits every model on all labelled rows. Writes
every artifact `export-bundle` needs, report.json (out-of-fold SMAPE with the folds' spread) and
plots into the output folder.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from client.commands.options import add_encoding_option, add_link_options, fraction, int_at_least
from client.errors import InputError, MissingDependencyError
from client.ocr import OCR_ENGINES
from training.config import TrainConfig
from training.finetune import PRECISIONS, FineTuneSettings
from training.fusion import FusionSettings
from training.gbm import GbmSettings
from training.pipeline import train
from training.report import validation_table


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="train", description=__doc__.split(":", 1)[1].strip(),
                                     formatter_class=HelpFormatter)
    parser.add_argument("csv", type=Path, help="labelled CSV: sample_id, catalog_content, image_link, price")
    parser.add_argument("-o", "--output", type=Path, required=True,
                        help="run folder for every artifact (reused: finished image/OCR features are not redone)")
    data = parser.add_argument_group("rows and images")
    data.add_argument("--images", type=Path,
                      help="folder of images, matched by the last segment of image_link (default: download links)")
    add_encoding_option(data)
    data.add_argument("--skip-bad-prices", action="store_true",
                      help="skip rows whose price is missing, non-numeric or <= 0 (default: refuse the file)")
    data.add_argument("--limit-rows", type=int, help="use only the first N rows, for smoke runs (default: all)")

    models = parser.add_argument_group("encoders and text")
    models.add_argument("--image-encoder", default=TrainConfig.image_encoder,
                        help="'efficientnet-lite0' (offline) or a CLIP hub id / folder with preprocessor_config.json")
    models.add_argument("--text-encoder", default=TrainConfig.text_encoder,
                        help="'all-MiniLM-L6-v2' (offline) or a sentence-transformers hub id / folder "
                             "(pooling mean, cls or max; Dense and Normalize modules)")
    models.add_argument("--ocr", choices=OCR_ENGINES, default=TrainConfig.ocr_engine,
                        help="engine that reads the text on product photos; 'none' (the default) reads none: "
                             "the text read by rapidocr made the blend no better here (README)")
    models.add_argument("--max-tokens", type=int, default=TrainConfig.max_tokens,
                        help="longest token sequence the text models read (longer texts are cut)")

    split = parser.add_argument_group("cross-fitting (folds grouped by image_link)")
    split.add_argument("--folds", type=int_at_least(2), default=TrainConfig.folds,
                       help="K: folds of the out-of-fold estimates (the text encoder is fine-tuned K + 1 times)")
    split.add_argument("--val-fraction", type=fraction, default=TrainConfig.val_fraction,
                       help="share of the rows held out from everything and scored by the deployed models "
                            "(0: every row trains the models)")
    split.add_argument("--seed", type=int, default=TrainConfig.seed, help="seed of the folds and of every model")

    training = parser.add_argument_group("training")
    training.add_argument("--fine-tune-epochs", type=int, default=FineTuneSettings.epochs,
                          help="text encoder fine-tuning epochs")
    training.add_argument("--fine-tune-lr", type=float, default=FineTuneSettings.learning_rate,
                          help="text encoder learning rate (peak, after linear warm-up)")
    training.add_argument("--fine-tune-precision", choices=PRECISIONS, default=FineTuneSettings.precision,
                          help="text encoder training steps in float32 or bfloat16 autocast (auto: bf16 on "
                               "a CUDA GPU that supports it or a CPU with AMX-BF16 or AVX-512 BF16, else fp32)")
    training.add_argument("--epochs", type=int, default=FusionSettings.max_epochs,
                          help="fusion MLP epochs at most (the count with the best out-of-fold SMAPE is kept)")
    training.add_argument("--gbm-rounds", type=int, default=GbmSettings.max_rounds,
                          help="LightGBM stacker rounds at most (early stopping on the folds' held-out rows)")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="more log lines: -v for INFO, -vv for DEBUG (default: warnings only)")
    add_link_options(parser)
    return parser


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the description's line breaks and adds each option's default to its help, unless the
    help says it already or there is none to tell (a positional argument, an option without one)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "(default" in text or not action.option_strings or action.default in (None, argparse.SUPPRESS):
            return text
        return f"{text} (default: {'off' if action.default is False else '%(default)s'})"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING - 10 * args.verbose, format="%(levelname)s %(name)s: %(message)s")
    config = TrainConfig(
        csv=args.csv,
        output=args.output,
        images_dir=args.images,
        image_encoder=args.image_encoder,
        text_encoder=args.text_encoder,
        ocr_engine=args.ocr,
        max_tokens=args.max_tokens,
        folds=args.folds,
        val_fraction=args.val_fraction,
        seed=args.seed,
        bad_prices="skip" if args.skip_bad_prices else "refuse",
        limit_rows=args.limit_rows,
        fine_tuning=FineTuneSettings(epochs=args.fine_tune_epochs, learning_rate=args.fine_tune_lr,
                                     precision=args.fine_tune_precision, seed=args.seed),
        fusion=FusionSettings(max_epochs=args.epochs, seed=args.seed),
        gbm=GbmSettings(max_rounds=args.gbm_rounds, seed=args.seed),
        csv_encoding=args.encoding,
        allow_local_files=args.allow_local_files,
        allow_private_addresses=args.allow_private_addresses,
        allowed_networks=tuple(args.allow_network),
    )
    if args.images is not None and not args.images.is_dir():
        print(f"train: error: --images {args.images} is not a folder", file=sys.stderr)
        return 2
    try:
        report = train(config)
    except (InputError, MissingDependencyError) as exc:
        print(f"train: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # e.g. an output folder that cannot be written
        print(f"train: error: {exc.filename or ''}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\ntrain: interrupted; finished image features and OCR are cached in {args.output}/features "
              "and are reused when the same command runs again", file=sys.stderr)
        return 130
    summary = {name: round(score["all"], 2) for name, score in report["oof_smape"].items()}
    print(json.dumps({"oof_smape": summary, "rows": report["rows"],
                      "seconds": round(report["timings"]["total_s"], 1)}, indent=2))
    table = validation_table(report)
    if table:
        print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
