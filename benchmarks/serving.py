"""Ensemble throughput and latency on the real Triton server, measured by perf_analyzer, beside
in-process ONNX Runtime.

    scripts/install_perf_analyzer.sh        # once: perf_analyzer 2.51 in .venv-perf
    python benchmarks/serving.py DEPLOYMENT [--csv FILE] [--rows 256] [--repeats 3]
        [--ensemble price_ensemble_text] [--batch-sizes 1 32] [--concurrency 1 8 32]

For each batch size, `client perf-data` writes perf_analyzer's input data from real rows of the
CSV. In-process: those rows, batched as perf_analyzer batches them, run through the ensemble's
steps with ONNX Runtime. Triton: a local server (`client serve --local`) on this machine's cores,
and perf_analyzer over gRPC at each concurrency. Prints rows/s, the ratio to in-process, latency
percentiles and the time per request in the server's model (queue and compute), as perf_analyzer reports them
(each run's stable windows, then the median of the runs that reached stability). Client and server
share the cores.
"""

from __future__ import annotations

import argparse
import csv
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from client.bundle import Deployment
from client.cli import main as client_main
from client.inference import InProcessBackend
from client.perf_data import ENSEMBLES, batch_rows, read_perf_data
from client.serve import LocalTritonServer

PROJECT = Path(__file__).resolve().parents[1]
DEFAULT_CSV = PROJECT.parent / "shared" / "data" / "amazon2025" / "test.csv"
DEFAULT_PERF_ANALYZER = PROJECT / ".venv-perf" / "bin" / "perf_analyzer_local"
# perf_analyzer's CSV (-f): microseconds per request, except the throughput. Its server columns are
# the measured model's own statistics: for the ensembles here queue read 0 and compute about the
# whole time in their steps; the split per composing model is only in perf_analyzer's console output.
COLUMNS = {"rows/s": "Inferences/Second", "p50": "p50 latency", "p95": "p95 latency", "p99": "p99 latency"}
SERVER_COLUMNS = ("Server Queue", "Server Compute Input", "Server Compute Infer", "Server Compute Output")


def write_input_data(args: argparse.Namespace, batch_size: int, folder: Path) -> Path:
    """`client perf-data` for one batch size; returns the JSON's path."""
    output = folder / f"rows_b{batch_size}.json"
    options = ["--images", str(args.images)] if args.images else []
    code = client_main(["perf-data", str(args.csv), "-d", str(args.deployment), "-o", str(output),
                        "--ensemble", args.ensemble, "--rows", str(args.rows), "--batch-size", str(batch_size),
                        "--cache-dir", str(folder / "cache"), *options])
    if code:
        sys.exit(code)
    return output


def time_in_process(backend: InProcessBackend, ensemble: str, requests) -> float:
    started = time.perf_counter()
    for inputs in requests:
        backend.run(ensemble, inputs)
    return sum(len(r["input_ids"]) for r in requests) / (time.perf_counter() - started)


def perf_analyzer_command(args: argparse.Namespace, url: str, data: Path, batch_size: int, requests: int,
                          concurrency: int, report: Path) -> list[str]:
    """perf_analyzer at one concurrency. Rows differ in token count, so a window of a fixed time
    would hold a different mix of rows each time and rarely pass the stability bar: a window here
    is every request of the file once (`requests`), or one per concurrent client when more."""
    requests_per_window = max(requests, concurrency)
    return [str(args.perf_analyzer), "-m", args.ensemble, "-i", "grpc", "-u", url, "--input-data", str(data),
            "-b", str(batch_size), "--concurrency-range", f"{concurrency}:{concurrency}",
            "--measurement-mode", "count_windows", "--measurement-request-count", str(requests_per_window),
            "--stability-percentage", str(args.stability_percentage), "-f", str(report)]


def run_perf_analyzer(command: list[str], report: Path) -> dict[str, float] | None:
    """One perf_analyzer run: its figures (latencies and server times in ms), or None when its
    windows never agreed within the stability bar (on a shared machine, a neighbour's load).

    Raises:
        RuntimeError: perf_analyzer failed otherwise (its output's end is in the message).
    """
    finished = subprocess.run(command, capture_output=True, text=True)
    output = finished.stdout + finished.stderr
    if finished.returncode and "Failed to obtain stable measurement" in output:
        print("  no stable measurement in this run", flush=True)
        return None
    if finished.returncode:
        raise RuntimeError(f"{shlex.join(command)} failed ({finished.returncode}):\n{output[-2000:]}")
    with report.open(newline="") as handle:
        [row] = list(csv.DictReader(handle))
    figures = {name: float(row[column]) / 1000 for name, column in COLUMNS.items()}
    figures["rows/s"] *= 1000
    figures["server"] = sum(float(row[column]) for column in SERVER_COLUMNS) / 1000
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("deployment", type=Path)
    parser.add_argument("--csv", type=Path, default=DEFAULT_CSV if DEFAULT_CSV.exists() else PROJECT / "sample" / "test.csv")
    parser.add_argument("--images", type=Path, help="the photos' folder (for --ensemble price_ensemble)")
    parser.add_argument("--ensemble", choices=ENSEMBLES, default=ENSEMBLES[0])
    parser.add_argument("--rows", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--server-threads", type=int, default=2, help="ONNX Runtime threads per model instance")
    parser.add_argument("--perf-analyzer", type=Path, default=DEFAULT_PERF_ANALYZER)
    parser.add_argument("--stability-percentage", type=int, default=15,
                        help="perf_analyzer's bar for 3 windows in a row to count as stable")
    args = parser.parse_args(argv)
    if not args.perf_analyzer.is_file():
        print(f"no perf_analyzer at {args.perf_analyzer}: install it with scripts/install_perf_analyzer.sh "
              "(perf_analyzer 2.51 in .venv-perf), or name it with --perf-analyzer PATH", file=sys.stderr)
        return 2

    deployment = Deployment.load(args.deployment)
    local = InProcessBackend(deployment)
    lines = []

    def add(line: str) -> None:  # printed at once too: a long run's figures so far survive an interrupt
        lines.append(line)
        print(line, flush=True)

    with tempfile.TemporaryDirectory() as work, LocalTritonServer(deployment.repository,
                                                                  ort_threads=args.server_threads) as server:
        for batch_size in args.batch_sizes:
            data = write_input_data(args, batch_size, Path(work))
            requests = batch_rows(read_perf_data(data, deployment, args.ensemble), batch_size)
            local_rate = statistics.median(
                time_in_process(local, args.ensemble, requests) for _ in range(args.repeats))
            add(f"{'in-process':<12}{batch_size:>6}{'-':>6}{local_rate:>9.1f}{1:>8.2f}x")
            for concurrency in args.concurrency:
                report = Path(work) / "report.csv"
                command = perf_analyzer_command(args, server.url, data, batch_size, len(requests), concurrency, report)
                print(f"$ {shlex.join(command)}", flush=True)
                runs = [run for _ in range(args.repeats) if (run := run_perf_analyzer(command, report))]
                if not runs:
                    add(f"{'perf_analyzer':<12}{batch_size:>6}{concurrency:>6}   no stable measurement")
                    continue
                median = {name: statistics.median(run[name] for run in runs) for name in runs[0]}
                add(
                    f"{'perf_analyzer':<12}{batch_size:>6}{concurrency:>6}{median['rows/s']:>9.1f}"
                    f"{median['rows/s'] / local_rate:>8.2f}x{median['p50']:>9.1f}{median['p95']:>9.1f}"
                    f"{median['p99']:>9.1f}{median['server']:>9.1f}"
                    f"   stable runs: {', '.join(format(run['rows/s'], '.1f') for run in runs)} rows/s")
    print(f"{args.rows} rows of {args.csv.name} for {args.ensemble}, median of {args.repeats} runs; "
          "latency and time in the server's model per request in ms")
    print(f"{'mode':<12}{'batch':>6}{'conc.':>6}{'rows/s':>9}{'vs in-p.':>9}{'p50':>9}{'p95':>9}{'p99':>9}"
          f"{'server':>9}")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
