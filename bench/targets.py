"""Loopback targets and the config files each tool reads for them.

Every address is in 127.0.0.0/8 (each answers on `lo`), and the bench runs in a network
namespace of its own, so nothing it sends can leave the machine.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

__all__ = ["addresses", "hostwatch_config", "smokeping_config", "write_lines"]

PER_OCTET = 250


def addresses(count: int, block: int = 1) -> list[str]:
    """`count` distinct addresses 127.<block+i/62500>.<i/250%250>.<1+i%250>."""
    if not 1 <= block <= 254 or block + count // (PER_OCTET * PER_OCTET) > 254:
        raise ValueError(f"{count} addresses do not fit in 127.{block}.0.0 and up")
    out = []
    for i in range(count):
        high, rest = divmod(i, PER_OCTET * PER_OCTET)
        out.append(f"127.{block + high}.{rest // PER_OCTET}.{1 + rest % PER_OCTET}")
    return out


def _tcp(port: int | None) -> str:
    return "{icmp: {}}" if port is None else f"{{tcp: {{port: {port}}}}}"


def hostwatch_config(targets: Sequence[tuple[str, str]], interval: float, timeout: float,
                     tcp_port: int | None = None, extra: str = "") -> str:
    """A hostwatch.yml probing each (name, address): ICMP, or TCP connects to `tcp_port`."""
    lines = [f"defaults: {{interval: {interval * 1000:g}ms, timeout: {timeout * 1000:g}ms}}"]
    if extra:
        lines.append(extra)
    lines.append("targets:")
    probes = _tcp(tcp_port)
    lines.extend(f"  - {{name: {name}, host: '{ip}', probes: {probes}}}" for name, ip in targets)
    return "\n".join(lines) + "\n"


def smokeping_config(hosts: Sequence[str], interval: float) -> str:
    """smokeping_prober's YAML: one target group with every host, IPv4, ICMP."""
    lines = ["targets:", "- hosts:"]
    lines.extend(f"  - {host}" for host in hosts)
    lines += [f"  interval: {interval * 1000:g}ms", "  network: ip4", "  protocol: icmp",
              "  size: 56"]
    return "\n".join(lines) + "\n"


def write_lines(path: Path, lines: Sequence[str]) -> Path:
    path.write_text("".join(f"{line}\n" for line in lines))
    return path
