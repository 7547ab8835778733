"""What one bench run does: sizes, durations, which phases."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["PHASES", "Settings"]

PHASES = ("hostwatch", "fping", "smokeping", "smokeping-raw", "blackbox", "tcp")


@dataclass(frozen=True, slots=True)
class Settings:
    """Every knob of a run. Durations are seconds."""

    workdir: Path
    targets: int = 10_000
    interval: float = 1.0
    warmup: float = 15.0
    duration: float = 30.0  # the steady measurement window of each tool
    scrape_every: float = 15.0  # Prometheus-like scrapes inside hostwatch's steady window
    busy: float = 5.0  # seconds of each window with, and each without, back-to-back scrapes
    rounds: int = 4  # windows of each kind, alternating
    reload_share: float = 0.1  # share of targets a reload replaces
    soak: float = 0.0  # hostwatch probing at least this long (since ready) before the reload
    smokeping_max: int = 2_000  # it starts its pingers one by one: 5,000 did not listen in 210 s
    smokeping_raw_max: int = 1_000  # one raw socket per target: O(N^2), capped
    blackbox_rate: int | None = None  # probes/s driven at blackbox; default: targets/interval
    blackbox_concurrency: int = 200
    tcp_targets: int = 5_000
    tcp_duration: float = 60.0
    phases: tuple[str, ...] = PHASES
    python: str = sys.executable
    hostwatch_args: tuple[str, ...] = field(default=())

    @property
    def timeout(self) -> float:
        return self.interval
