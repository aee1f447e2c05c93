"""Text rows: `client predict` beside its own ensemble graphs run bare on the same batches, and
where the client's time goes, in one run.

    python benchmarks/client_overhead.py DEPLOYMENT [--rows 2000] [--repeats 3]

Rows: the first --rows of ../shared/data/amazon2025/test.csv, without their image links. Each
repeat runs, in turn:

- `client predict` in-process, as a user runs it (CSV in, journal, CSV out); rows/s over its
  whole wall time, and over the time after its deployment is loaded (the models' sessions, the
  tokenizer, the FAISS index: a fixed cost per run, not per row);
- the graphs alone: the text-only ensemble's steps (text encoder, lexical model, fusion MLP,
  LightGBM) through the same in-process backend, on the batches the client sends (same rows, waves,
  token-length batches and padding), tokens, features and priors ready: no CSV, no priors,
  no FAISS, no blend, no journal.

Then each of the client's stages once, alone and in order, on the same rows, as shares of their sum.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from client.bundle import Deployment
from client.predict import Journal, PredictConfig, check_inputs, open_predictor, predict, write_outputs
from client.table import read_catalog

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "amazon2025"


def write_text_rows(path: Path, rows: int) -> None:
    """The first `rows` test.csv rows with blank image links."""
    with (DATA / "test.csv").open(newline="", encoding="utf-8") as handle:
        selected = [row for _, row in zip(range(rows), csv.DictReader(handle))]
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["sample_id", "catalog_content", "image_link"])
        writer.writerows([row["sample_id"], row["catalog_content"], ""] for row in selected)


def client_run(config: PredictConfig) -> tuple[float, float]:
    """(rows/s over the whole run, rows/s after its input and deployment are read and its models
    loaded) of one `client predict`."""
    summary = predict(config)
    seconds = summary["seconds"]
    return summary["rows"] / seconds["total"], summary["rows"] / (seconds["total"] - seconds["loading"])


def waves_of(config: PredictConfig, table, rows: np.ndarray) -> list[np.ndarray]:
    """The client's waves: rows sorted by text length, cut every `wave_rows`."""
    ordered = rows[np.argsort([len(table.texts[i]) for i in rows], kind="stable")]
    return [ordered[i : i + config.wave_rows] for i in range(0, len(ordered), config.wave_rows)]


async def stages(config: PredictConfig) -> tuple[dict[str, float], list]:
    """Seconds of each client stage alone over the rows, and the requests it would send."""
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    table, deployment = check_inputs(config)
    seconds["read CSV, load and check the deployment"] = time.perf_counter() - started
    started = time.perf_counter()
    predictor = await open_predictor(config, deployment)
    seconds["load sessions, tokenizer, FAISS index"] = time.perf_counter() - started
    try:
        timed: dict[str, float] = {"prepare rows (tokens, features, priors)": 0.0, "batch and pad": 0.0,
                                   "ensemble graphs": 0.0, "retrieval (FAISS), blend, records": 0.0,
                                   "journal lines": 0.0}
        requests, records = [], []
        journal = Journal(config.output_csv.with_name("stages.journal"), "stages", restart=True)
        for rows in waves_of(config, table, np.arange(len(table))):
            mark = time.perf_counter()
            wave = predictor.prepare(table, rows)
            timed["prepare rows (tokens, features, priors)"] += time.perf_counter() - mark
            mark = time.perf_counter()
            batches = predictor.batches(wave, config.batch_size)
            timed["batch and pad"] += time.perf_counter() - mark
            for ensemble, positions, inputs in batches:
                mark = time.perf_counter()
                outputs = predictor.backend.run(ensemble, inputs)
                timed["ensemble graphs"] += time.perf_counter() - mark
                mark = time.perf_counter()
                finished = predictor.finish(table, wave, positions, outputs)
                timed["retrieval (FAISS), blend, records"] += time.perf_counter() - mark
                mark = time.perf_counter()
                journal.append(finished)
                timed["journal lines"] += time.perf_counter() - mark
                records += finished
                requests.append((ensemble, inputs))
        journal.close()
        seconds.update(timed)
        mark = time.perf_counter()
        by_id = {record["sample_id"]: record for record in records}
        write_outputs(config, [by_id[sample_id] for sample_id in table.sample_ids])
        seconds["write the output CSV"] = time.perf_counter() - mark
    finally:
        await predictor.backend.close()
    return seconds, requests


def graphs_run(deployment: Deployment, requests: list) -> float:
    """Seconds of the ensembles' steps alone over `requests`, through a fresh in-process backend."""
    from client.inference import InProcessBackend

    backend = InProcessBackend(deployment)
    backend.run(*requests[0])  # ONNX Runtime's first run allocates: not counted, as the client's warm-up isn't
    started = time.perf_counter()
    for ensemble, inputs in requests:
        backend.run(ensemble, inputs)
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("deployment", type=Path)
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)

    deployment = Deployment.load(args.deployment)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        rows_csv = workdir / "rows.csv"
        write_text_rows(rows_csv, args.rows)
        config = PredictConfig(input_csv=rows_csv, output_csv=workdir / "out.csv", deployment=args.deployment,
                               cache_dir=workdir / "cache", restart=True, progress=False)
        seconds, requests = asyncio.run(stages(config))
        rows = len(read_catalog(rows_csv))
        whole, predicting, graphs = [], [], []
        for _ in range(args.repeats):
            run_whole, run_predicting = client_run(config)
            whole.append(run_whole)
            predicting.append(run_predicting)
            graphs.append(rows / graphs_run(deployment, requests))

    print(f"{rows} test.csv rows, text-only, in-process ({deployment.profile} deployment), "
          f"median of {args.repeats} interleaved runs")
    for name, rates in (("client predict, whole run", whole), ("client predict, after loading", predicting),
                        ("ensemble graphs alone, same batches", graphs)):
        print(f"  {name:<38}{statistics.median(rates):7.1f} rows/s   (runs: {', '.join(f'{r:.1f}' for r in rates)})")
    graph_rate = statistics.median(graphs)
    print(f"  client / graphs: whole run {statistics.median(whole) / graph_rate:.3f}, "
          f"after loading {statistics.median(predicting) / graph_rate:.3f}")
    total = sum(seconds.values())
    print(f"client stages alone, one pass, in order ({total:.1f} s in all; the client overlaps preparation "
          "with inference):")
    for stage, value in seconds.items():
        print(f"  {stage:<44}{value:7.2f} s {100 * value / total:6.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
