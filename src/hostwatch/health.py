"""The health state machine of one probe: hysteresis, degradation and flapping. Pure, no I/O.

States (see docs/states.md for the reasoning and the false-alarm arithmetic):

- UNKNOWN: never answered and not yet failed `failure_threshold` times in a row.
- DOWN: `failure_threshold` consecutive failures; the reason is that of the last failure.
- UP: answering; from UNKNOWN at the first success, from DOWN after `success_threshold`
  consecutive successes.
- DEGRADED: answering, but since the last recovery the loss ratio over the window reached
  `degraded_loss_ratio` (cleared below half of it), or the mean RTT over the window exceeds
  `degraded_rtt` (cleared below 80% of it). Judged only with at least MIN_SAMPLES results,
  and loss only with at least MIN_LOST of them lost.
- FLAPPING: the underlying state (UP, DEGRADED, DOWN) changed `flap_start` times within
  `flap_window`; cleared when at most `flap_stop` changes remain in the window. While flapping
  the public state stays FLAPPING, so alerts and logs are not spammed by each change.
"""

from __future__ import annotations

import enum
import functools
from dataclasses import dataclass
from typing import NamedTuple

from hostwatch.model import TargetConfig
from hostwatch.probes.base import ProbeResult

__all__ = ["MIN_SAMPLES", "Health", "Policy", "Tracker", "Verdict", "WindowCounts"]

MIN_SAMPLES = 20  # results since the last recovery before loss or latency is judged
MIN_LOST = 3  # and at least this many lost: one unlucky packet is never a degradation
LOSS_CLEAR_FACTOR = 0.5
RTT_CLEAR_FACTOR = 0.8


class Health(enum.StrEnum):
    """The state of a target's probe; the value is the metric label and journal STATE."""

    UNKNOWN = "unknown"
    UP = "up"
    DEGRADED = "degraded"
    DOWN = "down"
    FLAPPING = "flapping"


@dataclass(frozen=True, slots=True)
class Policy:
    """The thresholds of one target (from its config)."""

    failure_threshold: int = 12
    success_threshold: int = 3
    degraded_loss_ratio: float = 0.1
    degraded_rtt: float | None = None
    flap_window: float = 600.0
    flap_start: int = 6
    flap_stop: int = 2

    @classmethod
    def of(cls, target: TargetConfig) -> Policy:
        """The target's policy; targets with the same thresholds share one object."""
        return _shared_policy((target.failure_threshold, target.success_threshold,
                               target.degraded_loss_ratio, target.degraded_rtt,
                               target.flap_window, target.flap_start, target.flap_stop))


@functools.lru_cache(maxsize=1024)
def _shared_policy(values: tuple[int, int, float, float | None, float, int, int]) -> Policy:
    """One Policy per distinct set of thresholds (10,000 targets usually have a handful);
    bounded, so that thresholds changed by reloads over months do not pile up."""
    return Policy(*values)


@dataclass(frozen=True, slots=True)
class Verdict:
    """A state with why: the reason (`timeout`, `loss`, `flapping`, …) and a readable detail."""

    health: Health
    reason: str = ""
    detail: str = ""


class WindowCounts(NamedTuple):
    """What the tracker needs of the result window, read in O(1); one per probe result, so a
    NamedTuple (cheaper to make than a frozen dataclass)."""

    capacity: int
    filled: int
    lost: int
    rtt_mean: float | None


UNKNOWN = Verdict(Health.UNKNOWN)
UP_OK = Verdict(Health.UP, "ok")  # the common verdict, made once


class Tracker:
    """Feeds results through the state machine; `update` returns a new public verdict."""

    __slots__ = ("_changes", "_fresh", "_fresh_lost", "consecutive_failures",
                 "consecutive_successes", "flapping", "policy", "public", "underlying")

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.underlying = UNKNOWN
        self.public = UNKNOWN
        self.flapping = False
        self.consecutive_failures = 0
        self.consecutive_successes = 0
        self._fresh = 0  # results since the last recovery from DOWN (or since the start)
        self._fresh_lost = 0
        # The times of the last `flap_start` changes of the underlying state. A tuple: empty
        # (the shared `()`) for almost every watch, where a deque would hold ~600 bytes.
        self._changes: tuple[float, ...] = ()

    @property
    def changes(self) -> tuple[float, ...]:
        """The times of the last `flap_start` changes of the underlying state (a new tuple
        at each change, so identity tells a change)."""
        return self._changes

    def set_policy(self, policy: Policy) -> None:
        """New thresholds (a reload); state and history are kept."""
        self._changes = self._changes[-policy.flap_start:]
        self.policy = policy

    def update(self, result: ProbeResult, window: WindowCounts, now: float) -> Verdict | None:
        """Account `result` (already pushed to the window); the new public verdict, if any."""
        self._count(result, window.capacity)
        underlying = self._judge(result, window)
        if underlying.health is not self.underlying.health:
            if self.underlying.health is not Health.UNKNOWN:
                self._changes = (*self._changes, now)[-self.policy.flap_start:]
            self.underlying = underlying
        elif underlying != self.underlying:
            self.underlying = underlying  # same state, newer reason or detail
        self.flapping = self._flapping(now)
        public = self._public()
        if public.health is self.public.health:
            self.public = public
            return None
        self.public = public
        return public

    def _count(self, result: ProbeResult, capacity: int) -> None:
        """The counts stop where no rule looks further: a run of failures or successes at
        its threshold (past it, a DOWN target stays DOWN and an answering one answering,
        whatever a reload makes the threshold), results since the recovery at the window's
        capacity. Counted on for months they would be an int object per watch, a new one
        per result; stopped at a small number they are shared ones."""
        p = self.policy
        if result.ok:
            self.consecutive_successes = min(self.consecutive_successes + 1,
                                             p.success_threshold)
            self.consecutive_failures = 0
        else:
            self.consecutive_failures = min(self.consecutive_failures + 1, p.failure_threshold)
            self.consecutive_successes = 0
        if self.underlying.health is Health.DOWN and not result.ok:
            self._fresh = self._fresh_lost = 0  # judge quality only after the recovery
            return
        if self._fresh < capacity:  # from there on the window itself is judged
            self._fresh += 1
            self._fresh_lost += 0 if result.ok else 1

    def _judge(self, result: ProbeResult, window: WindowCounts) -> Verdict:
        p = self.policy
        current = self.underlying.health
        if self.consecutive_failures >= p.failure_threshold:
            return Verdict(Health.DOWN, result.reason.value, result.detail)
        answering = (current in (Health.UP, Health.DEGRADED)
                     or (current is Health.UNKNOWN and self.consecutive_successes >= 1)
                     or (current is Health.DOWN
                         and self.consecutive_successes >= p.success_threshold))
        if not answering:
            return self.underlying
        return self._quality(window, current is Health.DEGRADED)

    def _quality(self, window: WindowCounts, degraded: bool) -> Verdict:
        p = self.policy
        fresh = min(self._fresh, window.filled)
        if fresh < min(MIN_SAMPLES, window.capacity):
            return UP_OK
        lost = self._fresh_lost if self._fresh < window.capacity else window.lost
        loss = lost / fresh
        loss_limit = p.degraded_loss_ratio * (LOSS_CLEAR_FACTOR if degraded else 1.0)
        if loss >= loss_limit and (lost >= MIN_LOST or degraded):
            return Verdict(Health.DEGRADED, "loss", f"{loss:.0%} of the last {fresh} probes "
                           f"lost (threshold {p.degraded_loss_ratio:.0%})")
        mean = window.rtt_mean
        if p.degraded_rtt is not None and mean is not None:
            rtt_limit = p.degraded_rtt * (RTT_CLEAR_FACTOR if degraded else 1.0)
            if mean > rtt_limit:
                return Verdict(Health.DEGRADED, "latency", f"mean RTT {mean * 1000:.3f} ms "
                               f"(threshold {p.degraded_rtt * 1000:.3f} ms)")
        return UP_OK

    def _flapping(self, now: float) -> bool:
        p = self.policy
        recent = sum(1 for t in self._changes if now - t <= p.flap_window)
        if not self.flapping:
            return recent >= p.flap_start
        return recent > p.flap_stop

    def _public(self) -> Verdict:
        if not self.flapping:
            return self.underlying
        recent = len(self._changes)
        return Verdict(Health.FLAPPING, "flapping",
                       f"{recent}+ state changes within {self.policy.flap_window:g}s; "
                       f"now {self.underlying.health.value}")

    def recent_changes(self, now: float) -> int:
        """Underlying state changes within the flap window (saturates at flap_start)."""
        return sum(1 for t in self._changes if now - t <= self.policy.flap_window)
