"""Per target-and-probe state: pure, no I/O, constant memory.

`ProbeState.record` takes one `ProbeResult` and returns a `Transition` when the public state
changes. The window of the last N results lives in a fixed slot of the state table
(hostwatch.table; infinity marks a failure), so the memory of a target never grows however
long the daemon runs, and each result publishes the numbers /metrics shows into the target's
row there. The state machine itself (hysteresis, DEGRADED, FLAPPING) is `hostwatch.health`.
"""

from __future__ import annotations

import math
import struct
from bisect import bisect_left
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final, cast

from hostwatch.health import Health, Policy, Tracker, Verdict, WindowCounts
from hostwatch.probes.base import ProbeResult, Reason
from hostwatch.table import NAN, PACK_ROW, PHASES, ROW_BYTES, Pool, StateTable

__all__ = ["Health", "Policy", "ProbeState", "Transition", "WindowStats", "summary"]


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
_POSITION = struct.Struct("=H")  # a ring position, as the order pool holds it (> 256 results)
_BYTES = tuple(bytes((i,)) for i in range(256))  # ... and as 1 byte (up to 256)


class _Window:
    """The last `capacity` results, kept sorted: the RTT of a success in nanoseconds, as a
    4-byte float, infinity for a failure (so the RTTs come first, in order, and the failures
    last). Min, median and max are read off by index; the /metrics renderer reads them there
    too (hostwatch.table), so no scrape sorts 10,000 windows.

    Beside each value, in a second pool, its ring position (which result it was, modulo the
    capacity; 1 byte for windows of up to 256 results, else 2): the oldest result is the one
    at ring position `pos`, found with one `bytearray.find`. A push then moves the values
    between the old and the new place by one (memmove) and writes the new one.

    A 4-byte float holds every whole number of nanoseconds up to 2**24 (16.8 ms) exactly and
    keeps 24 significant bits above (64 ns at 1 s): half the memory of doubles (10,000
    targets with 100 results: 4 MB). Whole nanoseconds also keep the running sum exact (an
    integer in a double) and min, median and max short to write (`ns / 1e9` is the shortest
    repr of the RTT the probe measured)."""

    __slots__ = ("_sum", "_sumsq", "base", "capacity", "filled", "lost", "order", "pool", "pos")

    def __init__(self, capacity: int, pool: Pool, order: Pool) -> None:
        self.capacity = capacity
        self.pool, self.order = pool, order  # values; their ring positions
        slot = pool.alloc()
        if order.alloc() != slot:
            raise RuntimeError("window pools out of step")  # they are allocated together
        self.base = slot * capacity  # the first value's index in pool.view (the slot's)
        self.filled = 0
        self.pos = 0  # ring position of the next result (and, once full, of the oldest)
        self.lost = 0
        self._sum = 0.0  # of the RTTs in the window, ns
        self._sumsq = 0.0  # of their squares, ns²

    @property
    def slot(self) -> int:
        return self.base // self.capacity

    def push(self, rtt: float | None) -> None:
        values, ring = self.pool.view, self.order.view
        base, n, pos = self.base, self.filled, self.pos
        new = _FAILED if rtt is None else round(rtt * _NS)
        j = bisect_left(values, new, base, base + n)
        if n == self.capacity:
            i = self._oldest()
            old = values[i]
            if old == _FAILED:
                self.lost -= 1
            else:
                self._sum -= old
                self._sumsq -= old * old
            if j > i:  # the values between move down by one
                j -= 1
                values[i:j] = values[i + 1:j + 1]
                ring[i:j] = ring[i + 1:j + 1]
            elif j < i:  # ... or up by one
                values[j + 1:i + 1] = values[j:i]
                ring[j + 1:i + 1] = ring[j:i]
        else:
            end = base + n
            values[j + 1:end + 1] = values[j:end]
            ring[j + 1:end + 1] = ring[j:end]
            self.filled = n + 1
        values[j] = new  # rounded to 24 bits above 16.8 ms; sorting stays right (monotonic)
        ring[j] = pos
        if rtt is None:
            self.lost += 1
        else:
            kept = values[j]  # as stored
            self._sum += kept
            self._sumsq += kept * kept
        pos += 1
        if pos == self.capacity:
            pos = 0
            self._resum()  # squares above ~9 ms are not exact in a double: bound the drift
        self.pos = pos

    def _oldest(self) -> int:
        """The index (in the pool) of the value whose ring position is `pos`: one memchr
        with 1-byte positions (windows of up to 256 results), a search for 2 bytes at an
        even offset above."""
        data = self.order.data
        if self.order.fmt == "B":
            start = self.base
            return data.find(_BYTES[self.pos], start, start + self.capacity)
        key = _POSITION.pack(self.pos)
        start = 2 * self.base
        end = start + 2 * self.capacity
        at = data.find(key, start, end)
        while at & 1:  # the key straddling two positions: not one of them
            at = data.find(key, at + 1, end)
        return at >> 1

    def received(self) -> list[float]:
        """The RTTs held (ns), in order."""
        view = self.pool.view[self.base:self.base + self.filled - self.lost]
        return cast("list[float]", view.tolist())  # typeshed: list[int] for every format

    def _resum(self) -> None:
        received = self.received()
        self._sum = math.fsum(received)
        self._sumsq = math.fsum(v * v for v in received)

    def counts(self) -> WindowCounts:
        received = self.filled - self.lost
        mean = self._sum / received / _NS if received else None
        return WindowCounts(self.capacity, self.filled, self.lost, mean)

    def stats(self) -> WindowStats:
        return WindowStats(*summary(self.received(), self.filled, self.lost, self._sum,
                                    self._sumsq))


def summary(values: Sequence[float], filled: int, lost: int, total: float,
            squares: float) -> Summary:
    """The window's statistics in seconds from its received `values` (ns, sorted), as the
    renderer computes them too. `total` and `squares`: the sums of the values and of their
    squares."""
    loss = lost / filled if filled else 0.0
    if not values:
        return (filled, lost, loss, None, None, None, None, None)
    n = len(values)
    mean = total / n
    variance = max(squares / n - mean * mean, 0.0)
    half = n // 2
    median = values[half] / _NS if n % 2 else (values[half - 1] + values[half]) / 2e9
    return (filled, lost, loss, values[0] / _NS, median, values[-1] / _NS, mean / _NS,
            math.sqrt(variance) / _NS)


_NONE_FAILED: Final[Mapping[Reason, int]] = MappingProxyType({})
_HEALTH: Final = {health: float(i) for i, health in enumerate(Health)}
_OK: Final = Reason.OK


class ProbeState:
    """Health, counters, RTT histogram (if it has buckets) and window of one target's probe.

    Its numbers are published into a row of `table` (its own, if none is given) after every
    result, for the /metrics renderer; `release` gives the row back."""

    __slots__ = (
        "_failures", "_hist", "_window", "buckets", "last_ip", "last_result",
        "last_transition_at", "received", "row", "rtt_sum", "sent", "table", "tracker",
        "transitions",
    )

    def __init__(self, policy: Policy, window: int, buckets: tuple[float, ...],
                 table: StateTable | None = None) -> None:
        self.table = table = StateTable() if table is None else table
        self.row = table.allocate()
        self.tracker = Tracker(policy)
        self.buckets = buckets
        self.sent = 0
        self.received = 0
        self._failures: dict[Reason, int] | None = None  # made at the first failure
        self.transitions = 0
        self.last_transition_at: float | None = None
        self.last_result: ProbeResult | None = None
        self.last_ip = ""  # sticky: a DNS failure (no address) keeps the last one
        self._hist = self._hist_slot(buckets)
        self.rtt_sum = 0.0
        self._window = _Window(window, *table.window_pools(window))
        self.publish()

    def _hist_slot(self, buckets: tuple[float, ...]) -> int:
        """A histogram slot (a count per bucket and +Inf, then the sum), or -1 without."""
        return self.table.hist_pool(len(buckets) + 2).alloc() if buckets else -1

    def set_buckets(self, buckets: tuple[float, ...]) -> None:
        """A new (or no) RTT histogram, empty; everything else stays. Not after `release`."""
        self._release_hist()
        self.buckets = buckets
        self._hist = self._hist_slot(buckets)
        self.rtt_sum = 0.0
        self.publish()

    def release(self) -> None:
        """Give the row and the pool slots back to the table (the watch is gone). A result
        that arrives later (its probe was in flight) is ignored: the row may be another
        watch's by then."""
        if self.row < 0:
            return
        self._release_hist()
        window = self._window
        self.table.release_window(window.capacity, window.slot)
        self.table.free(self.row)
        self.row = -1

    def _release_hist(self) -> None:
        if self._hist >= 0:
            self.table.release(self.table.hists, len(self.buckets) + 2, self._hist)
            self._hist = -1

    @property
    def hist_slot(self) -> int:
        """The histogram's slot in `table.hists[len(buckets) + 2]`; -1 without."""
        return self._hist

    @property
    def window_slot(self) -> tuple[int, int]:
        """The window's size and its slot in `table.windows[size]`."""
        return self._window.capacity, self._window.slot

    @property
    def failures(self) -> Mapping[Reason, int]:
        """Failed probes by reason."""
        return self._failures or _NONE_FAILED

    @property
    def bucket_counts(self) -> Sequence[int]:
        """Per bucket of the RTT histogram, not cumulative; the last one is +Inf. Empty
        without a histogram."""
        if self._hist < 0:
            return ()
        size = len(self.buckets) + 2
        view = self.table.hists[size].view
        start = self._hist * size
        return [int(c) for c in view[start:start + size - 1].tolist()]

    @property
    def health(self) -> Health:
        return self.tracker.public.health

    @property
    def verdict(self) -> Verdict:
        return self.tracker.public

    def record(self, result: ProbeResult, now: float) -> Transition | None:
        """Account one result; return the transition of the public state it caused, if any.
        Nothing once released."""
        if self.row < 0:
            return None
        tracker = self.tracker
        previous = tracker.public.health
        last = self.last_result
        self.last_result = result
        if result.ip and result.ip != self.last_ip:
            self.last_ip = result.ip
            self.table.dirty.add(self.row)  # the `ip` label
        if not result.reason.unsent:
            self.sent += 1  # a request went out (or was attempted on the wire)
        if result.ok and result.rtt is not None:
            self._success(result.rtt)
        else:
            self._failure(result.reason)
        changes = tracker.changes
        verdict = tracker.update(result, self._window.counts(), now)
        if tracker.changes is not changes or (last is not None and result.tls is not last.tls
                                              and result.tls != last.tls):
            self.table.dirty.add(self.row)  # flap history, TLS details
        if result.phases or (last is not None and last.phases):
            self.table.set_phases(self.row, _phase_values(result.phases))
        if verdict is None:
            self.publish()
            return None
        self.transitions += 1
        self.last_transition_at = now
        self.publish()
        return Transition(previous, verdict.health, result, now, verdict.reason, verdict.detail)

    def publish(self) -> None:
        """Write the scalars into the row (after every result; the renderer reads them)."""
        last, window = self.last_result, self._window
        if last is None:
            ok = rtt = NAN
        elif last.reason is _OK:
            ok, rtt = 1.0, NAN if last.rtt is None else last.rtt
        else:
            ok, rtt = 0.0, NAN
        changed = self.last_transition_at
        PACK_ROW(self.table.main, self.row * ROW_BYTES, ok, rtt,
                 _HEALTH[self.tracker.public.health], self.sent, self.received,
                 self.transitions, NAN if changed is None else changed, window.filled,
                 window.lost, window._sum, window._sumsq)

    def _success(self, rtt: float) -> None:
        self.received += 1
        slot = self._hist  # -1 without a histogram
        if slot >= 0:
            size = len(self.buckets) + 2
            view, start = self.table.hists[size].view, slot * size
            view[start + bisect_left(self.buckets, rtt)] += 1.0
            self.rtt_sum += rtt
            view[start + size - 1] = self.rtt_sum
        self._window.push(rtt)

    def _failure(self, reason: Reason) -> None:
        failures = self._failures
        if failures is None:
            failures = self._failures = {}
        failures[reason] = count = failures.get(reason, 0) + 1
        self.table.failure_column(reason)[self.row] = count
        self._window.push(None)

    def window_stats(self) -> WindowStats:
        return self._window.stats()



def _phase_values(phases: tuple[tuple[str, float], ...]) -> tuple[float, ...]:
    """A result's phase durations in PHASES order, NaN for a phase it did not reach."""
    values = dict(phases)
    unknown = values.keys() - set(PHASES)
    if unknown:
        raise ValueError(f"unknown probe phases {sorted(unknown)}: add them to "
                         "hostwatch.table.PHASES")
    return tuple(values.get(name, NAN) for name in PHASES)
