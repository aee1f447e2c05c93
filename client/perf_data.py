"""perf_analyzer's `--input-data` JSON from real rows: the tensors `client predict` sends.

Triton users measure a served model with perf_analyzer; what it sends decides what it measures
(token counts set the text encoder's cost, photos the image encoder's). This module takes real
rows through the client's own preparation (`Predictor.prepare` and `Predictor.batches`: images,
OCR, tokens, catalogue features, price priors) and writes one perf_analyzer data entry per row,
without the batch axis, each tensor with its `shape`.

perf_analyzer run with `-b B` builds each request from B consecutive entries, and refuses to
start when any B consecutive entries differ in shape (it prepares a request at every offset). So
a file for B > 1 holds the rows as one `client predict` batch: every row padded to the longest
row, exactly as `client predict` pads a batch; perf_analyzer sends the first B * (rows // B)
rows. With B = 1 every row keeps its own length, like `client predict`'s length-sorted batches
and unlike a file for B > 1, which therefore measures more padding than `client predict` sends.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np

from client.bundle import Deployment
from client.errors import InputError
from client.files import atomic_write
from client.models import ENSEMBLE, TEXT_ONLY_ENSEMBLE, served_models
from client.predict import Predictor
from client.table import CatalogTable

ENSEMBLES = (TEXT_ONLY_ENSEMBLE, ENSEMBLE)


def perf_requests(predictor: Predictor, table: CatalogTable, rows: int, ensemble: str,
                  batch_size: int) -> list[dict[str, np.ndarray]]:
    """The inputs `client predict` builds for the rows among the first `rows` rows of `table` that
    it sends to `ensemble`: one request per row for batch size 1, else one request of them all.

    Rows with a usable photo go to ENSEMBLE, the others to TEXT_ONLY_ENSEMBLE, as in
    `client predict`.

    Raises:
        InputError: none of those rows goes to `ensemble`, or fewer than `batch_size`.
    """
    if ensemble not in ENSEMBLES:
        raise InputError(f"unknown ensemble {ensemble!r}: choose one of {', '.join(ENSEMBLES)}")
    wave = predictor.prepare(table, np.arange(min(rows, len(table))))
    per_request = 1 if batch_size == 1 else len(wave.rows)  # one token length for the whole file when B > 1
    requests = [inputs for name, _, inputs in predictor.batches(wave, per_request) if name == ensemble]
    taken = sum(len(inputs["input_ids"]) for inputs in requests)
    if not taken:
        which, fix = (("has a usable photo", f"pass the photos' folder with --images, or choose --ensemble "
                       f"{TEXT_ONLY_ENSEMBLE}") if ensemble == ENSEMBLE else
                      ("is without a photo", f"choose --ensemble {ENSEMBLE}"))
        raise InputError(f"none of the {len(wave.rows)} rows {which}, so none goes to {ensemble}: {fix}")
    if taken < batch_size:
        raise InputError(f"only {taken} of the rows go to {ensemble}, fewer than a batch of {batch_size}: "
                         "pass more rows (--rows) or a smaller --batch-size")
    return requests


def perf_entries(requests: list[dict[str, np.ndarray]]) -> list[dict[str, dict]]:
    """One perf_analyzer data entry per row of the requests, in order.

    Each tensor is `{"content": ..., "shape": [...]}` without the batch axis: numbers as a flat
    list, uint8 images as `{"b64": ...}` of their bytes (a third of the size as a list of numbers).
    """
    entries = []
    for inputs in requests:
        for row in range(len(inputs["input_ids"])):
            entry = {}
            for name, batch in inputs.items():
                value = np.ascontiguousarray(batch[row])
                content = ({"b64": base64.b64encode(value.tobytes()).decode("ascii")} if value.dtype == np.uint8
                           else value.ravel().tolist())
                entry[name] = {"content": content, "shape": list(value.shape)}
            entries.append(entry)
    return entries


def write_perf_data(path: Path, requests: list[dict[str, np.ndarray]]) -> int:
    """Writes perf_analyzer's `--input-data` JSON of the requests' rows; returns the row count."""
    entries = perf_entries(requests)
    with atomic_write(path, encoding="utf-8") as handle:
        json.dump({"data": entries}, handle, separators=(",", ":"))
    return len(entries)


def read_perf_data(path: Path, deployment: Deployment, ensemble: str) -> list[dict[str, np.ndarray]]:
    """The rows of a file written by `write_perf_data`, as arrays of the ensemble's input dtypes.

    Raises:
        InputError: a row lacks one of the ensemble's inputs.
    """
    dtypes = {spec.name: np.dtype(spec.dtype) for spec in served_models(deployment.settings.dims)[ensemble].inputs}
    rows = []
    for number, entry in enumerate(json.loads(path.read_text(encoding="utf-8"))["data"]):
        if missing := sorted(set(dtypes) - set(entry)):
            raise InputError(f"{path}: row {number} lacks {', '.join(missing)}, an input of {ensemble}")
        row = {}
        for name, dtype in dtypes.items():
            content = entry[name]["content"]
            flat = (np.frombuffer(base64.b64decode(content["b64"]), dtype=dtype) if isinstance(content, dict)
                    else np.asarray(content, dtype=dtype))
            row[name] = flat.reshape(entry[name]["shape"])
        rows.append(row)
    return rows


def batch_rows(rows: list[dict[str, np.ndarray]], batch_size: int) -> list[dict[str, np.ndarray]]:
    """The requests perf_analyzer's `-b batch_size` sends: consecutive groups of rows, stacked;
    rows that do not fill a last group are left out, as perf_analyzer leaves them out."""
    return [{name: np.stack([row[name] for row in rows[start : start + batch_size]]) for name in rows[start]}
            for start in range(0, len(rows) - batch_size + 1, batch_size)]
