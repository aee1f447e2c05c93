"""`client`: predict prices with a deployed model, serve one locally, and write perf_analyzer's input data."""

from __future__ import annotations

import argparse
import logging
import sys

from client.commands import perf_data, predict, serve
from client.errors import (
    BundleError,
    InferenceError,
    InputError,
    MissingDependencyError,
    ServerStartError,
    WorkerError,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="client", description=__doc__.split(":", 1)[1].strip())
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    subparsers = parser.add_subparsers(dest="command", required=True)
    predict.add_parser(subparsers)
    serve.add_parser(subparsers)
    perf_data.add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING - 10 * args.verbose, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.run(args)
    except (InputError, BundleError, InferenceError, ServerStartError, MissingDependencyError, WorkerError) as error:
        print(f"client {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as interrupt:
        print(f"\nclient {args.command}: {interrupt or 'interrupted'}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
