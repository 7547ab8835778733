"""What the daemon counts besides its watches, as the metrics read it.

`DaemonView` is filled in by the daemon and stays current; `DaemonNumbers` is a plain copy of
it taken at a scrape, small and picklable, which the /metrics renderer process gets with each
request. This module imports nothing heavy: the daemon process keeps prometheus-client out of
its memory (hostwatch.metrics and hostwatch.exposition.text are the renderer's).
"""

from __future__ import annotations

import platform
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hostwatch.journal import SinkStats
    from hostwatch.scheduler import SchedulerStats
    from hostwatch.watch import Watch

__all__ = ["DaemonNumbers", "DaemonView", "ReloadStatus"]


@dataclass(slots=True)
class ReloadStatus:
    """Outcome of the last config load (startup counts as the first)."""

    successful: bool = False
    success_timestamp: float = 0.0
    source: str = ""


@dataclass(slots=True)
class DaemonView:
    """What the collector reads; the daemon fills it in and keeps it current."""

    watches: Callable[[], Iterable[Watch]]
    scheduler: SchedulerStats
    skipped_in_flight: Callable[[], int]
    in_flight: Callable[[], dict[str, int]]
    journal: SinkStats
    reload: ReloadStatus
    icmp_sockets: dict[str, str] = field(default_factory=dict)
    slots: Callable[[], int] = lambda: 0

    def numbers(self) -> DaemonNumbers:
        """The daemon-wide values as they are now."""
        from hostwatch import __version__  # noqa: PLC0415 - importlib.metadata, when needed
        from hostwatch.scheduler import LAG_BUCKETS  # noqa: PLC0415 - APScheduler, idem
        st = self.scheduler
        return DaemonNumbers(
            version=__version__, python_version=platform.python_version(),
            lag_buckets=LAG_BUCKETS, lag_counts=tuple(st.lag_counts), lag_sum=st.lag_sum,
            runs=st.runs, skipped=tuple(sorted({**st.skipped,
                                                "in_flight": self.skipped_in_flight()}.items())),
            slots=self.slots(), in_flight=tuple(sorted(self.in_flight().items())),
            log_written=self.journal.written, log_dropped=self.journal.dropped,
            reload_successful=self.reload.successful,
            reload_timestamp=self.reload.success_timestamp,
            icmp_sockets=tuple(sorted(self.icmp_sockets.items())))


@dataclass(frozen=True, slots=True)
class DaemonNumbers:
    """The daemon-wide values of one scrape, plain and picklable (for the renderer process)."""

    version: str
    python_version: str
    lag_buckets: tuple[float, ...]
    lag_counts: tuple[int, ...]  # per bucket and +Inf, not cumulative
    lag_sum: float
    runs: int
    skipped: tuple[tuple[str, int], ...]  # by reason, sorted
    slots: int
    in_flight: tuple[tuple[str, int], ...]  # by probe kind, sorted
    log_written: int
    log_dropped: int
    reload_successful: bool
    reload_timestamp: float
    icmp_sockets: tuple[tuple[str, str], ...]  # family, mode; sorted
