"""Exceptions raised by the project, each subclassing the built-in that fits."""

from __future__ import annotations


class InputError(ValueError):
    """An input is unusable: a CSV with missing columns, duplicate ids, bad prices or malformed
    lines, a wrong encoding, or an output path that would overwrite an input.

    Raised before any work is done, and the message names the offending rows, lines or option.
    """


class BundleError(ValueError):
    """An export bundle is incomplete, tampered with, or does not match the served models."""


class ServerStartError(RuntimeError):
    """A local server (tritonserver, a Ray cluster) could not be started (a known trap, a crash, or a timeout)."""


class InferenceError(RuntimeError):
    """Inference failed after retries (e.g. the server stayed down)."""


class WorkerError(RuntimeError):
    """A worker of `client predict --ray` could not start or failed a block; the message gives the
    cause, and the finished blocks are kept for a rerun."""


class MissingDependencyError(ImportError):
    """An optional dependency is not installed; the message gives the `pip install` that fixes it."""


class PredictionInterrupted(KeyboardInterrupt):
    """`client predict` was stopped by Ctrl-C; the finished rows are kept in the journal."""

    def __init__(self, finished_rows: int, journal: object):
        super().__init__(
            f"interrupted: {finished_rows} finished row(s) are kept in {journal}; "
            "run the same command again to continue"
        )
        self.finished_rows = finished_rows
        self.journal = journal
