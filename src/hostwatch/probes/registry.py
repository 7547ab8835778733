"""Probe kind → prober, like blackbox_exporter's `Probers` map.

The probers here need nothing from the config to start and open no socket until a probe runs.
ICMP is not among them: it opens its shared sockets with the configured mode and payload size,
so the daemon opens it when a config first needs it. The DNS prober is made at its first probe:
it needs dnspython, ~2 MB of a daemon that may never send a DNS query.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Final

from hostwatch.model import ProbeKind, ProbeSpec
from hostwatch.probes.base import DoneCallback, Prober
from hostwatch.probes.tcp import TcpProber
from hostwatch.probes.udp import UdpProber

__all__ = ["PROBERS", "new_probers"]


class _OnFirstProbe:
    """A prober made by `make` when the first probe starts."""

    def __init__(self, name: str, make: Callable[[], Prober]) -> None:
        self.name = name
        self._make = make
        self._prober: Prober | None = None

    def start(self, ip: str, port: int | None, timeout: float, done: DoneCallback, *,
              spec: ProbeSpec | None = None) -> None:
        if self._prober is None:
            self._prober = self._make()
        self._prober.start(ip, port, timeout, done, spec=spec)

    def in_flight(self) -> int:
        return 0 if self._prober is None else self._prober.in_flight()

    async def close(self) -> None:
        if self._prober is not None:
            await self._prober.close()


def _dns_prober() -> Prober:
    from hostwatch.probes.dns import DnsProber  # noqa: PLC0415  # dnspython, when first needed

    return DnsProber()


PROBERS: Final[Mapping[ProbeKind, Callable[[], Prober]]] = {
    ProbeKind.TCP: TcpProber,
    ProbeKind.UDP: UdpProber,
    ProbeKind.DNS: lambda: _OnFirstProbe(ProbeKind.DNS.value, _dns_prober),
}


def new_probers() -> dict[ProbeKind, Prober]:
    """A fresh prober for every kind of `PROBERS`."""
    return {kind: make() for kind, make in PROBERS.items()}
