"""The main job on the bundled sample: train, export, serve on the real Triton server, predict.

    python scripts/run_sample.py [--workdir DIR]

Writes DIR/run (training), DIR/deployment (export) and DIR/predictions.csv (default DIR: build).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from client.cli import main as client_main
from client.serve import LocalTritonServer
from export.cli import main as export_main
from training.cli import main as train_main

SAMPLE = Path(__file__).resolve().parents[1] / "sample"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("build"))
    args = parser.parse_args(argv)
    run, deployment = args.workdir / "run", args.workdir / "deployment"
    predictions = args.workdir / "predictions.csv"

    steps = [
        ("train", lambda: train_main([str(SAMPLE / "train.csv"), "-o", str(run), "--images", str(SAMPLE / "images")])),
        ("export", lambda: export_main([str(run), "-o", str(deployment)])),
    ]
    for name, step in steps:
        print(f"== {name}", flush=True)
        if step() != 0:
            return 1
    print("== serve + predict (real tritonserver on CPU, gRPC)", flush=True)
    with LocalTritonServer(deployment / "model_repository", log_path=args.workdir / "tritonserver.log") as server:
        status = client_main([
            "predict", str(SAMPLE / "test.csv"), "-o", str(predictions), "-d", str(deployment),
            "--url", server.url, "--images", str(SAMPLE / "images"),
            "--details", str(args.workdir / "predictions.details.csv"),
            "--summary", str(args.workdir / "predictions.summary.json"),
        ])
    print(f"model card: {deployment / 'MODEL_CARD.md'}")
    return status


if __name__ == "__main__":
    sys.exit(main())
