"""Tests of client.images on the real product photos (and a loopback HTTP server)."""

from __future__ import annotations

import base64
import email.utils
import hashlib
import http.server
import io
import shutil
import socket
import ssl
import struct
import subprocess
import threading
import time
import zlib
from collections import Counter, defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
from PIL import Image

from client import files as files_module
from client.images import (
    IMAGE_SIZE,
    FetchedImage,
    ImageFetcher,
    ImageStatus,
    decode_image,
    link_name,
    load_images,
    ocr_view,
    prepare_image,
    summarise,
)
from client.links import LinkPolicy
from tests.conftest import PHOTOS as IMAGES
from tests.loopback import CountingServer, finishes_within, serving

GOOD = "21CqJblUm8L.jpg"  # 200x200 product photo
WIDE = "21DflYyJ4PL.jpg"  # 275x183
PLUS = "21NcLqW5c+L.jpg"  # '+' in the name, as in many image_link values
# Truncated exactly as published (PIL: "image file is truncated").
TRUNCATED = ["81WWI5CNEJL.jpg", "91cbBI1-8tL.jpg"]
CDN = "https://m.media-amazon.com/images/I/"
# Local files and this test's loopback server are refused by default (see test_hostile_input.py).
TRUSTED = LinkPolicy.from_options(allow_local_files=True, allow_private_addresses=True)


def amazon_link(name: str) -> str:
    return CDN + name


# -- a loopback HTTP server ------------------------------------------------------------------------


class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves a real JPEG under several behaviours, counting requests per path and noting when
    they arrived."""

    image: ClassVar[bytes] = b""
    hits: ClassVar[Counter[str]] = Counter()
    arrivals: ClassVar[defaultdict[str, list[float]]] = defaultdict(list)
    lock: ClassVar[threading.Lock] = threading.Lock()

    def log_message(self, *args: object) -> None:  # keep test output quiet
        pass

    def do_GET(self) -> None:
        with self.lock:
            self.hits[self.path] += 1
            self.arrivals[self.path].append(time.monotonic())
            count = self.hits[self.path]
        if self.path == "/img.jpg":
            self._send(200, "image/jpeg", self.image)
        elif self.path == "/octet":
            self._send(200, "application/octet-stream", self.image)
        elif self.path == "/page.html":
            self._send(200, "text/html; charset=utf-8", b"<html>not an image</html>")
        elif self.path == "/flaky.jpg":
            self._send(500 if count == 1 else 200, "image/jpeg", self.image)
        elif self.path == "/busy.jpg":
            self._send(503, "text/plain", b"busy")
        elif self.path == "/busy-for-a-second.jpg" and count == 1:
            self._send(503, "text/plain", b"busy", {"Retry-After": "1"})
        elif self.path == "/too-many-until-a-date.jpg" and count == 1:
            in_two_seconds = email.utils.formatdate(time.time() + 2, usegmt=True)
            self._send(429, "text/plain", b"slow down", {"Retry-After": in_two_seconds})
        elif self.path in {"/busy-for-a-second.jpg", "/too-many-until-a-date.jpg"}:
            self._send(200, "image/jpeg", self.image)
        elif self.path == "/busy-for-an-hour.jpg":
            self._send(503, "text/plain", b"busy", {"Retry-After": "3600"})
        elif self.path == "/slow.jpg":
            time.sleep(0.1)
            self._send(200, "image/jpeg", self.image)
        elif self.path == "/moved.jpg":
            self._send(302, "text/html", b"<a href='/img.jpg'>moved</a>", {"Location": "/img.jpg"})
        elif self.path == "/big-declared.jpg":
            self._send(200, "image/jpeg", self.image)
        elif self.path == "/big-streamed.jpg":  # no Content-Length: only the read cap can stop it
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.end_headers()
            self.wfile.write(self.image * 4)
        else:
            self._send(404, "text/plain", b"not found")

    def _send(self, code: int, content_type: str, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)


class _KeepAliveHandler(_Handler):
    """The same, keeping each connection open for the next request (HTTP/1.1)."""

    protocol_version = "HTTP/1.1"


class _Proxy(_KeepAliveHandler):
    """An HTTP proxy that answers every request itself, noting the URL and the credentials."""

    requests: ClassVar[list[tuple[str, str | None]]] = []

    def do_GET(self) -> None:
        self.requests.append((self.path, self.headers.get("Proxy-Authorization")))
        self._send(200, "image/jpeg", self.image)


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    _Handler.image = (IMAGES / GOOD).read_bytes()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture()
def keep_alive() -> Iterator[CountingServer]:
    _Handler.image = (IMAGES / GOOD).read_bytes()
    with serving(_KeepAliveHandler) as server:
        yield server


@pytest.fixture()
def hits() -> Counter[str]:
    _Handler.hits.clear()
    _Handler.arrivals.clear()
    return _Handler.hits


def quick_fetcher(**options: object) -> ImageFetcher:
    defaults: dict[str, object] = {"timeout_s": 3.0, "retries": 2, "backoff_s": 0.01, "policy": TRUSTED}
    return ImageFetcher(**(defaults | options))  # type: ignore[arg-type]


# -- links and local files -------------------------------------------------------------------------


def test_link_name_decodes_and_strips_query() -> None:
    assert link_name(CDN + "21NcLqW5c%2BL.jpg?width=200#x") == PLUS
    assert link_name(CDN + PLUS) == PLUS
    assert link_name("https://host/dir/") == ""
    assert link_name("https://host/a%2F..%2F..%2Fetc%2Fpasswd") == ""  # cannot escape the folder


@pytest.mark.parametrize("link", [amazon_link(GOOD), amazon_link(GOOD) + "?q=1", GOOD])
def test_images_dir_resolves_by_last_url_segment(link: str) -> None:
    fetched = ImageFetcher(IMAGES).fetch(link)
    data = (IMAGES / GOOD).read_bytes()
    assert fetched.status is ImageStatus.OK, fetched.detail
    assert fetched.data == data
    assert fetched.sha256 == hashlib.sha256(data).hexdigest()


def test_images_dir_resolves_url_encoded_plus() -> None:
    fetched = ImageFetcher(IMAGES).fetch(CDN + "21NcLqW5c%2BL.jpg")
    assert fetched.status is ImageStatus.OK
    assert fetched.data == (IMAGES / PLUS).read_bytes()


def test_file_url_and_plain_path() -> None:
    fetcher = ImageFetcher(policy=TRUSTED)
    path = IMAGES / GOOD
    for link in (path.as_uri(), str(path)):
        fetched = fetcher.fetch(link)
        assert fetched.status is ImageStatus.OK, link
        assert fetched.data == path.read_bytes()


@pytest.mark.parametrize("link", [None, float("nan"), "", "   "])
def test_empty_link_is_no_link(link: str | None) -> None:
    assert ImageFetcher(IMAGES).fetch(link).status is ImageStatus.NO_LINK


@pytest.mark.parametrize(
    "link",
    [
        "ftp://example.com/a.jpg",
        "mailto:someone@example.com",
        "http://",
        "http://[::1/x.jpg",
        "http://127.0.0.1:9/a b.jpg",
    ],
)
def test_unsupported_or_malformed_link_is_bad_link(link: str) -> None:
    fetched = ImageFetcher(policy=TRUSTED).fetch(link)
    assert fetched.status is ImageStatus.BAD_LINK
    assert fetched.data is None and fetched.sha256 is None


def test_missing_local_file(tmp_path: Path) -> None:
    fetched = ImageFetcher(IMAGES, policy=TRUSTED).fetch(str(tmp_path / "absent.jpg"))
    assert fetched.status is ImageStatus.MISSING
    assert "absent.jpg" in fetched.detail


def test_local_file_over_byte_limit(tmp_path: Path) -> None:
    fetched = ImageFetcher(max_bytes=1000, policy=TRUSTED).fetch(str(IMAGES / GOOD))
    assert fetched.status is ImageStatus.TOO_LARGE


# -- decoding --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", TRUNCATED)
def test_real_truncated_jpeg_is_truncated(name: str) -> None:
    data = (IMAGES / name).read_bytes()
    with pytest.raises(OSError, match="truncated"):  # the file really is truncated
        Image.open(io.BytesIO(data)).load()
    image, status, detail = decode_image(data)
    assert image is None
    assert status is ImageStatus.TRUNCATED
    assert "truncated" in detail


def test_text_file_named_jpg_is_not_image(tmp_path: Path) -> None:
    fake = tmp_path / "fake.jpg"
    fake.write_text("this is not a picture\n")
    fetched = ImageFetcher(policy=TRUSTED).fetch(str(fake))
    assert fetched.status is ImageStatus.OK  # bytes were found...
    image, status, _ = decode_image(fetched.data or b"")
    assert image is None and status is ImageStatus.NOT_IMAGE  # ...but they are not an image
    assert load_images(ImageFetcher(policy=TRUSTED), [str(fake)])[0].status is ImageStatus.NOT_IMAGE


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height, with (almost) no pixel data."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0"))
        + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize("side", [8_000, 100_000])  # over our limit; over PIL's own bomb limit
def test_huge_header_is_refused_before_decoding(side: int) -> None:
    image, status, detail = decode_image(_png_header(side, side))
    assert image is None
    assert status is ImageStatus.TOO_MANY_PIXELS, detail


def test_pixel_limit_parameter_on_real_image() -> None:
    data = (IMAGES / GOOD).read_bytes()
    assert decode_image(data, max_pixels=200 * 200)[1] is ImageStatus.OK
    assert decode_image(data, max_pixels=200 * 200 - 1)[1] is ImageStatus.TOO_MANY_PIXELS


def test_decode_real_jpeg() -> None:
    image, status, detail = decode_image((IMAGES / WIDE).read_bytes())
    assert status is ImageStatus.OK
    assert image is not None and image.mode == "RGB" and image.size == (275, 183)
    assert "JPEG" in detail


def _encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def test_transparency_becomes_white() -> None:
    rgba = Image.new("RGBA", (10, 10), (255, 0, 0, 0))
    rgba.paste((0, 0, 255, 255), (0, 0, 5, 10))
    image, status, _ = decode_image(_encode(rgba, "PNG"))
    assert status is ImageStatus.OK and image is not None and image.mode == "RGB"
    assert image.getpixel((8, 5)) == (255, 255, 255)  # fully transparent -> white, not red
    assert image.getpixel((2, 5)) == (0, 0, 255)

    palette = rgba.convert("RGB").quantize(4)
    transparent_index = palette.getpixel((8, 5))
    image, status, _ = decode_image(_encode(palette, "PNG", transparency=transparent_index))
    assert status is ImageStatus.OK and image is not None
    assert image.getpixel((8, 5)) == (255, 255, 255)


def test_exif_orientation_is_applied() -> None:
    landscape = Image.new("RGB", (40, 20), (0, 128, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    image, status, _ = decode_image(_encode(landscape, "JPEG", exif=exif))
    assert status is ImageStatus.OK and image is not None
    assert image.size == (20, 40)


# -- preparation -----------------------------------------------------------------------------------


def test_prepare_image_shape_dtype_determinism() -> None:
    image, _, _ = decode_image((IMAGES / WIDE).read_bytes())
    assert image is not None
    first, second = prepare_image(image), prepare_image(image)
    assert first.shape == (IMAGE_SIZE, IMAGE_SIZE, 3)
    assert first.dtype == np.uint8 and first.flags.c_contiguous
    np.testing.assert_array_equal(first, second)
    assert prepare_image(image, size=64).shape == (64, 64, 3)


def test_prepare_image_pads_with_white_and_centres() -> None:
    red = Image.new("RGB", (100, 50), (255, 0, 0))
    pixels = prepare_image(red, size=64)
    assert (pixels[:14] == 255).all() and (pixels[-14:] == 255).all()  # white bands above and below
    assert tuple(pixels[32, 32]) == (255, 0, 0)
    assert tuple(pixels[32, 0]) == (255, 0, 0)  # the long side fills the width


def test_ocr_view_bounds_the_long_side() -> None:
    big = Image.new("RGB", (2000, 1000), (10, 20, 30))
    view = ocr_view(big, max_side=1024)
    assert view.shape == (512, 1024, 3) and view.dtype == np.uint8
    small = Image.new("RGB", (120, 80))
    assert ocr_view(small).shape == (80, 120, 3)  # never enlarged


def test_load_images_on_real_rows(tmp_path: Path) -> None:
    missing = str(tmp_path / "absent.jpg")
    links = [amazon_link(GOOD), None, amazon_link(TRUNCATED[0]), missing, amazon_link(GOOD), "ftp://x/y.jpg"]
    results = load_images(ImageFetcher(IMAGES, policy=TRUSTED), links, ocr_max_side=128)
    assert [r.status for r in results] == [
        ImageStatus.OK,
        ImageStatus.NO_LINK,
        ImageStatus.TRUNCATED,
        ImageStatus.MISSING,
        ImageStatus.OK,
        ImageStatus.BAD_LINK,
    ]
    assert [r.has_image for r in results] == [True, False, False, False, True, False]
    assert results[0] is results[4]  # one photo shared by two rows is loaded once
    ok = results[0]
    assert ok.pixels is not None and ok.pixels.shape == (IMAGE_SIZE, IMAGE_SIZE, 3)
    assert ok.ocr_pixels is not None and max(ok.ocr_pixels.shape[:2]) <= 128
    assert ok.sha256 == hashlib.sha256((IMAGES / GOOD).read_bytes()).hexdigest()
    assert TRUNCATED[0] in results[2].detail
    assert load_images(ImageFetcher(IMAGES), [amazon_link(GOOD)])[0].ocr_pixels is None

    counts = summarise(r.status for r in results)
    assert counts["ok"] == 2 and counts["truncated"] == 1 and counts["bad_link"] == 1
    assert list(counts) == [s.value for s in ImageStatus] and sum(counts.values()) == len(links)


def test_load_images_matches_single_image_path() -> None:
    """The batch path and the one-image functions give the same pixels (one implementation)."""
    result = load_images(ImageFetcher(IMAGES, max_workers=2), [amazon_link(WIDE)])[0]
    image, _, _ = decode_image((IMAGES / WIDE).read_bytes())
    assert image is not None and result.pixels is not None
    np.testing.assert_array_equal(result.pixels, prepare_image(image))


# -- downloads -------------------------------------------------------------------------------------


def test_download_is_cached_and_not_refetched(server: str, hits: Counter[str], tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    fetcher = quick_fetcher(images_dir=IMAGES, cache_dir=cache)  # img.jpg is not in IMAGES
    url = f"{server}/img.jpg"
    first = fetcher.fetch(url)
    assert first.status is ImageStatus.OK, first.detail
    assert first.data == (IMAGES / GOOD).read_bytes()
    assert hits["/img.jpg"] == 1
    cached = fetcher.cache_path(url)
    assert cached is not None and cached.read_bytes() == first.data
    assert [p.name for p in cache.iterdir()] == [cached.name]  # no temporary file left behind

    second = quick_fetcher(cache_dir=cache).fetch(url)  # a new fetcher: the cache is on disk
    assert second.status is ImageStatus.OK and second.sha256 == first.sha256
    assert hits["/img.jpg"] == 1


def test_failed_cache_write_leaves_no_partial_file(
    server: str, hits: Counter[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def crash(*args: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(files_module.os, "replace", crash)
    fetcher = quick_fetcher(cache_dir=tmp_path)
    fetched = fetcher.fetch(f"{server}/img.jpg")
    assert fetched.status is ImageStatus.OK  # the image itself is not lost
    assert list(tmp_path.iterdir()) == []


def test_octet_stream_is_accepted_and_decoded(server: str, hits: Counter[str]) -> None:
    fetched = quick_fetcher().fetch(f"{server}/octet")
    assert fetched.status is ImageStatus.OK
    assert decode_image(fetched.data or b"")[1] is ImageStatus.OK


def test_html_content_type_is_not_image(server: str, hits: Counter[str]) -> None:
    fetched = quick_fetcher().fetch(f"{server}/page.html")
    assert fetched.status is ImageStatus.NOT_IMAGE
    assert "text/html" in fetched.detail
    assert hits["/page.html"] == 1  # not retried


@pytest.mark.parametrize("path", ["/big-declared.jpg", "/big-streamed.jpg"])
def test_oversized_download_is_too_large(server: str, hits: Counter[str], path: str) -> None:
    size = len((IMAGES / GOOD).read_bytes())
    fetched = quick_fetcher(max_bytes=size - 1).fetch(server + path)
    assert fetched.status is ImageStatus.TOO_LARGE, fetched.detail
    assert hits[path] == 1


def test_server_error_is_retried_then_succeeds(server: str, hits: Counter[str]) -> None:
    fetched = quick_fetcher(retries=2).fetch(f"{server}/flaky.jpg")
    assert fetched.status is ImageStatus.OK
    assert hits["/flaky.jpg"] == 2


def test_persistent_5xx_gives_up_after_retries(server: str, hits: Counter[str]) -> None:
    fetched = quick_fetcher(retries=2).fetch(f"{server}/busy.jpg")
    assert fetched.status is ImageStatus.UNREACHABLE
    assert "503" in fetched.detail
    assert hits["/busy.jpg"] == 3


def test_404_is_not_retried(server: str, hits: Counter[str]) -> None:
    fetched = quick_fetcher(retries=2).fetch(f"{server}/nothing.jpg")
    assert fetched.status is ImageStatus.UNREACHABLE and "404" in fetched.detail
    assert hits["/nothing.jpg"] == 1


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_unreachable_port_fails_quickly() -> None:
    url = f"http://127.0.0.1:{_closed_port()}/img.jpg"
    start = time.monotonic()
    fetched = quick_fetcher(timeout_s=1.0, retries=1).fetch(url)
    assert fetched.status is ImageStatus.UNREACHABLE
    assert "2 attempt" in fetched.detail
    assert time.monotonic() - start < 3


def test_dead_host_is_skipped_after_repeated_failures() -> None:
    port = _closed_port()
    fetcher = quick_fetcher(timeout_s=1.0, retries=1, max_host_failures=2)
    details = [fetcher.fetch(f"http://127.0.0.1:{port}/{i}.jpg").detail for i in range(3)]
    assert "not tried" not in details[1]
    assert "not tried" in details[2]


def test_unresolvable_host_is_not_retried_and_its_other_links_fail_at_once(monkeypatch) -> None:
    """Name resolution is replaced here: a real lookup would leave this machine."""
    lookups = Counter()

    def no_such_host(host, *args, **kwargs):
        lookups[host] += 1
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_such_host)
    fetcher = quick_fetcher(retries=3)
    first, second = (fetcher.fetch(f"http://images.example.invalid/{i}.jpg") for i in range(2))
    assert first.status is second.status is ImageStatus.UNREACHABLE
    assert "cannot resolve the host" in first.detail and "not tried" in second.detail
    assert lookups["images.example.invalid"] == 1


def test_fetch_many_preserves_order(server: str, hits: Counter[str]) -> None:
    links = [f"{server}/img.jpg", None, f"{server}/page.html", str(IMAGES / GOOD)] * 3
    results = quick_fetcher(max_workers=4).fetch_many(links)
    expected = [ImageStatus.OK, ImageStatus.NO_LINK, ImageStatus.NOT_IMAGE, ImageStatus.OK] * 3
    assert [r.status for r in results] == expected
    assert all(isinstance(r, FetchedImage) for r in results)


# -- connection reuse, Retry-After, TLS ----------------------------------------------------------


def test_downloads_from_one_host_reuse_connections(keep_alive: CountingServer, hits: Counter[str]) -> None:
    fetcher = quick_fetcher(max_workers=4)
    url = f"http://{keep_alive.netloc}/img.jpg"
    assert all(fetcher.fetch(url).status is ImageStatus.OK for _ in range(20))
    assert hits["/img.jpg"] == 20 and keep_alive.connections == 1
    assert all(result.status is ImageStatus.OK for result in fetcher.fetch_many([url] * 40))
    assert hits["/img.jpg"] == 60 and keep_alive.connections <= 4


def test_connections_per_host_are_at_most_max_workers(keep_alive: CountingServer, hits: Counter[str]) -> None:
    """More threads than max_workers: the others wait for a free connection instead of opening one."""
    fetcher = quick_fetcher(max_workers=2)
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(fetcher.fetch, [f"http://{keep_alive.netloc}/slow.jpg"] * 16))
    assert all(result.status is ImageStatus.OK for result in results)
    assert hits["/slow.jpg"] == 16 and keep_alive.connections <= 2


def test_every_outcome_gives_its_connection_back(keep_alive: CountingServer, hits: Counter[str]) -> None:
    """One connection per host: an outcome that kept it would leave the next download waiting
    forever. Short unread bodies are read to the end so that the connection stays open; an
    oversized body closes it."""
    fetcher = quick_fetcher(max_workers=1, retries=0, max_bytes=2 * len(_Handler.image))
    expected = [
        ("/img.jpg", ImageStatus.OK),
        ("/page.html", ImageStatus.NOT_IMAGE),
        ("/nothing.jpg", ImageStatus.UNREACHABLE),
        ("/moved.jpg", ImageStatus.OK),
        ("/busy.jpg", ImageStatus.UNREACHABLE),
        ("/big-streamed.jpg", ImageStatus.TOO_LARGE),
        ("/img.jpg", ImageStatus.OK),
    ]
    statuses = finishes_within(
        20, lambda: [(path, fetcher.fetch(f"http://{keep_alive.netloc}{path}").status) for path, _ in expected]
    )
    assert statuses == expected
    assert keep_alive.connections == 2  # a second one only after the oversized body


@pytest.mark.parametrize("path", ["/busy-for-a-second.jpg", "/too-many-until-a-date.jpg"])
def test_retry_after_is_waited_for(server: str, hits: Counter[str], path: str) -> None:
    """Retry-After: 1 (503), or an HTTP date 1 to 2 s ahead (429); the backoff alone is 10 ms."""
    fetched = quick_fetcher(retries=1).fetch(server + path)
    assert fetched.status is ImageStatus.OK, fetched.detail
    first, second = _Handler.arrivals[path]
    assert second - first >= 0.9


def test_retry_after_is_capped_at_the_timeout(server: str, hits: Counter[str]) -> None:
    """Retry-After: 3600 waits timeout_s (1 s), not an hour."""
    fetcher = quick_fetcher(timeout_s=1.0, retries=1)
    start = time.monotonic()
    fetched = finishes_within(10, lambda: fetcher.fetch(f"{server}/busy-for-an-hour.jpg"))
    assert time.monotonic() - start < 3
    assert fetched.status is ImageStatus.UNREACHABLE and "503" in fetched.detail
    first, second = _Handler.arrivals["/busy-for-an-hour.jpg"]
    assert 0.9 <= second - first < 2


@pytest.fixture(scope="module")
def localhost_certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for the name localhost, and its key."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command")
    folder = tmp_path_factory.mktemp("tls")
    certificate, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost", "-keyout", str(key), "-out", str(certificate)],
        check=True, capture_output=True,
    )
    return certificate, key


def test_https_checks_the_certificate_and_the_host_name(
    localhost_certificate: tuple[Path, Path], hits: Counter[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    certificate, key = localhost_certificate
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(certificate, key)
    server_names: list[str] = []
    tls.sni_callback = lambda _socket, name, _context: server_names.append(name)
    _Handler.image = (IMAGES / GOOD).read_bytes()
    with serving(_KeepAliveHandler, tls=tls) as server:
        port = server.server_address[1]
        untrusted = quick_fetcher(retries=0).fetch(f"https://localhost:{port}/img.jpg")
        assert untrusted.status is ImageStatus.UNREACHABLE and "CERTIFICATE_VERIFY_FAILED" in untrusted.detail

        monkeypatch.setenv("SSL_CERT_FILE", str(certificate))  # read by the default TLS context
        fetcher = quick_fetcher(retries=0)
        trusted = fetcher.fetch(f"https://localhost:{port}/img.jpg")
        assert trusted.status is ImageStatus.OK, trusted.detail
        assert "localhost" in server_names
        other_name = fetcher.fetch(f"https://127.0.0.1:{port}/img.jpg")
        assert other_name.status is ImageStatus.UNREACHABLE and "mismatch" in other_name.detail


def test_proxies_from_the_environment_are_used_and_trusted(monkeypatch: pytest.MonkeyPatch) -> None:
    """Through the proxy (on loopback, not an allowed address) the target is never resolved
    here; a host in no_proxy is connected to directly, and checked."""
    _Handler.image = (IMAGES / GOOD).read_bytes()
    _Proxy.requests.clear()
    with serving(_Proxy) as proxy:
        monkeypatch.setenv("http_proxy", f"http://user:p%40ss@{proxy.netloc}")
        monkeypatch.setenv("no_proxy", "localhost")
        fetcher = ImageFetcher(retries=0)
        fetched = fetcher.fetch("http://images.example/a.jpg")
        assert fetched.status is ImageStatus.OK, fetched.detail
        bypassed = fetcher.fetch(f"http://localhost:{proxy.server_address[1]}/b.jpg")
        assert bypassed.status is ImageStatus.REFUSED
    credentials = "Basic " + base64.b64encode(b"user:p@ss").decode()
    assert _Proxy.requests == [("http://images.example/a.jpg", credentials)]


def test_a_proxy_that_is_not_http_fails_its_downloads(monkeypatch: pytest.MonkeyPatch) -> None:
    """urllib3 speaks no SOCKS: the download fails rather than going around the user's proxy."""
    monkeypatch.setenv("http_proxy", "socks5://127.0.0.1:1080")
    fetched = ImageFetcher(retries=0).fetch("http://images.example/a.jpg")
    assert fetched.status is ImageStatus.UNREACHABLE and "socks5" in fetched.detail
