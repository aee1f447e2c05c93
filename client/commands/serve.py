"""`client serve --local REPOSITORY`: the real Triton server on this machine's CPU."""

from __future__ import annotations

import argparse
from pathlib import Path

from client.serve import LocalTritonServer, run_until_interrupted


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("serve", help="run the real tritonserver (from nvidia-pytriton) on CPU",
                                   description=__doc__)
    parser.add_argument("repository", type=Path, nargs="?", default=Path("deployment/model_repository"),
                        help="Triton model repository (default: deployment/model_repository)")
    parser.add_argument("--local", action="store_true", required=True,
                        help="serve on this machine with the CPU build (the only mode; GPU nodes use Dockerfile.triton)")
    parser.add_argument("--port", type=int, help="gRPC port (default: a free one)")
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads per model instance")
    parser.add_argument("--log", type=Path, help="server log file")
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    server = LocalTritonServer(args.repository, grpc_port=args.port, ort_threads=args.threads, log_path=args.log)
    server.start()
    print(f"serving {args.repository} at {server.url} (gRPC); Ctrl-C to stop", flush=True)
    run_until_interrupted(server)
    return 0
