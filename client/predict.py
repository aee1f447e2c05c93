"""`client predict`: a price for every row of a catalogue CSV.

The rows go through in waves. While one wave is being inferred, the next is prepared in a
thread (images fetched and decoded in parallel, OCR, tokenisation, catalogue features). Each
wave is cut into batches of rows with and without an image and of similar token length, sent
with a bounded number of requests in flight; as each batch returns, its retrieval estimates,
blend and journal lines are written. A rerun after a crash, a kill or Ctrl-C continues from
the journal; the output CSV is written atomically at the end, in input order, one row per
input row. Output paths are checked before any work: no output may overwrite the input, the
deployment or another output.
"""

from __future__ import annotations

import asyncio
import csv
import hashlib
import json
import logging
import os
import signal
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import CancelledError, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from client.blend import COMPONENT_OUTPUTS, COMPONENTS, RETRIEVAL, blend, component_matrix, to_price
from client.bundle import Deployment
from client.errors import InputError, PredictionInterrupted
from client.files import JsonLines, atomic_write
from client.images import ImageFetcher, ImageStatus
from client.inference import InferenceBackend, InProcessBackend, TritonBackend
from client.links import LinkPolicy
from client.models import ENSEMBLE, TEXT_ONLY_ENSEMBLE
from client.ocr import OcrCache, OcrEngine, RapidOcrEngine
from client.rows import prepare_rows
from client.table import CatalogTable, catalog_files, read_catalog
from client.text import MAX_TEXT_CHARS, length_batches

logger = logging.getLogger(__name__)

DEFAULT_CACHE_DIR = Path.home() / ".cache" / "multimodal-price"
JOURNAL_SUFFIX = ".journal"
DEFAULT_OCR_WORKERS = os.cpu_count() or 1
DETAIL_COLUMNS = ("sample_id", "price", *COMPONENTS, "has_image", "image_status", "ocr_chars", "warnings")


@dataclass
class PredictConfig:
    """Arguments of one prediction run."""

    input_csv: Path  # a CSV, a Parquet file or a folder of Parquet files (client.table.read_catalog)
    output_csv: Path
    deployment: Path
    urls: list[str] = field(default_factory=list)
    images_dir: Path | None = None
    cache_dir: Path = DEFAULT_CACHE_DIR
    batch_size: int = 32
    max_in_flight: int = 4
    wave_rows: int = 512
    ocr_workers: int = DEFAULT_OCR_WORKERS
    retries: int = 5
    details_csv: Path | None = None
    summary_json: Path | None = None
    restart: bool = False
    progress: bool = True
    encoding: str | None = None
    link_policy: LinkPolicy = field(default_factory=LinkPolicy)

    def __post_init__(self) -> None:
        for name in ("batch_size", "max_in_flight", "wave_rows", "ocr_workers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, not {getattr(self, name)}")
        if self.retries < 0:
            raise ValueError(f"retries must be 0 or more, not {self.retries}")

    @property
    def journal(self) -> Path:
        return self.output_csv.with_name(self.output_csv.name + JOURNAL_SUFFIX)

    def outputs(self) -> dict[str, Path]:
        """Every file the run writes, by the option that names it."""
        named = {"--output": self.output_csv, "the journal": self.journal,
                 "--details": self.details_csv, "--summary": self.summary_json}
        return {option: path for option, path in named.items() if path is not None}


@dataclass
class Wave:
    """The prepared model inputs of a set of rows (row indices into the table)."""

    rows: np.ndarray
    pixels: list[np.ndarray | None]
    image_status: list[str]
    token_ids: list[np.ndarray]
    numeric: np.ndarray
    priors: np.ndarray
    ocr_chars: list[int]
    warnings: list[list[str]]
    seconds: float = 0.0


@dataclass
class RunStats:
    """What a run's rows cost and met: loading, preparation and request seconds, image statuses,
    requests per server."""

    load_s: float = 0.0  # reading the input and the deployment, loading the models: a fixed cost per run
    prepare_s: float = 0.0
    request_s: float = 0.0
    image_status: Counter = field(default_factory=Counter)
    requests_per_server: Counter = field(default_factory=Counter)

    def add(self, other: RunStats) -> None:
        """Adds another part of the run (a block predicted elsewhere) to these figures."""
        self.load_s += other.load_s
        self.prepare_s += other.prepare_s
        self.request_s += other.request_s
        self.image_status.update(other.image_status)
        self.requests_per_server.update(other.requests_per_server)

    def to_json(self) -> str:
        return json.dumps(vars(self))

    @classmethod
    def from_json(cls, text: str) -> RunStats:
        values = json.loads(text)
        return cls(load_s=values.get("load_s", 0.0), prepare_s=values["prepare_s"], request_s=values["request_s"],
                   image_status=Counter(values["image_status"]),
                   requests_per_server=Counter(values["requests_per_server"]))


class Journal:
    """Finished rows, one JSON line each, behind a header naming the input and the deployment.

    A batch's lines are flushed as it finishes, so a crash or kill of this process loses at most
    the batches in flight (the operating system keeps what was flushed; it is fsynced on close,
    and a power cut can cost the last lines, which a rerun predicts again). A torn last line is
    dropped when the journal is read back.
    """

    def __init__(self, path: Path, fingerprint: str, restart: bool):
        self.path = path
        self.file = JsonLines(path)
        self.records: dict[str, dict] = {}
        if not restart:
            self._load(fingerprint)
        if not self.records:
            self.file.replace([{"fingerprint": fingerprint}])

    def _load(self, fingerprint: str) -> None:
        header, *records = self.file.read() or [{}]
        if header.get("fingerprint") != fingerprint:
            if self.path.exists():
                logger.warning("%s belongs to another input or deployment: starting over", self.path)
            return
        self.records = {record["sample_id"]: record for record in records if "sample_id" in record}

    def append(self, records: list[dict]) -> None:
        self.file.append(records)
        for record in records:
            self.records[record["sample_id"]] = record

    def close(self) -> None:
        self.file.sync()


def fingerprint(input_path: Path, deployment: Deployment, *extra: object) -> str:
    """SHA-256 of the input's bytes (each file of a Parquet folder, with its name), the
    deployment's model files and `extra`: what finished rows on disk must have been made from."""
    digest = hashlib.sha256()
    for file in catalog_files(input_path):
        digest.update(file.name.encode() + b"\0")
        with file.open("rb") as handle:  # in chunks: the input may be larger than memory
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    digest.update(json.dumps([deployment.manifest["files"], *extra], sort_keys=True, default=str).encode())
    return digest.hexdigest()


def _row_warnings(text: str, status: ImageStatus, detail: str) -> list[str]:
    warnings = []
    if not text.strip():
        warnings.append("empty catalog text")
    elif len(text) > MAX_TEXT_CHARS:
        warnings.append(f"catalog text of {len(text)} characters cut to {MAX_TEXT_CHARS}")
    if status is ImageStatus.NO_LINK:
        warnings.append("no image link: predicted from text")
    elif status is not ImageStatus.OK:
        warnings.append(f"image {status.value}: {detail}; predicted from text")
    return warnings


class Predictor:
    """Prepares rows, runs the ensembles, retrieval and blend for one deployment."""

    def __init__(self, deployment: Deployment, backend: InferenceBackend, fetcher: ImageFetcher,
                 ocr_cache: OcrCache, ocr_workers: int):
        self.deployment = deployment
        self.settings = deployment.settings
        self.backend = backend
        self.fetcher = fetcher
        self.ocr_cache = ocr_cache
        self.ocr_workers = ocr_workers
        self.ocr_engine = self._ocr_engine()
        self.tokenizer = deployment.tokenizer()
        self.index = deployment.neighbour_index()
        self.index.use_gpu()
        self.priors = deployment.price_priors()
        self.weights = np.asarray(deployment.blend_weights)
        self.stop = threading.Event()

    def _ocr_engine(self) -> OcrEngine | str:
        """The deployment's OCR: its served PP-OCR networks, run by the backend; other engines
        run here, by name."""
        if self.settings.ocr_engine != RapidOcrEngine.name:
            return self.settings.ocr_engine
        return RapidOcrEngine(run=self.backend.model_runner(), characters=self.deployment.ocr_characters())

    def prepare(self, table: CatalogTable, rows: np.ndarray) -> Wave:
        """Images, OCR, tokens and catalogue features of `rows` (runs in a worker thread).

        Raises:
            CancelledError: `stop` was set while the wave was being prepared.
        """
        started = time.perf_counter()
        prepared = prepare_rows(table, rows, self.fetcher, ocr_engine=self.ocr_engine,
                                ocr_cache=self.ocr_cache, image_size=self.settings.image_size,
                                ocr_workers=self.ocr_workers, tokenizer=self.tokenizer, stop=self.stop)
        if self.stop.is_set():
            raise CancelledError
        return Wave(
            rows=rows,
            pixels=[i.pixels for i in prepared.images],
            image_status=prepared.image_status,
            token_ids=prepared.token_ids,
            numeric=prepared.numeric_features,
            priors=self.priors.features([table.texts[r] for r in rows]),
            ocr_chars=[len(o) for o in prepared.ocr_texts],
            warnings=[_row_warnings(table.texts[r], i.status, i.detail) for r, i in zip(rows, prepared.images)],
            seconds=time.perf_counter() - started,
        )

    def batches(self, wave: Wave, batch_size: int) -> list[tuple[str, np.ndarray, dict[str, np.ndarray]]]:
        """(ensemble, wave positions, inputs) per request: rows with and without an image apart,
        each cut into batches of similar token length."""
        has_image = np.asarray([p is not None for p in wave.pixels])
        requests = []
        for with_image in (True, False):
            positions = np.flatnonzero(has_image == with_image)
            for batch in length_batches([len(wave.token_ids[p]) for p in positions], batch_size):
                chosen = positions[batch]
                input_ids, attention_mask = self.tokenizer.pad([wave.token_ids[p] for p in chosen])
                inputs = {
                    "has_image": np.full((len(chosen), 1), float(with_image), dtype=np.float32),
                    "input_ids": input_ids,
                    "attention_mask": attention_mask,
                    "numeric_features": wave.numeric[chosen],
                    "price_priors": wave.priors[chosen],
                }
                if with_image:
                    inputs["image"] = np.stack([wave.pixels[p] for p in chosen])
                else:
                    inputs["image_embedding"] = np.zeros((len(chosen), self.settings.image_dim), dtype=np.float32)
                requests.append((ENSEMBLE if with_image else TEXT_ONLY_ENSEMBLE, chosen, inputs))
        return requests

    def finish(self, table: CatalogTable, wave: Wave, positions: np.ndarray, outputs: dict[str, np.ndarray]) -> list[dict]:
        """Retrieval, blend and the journal records of one returned batch."""
        retrieval = self.index.estimate(outputs["retrieval_vector"], k=self.settings.retrieval_k)
        components = component_matrix({RETRIEVAL: retrieval,
                                        **{name: outputs[output] for name, output in COMPONENT_OUTPUTS.items()}})
        prices = to_price(blend(components, self.weights))
        component_prices = to_price(components)
        records = []
        for i, position in enumerate(positions):
            records.append({
                "sample_id": table.sample_ids[wave.rows[position]],
                "price": float(prices[i]),
                **{name: float(component_prices[i, c]) for c, name in enumerate(COMPONENTS)},
                "has_image": int(wave.pixels[position] is not None),
                "image_status": wave.image_status[position],
                "ocr_chars": wave.ocr_chars[position],
                "warnings": wave.warnings[position],
            })
        return records


async def predict_rows(predictor: Predictor, table: CatalogTable, todo: np.ndarray,
                       on_records: Callable[[list[dict]], None], config: PredictConfig, stats: RunStats) -> None:
    """Predicts rows `todo` of `table` through a two-stage pipeline: while the batches of wave k
    are inferred (each finished and handed to `on_records` as it returns), wave k+1 is prepared
    in a thread. On any exception or cancellation the preparation is told to stop, requests in
    flight are cancelled, and what finished has been handed over (to the journal, in `predict`)."""
    predictor.stop.clear()  # a predictor that stopped once (a failed block) can predict again
    # Waves of rows of similar text length make batches of similar token length, with little
    # padding; the output is put back in input order at the end.
    todo = todo[np.argsort([len(table.texts[i]) for i in todo], kind="stable")]
    waves = [todo[i : i + config.wave_rows] for i in range(0, len(todo), config.wave_rows)]
    loop = asyncio.get_running_loop()
    in_flight = asyncio.Semaphore(config.max_in_flight)
    progress = tqdm(total=len(table), initial=len(table) - len(todo), unit="row", desc="predict",
                    disable=not config.progress, smoothing=0.1)

    async def infer(wave: Wave, ensemble: str, positions: np.ndarray, inputs: dict[str, np.ndarray]) -> None:
        async with in_flight:
            started = time.perf_counter()
            outputs = await predictor.backend.infer(ensemble, inputs)
            stats.request_s += time.perf_counter() - started
        on_records(predictor.finish(table, wave, positions, outputs))
        stats.image_status.update(wave.image_status[p] for p in positions)
        progress.update(len(positions))

    started: list[asyncio.Task] = []
    upcoming: asyncio.Future | None = None
    # Shut down by hand, after `stop` is set: leaving a `with` block would first wait for the
    # whole wave being prepared (minutes of OCR) and only then let the stop be signalled.
    preparer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prepare")
    try:
        upcoming = loop.run_in_executor(preparer, predictor.prepare, table, waves[0]) if waves else None
        previous: list[asyncio.Task] = []
        for number in range(len(waves)):
            wave = await upcoming
            stats.prepare_s += wave.seconds
            upcoming = None
            if number + 1 < len(waves):
                upcoming = loop.run_in_executor(preparer, predictor.prepare, table, waves[number + 1])
            tasks = [asyncio.create_task(infer(wave, *request)) for request in predictor.batches(wave, config.batch_size)]
            started += tasks
            await asyncio.gather(*previous)  # at most two waves in flight
            previous = tasks
        await asyncio.gather(*previous)
    except BaseException:
        predictor.stop.set()  # the preparing thread stops at its next image
        if upcoming is not None:
            upcoming.cancel()
        for task in started:  # stop what is still running: what finished is in the journal
            task.cancel()
        await asyncio.gather(*started, return_exceptions=True)
        raise
    finally:
        # waited for off the loop: the preparing thread's OCR may still be waiting on requests
        # that this loop sends (served OCR on a Triton server)
        await loop.run_in_executor(None, preparer.shutdown)
        progress.close()


def _same_file(path: Path, other: Path) -> bool:
    if path.resolve() == other.resolve():
        return True
    try:
        return os.path.samefile(path, other)  # hard links, bind mounts
    except OSError:
        return False


def check_output_paths(config: PredictConfig) -> None:
    """Refuses, before any work, outputs that would overwrite an input or each other.

    Creates each output's folder when it is missing and checks that a file can be written
    there (the check's probe file is removed at once).

    Raises:
        InputError: an output is the input CSV, inside the deployment, a folder or device,
            the same file as another output, or in a folder that cannot be written, or the
            cache folder is inside the deployment; the message names the option.
    """
    deployment = config.deployment.resolve()
    input_folder = config.input_csv.resolve() if config.input_csv.is_dir() else None
    if config.cache_dir.exists() and not config.cache_dir.is_dir():
        raise InputError(f"--cache-dir {config.cache_dir} is not a folder")
    if config.cache_dir.resolve().is_relative_to(deployment):
        raise InputError(f"--cache-dir {config.cache_dir} is inside the deployment {config.deployment}: "
                         "its files would no longer match the manifest; name a folder elsewhere")
    seen: dict[str, Path] = {}
    for option, path in config.outputs().items():
        if path.is_dir():
            raise InputError(f"{option} {path} is a folder: name a file in it")
        if path.exists() and not path.is_file():  # a device such as /dev/null would be replaced by a file
            raise InputError(f"{option} {path} is not a regular file: name a file")
        if _same_file(path, config.input_csv):
            raise InputError(f"{option} {path} is the input CSV: it would be overwritten; name another file")
        if path.resolve().is_relative_to(deployment):
            raise InputError(f"{option} {path} is inside the deployment {config.deployment}: name a file elsewhere")
        if input_folder is not None and path.resolve().is_relative_to(input_folder):
            raise InputError(f"{option} {path} is inside the input folder {config.input_csv}: name a file elsewhere")
        for other_option, other in seen.items():
            if _same_file(path, other):
                raise InputError(f"{option} and {other_option} are the same file {path}: name two files")
        seen[option] = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=path.parent):
                pass
        except OSError as error:
            raise InputError(f"{option} {path}: cannot write in {path.parent} ({error.strerror or error})") from None


def _write_csv(path: Path, header: tuple[str, ...], rows: list[list]) -> None:
    with atomic_write(path, newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


def make_backend(deployment: Deployment, urls: list[str], retries: int = 5, threads: int = 0) -> InferenceBackend:
    """Triton over gRPC when server URLs are given, else in-process ONNX Runtime (`threads`
    intra-op threads per model; 0: every core)."""
    return TritonBackend(urls, retries=retries) if urls else InProcessBackend(deployment, threads=threads)


async def open_predictor(config: PredictConfig, deployment: Deployment, threads: int = 0) -> Predictor:
    """The run's backend, checked against the deployment, and its Predictor (downloads and OCR
    cached under `config.cache_dir`). Call it on the event loop that will run the predictions.

    Raises:
        BundleError: a server serves other model files than the deployment's.
        InferenceError: a server cannot be reached.
    """
    backend = make_backend(deployment, config.urls, config.retries, threads)
    try:
        await backend.verify(deployment)
        return Predictor(
            deployment, backend,
            ImageFetcher(config.images_dir, cache_dir=config.cache_dir / "images", policy=config.link_policy),
            OcrCache(config.cache_dir / "ocr_cache.jsonl"), config.ocr_workers,
        )
    except BaseException:
        await backend.close()
        raise


def check_inputs(config: PredictConfig) -> tuple[CatalogTable, Deployment]:
    """Reads the input and the deployment and checks the output paths, before any work.

    Raises:
        InputError: the input is unusable or an output path is refused.
        BundleError: the deployment fails its checksums.
    """
    if config.images_dir is not None and not config.images_dir.is_dir():
        raise InputError(f"--images {config.images_dir} is not a folder")
    table = read_catalog(config.input_csv, encoding=config.encoding)
    deployment = Deployment.load(config.deployment)
    check_output_paths(config)  # after the inputs: a refused input leaves no output folder behind
    return table, deployment


def write_outputs(config: PredictConfig, records: list[dict]) -> None:
    """Writes the output CSV (and the details CSV when asked), atomically, one line per record."""
    _write_csv(config.output_csv, ("sample_id", "price"), [[r["sample_id"], f"{r['price']:.4f}"] for r in records])
    if config.details_csv:
        _write_csv(config.details_csv, DETAIL_COLUMNS, [
            [r["sample_id"], f"{r['price']:.4f}", *(f"{r[c]:.4f}" for c in COMPONENTS), r["has_image"],
             r["image_status"], r["ocr_chars"], "; ".join(r["warnings"])] for r in records
        ])


def summarize(config: PredictConfig, records: list[dict], predicted_now: int, stats: RunStats, backend: str,
              elapsed: float, **extra: object) -> dict:
    """The run's summary (written to `summary_json` when set): rows, images, OCR, rows/s, and `extra`."""
    summary = {
        "rows": len(records),
        "predicted_now": predicted_now,
        "resumed_from_journal": len(records) - predicted_now,
        "backend": backend,
        "images": {status.value: stats.image_status[status.value] for status in ImageStatus},
        "rows_with_photo": sum(1 for r in records if r["has_image"]),
        "rows_with_ocr_text": sum(1 for r in records if r["ocr_chars"]),
        "rows_with_warnings": sum(1 for r in records if r["warnings"]),
        # requests overlap, so their summed latency is no wall time: it shows where the time goes
        "seconds": {"total": elapsed, "loading": stats.load_s, "prepare": stats.prepare_s,
                    "request_latency_sum": stats.request_s},
        "rows_per_second": predicted_now / elapsed if elapsed else 0.0,
        **extra,
    }
    if stats.requests_per_server:
        summary["requests_per_server"] = dict(stats.requests_per_server)
    if config.summary_json:
        with atomic_write(config.summary_json, encoding="utf-8") as handle:
            handle.write(json.dumps(summary, indent=2))
    return summary


async def predict_async(config: PredictConfig) -> dict:
    """Runs a whole prediction; returns the summary (also written to `summary_json` if set).

    Raises:
        InputError: the input is unusable, or an output path would overwrite an input or
            another output (before any work).
        BundleError: the deployment fails its checksums, or a server serves other models.
        InferenceError: the servers stayed unavailable past the retries (finished rows are
            in the journal; rerun to continue).
    """
    started = time.perf_counter()
    table, deployment = check_inputs(config)
    stats = RunStats()
    predictor = await open_predictor(config, deployment)
    stats.load_s = time.perf_counter() - started
    try:
        journal = Journal(config.journal, fingerprint(config.input_csv, deployment), config.restart)
        todo = np.asarray([i for i, sid in enumerate(table.sample_ids) if sid not in journal.records], dtype=np.int64)
        try:
            await predict_rows(predictor, table, todo, journal.append, config, stats)
        finally:
            journal.close()
    finally:
        stats.requests_per_server.update(predictor.backend.requests_per_server())
        await predictor.backend.close()

    records = [journal.records[sid] for sid in table.sample_ids]
    write_outputs(config, records)
    summary = summarize(config, records, len(todo), stats, predictor.backend.describe(), time.perf_counter() - started)
    config.journal.unlink()  # last: every output is written
    return summary


def predict(config: PredictConfig) -> dict:
    """Synchronous wrapper of `predict_async` that stops cleanly on Ctrl-C.

    The first SIGINT cancels the run: no new image is started, requests in flight are
    cancelled, every finished batch stays in the journal, and PredictionInterrupted is raised
    (rerunning the same command continues). A second SIGINT exits the process at once, which
    loses nothing either: journal lines are flushed as each batch finishes.

    Raises:
        PredictionInterrupted: the run was stopped by Ctrl-C.
    """
    if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
        return asyncio.run(predict_async(config))
    interrupts = 0
    previous = signal.getsignal(signal.SIGINT)
    with asyncio.Runner() as runner:
        loop = runner.get_loop()
        run = loop.create_task(predict_async(config))

        def on_interrupt() -> None:
            nonlocal interrupts
            interrupts += 1
            if interrupts > 1:
                os.write(2, b"\nclient predict: interrupted again: stopping now (finished batches are kept)\n")
                os._exit(130)
            run.cancel()

        # The kernel may hand SIGINT to any thread (an OCR or ONNX Runtime one); a handler set with
        # signal.signal then runs only once the loop wakes for something else, which during a
        # wave's OCR can be many images later. The loop's own handler wakes it at once.
        loop.add_signal_handler(signal.SIGINT, on_interrupt)
        try:
            return loop.run_until_complete(run)
        except asyncio.CancelledError:
            if not interrupts:
                raise
            raise PredictionInterrupted(journaled_rows(config.journal), config.journal) from None
        finally:
            loop.remove_signal_handler(signal.SIGINT)
            signal.signal(signal.SIGINT, previous)


def journaled_rows(journal: Path) -> int:
    """Finished rows in a journal (its complete lines, less the header); 0 when there is none."""
    try:
        with journal.open("rb") as handle:
            return max(0, sum(1 for line in handle if line.endswith(b"\n")) - 1)  # minus the header
    except OSError:
        return 0
