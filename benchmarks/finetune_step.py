"""Seconds per fine-tuning step of the text encoder, float32 against bfloat16 autocast.

    python benchmarks/finetune_step.py [--rows 1200] [--repeats 2]

Real rows of train.csv, tokenised as training does, one epoch of `training.finetune.fine_tune`
itself (its batches, schedule and optimiser) over the first `--rows` rows, a fresh pretrained
encoder each time; fp32 and bf16 take turns. A step's time is the epoch's seconds over its steps.
"""

from __future__ import annotations

import argparse
import statistics
from dataclasses import replace
from pathlib import Path

import numpy as np

from client.cpu import cpu_flags, cpu_model
from client.table import read_catalog_csv
from client.text import compose_text
from training.config import TrainConfig
from training.encoders import OFFLINE_TEXT_ENCODER, load_text_encoder, make_tokenizer
from training.finetune import BF16_CPU_FLAGS, FineTuneSettings, fine_tune

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "amazon2025"
PRECISIONS = ("fp32", "bf16")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--csv", type=Path, default=DATA / "train.csv")
    parser.add_argument("--rows", type=int, default=1200)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)

    table = read_catalog_csv(args.csv, with_prices=True)
    tokenizer = make_tokenizer(OFFLINE_TEXT_ENCODER, TrainConfig.max_tokens)
    rows = np.arange(min(args.rows, len(table)))
    token_ids = tokenizer.encode([compose_text(table.texts[i]) for i in rows])
    log_prices = np.log1p(table.prices[rows])
    settings = replace(FineTuneSettings(), epochs=1)
    steps = -(-len(rows) // settings.batch_size)
    native_bf16 = ", ".join(sorted(BF16_CPU_FLAGS & cpu_flags())) or "none"
    print(f"CPU: {cpu_model()}, native bfloat16 flags: {native_bf16}; one epoch of "
          f"{steps} steps of {settings.batch_size} rows, {np.mean([len(t) for t in token_ids]):.0f} tokens per row")
    runs: dict[str, list[float]] = {precision: [] for precision in PRECISIONS}
    for _ in range(args.repeats):
        for precision in PRECISIONS:
            encoder, _ = load_text_encoder()
            _, history = fine_tune(encoder, tokenizer, token_ids, log_prices, rows,
                                   replace(settings, precision=precision))
            runs[precision].append(history[0]["seconds"] / steps)
    for precision, seconds in runs.items():
        print(f"  {precision}: {statistics.median(seconds):.3f} s/step (runs: {', '.join(f'{s:.3f}' for s in seconds)})")
    print(f"  fp32 / bf16: {statistics.median(runs['fp32']) / statistics.median(runs['bf16']):.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
