"""`python -m bench`: run the phases, print the side-by-side table and the goals.

Needs root. The first thing it does is re-run itself inside a new network namespace (`unshare
--net`): there only `lo` exists, every 127.x.y.z answers on it, no probe can leave the machine,
and other processes' raw ICMP sockets never see (or disturb) this load.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import resource
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType

from bench import peers
from bench.ours import HostwatchPhase
from bench.result import Goal, ToolResult, goals_table, tools_table
from bench.settings import PHASES, Settings
from bench.tcp import TcpPhase

INSIDE = "HOSTWATCH_BENCH_NETNS"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("--targets", type=int, default=10_000, help="ICMP targets (default 10000)")
    p.add_argument("--interval", type=float, default=1.0, help="probe interval, seconds")
    p.add_argument("--warmup", type=float, default=15.0, help="seconds before measuring")
    p.add_argument("--duration", type=float, default=30.0, help="steady window, seconds")
    p.add_argument("--busy", type=float, default=5.0,
                   help="seconds of each window of back-to-back scrapes (and of each without)")
    p.add_argument("--rounds", type=int, default=4,
                   help="windows of each kind, alternating (lags pooled per kind)")
    p.add_argument("--soak", type=float, default=0.0,
                   help="seconds of probing (with a gzip scrape every 15 s) before the reload, "
                   "so that peak RSS includes a daemon that ran that long; counters pass 256 "
                   "and become objects of their own after ~4.5 min at 1 s (default 0)")
    p.add_argument("--tcp-targets", type=int, default=5_000)
    p.add_argument("--tcp-duration", type=float, default=60.0,
                   help="seconds of TCP connects (600 for the 10-minute claim)")
    p.add_argument("--smokeping-max", type=int, default=2_000,
                   help="cap for smokeping_prober (5,000 pingers did not listen within 210 s)")
    p.add_argument("--smokeping-raw-max", type=int, default=1_000,
                   help="cap for smokeping_prober --privileged (a raw socket per target)")
    p.add_argument("--blackbox-concurrency", type=int, default=200)
    p.add_argument("--phases", default=",".join(PHASES),
                   help=f"comma-separated subset of {','.join(PHASES)}")
    p.add_argument("--workdir", type=Path, help="logs and configs (default: a new temp dir)")
    p.add_argument("--json", type=Path, help="also write every number here")
    p.add_argument("--hostwatch-arg", action="append", default=[],
                   help="extra argument for the daemon (repeatable)")
    return p


def _settings(args: argparse.Namespace) -> Settings:
    phases = tuple(p.strip() for p in args.phases.split(",") if p.strip())
    unknown = set(phases) - set(PHASES)
    if unknown:
        raise SystemExit(f"unknown phase(s): {', '.join(sorted(unknown))}")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="hostwatch-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    return Settings(workdir=workdir, targets=args.targets, interval=args.interval,
                    warmup=args.warmup, duration=args.duration, busy=args.busy,
                    rounds=args.rounds, soak=args.soak,
                    tcp_targets=args.tcp_targets, tcp_duration=args.tcp_duration,
                    smokeping_max=args.smokeping_max, smokeping_raw_max=args.smokeping_raw_max,
                    blackbox_concurrency=args.blackbox_concurrency, phases=phases,
                    hostwatch_args=tuple(args.hostwatch_arg))


def _enter_namespace(argv: Sequence[str]) -> None:
    """Re-exec inside a new network namespace (never returns), unless already inside."""
    if os.environ.get(INSIDE) == "1":
        return
    if os.geteuid() != 0:
        raise SystemExit("the bench needs root (a network namespace, raw sockets)")
    env = {**os.environ, INSIDE: "1"}
    argv = ["unshare", "--net", "--", sys.executable, "-m", "bench", *argv]
    os.execvpe("unshare", argv, env)  # noqa: S606  # our own command line, no shell


def _prepare_namespace() -> None:
    """Bring up lo, allow datagram ICMP for every group (this namespace only), raise fds."""
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    Path("/proc/sys/net/ipv4/ping_group_range").write_text("0 2147483647\n")
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _budget(s: Settings) -> float:
    """Seconds the whole run may take before it is stopped."""
    per_tool = s.warmup + s.duration + 60
    ours = per_tool + 2 * s.rounds * (s.busy + 1) + 30 + 120 + s.soak
    smokeping_start = (120 + 0.03 * min(s.targets, s.smokeping_max)
                       + 0.03 * min(s.targets, s.smokeping_raw_max))
    return ours + 4 * per_tool + smokeping_start + s.tcp_duration + 120


def _on_alarm(_signum: int, _frame: FrameType | None) -> None:
    raise TimeoutError("the bench ran over its time budget")


def _phases(s: Settings) -> list[tuple[str, str | None, Callable[[], ToolResult]]]:
    """(phase, binary it needs, what runs it)."""
    return [
        ("hostwatch", None, lambda: _judged(HostwatchPhase(s))),
        ("fping", peers.FPING, lambda: peers.run_fping(s)),
        ("smokeping", peers.SMOKEPING, lambda: peers.run_smokeping(s, raw=False)),
        ("smokeping-raw", peers.SMOKEPING, lambda: peers.run_smokeping(s, raw=True)),
        ("blackbox", peers.BLACKBOX, lambda: peers.run_blackbox(s)),
        ("tcp", None, lambda: _judged(TcpPhase(s))),
    ]


_GOALS: list[Goal] = []
_FACTS: dict[str, object] = {}


def _judged(phase: HostwatchPhase | TcpPhase) -> ToolResult:
    """Runs one of hostwatch's phases; its goals and facts are kept even if it fails."""
    try:
        return phase.run()
    finally:
        _GOALS.extend(phase.goals)
        _FACTS.update(phase.facts)


def run(s: Settings) -> list[ToolResult]:
    results: list[ToolResult] = []
    for name, binary, runner in _phases(s):
        if name not in s.phases:
            continue
        if binary is not None and not peers.available(binary):
            print(f"-- {name}: skipped, {binary} is not installed (make bench installs it)")
            continue
        print(f"-- {name} ...", flush=True)
        started = time.monotonic()
        try:
            results.append(runner())
        except (RuntimeError, TimeoutError, OSError) as err:
            print(f"-- {name}: failed: {err}", flush=True)
            _FACTS[f"{name}_error"] = str(err)
        print(f"-- {name}: {time.monotonic() - started:.0f} s", flush=True)
    return results


def _machine() -> str:
    cpu = "?"
    with open("/proc/cpuinfo", encoding="ascii", errors="replace") as file:
        for line in file:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return (f"{os.cpu_count()} CPUs ({cpu}), Linux {platform.release()}, "
            f"Python {platform.python_version()}")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    _enter_namespace(argv)
    _prepare_namespace()
    s = _settings(args)
    signal.signal(signal.SIGALRM, _on_alarm)
    signal.alarm(int(_budget(s)))
    print(f"hostwatch bench: {s.targets:,} ICMP targets at {s.interval:g} s, "
          f"{s.tcp_targets:,} TCP; workdir {s.workdir}", flush=True)
    results = run(s)
    signal.alarm(0)
    print(f"\n{_machine()}\n\n{tools_table(results, s.interval)}\n\n{goals_table(_GOALS)}\n")
    if args.json is not None:
        data = {"machine": _machine(), "settings": dataclasses.asdict(s),
                "tools": [dataclasses.asdict(r) | {"cpu_us_per_probe": r.cpu_us_per_probe}
                          for r in results],
                "goals": [dataclasses.asdict(g) for g in _GOALS], "facts": _FACTS}
        args.json.write_text(json.dumps(data, indent=2, default=str) + "\n")
    return 0 if results else 1


if __name__ == "__main__":
    sys.exit(main())
