"""Which image links the client may follow: links in a CSV are untrusted input.

By default only ``http(s)`` links to public internet addresses are fetched. A CSV from outside
could otherwise make a client on a company network read local files (``file:///etc/...``, an
absolute path) or reach loopback and private-network services (server-side request forgery).
Local files need an explicit choice (``--images DIR``, which matches files by name only, or
``--allow-local-files``); loopback, private, link-local and other non-public addresses need
``--allow-private-addresses`` or an allowed network.

The address check happens where the socket is opened, on the addresses the name resolved to,
and the connection goes to the address that was checked: a redirect, or a name that resolves
differently a second time, cannot slip past it.
"""

from __future__ import annotations

import functools
import http.client
import ipaddress
import socket
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
EVERY_ADDRESS: tuple[IpNetwork, ...] = (ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0"))
MAX_REDIRECTS = 5


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


def _guarded_connection(policy: LinkPolicy, trusted_hosts: frozenset[str], address, timeout, source_address=None):
    """socket.create_connection, to an address the policy allows; the proxies the user
    configured (``trusted_hosts``) are connected to as they are."""
    host, port = address
    if host in trusted_hosts:
        return socket.create_connection(address, timeout, source_address)
    candidates = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    refused = sorted({info[4][0] for info in candidates if not policy.address_allowed(info[4][0])})
    if refused:  # one non-public answer is enough: a resolver that gives it is not to be trusted
        raise RefusedLinkError(f"{host} resolves to {', '.join(refused)}, not a public address ({_ALLOW_HINT})")
    last_error: OSError = OSError(f"{host} resolves to no address")
    for family, kind, protocol, _, sockaddr in candidates:
        sock = socket.socket(family, kind, protocol)
        try:
            sock.settimeout(timeout)
            if source_address:
                sock.bind(source_address)
            sock.connect(sockaddr)  # the checked address itself: no second lookup
            return sock
        except OSError as error:
            sock.close()
            last_error = error
    raise last_error


class _GuardedHTTPConnection(http.client.HTTPConnection):
    def __init__(self, *args, policy: LinkPolicy, trusted_hosts: frozenset[str], **kwargs):
        super().__init__(*args, **kwargs)
        self._create_connection = functools.partial(_guarded_connection, policy, trusted_hosts)


class _GuardedHTTPSConnection(http.client.HTTPSConnection):
    def __init__(self, *args, policy: LinkPolicy, trusted_hosts: frozenset[str], **kwargs):
        super().__init__(*args, **kwargs)
        self._create_connection = functools.partial(_guarded_connection, policy, trusted_hosts)


class _GuardedHTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, connection):
        super().__init__()
        self._connection = connection

    def http_open(self, req):
        return self.do_open(self._connection, req)


class _GuardedHTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, connection):
        super().__init__()
        self._connection = connection

    def https_open(self, req):
        return self.do_open(self._connection, req, context=self._context)


class _HttpOnlyRedirectHandler(urllib.request.HTTPRedirectHandler):
    """Follows at most MAX_REDIRECTS redirects, to http(s) links only (each one checked again
    when its connection opens)."""

    max_redirections = MAX_REDIRECTS

    def http_error_302(self, req, fp, code, msg, headers):
        target = urljoin(req.full_url, headers.get("location") or headers.get("uri") or "")
        scheme = urlsplit(target).scheme.lower()
        if scheme not in ("http", "https"):
            raise RefusedLinkError(f"redirect to a {scheme} link refused: {target!r}")
        return super().http_error_302(req, fp, code, msg, headers)

    http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302


def build_opener(policy: LinkPolicy) -> urllib.request.OpenerDirector:
    """A urllib opener for http(s) alone, whose every connection obeys ``policy``.

    Proxies from the environment (``https_proxy`` ...) are honoured and trusted: through a
    proxy, the proxy resolves the target.
    """
    proxies = urllib.request.getproxies()
    trusted = frozenset(host for url in proxies.values() if (host := urlsplit(url).hostname))
    opener = urllib.request.OpenerDirector()
    for handler in (
        urllib.request.ProxyHandler(proxies),
        _GuardedHTTPHandler(functools.partial(_GuardedHTTPConnection, policy=policy, trusted_hosts=trusted)),
        _GuardedHTTPSHandler(functools.partial(_GuardedHTTPSConnection, policy=policy, trusted_hosts=trusted)),
        _HttpOnlyRedirectHandler(),
        urllib.request.HTTPDefaultErrorHandler(),
        urllib.request.HTTPErrorProcessor(),
        urllib.request.UnknownHandler(),
    ):
        opener.add_handler(handler)
    return opener

