"""Command-line options shared by `client predict` and `train`: the argparse types that refuse
out-of-range values, the CSV encoding, and which image links may be followed."""

from __future__ import annotations

import argparse
import ipaddress
from collections.abc import Callable

from client.links import LinkPolicy


def int_at_least(minimum: int) -> Callable[[str], int]:
    """argparse type: an integer of at least `minimum`."""
    def parse(text: str) -> int:
        value = int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, not {value}")
        return value

    parse.__name__ = f"integer >= {minimum}"  # argparse names the type in its "invalid ... value" errors
    return parse


positive_int = int_at_least(1)
non_negative_int = int_at_least(0)


def fraction(text: str) -> float:
    """argparse type: a number in [0, 1)."""
    value = float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 0 and below 1, not {value}")
    return value


def network(text: str) -> str:
    """argparse type: an IP network in CIDR form."""
    try:
        ipaddress.ip_network(text, strict=False)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


def add_link_options(parser: argparse.ArgumentParser) -> None:
    """The options that widen which image links may be followed (see client.links)."""
    group = parser.add_argument_group("image links (untrusted input: by default only http(s) to public addresses)")
    group.add_argument("--allow-local-files", action="store_true",
                       help="follow file:// links and local paths in the CSV (--images needs no such permission)")
    group.add_argument("--allow-private-addresses", action="store_true",
                       help="fetch from loopback, private and link-local addresses too")
    group.add_argument("--allow-network", action="append", default=[], metavar="CIDR", type=network,
                       help="fetch from this non-public network too (repeatable), e.g. 10.20.0.0/16")


def link_policy(args: argparse.Namespace) -> LinkPolicy:
    """The LinkPolicy of the options that add_link_options added."""
    return LinkPolicy.from_options(args.allow_local_files, args.allow_private_addresses, args.allow_network)


def add_encoding_option(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """--encoding: the CSV's text encoding when it is not UTF-8."""
    parser.add_argument("--encoding", help="the CSV's text encoding, e.g. cp1252 or utf-16 (default: UTF-8, "
                        "or UTF-16/32 when the file starts with their byte-order mark)")
