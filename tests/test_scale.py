"""1,000 loopback targets at 1 s in one process, through one ICMP socket per family."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from daemon_proc import Scrape, running

N = 1000


def _config() -> str:
    lines = ["defaults: {interval: 1s, timeout: 500ms}", "targets:"]
    for i in range(N):
        host = f"127.{10 + i // 250}.{i % 250}.1" if i % 10 else "::1"
        lines.append(f"  - {{name: t{i:04d}, host: '{host}', probes: {{icmp: }}}}")
    return "\n".join(lines) + "\n"


def _sent(scrape: Scrape) -> dict[str, float]:
    return {lbl["target"]: v for lbl, v in scrape.find("hostwatch_probe_sent_total")}


def _icmp_sockets(pid: int) -> dict[str, int]:
    """How many raw/datagram ICMP sockets (per /proc/net table) the process holds."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    counts = {}
    for table in ("raw", "raw6", "icmp", "icmp6"):
        with open(f"/proc/{pid}/net/{table}", encoding="ascii") as f:
            rows = [line.split() for line in f.readlines()[1:]]
        counts[table] = sum(1 for row in rows if len(row) > 9 and row[9] in inodes)
    return counts


@pytest.mark.slow
class TestThousandTargets:
    def test_every_target_probed_every_interval(self, tmp_path: Path) -> None:
        """Over 5 s every one of 1,000 targets is sent 5 probes (±1) and all answer;
        the daemon holds exactly one ICMP socket per address family."""
        with running(tmp_path, _config()) as daemon:
            daemon.wait_for(
                lambda s: len([v for _, v in s.find("hostwatch_probe_state", state="up")
                               if v == 1]) == N, timeout=30, what="all 1,000 targets up")
            first = daemon.scrape()
            started = time.monotonic()
            time.sleep(5.0)
            second = daemon.scrape()
            elapsed = time.monotonic() - started
            sockets = _icmp_sockets(daemon.proc.pid)
        before, after = _sent(first), _sent(second)
        deltas = sorted(after[t] - before[t] for t in before)
        assert N == len(deltas)
        low, high = int(elapsed) - 1, int(elapsed) + 2
        assert low <= deltas[0], (deltas[:5], elapsed)
        assert deltas[-1] <= high, (deltas[-5:], elapsed)
        failures = sum(v for _, v in second.find("hostwatch_probe_failures_total"))
        assert 0 == failures
        assert {"raw": 1, "raw6": 1, "icmp": 0, "icmp6": 0} == sockets
        skipped = second.value("hostwatch_scheduler_skipped_total", reason="missed")
        assert 0 == skipped
