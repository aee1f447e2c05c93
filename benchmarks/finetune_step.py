"""Seconds per fine-tuning step of the text encoder, float32 against bfloat16 autocast.

    python benchmarks/finetune_step.py [--rows 1200] [--steps 24] [--repeats 2]

Real rows of train.csv, tokenised as training does, batches as training builds them
(training.finetune.bucketed_batches); each precision runs in turn on the same batches, a fresh
encoder each time. The first 4 steps of a run are warm-up and not counted.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from client.cpu import cpu_flags, cpu_model
from client.table import read_catalog_csv
from training.encoders import load_text_encoder, make_tokenizer
from training.finetune import BF16_CPU_FLAG, FineTuneSettings, PriceRegressor, bucketed_batches

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "amazon2025"
WARM_UP = 4


def seconds_per_step(precision: str, token_ids, log_prices, batches, tokenizer) -> float:
    encoder, _ = load_text_encoder()
    model = PriceRegressor(encoder).train()
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-5)
    targets = torch.from_numpy(log_prices.astype(np.float32))
    times = []
    for batch in batches:
        started = time.perf_counter()
        input_ids, attention_mask = (torch.from_numpy(a) for a in tokenizer.pad([token_ids[i] for i in batch]))
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            _, log_price = model(input_ids, attention_mask)
        loss = F.l1_loss(log_price[:, 0].float(), targets[batch])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        times.append(time.perf_counter() - started)
    return statistics.median(times[WARM_UP:])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--csv", type=Path, default=DATA / "train.csv")
    parser.add_argument("--rows", type=int, default=1200)
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)

    table = read_catalog_csv(args.csv, with_prices=True)
    tokenizer = make_tokenizer("all-MiniLM-L6-v2", 128)
    token_ids = tokenizer.encode(table.texts[: args.rows])
    lengths = np.asarray([len(ids) for ids in token_ids])
    batches = bucketed_batches(lengths, np.arange(len(token_ids)), FineTuneSettings(), np.random.default_rng(0))
    batches = batches[: args.steps]
    print(f"CPU: {cpu_model()}, AMX-BF16: {'yes' if BF16_CPU_FLAG in cpu_flags() else 'no'}; "
          f"{len(batches)} steps of {FineTuneSettings.batch_size} rows, mean {lengths.mean():.0f} tokens per row")
    runs: dict[str, list[float]] = {"fp32": [], "bf16": []}
    for _ in range(args.repeats):
        for precision, seconds in runs.items():
            seconds.append(seconds_per_step(precision, token_ids, np.log1p(table.prices), batches, tokenizer))
    for precision, seconds in runs.items():
        print(f"  {precision}: {statistics.median(seconds):.3f} s/step (runs: {', '.join(f'{s:.3f}' for s in seconds)})")
    print(f"  fp32 / bf16: {statistics.median(runs['fp32']) / statistics.median(runs['bf16']):.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
