"""Per target-and-probe state: pure, no I/O, constant memory.

`ProbeState.record` takes one `ProbeResult` and returns a `Transition` when the health changes.
The window of the last N results lives in a preallocated array (NaN marks a failure), so the
memory of a target never grows however long the daemon runs.

Hysteresis: UNKNOWN becomes UP on the first success and DOWN after `failure_threshold`
consecutive failures; UP becomes DOWN after `failure_threshold` consecutive failures; DOWN
becomes UP after `success_threshold` consecutive successes. One lost packet is never an alarm.
"""

from __future__ import annotations

import enum
import math
from array import array
from bisect import bisect_left
from dataclasses import dataclass

from hostwatch.probes.base import ProbeResult, Reason

__all__ = ["Health", "ProbeState", "Transition", "WindowStats"]


class Health(enum.StrEnum):
    """The state of a target's probe; the value is the metric label and journal STATE."""

    UNKNOWN = "unknown"
    UP = "up"
    DOWN = "down"


@dataclass(frozen=True, slots=True)
class Transition:
    """A change of health, caused by `result`; `at` is wall-clock seconds since the epoch."""

    previous: Health
    current: Health
    result: ProbeResult
    at: float


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


class _Window:
    """The last `capacity` results; NaN for a failure, the RTT (seconds) for a success."""

    __slots__ = ("_sum", "_sumsq", "capacity", "filled", "lost", "pos", "values")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.values = array("d", [math.nan]) * capacity
        self.filled = 0
        self.pos = 0
        self.lost = 0
        self._sum = 0.0
        self._sumsq = 0.0

    def push(self, rtt: float | None) -> None:
        value = math.nan if rtt is None else rtt
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
        if math.isnan(value):
            self.lost += 1
        else:
            self._sum += value
            self._sumsq += value * value

    def _forget(self, value: float) -> None:
        if math.isnan(value):
            self.lost -= 1
        else:
            self._sum -= value
            self._sumsq -= value * value

    def _resum(self) -> None:
        received = [v for v in self.values[: self.filled] if not math.isnan(v)]
        self._sum = math.fsum(received)
        self._sumsq = math.fsum(v * v for v in received)

    def stats(self) -> WindowStats:
        received = sorted(v for v in self.values[: self.filled] if not math.isnan(v))
        loss = self.lost / self.filled if self.filled else 0.0
        if not received:
            return WindowStats(self.filled, self.lost, loss, None, None, None, None, None)
        n = len(received)
        mean = self._sum / n
        variance = max(self._sumsq / n - mean * mean, 0.0)
        median = received[n // 2] if n % 2 else (received[n // 2 - 1] + received[n // 2]) / 2
        return WindowStats(self.filled, self.lost, loss, received[0], median, received[-1],
                           mean, math.sqrt(variance))


class ProbeState:
    """Health, counters, RTT histogram and window of one target's probe."""

    __slots__ = (
        "_window", "bucket_counts", "buckets", "consecutive_failures", "consecutive_successes",
        "failure_threshold", "failures", "health", "last_ip", "last_result", "last_transition_at",
        "received", "rtt_sum", "sent", "success_threshold", "transitions",
    )

    def __init__(self, failure_threshold: int, success_threshold: int, window: int,
                 buckets: tuple[float, ...]) -> None:
        self.failure_threshold = failure_threshold
        self.success_threshold = success_threshold
        self.buckets = buckets
        self.health = Health.UNKNOWN
        self.consecutive_failures = 0
        self.consecutive_successes = 0
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

    def record(self, result: ProbeResult, now: float) -> Transition | None:
        """Account one result; return the transition it caused, if any."""
        self.last_result = result
        if result.ip:
            self.last_ip = result.ip
        if result.reason is not Reason.DNS and result.reason is not Reason.NO_ADDRESS:
            self.sent += 1  # a request went out (or was attempted on the wire)
        if result.ok and result.rtt is not None:
            self._success(result.rtt)
        else:
            self._failure(result.reason)
        new = self._next_health()
        if new is self.health:
            return None
        transition = Transition(self.health, new, result, now)
        self.health = new
        self.transitions += 1
        self.last_transition_at = now
        return transition

    def _success(self, rtt: float) -> None:
        self.received += 1
        self.consecutive_successes += 1
        self.consecutive_failures = 0
        self.bucket_counts[bisect_left(self.buckets, rtt)] += 1
        self.rtt_sum += rtt
        self._window.push(rtt)

    def _failure(self, reason: Reason) -> None:
        self.failures[reason] = self.failures.get(reason, 0) + 1
        self.consecutive_failures += 1
        self.consecutive_successes = 0
        self._window.push(None)

    def _next_health(self) -> Health:
        if self.consecutive_failures >= self.failure_threshold:
            return Health.DOWN
        if self.health is Health.UNKNOWN and self.consecutive_successes >= 1:
            return Health.UP
        if self.health is Health.DOWN and self.consecutive_successes >= self.success_threshold:
            return Health.UP
        return self.health

    def window_stats(self) -> WindowStats:
        return self._window.stats()
