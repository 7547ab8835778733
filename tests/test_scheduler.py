"""SlotScheduler.between_slots: blocking work (the /metrics fork) waits for a gap between slot
batches instead of delaying one."""

from __future__ import annotations

import asyncio

import pytest

from hostwatch import scheduler as scheduler_module
from hostwatch.config import parse_config
from hostwatch.scheduler import SlotScheduler, slot_of, slots_for
from hostwatch.watch import Watch, Watches


@pytest.fixture(autouse=True)
def _no_heap_settling(monkeypatch: pytest.MonkeyPatch) -> None:
    """apply() freezes the heap out of the cyclic GC (for the daemon); not in the test run."""
    monkeypatch.setattr(scheduler_module, "settle_heap", lambda: None)


def _watches(count: int, interval: str) -> list[Watch]:
    lines = [f"defaults: {{interval: {interval}, timeout: 100ms}}", "targets:"]
    lines += [f"  - {{name: t{i}, host: 127.0.0.{1 + i}, probes: {{icmp: }}}}"
              for i in range(count)]
    return list(Watches.build(parse_config("\n".join(lines) + "\n", "t.yml")))


class TestQuietFor:
    """The decision, at given Unix times (no clock involved)."""

    def _one_slot(self) -> tuple[SlotScheduler, float]:
        scheduler = SlotScheduler(lambda _watch: None, on_error=lambda _err: None)
        (watch,) = _watches(1, "1s")
        scheduler.apply([watch])
        slots = slots_for(1.0, 0.05, 100)
        return scheduler, 1_000_000.0 + slot_of("t0", "icmp", slots) / slots  # a slot's time

    def test_due_slot_not_fired_is_busy(self) -> None:
        scheduler, due = self._one_slot()
        assert scheduler.quiet_for(due + 0.001) == 0.0

    def test_after_the_batch_until_the_next_slot(self) -> None:
        scheduler, due = self._one_slot()
        scheduler._fired_up_to = due  # what _run_slot records once the batch is sent
        assert abs(scheduler.quiet_for(due + 0.001) - 0.999) < 1e-6
        assert abs(scheduler.quiet_for(due + 0.995) - 0.005) < 1e-6

    def test_a_slot_long_overdue_no_longer_blocks(self) -> None:
        """APScheduler skipped it (and counts that); waiting for it would wait for ever."""
        scheduler, due = self._one_slot()
        assert abs(scheduler.quiet_for(due + 0.5) - 0.5) < 1e-6

    def test_no_slots_is_always_quiet(self) -> None:
        scheduler = SlotScheduler(lambda _watch: None, on_error=lambda _err: None)
        assert scheduler.quiet_for(1_000_000.0) == float("inf")


class TestBetweenSlots:
    def test_returns_right_after_a_batch(self) -> None:
        """Asked for more quiet than any gap holds, it returns only once a slot job has
        fired its batch: the fire count has grown every time."""
        async def run() -> list[tuple[int, int]]:
            fired: list[Watch] = []
            scheduler = SlotScheduler(fired.append, on_error=lambda _err: None,
                                      slot_width=0.1)
            scheduler.apply(_watches(8, "200ms"))  # both slots of the 200 ms interval used
            scheduler.start()
            try:
                seen = []
                for _ in range(5):
                    before = len(fired)
                    await scheduler.between_slots(need=1.0)
                    seen.append((before, len(fired)))
                return seen
            finally:
                scheduler.shutdown()

        for before, after in asyncio.run(run()):
            assert after > before

    def test_quiet_loop_returns_at_once(self) -> None:
        """Nothing scheduled: no wait at all (no slot can ever wake it)."""
        async def run() -> bool:
            scheduler = SlotScheduler(lambda _watch: None, on_error=lambda _err: None)
            waiting = asyncio.ensure_future(scheduler.between_slots())
            await asyncio.sleep(0)
            return waiting.done()

        assert asyncio.run(run())
