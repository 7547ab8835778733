"""Probing for `hostwatch check`: the daemon's engines, run once (or N times) per host.

Every host is resolved once with `hostwatch.resolve.lookup`; then each (host, probe) sends its
probes `interval` apart, all hosts at the same time. ICMP goes through one `IcmpProber` (one
socket per address family, as in the daemon), opened only when an ICMP probe is asked for;
TCP connects use `connect_once`, at most `TCP_CONCURRENCY` at a time.
"""

from __future__ import annotations

import asyncio
import collections
import statistics
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from hostwatch.commands.output import reason_text
from hostwatch.model import IcmpMode, IpProtocol, ProbeKind
from hostwatch.probes.base import ProbeResult, Reason
from hostwatch.probes.icmp import IcmpProber
from hostwatch.probes.tcp import connect_once
from hostwatch.resolve import Resolution, literal, lookup

__all__ = ["Outcome", "Plan", "Settings", "run_plans"]

TCP_CONCURRENCY = 256
DNS_TIMEOUT = 10.0


@dataclass(frozen=True, slots=True)
class Plan:
    """One (host, probe) to check."""

    host: str
    kind: ProbeKind
    port: int | None = None

    @property
    def probe(self) -> str:
        """`icmp` or `tcp/PORT`."""
        return self.kind.value if self.port is None else f"{self.kind.value}/{self.port}"


@dataclass(frozen=True, slots=True)
class Settings:
    """How to probe: count, spacing, timeout, address family and ICMP socket mode."""

    count: int = 1
    interval: float = 0.2
    timeout: float = 1.0
    protocol: IpProtocol = IpProtocol.AUTO
    icmp_mode: IcmpMode = IcmpMode.AUTO
    payload_size: int = 56


@dataclass(frozen=True, slots=True)
class Outcome:
    """The results of one plan; `results` is empty when the host did not resolve."""

    plan: Plan
    resolution: Resolution
    results: tuple[ProbeResult, ...]

    @property
    def sent(self) -> int:
        return len(self.results)

    @property
    def received(self) -> int:
        return sum(1 for r in self.results if r.ok)

    @property
    def loss_ratio(self) -> float:
        """Share of probes without an answer; 1 when nothing could be sent."""
        return 1.0 if not self.results else 1 - self.received / self.sent

    @property
    def rtts(self) -> list[float]:
        return [r.rtt for r in self.results if r.ok and r.rtt is not None]

    @property
    def rtt_avg(self) -> float | None:
        return statistics.fmean(self.rtts) if self.rtts else None

    @property
    def rtt_min(self) -> float | None:
        return min(self.rtts, default=None)

    @property
    def rtt_max(self) -> float | None:
        return max(self.rtts, default=None)

    @property
    def reasons(self) -> list[tuple[Reason, str]]:
        """The failure reasons, most frequent first, each with the detail of its first case."""
        if self.resolution.ip is None:
            reason = self.resolution.reason or Reason.DNS
            return [(reason, self.resolution.detail)]
        counts = collections.Counter(r.reason for r in self.results if not r.ok)
        first: dict[Reason, str] = {}
        for result in self.results:
            first.setdefault(result.reason, result.detail)
        return [(reason, first[reason]) for reason, _ in counts.most_common()]

    @property
    def reason_text(self) -> str:
        """`ok`, or the failure reasons with their details: `timeout, unreachable (...)`."""
        reasons = self.reasons
        if not reasons:
            return "ok"
        return ", ".join(reason_text(r.value, d) for r, d in reasons)


ProbeOnce = Callable[[str], Awaitable[ProbeResult]]


def _icmp_once(prober: IcmpProber, timeout: float) -> ProbeOnce:
    def once(ip: str) -> Awaitable[ProbeResult]:
        future: asyncio.Future[ProbeResult] = asyncio.get_running_loop().create_future()

        def done(result: ProbeResult) -> None:
            if not future.done():
                future.set_result(result)

        prober.start(ip, None, timeout, done)
        return future

    return once


def _tcp_once(port: int, timeout: float, limit: asyncio.Semaphore) -> ProbeOnce:
    async def once(ip: str) -> ProbeResult:
        async with limit:
            return await connect_once(ip, port, timeout)

    return once


async def _resolve(host: str, protocol: IpProtocol) -> Resolution:
    fixed = literal(host, protocol)
    if fixed is not None:
        return fixed
    try:
        async with asyncio.timeout(DNS_TIMEOUT):
            return await lookup(host, protocol)
    except TimeoutError:
        return Resolution(None, Reason.DNS, f"{host}: no answer within {DNS_TIMEOUT:g}s")


async def _probe_series(once: ProbeOnce, ip: str, settings: Settings,
                        advance: Callable[[], None]) -> tuple[ProbeResult, ...]:
    loop = asyncio.get_running_loop()
    start = loop.time()
    tasks: list[asyncio.Task[ProbeResult]] = []
    for k in range(settings.count):
        delay = start + k * settings.interval - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.ensure_future(once(ip))
        task.add_done_callback(lambda _t: advance())
        tasks.append(task)
    return tuple(await asyncio.gather(*tasks))


async def _nothing() -> tuple[ProbeResult, ...]:
    return ()


async def run_plans(plans: Sequence[Plan], settings: Settings, advance: Callable[[int], None]
                    ) -> list[Outcome]:
    """Resolve and probe every plan; `advance(n)` is called as probes finish (for progress).

    Raises IcmpPermissionError when ICMP is asked for and no ICMP socket may be opened.
    """
    hosts = sorted({p.host for p in plans})
    resolved = dict(zip(hosts, await asyncio.gather(
        *(_resolve(h, settings.protocol) for h in hosts)), strict=True))
    prober = None
    if any(p.kind is ProbeKind.ICMP and resolved[p.host].ip for p in plans):
        prober = IcmpProber.open(settings.icmp_mode, settings.payload_size)
    limit = asyncio.Semaphore(TCP_CONCURRENCY)
    try:
        series = []
        for plan in plans:
            ip = resolved[plan.host].ip
            if ip is None:
                advance(settings.count)
                series.append(_nothing())
                continue
            if plan.kind is ProbeKind.ICMP and prober is not None:
                once = _icmp_once(prober, settings.timeout)
            elif plan.kind is ProbeKind.TCP and plan.port is not None:
                once = _tcp_once(plan.port, settings.timeout, limit)
            else:
                raise ValueError(f"{plan}: check runs icmp, and tcp with a port")
            series.append(_probe_series(once, ip, settings, lambda: advance(1)))
        results: list[tuple[ProbeResult, ...]] = await asyncio.gather(*series)
    finally:
        if prober is not None:
            await prober.close()
    return [Outcome(plan, resolved[plan.host], res)
            for plan, res in zip(plans, results, strict=True)]
