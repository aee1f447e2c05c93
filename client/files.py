"""Files that a crash, a kill or a full disk cannot leave torn: whole-file writes that leave
the old file or the new one (and no temporary file behind), and append-only JSON-lines stores
(the prediction journal, the OCR cache)."""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

_log = logging.getLogger(__name__)


@contextmanager
def atomic_write(path: Path, mode: str = "w", **open_options) -> Iterator[IO]:
    """Open a temporary file beside ``path``; on a clean exit it replaces ``path``.

    The temporary file is fsynced before it is renamed over ``path``. On any exception
    (KeyboardInterrupt included) it is removed and ``path`` is left as it was.

    Args:
        path: The file to write; its folder must exist.
        mode: ``"w"`` (text) or ``"wb"`` (bytes).
        **open_options: Passed to :func:`open` (``encoding``, ``newline``...).

    Yields:
        The open temporary file.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"mode must be 'w' or 'wb', not {mode!r}")
    handle, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, mode, **open_options) as temp:
            yield temp
            temp.flush()
            os.fsync(temp.fileno())
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise


class JsonLines:
    """An append-only file of JSON objects, one per line, that a crash cannot corrupt.

    Each :meth:`append` writes whole lines in one call and flushes them, so a crash or kill
    loses at most the lines being written. :meth:`read` cuts a torn last line off the file (so
    the next append starts on a line of its own) and skips, with a warning, any line that does
    not parse. Appends from several threads are serialised.

    Args:
        path: The file; created with its folder by the first write.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()

    def read(self) -> list[dict]:
        """Every complete line that parses to a JSON object, in file order ([] without a file)."""
        if not self.path.exists():
            return []
        with self._lock:
            raw = self.path.read_bytes()
            complete = raw[: raw.rfind(b"\n") + 1]
            if len(complete) < len(raw):
                _log.warning("%s: dropping a torn last line (%d bytes)", self.path, len(raw) - len(complete))
                with self.path.open("r+b") as handle:
                    handle.truncate(len(complete))
        records = []
        for number, line in enumerate(complete.decode("utf-8", errors="replace").splitlines(), 1):
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                record = None
            if isinstance(record, dict):
                records.append(record)
            else:
                _log.warning("%s: skipping unreadable line %d", self.path, number)
        return records

    def append(self, records: Iterable[dict]) -> None:
        """Add records at the end, flushed to the operating system before returning."""
        text = "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records)
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as handle:
                handle.write(text)

    def replace(self, records: Iterable[dict]) -> None:
        """Start the file afresh with ``records`` (atomically)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock, atomic_write(self.path, encoding="utf-8") as handle:
            handle.write("".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records))

    def sync(self) -> None:
        """Make what was appended durable (fsync), e.g. before a run reports success."""
        if self.path.exists():
            with self._lock, self.path.open("rb") as handle:
                os.fsync(handle.fileno())
