"""The peers on the same targets: fping, smokeping_prober (datagram and raw), blackbox_exporter.

Each runs alone (one tool at a time, so none steals the CPU of another), from the binaries of
the Debian packages, on loopback ports. A missing binary skips its phase.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from bench import proc, scrape
from bench.result import ToolResult
from bench.runner import Child, free_port, sniff, wait_until
from bench.settings import Settings
from bench.targets import addresses, smokeping_config, write_lines
from bench.wire import analyse

__all__ = ["run_blackbox", "run_fping", "run_smokeping"]

MIB = 1024 * 1024
FPING = "fping"
SMOKEPING = "prometheus-smokeping-prober"
BLACKBOX = "prometheus-blackbox-exporter"


def available(binary: str) -> bool:
    return shutil.which(binary) is not None


def _window(s: Settings, children: Sequence[Child], tool: str, hosts: Sequence[str],
            note: str = "") -> ToolResult:
    """CPU (summed over `children`) and the wire over one steady window."""
    for child in children:
        child.check_alive()
    wire = sniff(s.duration, s.workdir, tool)
    cpu0, t0 = _cpu(children), time.monotonic()
    time.sleep(s.duration)
    cpu = _cpu(children) - cpu0
    seconds = time.monotonic() - t0
    for child in children:
        child.check_alive()
    stats = analyse(wire.result(), s.interval, hosts)
    rss = max(proc.memory_kib(c.pid)["VmHWM"] for c in children) / 1024
    return ToolResult(tool, len(hosts), seconds, cpu, stats, rss, note=note)


def _cpu(children: Sequence[Child]) -> float:
    return sum(proc.cpu(c.pid).total for c in children)


# --- fping --------------------------------------------------------------------------------------
FPING_SHARD = 5_000  # fping shares 65,536 sequence numbers per 10 s over all its targets


def run_fping(s: Settings) -> ToolResult:
    """`fping -l`: every target every interval, packets spread over the interval. One fping
    process runs out of sequence numbers above ~6,500 probes/s, so targets are split over
    processes of at most 5,000 (CPU summed, memory of the largest)."""
    hosts = addresses(s.targets)
    shards = -(-len(hosts) // FPING_SHARD)
    children = []
    try:
        for n in range(shards):
            part = hosts[n::shards]
            targets = write_lines(s.workdir / f"fping-{n}.txt", part)
            # fping's loop costs time of its own: at 0.8 x period/targets it fell behind
            spacing = s.interval * 1000 / len(part) * 0.4
            argv = [FPING, "-l", "-q", "-p", f"{s.interval * 1000:g}", "-i", f"{spacing:.4f}",
                    "-t", f"{s.timeout * 1000:g}", "-Q", f"{max(1, int(s.duration / 3))}",
                    "-f", str(targets)]
            children.append(Child(argv, s.workdir / f"fping-{n}.log"))
        time.sleep(s.warmup)
        note = f"{shards} processes" if shards > 1 else ""
        result = _window(s, children, "fping", hosts, note)
    finally:
        for child in children:
            child.stop()
    answered = [_fping_counts(c.log) for c in children]
    sent = sum(x for x, _ in answered)
    result.answered = sum(r for _, r in answered) / sent if sent else None
    return result


def _fping_counts(log: Path) -> tuple[int, int]:
    found = re.findall(r"xmt/rcv/%loss = (\d+)/(\d+)/", log.read_text(errors="replace"))
    return sum(int(x) for x, _ in found), sum(int(r) for _, r in found)


# --- smokeping_prober ---------------------------------------------------------------------------
def run_smokeping(s: Settings, *, raw: bool) -> ToolResult:
    """smokeping_prober with every target in one group; `raw` adds --privileged."""
    count = min(s.targets, s.smokeping_raw_max if raw else s.smokeping_max)
    hosts = addresses(count)
    config = s.workdir / "smokeping.yml"
    config.write_text(smokeping_config(hosts, s.interval))
    port = free_port()
    argv = [SMOKEPING, "--config.file", str(config), "--web.listen-address",
            f"127.0.0.1:{port}", "--log.level", "warn", *(["--privileged"] if raw else [])]
    tool = "smokeping_prober raw" if raw else "smokeping_prober dgram"
    child = Child(argv, s.workdir / f"{tool.replace(' ', '-')}.log")
    try:
        # It starts its pingers one by one (~20 ms each here) before it listens.
        startup = wait_until(lambda: _up(child, port), 60 + 0.03 * count, tool, step=0.5)
        time.sleep(s.warmup)
        before = _smokeping_counts(port)
        note = f"listening after {startup:.0f} s"
        if count < s.targets:
            note += f"; capped at {count:,} targets"
        result = _window(s, [child], tool, hosts, note)
        timed = scrape.get("127.0.0.1", port, "/metrics", timeout=120)
        after = _smokeping_counts(port)
    finally:
        child.stop()
    result.scrape_seconds, result.scrape_mib = timed.seconds, timed.wire_bytes / MIB
    sent = after[0] - before[0]
    result.answered = (after[1] - before[1]) / sent if sent else None
    return result


def _up(child: Child, port: int) -> bool:
    child.check_alive()
    return scrape.try_get("127.0.0.1", port, "/metrics", timeout=30) == 200


def _smokeping_counts(port: int) -> tuple[float, float]:
    text = scrape.get("127.0.0.1", port, "/metrics", gzipped=True, timeout=120).text
    found = scrape.samples(text, ("smokeping_requests_total",
                                  "smokeping_response_duration_seconds_count"))
    sent = sum(v for n, _, v in found if n == "smokeping_requests_total")
    return sent, sum(v for n, _, v in found if n != "smokeping_requests_total")


# --- blackbox_exporter --------------------------------------------------------------------------
BLACKBOX_CONFIG = """\
modules:
  icmp:
    prober: icmp
    timeout: {timeout}
    icmp:
      preferred_ip_protocol: ip4
      ip_protocol_fallback: false
"""


def run_blackbox(s: Settings) -> ToolResult:
    """blackbox_exporter's /probe, driven at `blackbox_rate` probes/s over the targets."""
    hosts = addresses(s.targets)
    config = s.workdir / "blackbox.yml"
    config.write_text(BLACKBOX_CONFIG.format(timeout=f"{s.timeout * 1000:g}ms"))
    port = free_port()
    argv = [BLACKBOX, "--config.file", str(config), "--web.listen-address",
            f"127.0.0.1:{port}", "--log.level", "warn"]
    child = Child(argv, s.workdir / "blackbox.log")
    rate = s.blackbox_rate or int(s.targets / s.interval)
    try:
        wait_until(lambda: _up(child, port), 60, "blackbox_exporter")
        drive = Driver(port, hosts, rate, s.blackbox_concurrency, s.interval)
        warm = min(s.warmup, 5.0)
        with drive.running(warm + s.duration + 1.0):
            time.sleep(warm)
            result = _window(s, [child], "blackbox_exporter", hosts,
                             f"driven at {rate:,}/s, {s.blackbox_concurrency} in parallel")
    finally:
        child.stop()
    result.answered = drive.succeeded / drive.issued if drive.issued else None
    result.note += f"; {drive.behind:,} requests dropped, the driver was behind"
    return result


class Driver:
    """An open-loop HTTP driver: request k is due at k/rate; one more than an interval late
    is dropped and counted. `running` drives in a thread for a given time."""

    def __init__(self, port: int, hosts: Sequence[str], rate: int, concurrency: int,
                 interval: float) -> None:
        self.port, self.hosts, self.rate = port, hosts, rate
        self.concurrency, self.interval = concurrency, interval
        self.issued = self.succeeded = self.behind = 0
        self._next = 0

    def running(self, seconds: float) -> _Running:
        return _Running(self, seconds)

    async def drive(self, seconds: float) -> None:
        start = time.monotonic()
        end = start + seconds
        await asyncio.gather(*(self._worker(start, end) for _ in range(self.concurrency)))

    async def _worker(self, start: float, end: float) -> None:
        conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        while True:
            k, self._next = self._next, self._next + 1
            due = start + k / self.rate
            if due >= end:
                break
            delay = due - time.monotonic()
            if delay < -self.interval:
                self.behind += 1
                continue
            await asyncio.sleep(max(0.0, delay))
            try:
                conn = conn or await asyncio.open_connection("127.0.0.1", self.port)
                ok = await _probe(conn, self.hosts[k % len(self.hosts)])
            except (OSError, asyncio.IncompleteReadError, ValueError):
                conn, ok = None, False
            self.issued += 1
            self.succeeded += ok
        if conn is not None:
            conn[1].close()


async def _probe(conn: tuple[asyncio.StreamReader, asyncio.StreamWriter], host: str) -> bool:
    reader, writer = conn
    writer.write(f"GET /probe?module=icmp&target={host} HTTP/1.1\r\nHost: bench\r\n\r\n"
                 .encode())
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").lower()
    match = re.search(r"content-length: *(\d+)", head)
    if match is not None:
        body = await reader.readexactly(int(match[1]))
    else:
        body = await _chunked(reader)
    return b"\nprobe_success 1\n" in body


async def _chunked(reader: asyncio.StreamReader) -> bytes:
    parts = []
    while True:
        size = int((await reader.readuntil(b"\r\n")).strip() or b"0", 16)
        parts.append(await reader.readexactly(size + 2))
        if size == 0:
            return b"".join(parts)


class _Running:
    """Context manager: the driver runs in a thread of its own until the block ends."""

    def __init__(self, driver: Driver, seconds: float) -> None:
        self._seconds = seconds
        self._thread = threading.Thread(target=lambda: asyncio.run(driver.drive(seconds)),
                                        daemon=True)

    def __enter__(self) -> None:
        self._thread.start()

    def __exit__(self, *_exc: object) -> None:
        self._thread.join(self._seconds + 30)
