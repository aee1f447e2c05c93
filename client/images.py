"""Image fetching, decoding and preparation: the one implementation training and serving share.

A row's ``image_link`` goes through three steps, each of which turns bad input into an
:class:`ImageStatus` instead of an exception, so a bad image makes its row text-only and is
counted, never a crash:

1. :class:`ImageFetcher` turns a link into bytes (local folder, local path, ``file://`` or an
   ``http(s)://`` download with bounded size, bounded time, retries and an on-disk cache).
2. :func:`decode_image` turns bytes into a fully loaded RGB :class:`PIL.Image.Image`.
3. :func:`prepare_image` turns that into the fixed-size uint8 array the image encoder takes;
   :func:`ocr_view` into the bounded-resolution array the OCR engine reads.

:func:`load_images` runs all three for a batch of links in parallel. This module does not
import torch.
"""

from __future__ import annotations

import datetime
import email.utils
import hashlib
import io
import logging
import math
import random
import re
import struct
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from urllib.parse import SplitResult, unquote, urlsplit

import numpy as np
import urllib3
from PIL import Image, ImageOps, UnidentifiedImageError
from urllib3 import BaseHTTPResponse
from urllib3.exceptions import ConnectTimeoutError, NameResolutionError

from client.files import atomic_write
from client.links import MAX_REDIRECTS, GuardedHttpClient, LinkPolicy, RefusedLinkError, redirect_target

IMAGE_SIZE = 256
"""Side of the square uint8 RGB image the image encoder takes."""

MAX_IMAGE_PIXELS = 40_000_000
"""Images with more pixels than this are refused before they are decoded."""

OCR_MAX_SIDE = 640
"""Default longest side of the image handed to OCR."""

OCR_MAX_ASPECT = 4
"""Longest side over shortest side of the image handed to OCR, at most: thinner images are
padded. OCR detectors enlarge the short side to a fixed size, so without this bound a
1 x 5,000 px banner becomes a detector input of gigabytes."""

PAD_COLOR = (255, 255, 255)
"""Product photos are shot on white, so padding and transparency become white."""

USER_AGENT = "multimodal-price-client/0.1"
_log = logging.getLogger(__name__)
_CHUNK_BYTES = 64 * 1024
_RETRY_HTTP_CODES = frozenset({429, 500, 502, 503, 504})
_REQUEST_HEADERS = {"User-Agent": USER_AGENT, "Accept": "image/*"}
# What http.client refuses in a URL; urllib3 would percent-encode it instead, but such a link is
# a broken cell of the CSV, not an address.
_FORBIDDEN_URL_CHARACTERS = re.compile(r"[\x00-\x20\x7f]")
_UNKNOWN_CONTENT_TYPES = frozenset({"", "application/octet-stream", "binary/octet-stream"})
# What PIL's plugins raise on corrupt or hostile data (besides the more specific cases below).
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, struct.error, IndexError)


class ImageStatus(str, Enum):
    """Outcome of fetching and decoding one image; anything but OK makes the row text-only."""

    OK = "ok"
    NO_LINK = "no_link"
    MISSING = "missing"
    UNREACHABLE = "unreachable"
    TOO_LARGE = "too_large"
    NOT_IMAGE = "not_image"
    TRUNCATED = "truncated"
    TOO_MANY_PIXELS = "too_many_pixels"
    BAD_LINK = "bad_link"
    REFUSED = "refused"


@dataclass(frozen=True)
class FetchedImage:
    """The raw bytes behind a link, or why there are none.

    Attributes:
        status: OK when ``data`` holds the bytes; otherwise the reason they are missing.
        data: The file's bytes (not yet known to be a valid image), or None.
        detail: A human-readable reason, for warnings and reports.
        sha256: Hex SHA-256 of ``data``, or None.
    """

    status: ImageStatus
    data: bytes | None = None
    detail: str = ""
    sha256: str | None = None

    @classmethod
    def from_bytes(cls, data: bytes, detail: str = "") -> FetchedImage:
        """An OK result for ``data``, with its checksum."""
        return cls(ImageStatus.OK, data, detail, hashlib.sha256(data).hexdigest())

    @classmethod
    def failed(cls, status: ImageStatus, detail: str) -> FetchedImage:
        """A result without data."""
        return cls(status, None, detail, None)


@dataclass(frozen=True)
class PreparedImage:
    """One image, ready for the image encoder (and optionally for OCR).

    The decoded full-resolution image is deliberately not kept, to bound memory.

    Attributes:
        pixels: uint8 RGB array ``[IMAGE_SIZE, IMAGE_SIZE, 3]``, or None when not usable.
        status: OK, or why the row must be treated as text-only.
        detail: A human-readable reason, for warnings and reports.
        sha256: Hex SHA-256 of the source bytes (the OCR cache key), when they were fetched.
        ocr_pixels: uint8 RGB array of bounded size for OCR, when it was asked for.
    """

    pixels: np.ndarray | None
    status: ImageStatus
    detail: str = ""
    sha256: str | None = None
    ocr_pixels: np.ndarray | None = None

    @property
    def has_image(self) -> bool:
        """Whether the row has a usable image (the model's ``has_image`` flag)."""
        return self.pixels is not None


class _RetryableError(Exception):
    """A download attempt failed in a way worth retrying (network error, 5xx, 429).

    Attributes:
        retry_after_s: How long the server asked to wait before the next attempt, if it said.
    """

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class _NoAnswerError(_RetryableError):
    """A download attempt got no HTTP answer at all (no route, DNS failure, refused, timeout)."""


class _UnresolvableHostError(_NoAnswerError):
    """The host name does not resolve (DNS answered that it does not exist, or no DNS at all)."""


def is_missing_link(link: object) -> bool:
    """Whether ``link`` is empty: None, NaN (pandas' empty cell) or blank text."""
    if link is None:
        return True
    if isinstance(link, float):
        return math.isnan(link)
    return not str(link).strip()


def link_name(link: str) -> str:
    """The file name a link refers to: its last path segment, URL-decoded, query stripped.

    Args:
        link: A URL or a local path.

    Returns:
        The name, e.g. ``"51+PFEe-w-L.jpg"`` for
        ``"https://m.media-amazon.com/images/I/51+PFEe-w-L.jpg?x=1"``; ``""`` when there is
        no usable name (the link ends in ``/``, or the decoded name would escape a folder).
    """
    path = urlsplit(link.strip()).path
    name = unquote(path.replace("\\", "/").rsplit("/", 1)[-1])
    if name in {"", ".", ".."} or any(c in name for c in "/\\\0"):
        return ""
    return name


class ImageFetcher:
    """Turns image links into bytes, from local files or the network.

    Resolution order for :meth:`fetch`: an empty link is NO_LINK; then
    ``images_dir / link_name(link)`` when that file exists; then a local path or ``file://``
    URL (REFUSED unless ``policy`` allows local files); then an ``http(s)://`` download (also
    when ``images_dir`` lacks the file) to addresses the policy allows (else REFUSED);
    anything else is BAD_LINK. Downloads are cached in ``cache_dir`` (when given) under the
    SHA-256 of the URL, written atomically. Downloads reuse connections: at most
    ``max_workers`` per host are open, and a download waits while they are all busy.
    Thread-safe; :meth:`fetch` never raises for bad input.

    Args:
        images_dir: A folder of images named like the links' last path segment.
        cache_dir: Where downloaded images are cached; no cache when None.
        policy: Which links besides public http(s) ones may be followed (see
            :mod:`client.links`); by default none.
        max_bytes: Largest accepted file, local or downloaded.
        timeout_s: Time limit of one download attempt (connection and whole body).
        retries: Extra attempts after a network error, HTTP 429 or 5xx.
        backoff_s: Base of the exponential backoff between attempts (jittered). A 429 or 503
            answer's ``Retry-After`` (seconds or an HTTP date) is waited for instead when it
            is longer, but never more than ``timeout_s``.
        max_workers: Threads used by :meth:`fetch_many` and :func:`load_images`, and
            connections kept open per host.
        max_host_failures: After this many downloads in a row from one host failed every
            attempt without an HTTP answer (no network, DNS failure, host down), further
            links to that host fail at once instead of each waiting through its retries;
            any answer from the host resets the count. 0 disables this.
    """

    def __init__(
        self,
        images_dir: Path | None = None,
        cache_dir: Path | None = None,
        *,
        policy: LinkPolicy = LinkPolicy(),
        max_bytes: int = 10 * 2**20,
        timeout_s: float = 10.0,
        retries: int = 2,
        backoff_s: float = 0.5,
        max_workers: int = 8,
        max_host_failures: int = 5,
    ) -> None:
        self.images_dir = Path(images_dir) if images_dir is not None else None
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.policy = policy
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s
        self.retries = max(0, retries)
        self.backoff_s = backoff_s
        self.max_workers = max(1, max_workers)
        self.max_host_failures = max_host_failures
        self._http = GuardedHttpClient(
            policy, connections_per_host=self.max_workers, timeout_s=timeout_s, headers=_REQUEST_HEADERS
        )
        self._random = random.Random()
        self._host_failures: Counter[str] = Counter()
        self._lock = threading.Lock()

    def fetch(self, link: str | None) -> FetchedImage:
        """Fetch one image's bytes.

        Args:
            link: An ``http(s)://`` or ``file://`` URL, or a local path; None, NaN or blank
                mean "no image".

        Returns:
            The bytes with status OK, or a failed :class:`FetchedImage` saying why.
        """
        if is_missing_link(link):
            return FetchedImage.failed(ImageStatus.NO_LINK, "no image link")
        link = str(link).strip()
        try:
            parts = urlsplit(link)
        except ValueError as error:
            return FetchedImage.failed(ImageStatus.BAD_LINK, f"malformed link {link!r}: {error}")
        local = self._from_images_dir(link)
        if local is not None:
            return self._read_file(local)
        scheme = parts.scheme.lower()
        is_local = scheme in {"file", ""} or len(scheme) == 1  # one letter: a Windows drive
        if is_local and not self.policy.allow_local_files:
            return FetchedImage.failed(
                ImageStatus.REFUSED,
                f"local file link refused: {link!r} (give the folder with --images, or --allow-local-files)",
            )
        if scheme == "file":
            return self._fetch_file_url(link, parts)
        if scheme in {"http", "https"}:
            if not parts.hostname:
                return FetchedImage.failed(ImageStatus.BAD_LINK, f"URL without a host: {link!r}")
            if _FORBIDDEN_URL_CHARACTERS.search(link):
                return FetchedImage.failed(ImageStatus.BAD_LINK, f"invalid URL {link!r}: spaces or control characters")
            try:
                self.policy.check_host(parts.hostname)
            except RefusedLinkError as error:
                return FetchedImage.failed(ImageStatus.REFUSED, f"{link}: {error}")
            return self._fetch_url(link)
        if is_local:
            return self._fetch_path(link)
        return FetchedImage.failed(ImageStatus.BAD_LINK, f"unsupported link scheme {scheme!r}: {link!r}")

    def fetch_many(self, links: Sequence[str | None]) -> list[FetchedImage]:
        """Fetch many links in parallel (at most ``max_workers`` at once), order preserved."""
        if not links:
            return []
        with ThreadPoolExecutor(max_workers=min(self.max_workers, len(links))) as pool:
            return list(pool.map(self.fetch, links))

    # -- local files -------------------------------------------------------------------------

    def _from_images_dir(self, link: str) -> Path | None:
        if self.images_dir is None:
            return None
        name = link_name(link)
        if not name:
            return None
        candidate = self.images_dir / name
        try:
            return candidate if candidate.is_file() else None
        except OSError:  # e.g. a name too long for the file system
            return None

    def _fetch_file_url(self, link: str, parts: SplitResult) -> FetchedImage:
        if parts.netloc not in {"", "localhost"}:
            return FetchedImage.failed(ImageStatus.BAD_LINK, f"file URL on another host: {link!r}")
        return self._fetch_path(urllib.request.url2pathname(parts.path))

    def _fetch_path(self, path_text: str) -> FetchedImage:
        try:
            path = Path(path_text).expanduser()
            exists = path.is_file()
        except (OSError, ValueError) as error:  # e.g. NUL bytes, names too long
            return FetchedImage.failed(ImageStatus.BAD_LINK, f"unusable path {path_text!r}: {error}")
        if not exists:
            return FetchedImage.failed(ImageStatus.MISSING, f"no such file: {path}")
        return self._read_file(path)

    def _read_file(self, path: Path) -> FetchedImage:
        try:
            size = path.stat().st_size
            if size > self.max_bytes:
                return FetchedImage.failed(
                    ImageStatus.TOO_LARGE, f"{path} is {size} bytes, over the {self.max_bytes}-byte limit"
                )
            data = path.read_bytes()
        except OSError as error:
            return FetchedImage.failed(ImageStatus.MISSING, f"cannot read {path}: {error}")
        return FetchedImage.from_bytes(data, str(path))

    # -- downloads ---------------------------------------------------------------------------

    def cache_path(self, url: str) -> Path | None:
        """Where the download of ``url`` is (or would be) cached; None without a cache."""
        if self.cache_dir is None:
            return None
        return self.cache_dir / hashlib.sha256(url.encode("utf-8")).hexdigest()

    def _fetch_url(self, url: str) -> FetchedImage:
        cached = self.cache_path(url)
        if cached is not None and cached.is_file():
            return self._read_file(cached)
        host = urlsplit(url).hostname or ""
        if self._host_is_down(host):
            return FetchedImage.failed(
                ImageStatus.UNREACHABLE,
                f"{url}: not tried, {self._host_failures[host]} downloads from {host} in a row failed",
            )
        result = self._download_with_retries(url, host)
        if result.status is ImageStatus.OK and cached is not None and result.data is not None:
            try:
                cached.parent.mkdir(parents=True, exist_ok=True)
                with atomic_write(cached, "wb") as handle:
                    handle.write(result.data)
            except OSError as error:  # a full or read-only cache must not lose the image
                _log.warning("cannot cache %s in %s: %s", url, cached, error)
        return result

    def _host_is_down(self, host: str) -> bool:
        with self._lock:
            return 0 < self.max_host_failures <= self._host_failures[host]

    def _record_host(self, host: str, *, reachable: bool, unresolvable: bool = False) -> None:
        with self._lock:
            if reachable:
                self._host_failures.pop(host, None)
            elif unresolvable:
                self._host_failures[host] = max(self._host_failures[host] + 1, self.max_host_failures)
            else:
                self._host_failures[host] += 1

    def _download_with_retries(self, url: str, host: str) -> FetchedImage:
        attempts = self.retries + 1
        last_error = ""
        answered = False
        for attempt in range(attempts):
            try:
                result = self._download(url)
                self._record_host(host, reachable=True)
                return result
            except _UnresolvableHostError as error:
                # a name that does not resolve will not resolve a second later: no retries, and
                # the host's other links fail at once
                self._record_host(host, reachable=False, unresolvable=True)
                return FetchedImage.failed(ImageStatus.UNREACHABLE, f"{url}: {error}")
            except _RetryableError as error:
                last_error = str(error)
                answered = answered or not isinstance(error, _NoAnswerError)
                if attempt + 1 < attempts:
                    time.sleep(self._pause(attempt, error.retry_after_s))
        self._record_host(host, reachable=answered)
        return FetchedImage.failed(
            ImageStatus.UNREACHABLE, f"{url}: {last_error} (after {attempts} attempt(s))"
        )

    def _pause(self, attempt: int, retry_after_s: float | None) -> float:
        """The wait before the next attempt: exponential backoff with jitter (base * 2**attempt,
        scaled by a factor in [0.5, 1.5)), or the server's Retry-After when longer, at most
        ``timeout_s`` so that a server cannot hold a download for long."""
        backoff = self.backoff_s * 2**attempt * (0.5 + self._random.random())
        if retry_after_s is None:
            return backoff
        return max(backoff, min(retry_after_s, self.timeout_s))

    def _download(self, url: str) -> FetchedImage:
        """One download attempt, redirects included; raises _RetryableError for failures worth retrying."""
        deadline = time.monotonic() + self.timeout_s
        target = url
        try:
            for _ in range(MAX_REDIRECTS + 1):
                response = self._http.get(target)
                try:
                    location = response.get_redirect_location()
                    if not location:
                        return self._read_response(url, response, deadline)
                    target = redirect_target(target, location)
                finally:
                    _hand_back(response, deadline)
        except RefusedLinkError as error:
            return FetchedImage.failed(ImageStatus.REFUSED, f"{url}: {error}")
        except ValueError as error:  # a malformed link or redirect target
            return FetchedImage.failed(ImageStatus.BAD_LINK, f"invalid URL {url!r}: {error}")
        except NameResolutionError as error:
            raise _UnresolvableHostError(f"cannot resolve the host: {error.__cause__}") from error
        except ConnectTimeoutError as error:  # refused, unreachable or timed out
            raise _NoAnswerError(f"cannot connect: {error.__cause__ or error}") from error
        except urllib3.exceptions.TimeoutError as error:
            raise _NoAnswerError(f"timed out after {self.timeout_s:g} s") from error
        except urllib3.exceptions.HTTPError as error:  # resets, TLS and proxy errors
            raise _NoAnswerError(f"connection failed: {error!r}") from error
        return FetchedImage.failed(ImageStatus.UNREACHABLE, f"{url}: more than {MAX_REDIRECTS} redirects")

    def _read_response(self, url: str, response: BaseHTTPResponse, deadline: float) -> FetchedImage:
        if not 200 <= response.status < 300:
            answer = f"HTTP {response.status} {response.reason}"
            if response.status in _RETRY_HTTP_CODES:
                retry_after = response.headers.get("Retry-After") if response.status in {429, 503} else None
                raise _RetryableError(answer, _retry_after_s(retry_after))
            return FetchedImage.failed(ImageStatus.UNREACHABLE, f"{url}: {answer}")
        content_type = _content_type(response)
        if content_type not in _UNKNOWN_CONTENT_TYPES and not content_type.startswith("image/"):
            return FetchedImage.failed(ImageStatus.NOT_IMAGE, f"{url}: content type {content_type!r}")
        declared = _content_length(response)
        if declared is not None and declared > self.max_bytes:
            return FetchedImage.failed(
                ImageStatus.TOO_LARGE,
                f"{url}: {declared} bytes declared, over the {self.max_bytes}-byte limit",
            )
        data = bytearray()
        while chunk := _read_chunk(response):
            data += chunk
            if len(data) > self.max_bytes:
                return FetchedImage.failed(
                    ImageStatus.TOO_LARGE, f"{url}: over the {self.max_bytes}-byte limit"
                )
            if time.monotonic() > deadline:
                raise _RetryableError(f"download took longer than {self.timeout_s:g} s")
        if declared is not None and len(data) < declared:
            raise _RetryableError(f"incomplete body: {len(data)} of {declared} bytes")
        return FetchedImage.from_bytes(bytes(data), url)


def _read_chunk(response: BaseHTTPResponse) -> bytes:
    """What has arrived of the body (at most one chunk), without waiting for a full chunk."""
    try:
        return response.read1(_CHUNK_BYTES)
    except (urllib3.exceptions.HTTPError, OSError) as error:  # the host answered, then broke off
        raise _RetryableError(f"connection broke during the body: {error!r}") from error


def _hand_back(response: BaseHTTPResponse, deadline: float) -> None:
    """Give the response's connection back to the pool, open for the next request when the rest
    of the body is short and arrives before the deadline (an error page, a redirect's body),
    closed otherwise."""
    rest = response.length_remaining
    if rest is not None and rest <= _CHUNK_BYTES:
        try:
            while time.monotonic() < deadline and response.read1(_CHUNK_BYTES):
                pass
        except (urllib3.exceptions.HTTPError, OSError):  # urllib3 has closed the connection
            pass
    response.close()  # no effect on a connection that went back to the pool with its body read
    response.release_conn()


def _content_type(response: BaseHTTPResponse) -> str:
    """The media type, lower case and without parameters; "" when not given."""
    return (response.headers.get("Content-Type") or "").split(";", 1)[0].strip().lower()


def _content_length(response: BaseHTTPResponse) -> int | None:
    value = response.headers.get("Content-Length")
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _retry_after_s(value: str | None) -> float | None:
    """The wait a Retry-After header asks for, in seconds (it holds seconds or an HTTP date);
    None when it is missing or unreadable."""
    if value is None:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # "-0000": UTC, as HTTP dates are
        when = when.replace(tzinfo=datetime.timezone.utc)
    return max(0.0, (when - datetime.datetime.now(datetime.timezone.utc)).total_seconds())


# -- decoding and preparation --------------------------------------------------------------------


def decode_image(
    data: bytes, *, max_pixels: int = MAX_IMAGE_PIXELS
) -> tuple[Image.Image | None, ImageStatus, str]:
    """Decode image bytes into a fully loaded, upright RGB image.

    The pixel count is checked from the header before any pixel is decoded; the image is then
    fully loaded, so a truncated file is reported (``ImageFile.LOAD_TRUNCATED_IMAGES`` is
    never set). Transparency is composited onto white; EXIF orientation is applied.

    Args:
        data: The file's bytes.
        max_pixels: Largest accepted width x height.

    Returns:
        ``(image, ImageStatus.OK, description)``, or ``(None, status, reason)`` with status
        NOT_IMAGE, TRUNCATED or TOO_MANY_PIXELS.
    """
    try:
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as error:
        return None, ImageStatus.TOO_MANY_PIXELS, str(error)
    except UnidentifiedImageError:
        return None, ImageStatus.NOT_IMAGE, "not a recognised image format"
    except _DECODE_ERRORS as error:
        return None, _failure_status(error), f"cannot read image header: {error}"
    width, height = image.size
    if width * height > max_pixels:
        detail = f"{width}x{height} = {width * height} pixels, over the {max_pixels}-pixel limit"
        return None, ImageStatus.TOO_MANY_PIXELS, detail
    if width == 0 or height == 0:
        return None, ImageStatus.NOT_IMAGE, f"empty image ({width}x{height})"
    try:
        image.load()
        rgb = _to_rgb(_upright(image))
    except Image.DecompressionBombError as error:
        return None, ImageStatus.TOO_MANY_PIXELS, str(error)
    except _DECODE_ERRORS as error:
        return None, _failure_status(error), f"cannot decode {image.format} image: {error}"
    return rgb, ImageStatus.OK, f"{image.format} {width}x{height} {image.mode}"


def _failure_status(error: Exception) -> ImageStatus:
    message = str(error).lower()
    if "truncated" in message or "incomplete" in message or isinstance(error, EOFError):
        return ImageStatus.TRUNCATED
    return ImageStatus.NOT_IMAGE


def _upright(image: Image.Image) -> Image.Image:
    """Apply the EXIF orientation tag; a missing or malformed tag leaves the image as it is."""
    try:
        return ImageOps.exif_transpose(image)
    except (*_DECODE_ERRORS, KeyError, TypeError):
        return image


def _to_rgb(image: Image.Image) -> Image.Image:
    """Convert any mode to RGB, compositing transparency onto white."""
    has_alpha = image.mode in {"RGBA", "LA", "PA", "RGBa", "La"} or "transparency" in image.info
    if not has_alpha:
        return image if image.mode == "RGB" else image.convert("RGB")
    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (*PAD_COLOR, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def prepare_image(image: Image.Image, size: int = IMAGE_SIZE) -> np.ndarray:
    """Pad an image to a centred square with white and resize it for the image encoder.

    Keeps the aspect ratio (resized with bicubic filtering so the long side is ``size``,
    then padded with white). Deterministic for a given Pillow version.

    Args:
        image: A decoded image (converted to RGB if it is not).
        size: Side of the output square.

    Returns:
        A C-contiguous uint8 array of shape ``[size, size, 3]``.
    """
    rgb = _to_rgb(image)
    square = ImageOps.pad(rgb, (size, size), method=Image.Resampling.BICUBIC, color=PAD_COLOR)
    return np.array(square, dtype=np.uint8, order="C")


def ocr_view(image: Image.Image, max_side: int = OCR_MAX_SIDE) -> np.ndarray:
    """The image as an RGB uint8 array for OCR, of bounded size and shape.

    The image is shrunk so its longest side is at most ``max_side`` (smaller images are not
    enlarged), then padded with white, centred, so that no side is shorter than the longest
    over :data:`OCR_MAX_ASPECT`: a banner or a cable photo costs OCR no more than a square.

    Args:
        image: A decoded image (converted to RGB if it is not).
        max_side: Longest side of the result.

    Returns:
        A C-contiguous uint8 RGB array ``[height, width, 3]`` with ``max(height, width) <=
        max_side`` and ``max(height, width) <= OCR_MAX_ASPECT * min(height, width)``.
    """
    rgb = _to_rgb(image)
    scale = max_side / max(rgb.size)
    if scale < 1:
        new_size = (max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale)))
        rgb = rgb.resize(new_size, Image.Resampling.BICUBIC)
    min_side = math.ceil(max(rgb.size) / OCR_MAX_ASPECT)
    if min(rgb.size) < min_side:
        canvas = Image.new("RGB", (max(rgb.width, min_side), max(rgb.height, min_side)), PAD_COLOR)
        canvas.paste(rgb, ((canvas.width - rgb.width) // 2, (canvas.height - rgb.height) // 2))
        rgb = canvas
    return np.array(rgb, dtype=np.uint8, order="C")


def prepare_fetched(
    fetched: FetchedImage,
    *,
    size: int = IMAGE_SIZE,
    ocr_max_side: int | None = None,
    max_pixels: int = MAX_IMAGE_PIXELS,
) -> PreparedImage:
    """Decode and prepare fetched bytes; a failure at any step becomes the result's status.

    Args:
        fetched: The output of :meth:`ImageFetcher.fetch`.
        size: Side of the encoder's square image.
        ocr_max_side: When given, also fill ``ocr_pixels`` with an :func:`ocr_view` this big.
        max_pixels: Largest accepted width x height.

    Returns:
        The prepared image, or one with ``pixels=None`` and the reason.
    """
    if fetched.status is not ImageStatus.OK or fetched.data is None:
        return PreparedImage(None, fetched.status, fetched.detail, fetched.sha256)
    image, status, detail = decode_image(fetched.data, max_pixels=max_pixels)
    if image is None:
        return PreparedImage(None, status, f"{fetched.detail}: {detail}", fetched.sha256)
    ocr_pixels = ocr_view(image, ocr_max_side) if ocr_max_side is not None else None
    return PreparedImage(prepare_image(image, size), status, detail, fetched.sha256, ocr_pixels)


def load_images(
    fetcher: ImageFetcher,
    links: Sequence[str | None],
    *,
    size: int = IMAGE_SIZE,
    ocr_max_side: int | None = None,
    max_pixels: int = MAX_IMAGE_PIXELS,
    stop: threading.Event | None = None,
) -> list[PreparedImage]:
    """Fetch, decode and prepare a batch of links in parallel, one result per link, in order.

    Each distinct link is processed once (rows often share a product photo); rows with the
    same link get the same :class:`PreparedImage`. Memory is about ``len(links)`` times
    ``size * size * 3`` bytes, plus the OCR views when asked for: call it on chunks.

    Args:
        fetcher: Where the bytes come from; its ``max_workers`` bounds the threads.
        links: One link per row (None, NaN or blank for rows without an image).
        size: Side of the encoder's square image.
        ocr_max_side: When given, each OK result also carries ``ocr_pixels`` for OCR.
        max_pixels: Largest accepted width x height.
        stop: When it is set, links not yet started are skipped (status UNREACHABLE,
            "not fetched: stopped"); the caller is expected to discard the results.

    Returns:
        One :class:`PreparedImage` per link.
    """
    images: list[PreparedImage | None] = [None] * len(links)
    for positions, image in stream_images(fetcher, links, size=size, ocr_max_side=ocr_max_side,
                                          max_pixels=max_pixels, stop=stop):
        for position in positions:
            images[position] = image
    return images  # type: ignore[return-value]  # every position is filled


def stream_images(
    fetcher: ImageFetcher,
    links: Sequence[str | None],
    *,
    size: int = IMAGE_SIZE,
    ocr_max_side: int | None = None,
    max_pixels: int = MAX_IMAGE_PIXELS,
    stop: threading.Event | None = None,
) -> Iterator[tuple[list[int], PreparedImage]]:
    """:func:`load_images`, yielding each distinct link's image as soon as it is prepared.

    Yields:
        (the positions in ``links`` of that link, its :class:`PreparedImage`), in the order
        the downloads finish; every position once.
    """
    positions: dict[str | None, list[int]] = {}
    for position, link in enumerate(links):
        positions.setdefault(None if is_missing_link(link) else str(link).strip(), []).append(position)

    def load(link: str | None) -> PreparedImage:
        if stop is not None and stop.is_set():
            return PreparedImage(None, ImageStatus.UNREACHABLE, "not fetched: stopped")
        return prepare_fetched(
            fetcher.fetch(link), size=size, ocr_max_side=ocr_max_side, max_pixels=max_pixels
        )

    if not positions:
        return
    with ThreadPoolExecutor(max_workers=min(fetcher.max_workers, len(positions))) as pool:
        futures = {pool.submit(load, link): link for link in positions}
        for future in as_completed(futures):
            yield positions[futures[future]], future.result()


def summarise(statuses: Iterable[ImageStatus]) -> dict[str, int]:
    """Count statuses for a report: every status's value, in declaration order, zeros included."""
    counts = Counter(ImageStatus(status) for status in statuses)
    return {status.value: counts[status] for status in ImageStatus}
