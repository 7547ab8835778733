"""The TCP phase: hostwatch connecting to loopback listeners at targets/interval per second.

The trap is TIME_WAIT: a normal close leaves the connecting side a TIME_WAIT socket for 60 s,
and at thousands of connects per second the ephemeral ports (about 28,000) run out. The phase
samples the namespace's TCP sockets by state all along and counts failures by reason.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from bench import proc
from bench.ours import Daemon, Metrics
from bench.result import Goal, ToolResult
from bench.runner import Child, free_port
from bench.settings import Settings
from bench.targets import addresses, hostwatch_config

__all__ = ["TcpPhase"]


@dataclass(slots=True)
class _Samples:
    time_wait_max: int = 0
    in_use_max: int = 0
    rates: list[float] = field(default_factory=list)


class TcpPhase:
    """Runs the TCP goals; `run` returns the table row."""

    def __init__(self, settings: Settings) -> None:
        self.s = settings
        self.goals: list[Goal] = []
        self.facts: dict[str, object] = {}

    def run(self) -> ToolResult:
        s = self.s
        port = free_port()
        listener = Child([s.python, "-m", "bench.listener", "--port", str(port)],
                         s.workdir / "listener.log", stdout_pipe=True)
        try:
            stdout = listener.proc.stdout
            if stdout is None or stdout.readline().strip() != b"ready":
                listener.check_alive()
            return self._with_listener(port)
        finally:
            listener.stop()

    def _with_listener(self, port: int) -> ToolResult:
        s = self.s
        hosts = addresses(s.tcp_targets)
        targets = [(f"c{i:05d}", ip) for i, ip in enumerate(hosts)]
        config = s.workdir / "hostwatch-tcp.yml"
        config.write_text(hostwatch_config(targets, s.interval, s.timeout, tcp_port=port))
        daemon = Daemon(s, config, s.workdir / "hostwatch-tcp.log")
        try:
            daemon.wait_ready()
            time.sleep(min(s.warmup, 10.0))
            return self._window(daemon)
        finally:
            self.facts["tcp_exit_status"] = daemon.child.stop()

    def _window(self, daemon: Daemon) -> ToolResult:
        s = self.s
        t0 = time.monotonic()
        before = daemon.metrics()
        cpu0 = daemon.cpu()
        samples = _Samples()
        last_sent, last_t = before.sent, t0
        while (now := time.monotonic()) < t0 + s.tcp_duration:
            time.sleep(min(5.0, t0 + s.tcp_duration - now))
            states = proc.tcp_states()
            samples.time_wait_max = max(samples.time_wait_max, states.get("time_wait", 0))
            samples.in_use_max = max(samples.in_use_max, sum(states.values()))
            asked = time.monotonic()  # the daemon's snapshot is taken as the request arrives
            current = daemon.metrics()
            samples.rates.append((current.sent - last_sent) / (asked - last_t))
            last_sent, last_t = current.sent, asked
            daemon.child.check_alive()
        cpu = daemon.cpu() - cpu0
        seconds = time.monotonic() - t0
        after = daemon.metrics()
        sent = int(after.sent - before.sent)
        result = ToolResult("hostwatch tcp", s.tcp_targets, seconds, cpu, None,
                            daemon.peak_rss_mib(), probes=sent,
                            answered=(after.received - before.received) / sent if sent else None,
                            note=f"connects to a local listener, {s.tcp_duration:g} s")
        self._goals(result, before, after, samples)
        return result

    def _goals(self, result: ToolResult, before: Metrics, after: Metrics,
               samples: _Samples) -> None:
        want = self.s.tcp_targets / self.s.interval
        slowest = min(samples.rates) if samples.rates else 0.0
        self._goal("TCP connects sustained", f"{want:,.0f}/s",
                   f"{result.probes_per_second:,.0f}/s (slowest 5 s: {slowest:,.0f}/s)",
                   result.probes_per_second >= 0.99 * want and slowest >= 0.95 * want,
                   f"over {result.window:.0f} s; 5-s rates from scrapes, ±2 % timing noise")
        per = result.cpu_us_per_probe or float("inf")
        self._goal("CPU per TCP probe", "≤ 100 µs", f"{per:.1f} µs", per <= 100)
        failed = {k: v - before.failures.get(k, 0.0) for k, v in after.failures.items()}
        failures = sum(failed.values())
        self._goal("ephemeral ports", "no exhaustion",
                   f"{failures:.0f} failed connects, TIME_WAIT max {samples.time_wait_max}",
                   failures == 0 and samples.time_wait_max < 1000,
                   f"TCP sockets in the namespace max {samples.in_use_max}; "
                   + (", ".join(f"{k} {v:.0f}" for k, v in failed.items() if v) or "no failures"))
        self.facts["tcp_rates_per_5s"] = [round(r) for r in samples.rates]

    def _goal(self, what: str, goal: str, measured: str, met: bool | None,
              detail: str = "") -> None:
        self.goals.append(Goal(what, goal, measured, met, detail))
