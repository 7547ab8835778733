"""Host arguments: an IP literal or a DNS name, checked before anything is resolved or sent.

The rules are those of `host:` in the configuration file (docs/configuration.md, "Hosts"): no
brackets, no zone id, no port, RFC 1123 names of at most 253 characters. A host is only ever
given to the resolver and to sockets, never to a shell or another program.
"""

from __future__ import annotations

import ipaddress
import re

__all__ = ["normalise_host"]

_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_NAME_MAX = 253


def normalise_host(text: str) -> str:
    """`text` as a canonical IP address or a lowercase DNS name; ValueError says what is wrong."""
    shown = repr(text[:60] + ("..." if len(text) > 60 else ""))
    if not text:
        raise ValueError("the host is empty; give an IP address or a DNS name such as localhost")
    if ":" in text or text.startswith("["):
        if "%" in text:
            raise ValueError(f"{shown} has a zone id; zone ids are not supported, remove it "
                             "(a zone id is not a valid IPv6 address here)")
        try:
            return str(ipaddress.IPv6Address(text))
        except ValueError:
            raise ValueError(f"{shown} is not a valid IPv6 address (write ::1, without brackets, "
                             "zone id or port; a TCP port goes in --tcp)") from None
    name = text.removesuffix(".")
    last = name.rpartition(".")[2]
    if last.isascii() and last.isdigit():
        try:
            return str(ipaddress.IPv4Address(text))
        except ValueError:
            raise ValueError(f"{shown} is not a valid IPv4 address (four numbers from 0 to 255 "
                             "without leading zeros, such as 127.0.0.1)") from None
    if len(name) > _NAME_MAX or not all(_LABEL.fullmatch(label) for label in name.split(".")):
        raise ValueError(f"{shown} is neither an IP address nor a valid DNS name (letters, "
                         "digits and '-' in labels of at most 63, separated by '.')")
    return text.lower()

