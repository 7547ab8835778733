"""The one interface every probe type implements, and the value a probe produces.

A probe never raises for a network outcome: refused, timeout or unreachable are `ProbeResult`
values with a `Reason`. Only programming errors and fatal conditions (MemoryError) propagate.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from hostwatch.model import ProbeSpec

__all__ = ["DoneCallback", "ProbeResult", "Prober", "Reason", "TlsInfo"]


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
    # Deeper probes (docs/probes.md): the port answered, the service did not work.
    EXPECT_TIMEOUT = "expect-timeout"  # connected, but no match for an `expect` in time
    EXPECT_MISMATCH = "expect-mismatch"  # closed or reset first, read cap hit, reply not matching
    TLS_ERROR = "tls-error"  # handshake failed; verification failed (other than expiry)
    TLS_TIMEOUT = "tls-timeout"  # connected, but the handshake did not finish in time
    CERT_EXPIRED = "cert-expired"  # verification on, and a certificate has expired
    DNS_RCODE = "dns-rcode"  # a dns probe's server answered with another rcode than expected
    DNS_ANSWER_MISMATCH = "dns-answer-mismatch"  # ... the right rcode, not the right answer
    DNS_BAD_REPLY = "dns-bad-reply"  # ... something that is not a response to the query

    @property
    def unsent(self) -> bool:
        """True for reasons where no probe went on the wire (the name did not resolve)."""
        return self in _UNSENT


_UNSENT = frozenset({Reason.DNS, Reason.DNS_NXDOMAIN, Reason.DNS_SERVFAIL, Reason.DNS_TIMEOUT,
                     Reason.NO_ADDRESS})


@dataclass(frozen=True, slots=True)
class TlsInfo:
    """What a TLS handshake showed: protocol version (`TLS 1.3`), cipher, and the peer's leaf
    certificate: notAfter (Unix seconds; None if unreadable), subject and issuer (RFC 4514),
    serial number (hex) and SHA-256 fingerprint of the DER (hex)."""

    version: str
    cipher: str = ""
    not_after: float | None = None
    subject: str = ""
    issuer: str = ""
    serial: str = ""
    fingerprint_sha256: str = ""


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """The outcome of one probe. `rtt` is seconds and set only when `reason` is OK.

    `phases` are the durations (seconds) of the stages a probe went through, in order
    (`resolve`, `connect`, `tls`, `first_byte`), also when it failed later; `tls` is set when a
    TLS handshake completed."""

    reason: Reason
    ip: str
    rtt: float | None = None
    detail: str = ""
    phases: tuple[tuple[str, float], ...] = ()
    tls: TlsInfo | None = None

    @property
    def ok(self) -> bool:
        return self.reason is Reason.OK


DoneCallback = Callable[[ProbeResult], None]


class Prober(Protocol):
    """Starts probes without blocking; calls `done` exactly once per started probe.

    `start` returns at once. The call to `done` happens later on the event loop (or never, if
    the prober is closed first). `port` is the TCP or UDP port, ignored by ICMP. `spec` is the
    watch's probe with its options (steps, TLS, payload, query); None runs the plain probe.
    """

    name: str

    def start(self, ip: str, port: int | None, timeout: float, done: DoneCallback, *,
              spec: ProbeSpec | None = None) -> None: ...

    def in_flight(self) -> int: ...

    async def close(self) -> None: ...
