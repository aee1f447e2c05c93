"""A catalogue of the challenge's size through `client predict`: rows/s and peak memory as the rows go by.

    python benchmarks/scale.py DEPLOYMENT [--rows 75000] [--every 10] [--url HOST:PORT]

The rows are ../shared/data/amazon2025/test.csv repeated with new sample ids until there are
--rows of them, every row given a photo: the photos of ../shared/data/amazon2025/images in
turn, read from that folder (`--images`). One `client predict` process runs them all, with an
empty cache; every --every seconds this script reads the rows it has finished (its journal) and
its resident memory (/proc) and prints them, and at the end prints rows/s and peak RSS per
tenth of the rows.
Memory flat in rows is the point: a run of millions of rows differs only in how long it takes.
The client predicts rows in order of text length, so rows/s moves with the texts' lengths.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from client.predict import JOURNAL_SUFFIX, journaled_rows

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "amazon2025"


def write_catalogue(path: Path, rows: int) -> None:
    """test.csv's rows repeated under new sample ids, each with one of the photos in turn."""
    with (DATA / "test.csv").open(newline="", encoding="utf-8") as handle:
        source = [(row["sample_id"], row["catalog_content"]) for row in csv.DictReader(handle)]
    photos = sorted(path.name for path in (DATA / "images").glob("*.jpg"))
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["sample_id", "catalog_content", "image_link"])
        for number, (sample_id, text), photo in zip(range(rows), itertools.cycle(source), itertools.cycle(photos)):
            writer.writerow([f"{sample_id}-{number // len(source)}", text, f"https://images.example/{photo}"])


def resident_mib(pid: int) -> float:
    """A process's resident memory (VmRSS), MiB; 0 once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("deployment", type=Path)
    parser.add_argument("--rows", type=int, default=75_000)
    parser.add_argument("--every", type=float, default=10.0, help="seconds between samples")
    parser.add_argument("--url", action="append", default=[], help="Triton server(s); default: in-process")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        catalogue, output = workdir / "catalogue.csv", workdir / "predictions.csv"
        write_catalogue(catalogue, args.rows)
        command = [sys.executable, "-m", "client", "predict", str(catalogue), "-o", str(output),
                   "-d", str(args.deployment), "--images", str(DATA / "images"), "--cache-dir", str(workdir / "cache"),
                   "-q", *(option for url in args.url for option in ("--url", url))]
        started = time.perf_counter()
        process = subprocess.Popen(command, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
        samples: list[tuple[float, int, float]] = []  # (seconds, rows finished, RSS MiB)
        while process.poll() is None:
            time.sleep(args.every)
            samples.append((time.perf_counter() - started, journaled_rows(output.with_name(output.name + JOURNAL_SUFFIX)),
                            resident_mib(process.pid)))
            print(f"  {samples[-1][0]:7.0f} s  {samples[-1][1]:>7} rows  RSS {samples[-1][2]:6.0f} MiB", flush=True)
        elapsed = time.perf_counter() - started
        if process.returncode != 0:
            print(f"client predict exited with {process.returncode}", file=sys.stderr)
            return 1
        with output.open(newline="", encoding="utf-8") as handle:
            predicted = sum(1 for _ in csv.DictReader(handle))
    # the journal is removed once the output is written: the end is the last tenth's mark
    samples = [sample for sample in samples if sample[2] > 0] + [(elapsed, predicted, 0.0)]

    print(f"{predicted} rows ({args.rows} asked), each with a photo ({len(list((DATA / 'images').glob('*.jpg')))} "
          f"distinct photos in turn), {'Triton' if args.url else 'in-process'}, one client predict: "
          f"{elapsed:.0f} s, {predicted / elapsed:.1f} rows/s")
    print("  rows finished      rows/s in the tenth   peak RSS so far (MiB)")
    previous_time, previous_rows, peak = 0.0, 0, 0.0
    for tenth in range(1, 11):
        goal = tenth * args.rows // 10
        reached = [sample for sample in samples if sample[1] >= goal]
        if not reached:
            break
        seconds, rows, _ = reached[0]
        if seconds == previous_time:  # this tenth was finished by the sample that ended the previous one
            continue
        peak = max([peak, *(rss for t, _, rss in samples if t <= seconds)])
        print(f"  {rows:>13}      {(rows - previous_rows) / (seconds - previous_time):>15.1f}   {peak:>15.0f}")
        previous_time, previous_rows = seconds, rows
    print(f"peak RSS of the whole run: {max(rss for _, _, rss in samples):.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
