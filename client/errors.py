"""Exceptions raised by the project, each subclassing the built-in that fits."""

from __future__ import annotations


class InputError(ValueError):
    """An input file is unusable: missing columns, duplicate ids, bad prices, empty file.

    Raised before any work is done, and the message names the offending rows.
    """


class BundleError(ValueError):
    """An export bundle is incomplete, tampered with, or does not match the served models."""


class ServerStartError(RuntimeError):
    """The local Triton server could not be started (a known trap, a crash, or a timeout)."""


class InferenceError(RuntimeError):
    """Inference failed after retries (e.g. the server stayed down)."""


class MissingDependencyError(ImportError):
    """An optional dependency is not installed; the message gives the `pip install` that fixes it."""
