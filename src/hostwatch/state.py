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
from dataclasses import dataclass

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


class _Window:
    """The last `capacity` results: the RTT (seconds) of a success, infinity for a failure
    (so that sorting the window puts the RTTs first, in order, and the failures last)."""

    __slots__ = ("_sum", "_sumsq", "capacity", "filled", "lost", "pos", "values")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.values = array("d", [_FAILED]) * capacity
        self.filled = 0
        self.pos = 0
        self.lost = 0
        self._sum = 0.0
        self._sumsq = 0.0

    def push(self, rtt: float | None) -> None:
        value = _FAILED if rtt is None else rtt
        if self.filled == self.capacity:
            self._forget(self.values[self.pos])
        else:
            self.filled += 1
        self.values[self.pos] = value
        self._remember(value)
        self.pos = (self.pos + 1) % self.capacity
        if self.pos == 0:
            self._resum()  # bound floating-point drift of the running sums

    def _remember(self, value: float) -> None:
        if value == _FAILED:
            self.lost += 1
        else:
            self._sum += value
            self._sumsq += value * value

    def _forget(self, value: float) -> None:
        if value == _FAILED:
            self.lost -= 1
        else:
            self._sum -= value
            self._sumsq -= value * value

    def _resum(self) -> None:
        received = [v for v in self.values[: self.filled] if v != _FAILED]
        self._sum = math.fsum(received)
        self._sumsq = math.fsum(v * v for v in received)

    def counts(self) -> WindowCounts:
        received = self.filled - self.lost
        mean = self._sum / received if received else None
        return WindowCounts(self.capacity, self.filled, self.lost, mean)

    def stats(self) -> WindowStats:
        return WindowStats(*self.summary())

    def summary(self) -> Summary:
        """`stats` as a plain tuple. Runs for every watch at every scrape: the values go to a
        list in C (`tolist`) and are sorted in place; the failures sort last and are cut off."""
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
        median = received[n // 2] if n % 2 else (received[n // 2 - 1] + received[n // 2]) / 2
        return (filled, lost, loss, received[0], median, received[-1], mean, math.sqrt(variance))


class ProbeState:
    """Health, counters, RTT histogram (if it has buckets) and window of one target's probe."""

    __slots__ = (
        "_window", "bucket_counts", "buckets", "failures", "last_ip", "last_result",
        "last_transition_at", "received", "rtt_sum", "sent", "tracker", "transitions",
    )

    def __init__(self, policy: Policy, window: int, buckets: tuple[float, ...]) -> None:
        self.tracker = Tracker(policy)
        self.buckets = buckets
        self.sent = 0
        self.received = 0
        self.failures: dict[Reason, int] = {}
        self.transitions = 0
        self.last_transition_at: float | None = None
        self.last_result: ProbeResult | None = None
        self.last_ip = ""  # sticky: a DNS failure (no address) keeps the last one
        self.bucket_counts = [0] * (len(buckets) + 1)  # the last one is +Inf
        self.rtt_sum = 0.0
        self._window = _Window(window)

    def set_buckets(self, buckets: tuple[float, ...]) -> None:
        """A new (or no) RTT histogram, empty; everything else stays."""
        self.buckets = buckets
        self.bucket_counts = [0] * (len(buckets) + 1)
        self.rtt_sum = 0.0

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
        if self.buckets:
            self.bucket_counts[bisect_left(self.buckets, rtt)] += 1
            self.rtt_sum += rtt
        self._window.push(rtt)

    def _failure(self, reason: Reason) -> None:
        self.failures[reason] = self.failures.get(reason, 0) + 1
        self._window.push(None)

    def window_stats(self) -> WindowStats:
        return self._window.stats()

    def window_summary(self) -> Summary:
        """`window_stats` as a plain tuple, for the renderer (no object per watch)."""
        return self._window.summary()
