"""Loopback HTTP(S) servers for the download tests: they listen on loopback addresses only."""

from __future__ import annotations

import contextlib
import http.server
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from typing import TypeVar

T = TypeVar("T")


class CountingServer(http.server.ThreadingHTTPServer):
    """A threaded HTTP server that counts the TCP connections it accepts."""

    connections = 0

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        request = super().get_request()
        self.connections += 1  # only the serving thread accepts
        return request

    @property
    def netloc(self) -> str:
        """``host:port`` of the server."""
        host, port = self.server_address[:2]
        return f"{host}:{port}"


@contextlib.contextmanager
def serving(handler: type[http.server.BaseHTTPRequestHandler], host: str = "127.0.0.1",
            tls: ssl.SSLContext | None = None) -> Iterator[CountingServer]:
    """A :class:`CountingServer` on ``host`` (a free port), speaking TLS with ``tls`` when given."""
    server = CountingServer((host, 0), handler)
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def finishes_within(limit_s: float, call: Callable[[], T]) -> T:
    """``call()``, failing the test instead of hanging when it takes longer than ``limit_s``."""
    results: list[T] = []
    thread = threading.Thread(target=lambda: results.append(call()), daemon=True)
    thread.start()
    thread.join(limit_s)
    assert not thread.is_alive(), f"still running after {limit_s} s"
    return results[0]
