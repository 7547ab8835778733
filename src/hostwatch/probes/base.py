"""The one interface every probe type implements, and the value a probe produces.

A probe never raises for a network outcome: refused, timeout or unreachable are `ProbeResult`
values with a `Reason`. Only programming errors and fatal conditions (MemoryError) propagate.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

__all__ = ["DoneCallback", "ProbeResult", "Prober", "Reason"]


class Reason(enum.StrEnum):
    """Why a probe ended the way it did; the value is the metric label and journal REASON."""

    OK = "ok"
    TIMEOUT = "timeout"
    REFUSED = "refused"
    UNREACHABLE = "unreachable"
    DNS = "dns"  # a resolver failure not told apart below (e.g. a malformed answer)
    DNS_NXDOMAIN = "dns-nxdomain"
    DNS_SERVFAIL = "dns-servfail"
    DNS_TIMEOUT = "dns-timeout"
    NO_ADDRESS = "no-address-for-family"
    SEND_ERROR = "send-error"

    @property
    def unsent(self) -> bool:
        """True for reasons where no probe went on the wire (the name did not resolve)."""
        return self in _UNSENT


_UNSENT = frozenset({Reason.DNS, Reason.DNS_NXDOMAIN, Reason.DNS_SERVFAIL, Reason.DNS_TIMEOUT,
                     Reason.NO_ADDRESS})


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """The outcome of one probe. `rtt` is seconds and set only when `reason` is OK."""

    reason: Reason
    ip: str
    rtt: float | None = None
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.reason is Reason.OK


DoneCallback = Callable[[ProbeResult], None]


class Prober(Protocol):
    """Starts probes without blocking; calls `done` exactly once per started probe.

    `start` returns at once. The call to `done` happens later on the event loop (or never, if
    the prober is closed first). `port` is the TCP port, ignored by ICMP.
    """

    name: str

    def start(self, ip: str, port: int | None, timeout: float, done: DoneCallback) -> None: ...

    def in_flight(self) -> int: ...

    async def close(self) -> None: ...
