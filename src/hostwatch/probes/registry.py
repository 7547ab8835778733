"""Probe kind → prober, like blackbox_exporter's `Probers` map.

The probers here need nothing from the config to start and open no socket until a probe runs.
ICMP is not among them: it opens its shared sockets with the configured mode and payload size,
so the daemon opens it when a config first needs it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Final

from hostwatch.model import ProbeKind
from hostwatch.probes.base import Prober
from hostwatch.probes.dns import DnsProber
from hostwatch.probes.tcp import TcpProber
from hostwatch.probes.udp import UdpProber

__all__ = ["PROBERS", "new_probers"]

PROBERS: Final[Mapping[ProbeKind, Callable[[], Prober]]] = {
    ProbeKind.TCP: TcpProber,
    ProbeKind.UDP: UdpProber,
    ProbeKind.DNS: DnsProber,
}


def new_probers() -> dict[ProbeKind, Prober]:
    """A fresh prober for every kind of `PROBERS`."""
    return {kind: make() for kind, make in PROBERS.items()}
