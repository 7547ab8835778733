"""Slot jobs on APScheduler: a few jobs fan out batches, instead of one job per target.

Each interval gets S = interval / slot_width slots (at most `max_slots`). A watch's slot comes
from a hash of its name and probe, so its phase is the same across reloads and restarts, and
the watches of one interval are spread evenly over it. The slot jobs are anchored on the epoch:
slot k of interval I fires at wall-clock times t with t mod I = k·I/S.

Late runs are measured (lag = start of the slot job - its scheduled time); runs APScheduler
skipped (missed, or the previous run still going) and probes not started because the previous
probe of that watch is still in flight are counted.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import math
import time
import zlib
from bisect import bisect_left
from collections.abc import Callable, Iterable
from datetime import UTC, datetime

from apscheduler.events import (
    EVENT_JOB_ERROR,
    EVENT_JOB_MAX_INSTANCES,
    EVENT_JOB_MISSED,
    JobEvent,
    JobExecutionEvent,
)
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.interval import IntervalTrigger

from hostwatch.watch import Watch

__all__ = ["LAG_BUCKETS", "QUIET_NEED", "SchedulerStats", "SlotScheduler", "slot_of"]

LAG_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
SlotKey = tuple[float, int]


class SchedulerStats:
    """Counters for metrics: slot runs, lag histogram, skipped runs by reason."""

    __slots__ = ("lag_counts", "lag_sum", "last_lag", "runs", "skipped")

    def __init__(self) -> None:
        self.runs = 0
        self.lag_counts = [0] * (len(LAG_BUCKETS) + 1)
        self.lag_sum = 0.0
        self.last_lag = 0.0
        self.skipped: dict[str, int] = {"missed": 0, "max_instances": 0}

    def observe_lag(self, lag: float) -> None:
        self.runs += 1
        self.last_lag = lag
        self.lag_sum += lag
        self.lag_counts[bisect_left(LAG_BUCKETS, lag)] += 1


QUIET_NEED = 0.010  # seconds of a quiet event loop `between_slots` waits for by default


def slots_for(interval: float, slot_width: float, max_slots: int) -> int:
    return max(1, min(max_slots, round(interval / slot_width)))


def slot_of(watch_name: str, probe: str, slots: int) -> int:
    """The stable slot of a watch: a hash of its identity, scaled to [0, slots)."""
    digest = zlib.crc32(f"{watch_name}\0{probe}".encode())
    return (digest * slots) >> 32


class SlotScheduler:
    """Owns the AsyncIOScheduler and the slot membership; `apply` swaps membership in place."""

    def __init__(self, fire: Callable[[Watch], None],
                 on_error: Callable[[BaseException], None], slot_width: float = 0.05,
                 max_slots: int = 100) -> None:
        self.stats = SchedulerStats()
        self._fire = fire
        self._on_error = on_error
        self._slot_width = slot_width
        self._max_slots = max_slots
        self._members: dict[SlotKey, list[Watch]] = {}
        self._fired_up_to = -math.inf  # scheduled time of the latest slot that has fired
        self._waiters: list[asyncio.Future[None]] = []
        self._scheduler = AsyncIOScheduler(
            timezone=UTC,
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 1},
        )
        self._scheduler.add_listener(self._on_skip, EVENT_JOB_MISSED | EVENT_JOB_MAX_INSTANCES)
        # APScheduler catches whatever a job raises (MemoryError included) and only logs it;
        # a slot job never raises for a probe outcome, so anything it raises is fatal.
        self._scheduler.add_listener(self._on_job_error, EVENT_JOB_ERROR)
        logging.getLogger("apscheduler").setLevel(logging.WARNING)

    @property
    def slot_count(self) -> int:
        return len(self._members)

    def apply(self, watches: Iterable[Watch]) -> None:
        """Make the slot jobs match `watches`: add and remove jobs, swap the membership."""
        members: dict[SlotKey, list[Watch]] = {}
        for watch in watches:
            slots = slots_for(watch.interval, self._slot_width, self._max_slots)
            key = (watch.interval, slot_of(watch.target.name, watch.probe_name, slots))
            members.setdefault(key, []).append(watch)
        for key in self._members.keys() - members.keys():
            self._scheduler.remove_job(_job_id(key))
        for key in members.keys() - self._members.keys():
            self._add_job(key)
        self._members = members
        settle_heap()

    def _add_job(self, key: SlotKey) -> None:
        interval, slot = key
        slots = slots_for(interval, self._slot_width, self._max_slots)
        offset = interval * slot / slots
        trigger = IntervalTrigger(seconds=interval,
                                  start_date=datetime.fromtimestamp(offset, UTC), timezone=UTC)
        self._scheduler.add_job(self._run_slot, trigger, args=(key,), id=_job_id(key),
                                name=_job_id(key),
                                misfire_grace_time=max(1, math.ceil(interval)))

    async def _run_slot(self, key: SlotKey) -> None:
        interval, slot = key
        slots = slots_for(interval, self._slot_width, self._max_slots)
        now = time.time()
        offset = interval * slot / slots
        scheduled = offset + math.floor((now - offset) / interval) * interval
        self.stats.observe_lag(max(0.0, now - scheduled))
        for watch in self._members.get(key, ()):
            self._fire(watch)
        self._fired_up_to = max(self._fired_up_to, scheduled)
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def between_slots(self, need: float = QUIET_NEED) -> None:
        """Return when the event loop may stop for `need` seconds without delaying a slot:
        at once if no slot is due or running and none is due within `need`, else right
        after the next slot job has fired its batch (at most two slot widths later).

        For work that blocks the loop briefly: the copy of the state table a scrape takes
        (~0.5 ms at 10,000 targets, hostwatch.exposition.client) would delay every probe of
        a slot due meanwhile."""
        if self.quiet_for(time.time()) >= need:
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(2 * self._slot_width):
                await waiter
        except TimeoutError:
            pass  # no slot ran (all skipped, or none left): go ahead
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)

    def quiet_for(self, now: float) -> float:
        """Seconds from `now` (Unix time) until the next slot is due; 0 if a slot whose time
        has come has not fired yet; infinite without slots."""
        latest, soonest = -math.inf, math.inf
        for interval, slot in self._members:
            offset = interval * slot / slots_for(interval, self._slot_width, self._max_slots)
            previous = offset + math.floor((now - offset) / interval) * interval
            latest = max(latest, previous)
            soonest = min(soonest, previous + interval)
        # A slot not fired two slot widths after its time was skipped (APScheduler counts it).
        if latest > self._fired_up_to and now - latest < 2 * self._slot_width:
            return 0.0
        return soonest - now

    def _on_skip(self, event: JobEvent) -> None:
        kind = "missed" if event.code == EVENT_JOB_MISSED else "max_instances"
        self.stats.skipped[kind] += 1

    def _on_job_error(self, event: JobExecutionEvent) -> None:
        self._on_error(event.exception)

    def start(self) -> None:
        self._scheduler.start()

    def shutdown(self) -> None:
        if self._scheduler.running:
            self._scheduler.shutdown(wait=False)
        # Let APScheduler's wake-up callback see the shutdown before the loop closes.
        asyncio.get_running_loop().call_soon(lambda: None)


def _job_id(key: SlotKey) -> str:
    return f"slot-{key[0]:g}s-{key[1]}"


def settle_heap() -> None:
    """After a (re)load: collect once, then freeze what survives (config, watches, state) out
    of the cyclic GC. Otherwise every full collection walks those ~17 objects per target
    again: at 10,000 targets that was a quarter of the daemon's CPU and 50-100 ms stalls of
    the event loop (scheduler lag). Objects made later are collected as usual; frozen ones
    that lose their last reference (a later reload) are still freed by reference counting.
    ~50 ms at 10,000 targets, once per load.

    Each probe's result outlives a young collection (it is the watch's last result until the
    next probe), so ~1 object per probe reaches the oldest generation; with the default
    thresholds that triggered a full collection about every second. 1,000 (instead of 10)
    young-generation-1 collections between full ones keeps them minutes apart."""
    gc.collect()
    gc.freeze()
    young, middle, _old = gc.get_threshold()
    gc.set_threshold(young, middle, max(_old, 1000))
