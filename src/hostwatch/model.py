"""The validated configuration: frozen values, built only by `hostwatch.config`.

Every default lives in `Defaults`; the loader fills omitted keys from it, so the rest of the
program never guesses.
"""

from __future__ import annotations

import enum
import hashlib
import re
from dataclasses import dataclass, field
from typing import NamedTuple

__all__ = [
    "DEFAULTS",
    "Config",
    "Defaults",
    "DnsOptions",
    "IcmpMode",
    "IcmpSettings",
    "IpProtocol",
    "MaintenanceWindow",
    "ProbeKind",
    "ProbeSpec",
    "Shard",
    "SourceLocation",
    "Step",
    "TargetConfig",
    "TargetFiles",
    "TlsOptions",
    "UdpOptions",
]


class ProbeKind(enum.StrEnum):
    """The probe types a target can run; the value is the config key and the metric label."""

    ICMP = "icmp"
    TCP = "tcp"
    UDP = "udp"
    DNS = "dns"


class IpProtocol(enum.StrEnum):
    """Which address family a target name resolves to (blackbox_exporter's `ip_protocol`)."""

    AUTO = "auto"  # IPv6 if this host has a route to it, else IPv4 (docs/dns.md)
    IP4 = "ip4"
    IP6 = "ip6"
    DUAL = "dual"  # both families, each probed separately with its own state

    def families(self) -> tuple[IpProtocol, ...]:
        """The protocols of the watches this setting makes: DUAL is one per family."""
        return (IpProtocol.IP4, IpProtocol.IP6) if self is IpProtocol.DUAL else (self,)


class IcmpMode(enum.StrEnum):
    """How ICMP sockets are opened: `auto` tries raw (CAP_NET_RAW), then datagram."""

    AUTO = "auto"
    RAW = "raw"
    DGRAM = "dgram"


class SourceLocation(NamedTuple):
    """Where a value came from, for messages: `hostwatch.yml:12:5`. A NamedTuple, not a
    frozen dataclass: the parser makes one per YAML node (~100,000 for 10,000 targets), and
    a tuple is made in half the time."""

    file: str
    line: int  # 1-based
    column: int  # 1-based

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"


@dataclass(frozen=True, slots=True)
class TlsOptions:
    """TLS on a tcp probe (docs/probes.md). `server_name` is the SNI and the name verified;
    the loader sets it to the target's host when that is a DNS name. None: no SNI, and the
    address is verified against the certificate's IP addresses."""

    server_name: str | None = None
    verify: bool = True
    ca_file: str | None = None  # None: the system's CA store
    cert_file: str | None = None  # client certificate (PEM), with key_file or the key inside
    key_file: str | None = None


@dataclass(frozen=True, slots=True)
class Step:
    """One step of a tcp probe's dialogue: `send` bytes, or `expect` a match within `timeout`
    seconds (None: what remains of the probe's timeout)."""

    send: bytes | None = None
    expect: re.Pattern[bytes] | None = None
    timeout: float | None = None


@dataclass(frozen=True, slots=True)
class UdpOptions:
    """A udp probe: send `payload`; success on a reply (one matching `expect`, if set)."""

    payload: bytes
    expect: re.Pattern[bytes] | None = None


@dataclass(frozen=True, slots=True)
class DnsOptions:
    """A dns probe: ask the target for `name`/`rdtype`; the rcode must be one of `rcodes`, the
    answer section must hold `answer_contains` and a record matching `answer_matches` (if set)."""

    name: str
    rdtype: str = "A"
    recursion_desired: bool = True
    rcodes: tuple[str, ...] = ("NOERROR",)
    answer_contains: str | None = None
    answer_matches: re.Pattern[str] | None = None


@dataclass(frozen=True, slots=True)
class ProbeSpec:
    """One probe of a target: its kind and the options of that kind (None or empty: unused)."""

    kind: ProbeKind
    port: int | None = None  # tcp, udp and dns
    tls: TlsOptions | None = None  # tcp
    steps: tuple[Step, ...] = ()  # tcp
    udp: UdpOptions | None = None
    dns: DnsOptions | None = None


@dataclass(frozen=True, slots=True)
class Defaults:
    """Every default, in one place. Durations are seconds."""

    interval: float = 1.0
    timeout: float = 1.0
    failure_threshold: int = 12
    success_threshold: int = 3
    window: int = 100
    ip_protocol: IpProtocol = IpProtocol.AUTO
    degraded_loss_ratio: float = 0.1
    degraded_rtt: float | None = None
    flap_window: float = 600.0
    flap_start: int = 6
    flap_stop: int = 2
    dns_refresh: float = 300.0
    icmp_mode: IcmpMode = IcmpMode.AUTO
    icmp_payload_size: int = 56
    dns_probe_port: int = 53  # the port a dns probe asks when it sets none
    histogram_buckets: tuple[float, ...] = (
        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    )
    # Per-target RTT histogram: off by default, it is 16 of the ~33 series of a target and
    # half the /metrics text (docs/performance.md); the window statistics are always there.
    rtt_histogram: bool = False
    listen_address: str = ":10115"
    config_file: str = "/etc/hostwatch/hostwatch.yml"


DEFAULTS = Defaults()


@dataclass(frozen=True, slots=True)
class TargetConfig:
    """One watched host with the probes it runs; labels are sorted (name, value) pairs."""

    name: str
    host: str
    probes: tuple[ProbeSpec, ...]
    interval: float = DEFAULTS.interval
    timeout: float = DEFAULTS.timeout
    failure_threshold: int = DEFAULTS.failure_threshold
    success_threshold: int = DEFAULTS.success_threshold
    window: int = DEFAULTS.window
    ip_protocol: IpProtocol = DEFAULTS.ip_protocol
    labels: tuple[tuple[str, str], ...] = ()
    degraded_loss_ratio: float = DEFAULTS.degraded_loss_ratio
    degraded_rtt: float | None = DEFAULTS.degraded_rtt
    flap_window: float = DEFAULTS.flap_window
    flap_start: int = DEFAULTS.flap_start
    flap_stop: int = DEFAULTS.flap_stop
    rtt_histogram: bool = DEFAULTS.rtt_histogram
    # Where the target was defined; excluded from equality so that moving a target within the
    # file is not a change on reload.
    source: SourceLocation | None = field(default=None, compare=False)
    # A digest of the text the target was read from and of the defaults it inherits, so that
    # a reload can tell an entry unchanged without reading it again; empty where unknown.
    text_digest: bytes = field(default=b"", compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class MaintenanceWindow:
    """Planned maintenance: from `start` to `end` (Unix seconds) for the named targets and the
    targets whose labels include every pair of `match_labels`."""

    name: str
    start: float
    end: float
    targets: tuple[str, ...] = ()
    match_labels: tuple[tuple[str, str], ...] = ()

    def selects(self, target: TargetConfig) -> bool:
        if target.name in self.targets:
            return True
        labels = dict(target.labels)
        return bool(self.match_labels) and all(labels.get(k) == v for k, v in self.match_labels)

    def active(self, now: float) -> bool:
        return self.start <= now < self.end


@dataclass(frozen=True, slots=True)
class TargetFiles:
    """Targets discovered from files in Prometheus file_sd format (JSON or YAML lists of
    `{targets: [...], labels: {...}}`). Each discovered target is `template` with the entry's
    host as name and host and the entry's labels merged over the template's."""

    patterns: tuple[str, ...]
    template: TargetConfig
    refresh: float = 30.0


@dataclass(frozen=True, slots=True)
class Shard:
    """This instance probes the targets whose name hashes to `index` modulo `total`."""

    index: int = 0
    total: int = 1

    def owns(self, name: str) -> bool:
        """Prometheus' hashmod: the last 8 bytes of md5(name), big-endian, modulo total."""
        if self.total == 1:
            return True
        digest = hashlib.md5(name.encode(), usedforsecurity=False).digest()
        return int.from_bytes(digest[8:], "big") % self.total == self.index


@dataclass(frozen=True, slots=True)
class IcmpSettings:
    """Process-wide ICMP settings (one socket per address family serves every target)."""

    mode: IcmpMode = DEFAULTS.icmp_mode
    payload_size: int = DEFAULTS.icmp_payload_size


@dataclass(frozen=True, slots=True)
class Config:
    """A complete, validated configuration. `source` is the file path or `<embedded default>`."""

    targets: tuple[TargetConfig, ...]
    icmp: IcmpSettings = IcmpSettings()
    dns_refresh: float = DEFAULTS.dns_refresh
    # Name servers for resolving target names (IP literals); empty: /etc/resolv.conf's.
    dns_servers: tuple[str, ...] = ()
    maintenance: tuple[MaintenanceWindow, ...] = ()
    shard: Shard = Shard()
    target_files: tuple[TargetFiles, ...] = ()
    histogram_buckets: tuple[float, ...] = DEFAULTS.histogram_buckets
    source: str = "<embedded default>"
