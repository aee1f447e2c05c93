"""OCR engines behind one interface, a crash-safe per-image cache, and a batch runner.

Every engine reads an RGB uint8 ``[height, width, 3]`` array (what :func:`client.images.ocr_view`
returns) and gives the recognised lines in reading order, joined by single spaces. Heavy
engines are imported only when they are built, so a missing optional engine costs nothing
until it is asked for, and then fails with the command that installs it.
"""

from __future__ import annotations

import functools
import logging
import multiprocessing
import os
import shutil
import signal
import threading
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from client.errors import MissingDependencyError
from client.files import JsonLines
from client.images import OCR_MAX_ASPECT
from client.models import OCR_RECOGNIZER, ModelRunner
from client.ppocr import LocalOcrModels, PpOcrReader, ReaderSettings, graph_characters, ppocr_graphs

if TYPE_CHECKING:
    from multiprocessing.synchronize import Event as ProcessEvent

OCR_ENGINES = ("rapidocr", "paddleocr", "tesseract", "none")
"""Names accepted by :func:`make_ocr_engine`; the first is the default."""

DEFAULT_MIN_SCORE = 0.5

OCR_BATCH_IMAGES = 8
"""Images :func:`run_ocr` hands an engine at once: PP-OCR reads their text lines in shared
recogniser batches, which on a Triton server is a fraction of the round trips."""

MAX_INPUT_SIDE = 2000
"""Longest image side an engine accepts (rapidocr's limit, kept for every engine; ocr_view gives at most 640)."""

_log = logging.getLogger(__name__)

# A recognised line: its text, its confidence in [0, 1], its box as points (x, y).
_Line = tuple[str, float, np.ndarray]


class OcrEngine(ABC):
    """Reads the text in an image.

    Attributes:
        name: The engine's name in :data:`OCR_ENGINES`.
        cache_key: The OCR cache's key for this engine's texts (its name, plus the settings
            the text depends on where it has any).
    """

    name: str
    cache_key: str

    @abstractmethod
    def read(self, image: np.ndarray) -> str:
        """Recognise the text in an image.

        Args:
            image: RGB uint8 array of shape ``[height, width, 3]``.

        Returns:
            The recognised lines, top-to-bottom then left-to-right, joined by single spaces;
            ``""`` when nothing is found.
        """

    def read_many(self, images: Sequence[np.ndarray]) -> list[str]:
        """Recognise the text in several images: what :meth:`read` gives for each.

        Engines whose networks can share batches across images override this.
        """
        return [self.read(image) for image in images]


class NoOcr(OcrEngine):
    """OCR switched off: every image reads as ``""``."""

    name = cache_key = "none"

    def __init__(self, threads: int | None = None) -> None:
        del threads  # accepted for a uniform constructor

    def read(self, image: np.ndarray) -> str:
        """Return ``""`` (after checking the input like every engine)."""
        _check_image(image)
        return ""


class RapidOcrEngine(OcrEngine):
    """PP-OCRv6 (the ONNX graphs the rapidocr wheel bundles), read by :class:`client.ppocr.PpOcrReader`:
    the same graphs, pre- and post-processing that a deployment serves.

    Args:
        min_score: Lines recognised with a lower confidence are dropped.
        threads: ONNX Runtime intra-op threads when the graphs run here; None uses all cores.
        run: Where the graphs run (a deployment's backend); None builds them from the wheel and
            runs them in this process (needs onnx, as training does).
        characters: The recogniser's alphabet; required with ``run``.
    """

    name = "rapidocr"

    def __init__(self, min_score: float = DEFAULT_MIN_SCORE, threads: int | None = None,
                 run: ModelRunner | None = None, characters: list[str] | None = None) -> None:
        if run is None:
            graphs = ppocr_graphs()
            run = LocalOcrModels({name: graph.SerializeToString() for name, graph in graphs.items()}, threads or 0)
            characters = graph_characters(graphs[OCR_RECOGNIZER])
        if characters is None:
            raise ValueError("RapidOcrEngine with a model runner needs the recogniser's characters")
        self.min_score = min_score
        self._reader = PpOcrReader(run, characters, ReaderSettings(min_score=min_score))
        self.cache_key = self._reader.settings.cache_key

    def read(self, image: np.ndarray) -> str:
        """Recognise text; PP-OCR's networks take BGR, as OpenCV reads images."""
        return self.read_many([image])[0]

    def read_many(self, images: Sequence[np.ndarray]) -> list[str]:
        """Recognise the text of several images, their text lines read in shared recogniser
        batches (:meth:`client.ppocr.PpOcrReader.read_many`): the same text as one by one."""
        readable = [i for i, image in enumerate(images) if _check_image(image) > 0]
        lines = self._reader.read_many([np.ascontiguousarray(images[i][:, :, ::-1]) for i in readable])
        texts = [""] * len(images)
        for i, image_lines in zip(readable, lines, strict=True):
            texts[i] = join_lines(image_lines, self.min_score)
        return texts


class PaddleOcrEngine(OcrEngine):
    """PaddleOCR 3.x, from local model directories (no model host is reachable offline).

    Args:
        det_model_dir: Text-detection model folder; defaults to ``$PADDLEOCR_DET_MODEL_DIR``.
        rec_model_dir: Text-recognition model folder; defaults to ``$PADDLEOCR_REC_MODEL_DIR``.
        min_score: Lines recognised with a lower confidence are dropped.
        threads: CPU threads for Paddle inference; None keeps PaddleOCR's default.

    Raises:
        MissingDependencyError: paddleocr is not installed, or no model folders are given.
    """

    name = cache_key = "paddleocr"
    INSTALL = "pip install paddleocr paddlepaddle"

    def __init__(
        self,
        det_model_dir: Path | str | None = None,
        rec_model_dir: Path | str | None = None,
        min_score: float = DEFAULT_MIN_SCORE,
        threads: int | None = None,
    ) -> None:
        try:
            from paddleocr import PaddleOCR
        except ImportError as error:
            raise MissingDependencyError(
                f"OCR engine 'paddleocr' is not installed: {self.INSTALL}"
            ) from error
        det = det_model_dir or os.environ.get("PADDLEOCR_DET_MODEL_DIR")
        rec = rec_model_dir or os.environ.get("PADDLEOCR_REC_MODEL_DIR")
        if not det or not rec:
            raise MissingDependencyError(
                "OCR engine 'paddleocr' needs local model folders (it cannot download them offline): "
                "pass det_model_dir and rec_model_dir, or set PADDLEOCR_DET_MODEL_DIR and "
                "PADDLEOCR_REC_MODEL_DIR"
            )
        options: dict[str, Any] = {
            "text_detection_model_dir": str(det),
            "text_recognition_model_dir": str(rec),
            "use_doc_orientation_classify": False,
            "use_doc_unwarping": False,
            "use_textline_orientation": False,
            "enable_mkldnn": False,
        }
        if threads is not None:
            options["cpu_threads"] = threads
        self.min_score = min_score
        self._engine = PaddleOCR(**options)

    def read(self, image: np.ndarray) -> str:
        """Recognise text; PaddleOCR, like OpenCV, takes BGR arrays."""
        if _check_image(image) == 0:
            return ""
        lines: list[_Line] = []
        for page in self._engine.predict(np.ascontiguousarray(image[:, :, ::-1])):
            lines += zip(page["rec_texts"], page["rec_scores"], page["rec_polys"], strict=True)
        return join_lines(lines, self.min_score)


class TesseractEngine(OcrEngine):
    """Tesseract through pytesseract (needs the ``tesseract`` program).

    Args:
        min_score: Words recognised with a lower confidence (0-1) are dropped.
        lang: Tesseract language code(s).
        threads: Ignored (Tesseract reads ``OMP_THREAD_LIMIT`` from the environment).

    Raises:
        MissingDependencyError: pytesseract or the tesseract program is missing.
    """

    name = cache_key = "tesseract"
    INSTALL = "pip install pytesseract, and the program: apt-get install tesseract-ocr"

    def __init__(
        self, min_score: float = DEFAULT_MIN_SCORE, lang: str = "eng", threads: int | None = None
    ) -> None:
        del threads
        try:
            import pytesseract
        except ImportError as error:
            raise MissingDependencyError(
                f"OCR engine 'tesseract' is not installed: {self.INSTALL}"
            ) from error
        if shutil.which(pytesseract.pytesseract.tesseract_cmd) is None:
            raise MissingDependencyError(
                f"OCR engine 'tesseract' needs the tesseract program on PATH: {self.INSTALL}"
            )
        self._pytesseract = pytesseract
        self.min_score = min_score
        self.lang = lang

    def read(self, image: np.ndarray) -> str:
        """Recognise text word by word, keeping Tesseract's own line order."""
        if _check_image(image) == 0:
            return ""
        data = self._pytesseract.image_to_data(
            image, lang=self.lang, output_type=self._pytesseract.Output.DICT
        )
        lines: dict[tuple[int, int, int], list[str]] = {}
        for i, word in enumerate(data["text"]):
            if word.strip() and float(data["conf"][i]) >= self.min_score * 100:
                key = (data["block_num"][i], data["par_num"][i], data["line_num"][i])
                lines.setdefault(key, []).append(word.strip())
        return " ".join(" ".join(words) for words in lines.values())


_ENGINE_CLASSES: dict[str, type[OcrEngine]] = {
    "rapidocr": RapidOcrEngine,
    "paddleocr": PaddleOcrEngine,
    "tesseract": TesseractEngine,
    "none": NoOcr,
}


def make_ocr_engine(name: str, **options: Any) -> OcrEngine:
    """Build an OCR engine by name.

    Args:
        name: One of :data:`OCR_ENGINES`.
        **options: Passed to the engine's constructor (e.g. ``min_score``, ``threads``).

    Raises:
        ValueError: The name is unknown; the message lists the valid ones.
        MissingDependencyError: The engine is not installed; the message says how to install it.
    """
    engine_class = _ENGINE_CLASSES.get(name)
    if engine_class is None:
        raise ValueError(f"unknown OCR engine {name!r}; choose one of: {', '.join(OCR_ENGINES)}")
    return engine_class(**options)


def join_lines(lines: Iterable[tuple[str, float, Any]], min_score: float = DEFAULT_MIN_SCORE) -> str:
    """Join recognised lines in reading order: rows top-to-bottom, each row left-to-right.

    Boxes whose vertical centres are within half a line height of a row's first box belong
    to that row.

    Args:
        lines: ``(text, score, box)`` with ``box`` an array-like of ``(x, y)`` points.
        min_score: Lines with a lower score, and blank lines, are dropped.

    Returns:
        The texts joined by single spaces.
    """
    kept = []
    for text, score, box in lines:
        if text.strip() and float(score) >= min_score:
            points = np.asarray(box, dtype=np.float64).reshape(-1, 2)
            top, bottom = points[:, 1].min(), points[:, 1].max()
            kept.append(((top + bottom) / 2, bottom - top, points[:, 0].min(), text.strip()))
    kept.sort()
    rows: list[list[tuple[float, str]]] = []
    row_centre = row_height = 0.0
    for centre, height, left, text in kept:
        if rows and abs(centre - row_centre) <= max(row_height, height) / 2:
            rows[-1].append((left, text))
        else:
            rows.append([(left, text)])
            row_centre, row_height = centre, height
    return " ".join(text for row in rows for _, text in sorted(row))


def _check_image(image: np.ndarray) -> int:
    """Validate an engine's input; return its pixel count.

    Raises:
        ValueError: not an RGB uint8 array, or larger or thinner than :func:`client.images.ocr_view`
            makes images (engines enlarge thin images to sizes that exhaust memory).
    """
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        shape = getattr(image, "shape", None)
        dtype = getattr(image, "dtype", type(image).__name__)
        raise ValueError(f"OCR needs an RGB uint8 array [height, width, 3], got {dtype} {shape}")
    height, width = image.shape[:2]
    if max(height, width) > MAX_INPUT_SIDE or (
        min(height, width) > 0 and max(height, width) > OCR_MAX_ASPECT * min(height, width)
    ):
        raise ValueError(
            f"OCR input of {width}x{height} px is larger than {MAX_INPUT_SIDE} px or thinner than 1:{OCR_MAX_ASPECT}; "
            "prepare images with client.images.ocr_view"
        )
    return height * width


class OcrCache:
    """OCR results per (engine name, image sha256), in an append-only JSON-lines file.

    Each :meth:`put` appends one complete line and flushes it, so a crash loses at most the
    line being written; opening the cache drops such a torn last line (see
    :class:`client.files.JsonLines`). :func:`run_ocr` writes from the calling process only;
    several processes may share a cache file (the actors of one node with `client predict
    --ray`): each line is appended in one write, so lines do not interleave on a local disk, and
    a cache opened while another process appends may cut that line off as torn, which costs
    that image's OCR once more, nothing else.

    Args:
        path: The ``.jsonl`` file; created (with its folder) on the first :meth:`put`.
    """

    def __init__(self, path: Path | str) -> None:
        self.file = JsonLines(path)
        self._texts: dict[tuple[str, str], str] = {}
        for record in self.file.read():
            try:
                self._texts[(record["engine"], record["sha256"])] = str(record["text"])
            except KeyError:
                _log.warning("OCR cache %s: skipping a record without engine, sha256 and text", self.file.path)

    @property
    def path(self) -> Path:
        return self.file.path

    def __len__(self) -> int:
        return len(self._texts)

    def get(self, engine: str, sha256: str) -> str | None:
        """The cached text for an image, or None when it was never read by this engine."""
        return self._texts.get((engine, sha256))

    def put(self, engine: str, sha256: str, text: str) -> None:
        """Record an image's text (in memory, and on disk while the disk takes it)."""
        self._texts[(engine, sha256)] = text
        try:
            self.file.append([{"engine": engine, "sha256": sha256, "text": text}])
        except OSError as error:  # a full or read-only cache costs the next run some OCR, not this run
            _log.warning("OCR cache %s: cannot write (%s); results are kept for this run only", self.path, error)


def ocr_cache_key(engine: str | OcrEngine) -> str:
    """The OCR cache key of an engine, or of the engine a name builds with default settings."""
    if isinstance(engine, OcrEngine):
        return engine.cache_key
    return ReaderSettings().cache_key if engine == RapidOcrEngine.name else engine


def run_ocr(
    engine: str | OcrEngine,
    images: Iterable[tuple[str, np.ndarray]],
    cache: OcrCache | None = None,
    workers: int = 1,
    stop: threading.Event | None = None,
    batch_images: int = OCR_BATCH_IMAGES,
) -> dict[str, str]:
    """OCR a batch of images, each distinct image once, reusing and filling the cache.

    ``images`` is consumed lazily: every ``batch_images`` images not in the cache are handed to
    a worker as soon as the iterable has yielded them, so images still being downloaded and
    decoded by a generator overlap with the reading of those before them. An image whose OCR
    raises is logged and reads as ``""`` (not cached), so one bad image never stops a batch.

    Args:
        engine: An engine, or the name of one in :data:`OCR_ENGINES`.
        images: ``(sha256, RGB uint8 array)`` pairs; repeated shas are read once. Consumed to
            the end, also after ``stop`` is set.
        cache: Where results are looked up first and stored as they arrive; None for none.
        workers: With a name, processes to run OCR in, each building its engine once (1: this
            process, whose engine is built once and kept). With an engine, threads sharing it:
            for an engine whose networks run elsewhere (a deployment's backend), so that one
            image is prepared while another one's networks run.
        stop: When it is set, no further image is started (the images in progress finish)
            and the texts read so far are returned.
        batch_images: Images read by one engine call (:meth:`OcrEngine.read_many`).

    Returns:
        sha256 -> recognised text, for every sha in ``images`` (read before ``stop``).

    Raises:
        ValueError: Unknown engine name.
        MissingDependencyError: The engine is not installed.
    """
    name = engine.name if isinstance(engine, OcrEngine) else engine
    if name not in OCR_ENGINES:
        raise ValueError(f"unknown OCR engine {name!r}; choose one of: {', '.join(OCR_ENGINES)}")
    if name == "none":  # nothing to read, nothing worth caching
        return {sha: "" for sha, _ in images}
    key = ocr_cache_key(engine)
    stop = stop or threading.Event()
    texts: dict[str, str] = {}
    pending: deque[tuple[list[str], Future]] = deque()  # in the order handed out
    handed_out: set[str] = set()
    batch: list[tuple[str, np.ndarray]] = []

    def collect(wait_for: int) -> None:
        """Store the results at the head of `pending`, waiting while more than `wait_for` are
        out; once `stop` is set, the images not yet started are dropped."""
        while pending and (len(pending) > wait_for or pending[0][1].done()):
            if stop.is_set():
                pool.cancel_waiting()
            shas, future = pending.popleft()
            read = None if future.cancelled() else future.result()
            if read is None:  # dropped after `stop`, in this process or in a worker's queue
                continue
            for sha, text in zip(shas, read, strict=True):
                texts[sha] = text or ""
                if text is not None and cache is not None:
                    cache.put(key, sha, text)

    def hand_out() -> None:
        pending.append(([sha for sha, _ in batch], pool.submit(batch.copy())))
        batch.clear()
        collect(wait_for=2 * pool.workers)  # one group queued per worker beside the one it reads

    with _OcrPool(engine, workers) as pool:
        for sha, pixels in images:
            if stop.is_set():
                pool.cancel_waiting()  # groups not started are dropped now; the rest of `images` is only drained
                continue
            if sha in texts or sha in handed_out:
                continue
            cached = cache.get(key, sha) if cache is not None else None
            if cached is not None:
                texts[sha] = cached
                continue
            handed_out.add(sha)
            batch.append((sha, pixels))
            if len(batch) >= batch_images:
                hand_out()
        if batch and not stop.is_set():
            hand_out()
        collect(wait_for=0)
    return texts


class _OcrPool:
    """Threads (an engine object, or a name with one worker) or worker processes (a name with
    several workers) that read images; started on the first image handed out."""

    def __init__(self, engine: str | OcrEngine, workers: int) -> None:
        self.engine = engine
        self.workers = max(1, workers)
        self.executor: Executor | None = None
        self.stopped: ProcessEvent | None = None

    def submit(self, batch: list[tuple[str, np.ndarray]]) -> Future:
        """Reads (sha256, image) pairs; the future gives each one's text (None where OCR
        failed), or None for the whole group when the pool was stopped before it started."""
        if self.executor is None:
            self.executor, self.read = self._start()
        return self.executor.submit(self.read, batch)

    def _start(self) -> tuple[Executor, Callable[[list[tuple[str, np.ndarray]]], list[str | None] | None]]:
        if isinstance(self.engine, str) and self.workers > 1:
            threads = max(1, (os.cpu_count() or 1) // self.workers)
            # spawn, not fork: forking a process that already runs ONNX Runtime threads can deadlock.
            context = multiprocessing.get_context("spawn")
            self.stopped = context.Event()
            return ProcessPoolExecutor(self.workers, mp_context=context, initializer=_init_worker,
                                       initargs=(self.engine, threads, self.stopped)), _read_in_worker
        engine = self.engine if isinstance(self.engine, OcrEngine) else _engine_here(self.engine)
        return ThreadPoolExecutor(self.workers, thread_name_prefix="ocr"), functools.partial(_safe_read, engine)

    def cancel_waiting(self) -> None:
        """Drop the images not yet started (those being read finish).

        A process pool has already sent up to ``workers + 1`` groups down its call queue, where
        cancelling no longer reaches them: its workers see ``stopped`` and skip those.
        """
        if self.stopped is not None:
            self.stopped.set()
        if self.executor is not None:
            self.executor.shutdown(wait=False, cancel_futures=True)

    def __enter__(self) -> _OcrPool:
        return self

    def __exit__(self, *exc_info) -> None:
        if self.executor is not None:
            self.executor.shutdown(wait=True, cancel_futures=True)


@functools.cache
def _engine_here(name: str) -> OcrEngine:
    """This process's engine of a name, built once (building one loads its networks)."""
    return make_ocr_engine(name)


def _safe_read(engine: OcrEngine, batch: list[tuple[str, np.ndarray]]) -> list[str | None]:
    """The engine's text of each (sha256, image) pair, None (logged) for an image it fails on:
    a batch that fails is read again image by image, so a bad image costs only itself."""
    try:
        return list(engine.read_many([pixels for _, pixels in batch]))
    except Exception as error:  # an engine failing on one image must not stop the batch
        if len(batch) == 1:
            _log.warning("OCR (%s) failed on image %s: %r", engine.name, batch[0][0], error)
            return [None]
    return [_safe_read(engine, [item])[0] for item in batch]


_worker_engine: OcrEngine | None = None
_worker_error: Exception | None = None
_worker_stopped: ProcessEvent | None = None


def _init_worker(engine_name: str, threads: int, stopped: ProcessEvent) -> None:
    """Build this worker process's engine once; keep a construction error to re-raise per task.

    Ctrl-C is the parent's to handle (it sets ``stopped``, and stops handing out images): a
    worker ignores it rather than die mid-image and break the pool.
    """
    global _worker_engine, _worker_error, _worker_stopped
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _worker_stopped = stopped
    try:
        _worker_engine = make_ocr_engine(engine_name, threads=threads)
    except Exception as error:  # re-raised in _read_in_worker, so the caller sees the real error
        _worker_error = error


def _read_in_worker(batch: list[tuple[str, np.ndarray]]) -> list[str | None] | None:
    if _worker_stopped is not None and _worker_stopped.is_set():
        return None
    if _worker_error is not None:
        raise _worker_error
    assert _worker_engine is not None
    return _safe_read(_worker_engine, batch)
