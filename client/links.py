"""Which image links the client may follow: links in a CSV are untrusted input.

By default only ``http(s)`` links to public internet addresses are fetched. A CSV from outside
could otherwise make a client on a company network read local files (``file:///etc/...``, an
absolute path) or reach loopback and private-network services (server-side request forgery).
Local files need an explicit choice (``--images DIR``, which matches files by name only, or
``--allow-local-files``); loopback, private, link-local and other non-public addresses need
``--allow-private-addresses`` or an allowed network.

The address check happens where the socket is opened, on the addresses the name resolved to,
and the connection goes to the address that was checked: a redirect, or a name that resolves
differently a second time, cannot slip past it. Connections are pooled per host (urllib3): a
kept connection is reused only for the host it was opened, and checked, for.
"""

from __future__ import annotations

import functools
import ipaddress
import socket
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urljoin, urlsplit

import urllib3
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.exceptions import (
    ConnectTimeoutError,
    NameResolutionError,
    NewConnectionError,
    ProxyError,
    ProxySchemeUnknown,
)

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
EVERY_ADDRESS: tuple[IpNetwork, ...] = (ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0"))
MAX_REDIRECTS = 5
_SocketOptions = list[tuple[int, int, int | bytes]]


class RefusedLinkError(Exception):
    """A link, a redirect or a resolved address that the link policy does not allow."""


@dataclass(frozen=True)
class LinkPolicy:
    """What an :class:`~client.images.ImageFetcher` may read besides public http(s) addresses.

    Attributes:
        allow_local_files: follow ``file://`` links and local paths in the CSV.
        allowed_networks: non-public networks that may be reached (e.g. a company CDN on
            ``10.0.0.0/8``); :data:`EVERY_ADDRESS` allows every address.
    """

    allow_local_files: bool = False
    allowed_networks: tuple[IpNetwork, ...] = ()

    @classmethod
    def from_options(cls, allow_local_files: bool = False, allow_private_addresses: bool = False,
                     networks: Iterable[str] = ()) -> LinkPolicy:
        """The policy of the command-line options.

        Raises:
            ValueError: a network is not in CIDR form (``10.0.0.0/8``, ``fd00::/8``).
        """
        allowed = EVERY_ADDRESS if allow_private_addresses else tuple(
            ipaddress.ip_network(network, strict=False) for network in networks
        )
        return cls(allow_local_files, allowed)

    def address_allowed(self, address: str) -> bool:
        """Whether a resolved IP address may be connected to."""
        ip = ipaddress.ip_address(address.split("%", 1)[0])  # drop an IPv6 zone index
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if any(ip in network for network in self.allowed_networks):
            return True
        return ip.is_global and not ip.is_multicast

    def check_host(self, host: str) -> None:
        """Refuse a host given as an IP literal that is not allowed (names are checked on connect).

        Raises:
            RefusedLinkError: the host is a non-public address outside the allowed networks.
        """
        try:
            ipaddress.ip_address(host)
        except ValueError:
            return
        if not self.address_allowed(host):
            raise RefusedLinkError(f"{host} is not a public address ({_ALLOW_HINT})")


_ALLOW_HINT = "allow it with --allow-private-addresses or --allow-network CIDR"


def redirect_target(url: str, location: str) -> str:
    """Where a redirect from ``url`` leads; only http(s) links are followed.

    Args:
        url: The link that answered with a redirect.
        location: Its ``Location`` header, absolute or relative to ``url``.

    Returns:
        The absolute target (its address is checked when its connection opens).

    Raises:
        RefusedLinkError: the target is not an http(s) link.
        ValueError: the target is malformed.
    """
    target = urljoin(url, location)
    scheme = urlsplit(target).scheme.lower()
    if scheme not in ("http", "https"):
        raise RefusedLinkError(f"redirect to a {scheme} link refused: {target!r}")
    return target


class GuardedHttpClient:
    """Pooled http(s) connections, each of which obeys a :class:`LinkPolicy`.

    A urllib3 :class:`~urllib3.PoolManager` keeps up to ``connections_per_host`` connections per
    host open for the next request and makes a request wait while that many are busy. Proxies
    from the environment (``http_proxy``, ``https_proxy``, ``no_proxy``, as
    :func:`urllib.request.getproxies` reads them) are honoured, through a
    :class:`~urllib3.ProxyManager` per proxy, and trusted: the proxy resolves the target, so a
    connection to a proxy is not checked. Credentials in a proxy URL are sent as basic
    authentication. Thread-safe.

    Args:
        policy: Which addresses a connection may go to.
        connections_per_host: Connections kept, and in use at once, per host (and per proxy).
        timeout_s: Time limit of connecting, and of each wait for data.
        headers: Sent with every request.
    """

    def __init__(self, policy: LinkPolicy, *, connections_per_host: int, timeout_s: float,
                 headers: Mapping[str, str]) -> None:
        options: dict[str, Any] = {
            "maxsize": connections_per_host, "block": True, "timeout": timeout_s, "retries": False,
            "headers": dict(headers),
        }
        self._direct = _guarded(urllib3.PoolManager(**options), policy)
        proxy_urls = {scheme: url for scheme, url in urllib.request.getproxies().items() if scheme in ("http", "https")}
        managers = {url: _proxy_manager(url, policy, options) for url in set(proxy_urls.values())}
        self._proxies = {scheme: managers[url] for scheme, url in proxy_urls.items()}

    def get(self, url: str) -> urllib3.BaseHTTPResponse:
        """Send a GET request; the body is left unread and the connection held by the response.

        Redirects are not followed and nothing is retried. The caller hands the connection back
        with ``release_conn()`` once the body is read, after ``close()`` when it is not: with
        ``connections_per_host`` connections held, the next request to that host waits.

        Raises:
            RefusedLinkError: the host resolves to an address the policy does not allow.
            urllib3.exceptions.HTTPError: no answer (``NameResolutionError``,
                ``NewConnectionError``, timeouts, resets, TLS and proxy errors).
            ValueError: the URL is malformed.
        """
        parts = urlsplit(url)
        proxy = self._proxies.get(parts.scheme.lower())
        if proxy is None or urllib.request.proxy_bypass(parts.netloc.rpartition("@")[2]):
            manager = self._direct
        elif isinstance(proxy, ProxySchemeUnknown):
            raise ProxyError("the proxy from the environment is not an http(s) proxy", proxy)
        else:
            manager = proxy
        # the body as sent, not decompressed: max_bytes then bounds what arrives, as it bounds memory
        return manager.urlopen("GET", url, redirect=False, preload_content=False, decode_content=False)


def _proxy_manager(proxy_url: str, policy: LinkPolicy,
                   options: dict[str, Any]) -> urllib3.ProxyManager | ProxySchemeUnknown:
    if "://" not in proxy_url:  # "proxy:3128", as urllib takes it
        proxy_url = "http://" + proxy_url
    auth = urllib3.util.parse_url(proxy_url).auth
    proxy_headers = urllib3.make_headers(proxy_basic_auth=unquote(auth)) if auth else None
    try:
        manager = urllib3.ProxyManager(proxy_url, proxy_headers=proxy_headers, **options)
    except ProxySchemeUnknown as error:  # e.g. socks5://: every download through it fails
        return error
    return _guarded(manager, policy)


def _guarded(manager: urllib3.PoolManager, policy: LinkPolicy) -> urllib3.PoolManager:
    manager.pool_classes_by_scheme = {
        "http": functools.partial(_GuardedHTTPConnectionPool, link_policy=policy),
        "https": functools.partial(_GuardedHTTPSConnectionPool, link_policy=policy),
    }
    return manager


class _GuardedHTTPConnection(HTTPConnection):
    """A urllib3 connection whose socket goes only to an address ``link_policy`` allows; a
    connection to a proxy from the environment goes where the user configured it."""

    def __init__(self, *args: Any, link_policy: LinkPolicy, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._link_policy = link_policy

    def _new_conn(self) -> socket.socket:
        if self.proxy is not None:
            return super()._new_conn()
        try:
            return _guarded_socket(self._link_policy, (self._dns_host, self.port), self.timeout,
                                   self.source_address, self.socket_options)
        except socket.gaierror as error:
            raise NameResolutionError(self.host, self, error) from error
        except TimeoutError as error:
            raise ConnectTimeoutError(self, f"connecting to {self.host} timed out") from error
        except OSError as error:
            raise NewConnectionError(self, f"cannot connect to {self.host}: {error}") from error


class _GuardedHTTPSConnection(_GuardedHTTPConnection, HTTPSConnection):
    """The https counterpart: TLS, certificate and host name (SNI) checks are urllib3's own."""


class _GuardedHTTPConnectionPool(urllib3.HTTPConnectionPool):
    ConnectionCls = _GuardedHTTPConnection


class _GuardedHTTPSConnectionPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = _GuardedHTTPSConnection


def _guarded_socket(policy: LinkPolicy, address: tuple[str, int], timeout: float | None,
                    source_address: tuple[str, int] | None, socket_options: _SocketOptions | None) -> socket.socket:
    """A socket connected to ``address`` at an address the policy allows: the name is resolved
    once, and the socket connects to the checked address itself."""
    host, port = address
    candidates = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    refused = sorted({info[4][0] for info in candidates if not policy.address_allowed(info[4][0])})
    if refused:  # one non-public answer is enough: a resolver that gives it is not to be trusted
        raise RefusedLinkError(f"{host} resolves to {', '.join(refused)}, not a public address ({_ALLOW_HINT})")
    last_error: OSError = OSError(f"{host} resolves to no address")
    for family, kind, protocol, _, sockaddr in candidates:
        sock = socket.socket(family, kind, protocol)
        try:
            for option in socket_options or ():
                sock.setsockopt(*option)
            sock.settimeout(timeout)
            if source_address:
                sock.bind(source_address)
            sock.connect(sockaddr)  # the checked address itself: no second lookup
            return sock
        except OSError as error:
            sock.close()
            last_error = error
    raise last_error
