"""Per target-and-probe state: pure, no I/O, constant memory.

`ProbeState.record` takes one `ProbeResult` and returns a `Transition` when the public state
changes. The window of the last N results lives in a preallocated array (infinity marks a
failure), so the memory of a target never grows however long the daemon runs. The state
machine itself (hysteresis, DEGRADED, FLAPPING) is `hostwatch.health`.
"""

from __future__ import annotations

import math
from array import array
from bisect import bisect_left
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

from hostwatch.health import Health, Policy, Tracker, Verdict, WindowCounts
from hostwatch.probes.base import ProbeResult, Reason

__all__ = ["Health", "Policy", "ProbeState", "Transition", "WindowStats"]


@dataclass(frozen=True, slots=True)
class Transition:
    """A change of public state, caused by `result`; `at` is wall-clock seconds since the epoch.
    `reason` and `detail` say why the new state holds (the failure reason, `loss`, …)."""

    previous: Health
    current: Health
    result: ProbeResult
    at: float
    reason: str = ""
    detail: str = ""


@dataclass(frozen=True, slots=True)
class WindowStats:
    """Loss and RTT over the results in the window (RTT fields are None without a reply)."""

    size: int
    lost: int
    loss_ratio: float
    rtt_min: float | None
    rtt_median: float | None
    rtt_max: float | None
    rtt_mean: float | None
    rtt_stddev: float | None


# size, lost, loss ratio, and RTT min, median, max, mean, stddev (None without a reply).
Summary = tuple[int, int, float, float | None, float | None, float | None, float | None,
                float | None]


_FAILED = math.inf  # a failure in the window: sorts after every RTT
_NS = 1e9  # the window keeps nanoseconds


class _Window:
    """The last `capacity` results: the RTT of a success in nanoseconds, as a 4-byte float,
    infinity for a failure (so that sorting the window puts the RTTs first, in order, and the
    failures last).

    A 4-byte float holds every whole number of nanoseconds up to 2**24 (16.8 ms) exactly and
    keeps 24 significant bits above (64 ns at 1 s): half the memory of doubles (10,000
    targets with 100 results: 4 MB). Whole nanoseconds also keep the running sum exact (an
    integer in a double) and min, median and max short to write (`ns / 1e9` is the shortest
    repr of the RTT the probe measured)."""

    __slots__ = ("_sum", "_sumsq", "capacity", "filled", "lost", "pos", "values")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.values = array("f", [_FAILED]) * capacity
        self.filled = 0
        self.pos = 0
        self.lost = 0
        self._sum = 0.0  # of the RTTs in the window, ns
        self._sumsq = 0.0  # of their squares, ns²

    def push(self, rtt: float | None) -> None:
        values, pos = self.values, self.pos
        if self.filled == self.capacity:
            old = values[pos]
            if old == _FAILED:
                self.lost -= 1
            else:
                self._sum -= old
                self._sumsq -= old * old
        else:
            self.filled += 1
        if rtt is None:
            values[pos] = _FAILED
            self.lost += 1
        else:
            values[pos] = round(rtt * _NS)
            kept = values[pos]  # as stored: rounded to 24 bits above 16.8 ms
            self._sum += kept
            self._sumsq += kept * kept
        self.pos = pos = (pos + 1) % self.capacity
        if pos == 0:
            self._resum()  # squares above ~9 ms are not exact in a double: bound the drift

    def _resum(self) -> None:
        received = [v for v in self.values[: self.filled] if v != _FAILED]
        self._sum = math.fsum(received)
        self._sumsq = math.fsum(v * v for v in received)

    def counts(self) -> WindowCounts:
        received = self.filled - self.lost
        mean = self._sum / received / _NS if received else None
        return WindowCounts(self.capacity, self.filled, self.lost, mean)

    def stats(self) -> WindowStats:
        return WindowStats(*self.summary())

    def summary(self) -> Summary:
        """`stats` as a plain tuple, in seconds. Runs for every watch at every scrape: the
        values go to a list in C (`tolist`) and are sorted in place; the failures sort last
        and are cut off."""
        filled, lost = self.filled, self.lost
        values = self.values
        received = values.tolist() if filled == self.capacity else values[:filled].tolist()
        received.sort()
        if lost:
            del received[filled - lost:]
        loss = lost / filled if filled else 0.0
        if not received:
            return (filled, lost, loss, None, None, None, None, None)
        n = len(received)
        mean = self._sum / n
        variance = max(self._sumsq / n - mean * mean, 0.0)
        half = n // 2
        median = received[half] / _NS if n % 2 else (received[half - 1] + received[half]) / 2e9
        return (filled, lost, loss, received[0] / _NS, median, received[-1] / _NS, mean / _NS,
                math.sqrt(variance) / _NS)


_NONE_FAILED: Final[Mapping[Reason, int]] = MappingProxyType({})


def _bucket_counts(buckets: tuple[float, ...]) -> list[int] | None:
    """The histogram's counts, one per bucket and +Inf; None (no list per watch) without."""
    return [0] * (len(buckets) + 1) if buckets else None


class ProbeState:
    """Health, counters, RTT histogram (if it has buckets) and window of one target's probe."""

    __slots__ = (
        "_counts", "_failures", "_window", "buckets", "last_ip", "last_result",
        "last_transition_at", "received", "rtt_sum", "sent", "tracker", "transitions",
    )

    def __init__(self, policy: Policy, window: int, buckets: tuple[float, ...]) -> None:
        self.tracker = Tracker(policy)
        self.buckets = buckets
        self.sent = 0
        self.received = 0
        self._failures: dict[Reason, int] | None = None  # made at the first failure
        self.transitions = 0
        self.last_transition_at: float | None = None
        self.last_result: ProbeResult | None = None
        self.last_ip = ""  # sticky: a DNS failure (no address) keeps the last one
        self._counts = _bucket_counts(buckets)
        self.rtt_sum = 0.0
        self._window = _Window(window)

    def set_buckets(self, buckets: tuple[float, ...]) -> None:
        """A new (or no) RTT histogram, empty; everything else stays."""
        self.buckets = buckets
        self._counts = _bucket_counts(buckets)
        self.rtt_sum = 0.0

    @property
    def failures(self) -> Mapping[Reason, int]:
        """Failed probes by reason."""
        return self._failures or _NONE_FAILED

    @property
    def bucket_counts(self) -> Sequence[int]:
        """Per bucket of the RTT histogram, not cumulative; the last one is +Inf. Empty
        without a histogram."""
        return self._counts or ()

    @property
    def health(self) -> Health:
        return self.tracker.public.health

    @property
    def verdict(self) -> Verdict:
        return self.tracker.public

    def record(self, result: ProbeResult, now: float) -> Transition | None:
        """Account one result; return the transition of the public state it caused, if any."""
        previous = self.tracker.public.health
        self.last_result = result
        if result.ip:
            self.last_ip = result.ip
        if not result.reason.unsent:
            self.sent += 1  # a request went out (or was attempted on the wire)
        if result.ok and result.rtt is not None:
            self._success(result.rtt)
        else:
            self._failure(result.reason)
        verdict = self.tracker.update(result, self._window.counts(), now)
        if verdict is None:
            return None
        self.transitions += 1
        self.last_transition_at = now
        return Transition(previous, verdict.health, result, now, verdict.reason, verdict.detail)

    def _success(self, rtt: float) -> None:
        self.received += 1
        counts = self._counts  # None without a histogram
        if counts is not None:
            counts[bisect_left(self.buckets, rtt)] += 1
            self.rtt_sum += rtt
        self._window.push(rtt)

    def _failure(self, reason: Reason) -> None:
        failures = self._failures
        if failures is None:
            failures = self._failures = {}
        failures[reason] = failures.get(reason, 0) + 1
        self._window.push(None)

    def window_stats(self) -> WindowStats:
        return self._window.stats()

    def window_summary(self) -> Summary:
        """`window_stats` as a plain tuple, for the renderer (no object per watch)."""
        return self._window.summary()
