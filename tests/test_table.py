"""hostwatch.table: rows and pools a state publishes into, and the snapshot the renderer reads;
hostwatch.state's sorted window against a plain model of it."""

from __future__ import annotations

import math
import mmap
import os
import statistics
import struct
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hostwatch.health import Policy
from hostwatch.probes.base import ProbeResult, Reason
from hostwatch.state import ProbeState
from hostwatch.table import MAIN, PHASES, REASONS, ROW, Pool, StateTable


@pytest.fixture
def memfd() -> Iterator[int]:
    fd = os.memfd_create("test-snapshot")
    yield fd
    os.close(fd)


def _ok(rtt: float) -> ProbeResult:
    return ProbeResult(Reason.OK, "127.0.0.1", rtt=rtt)


LOST = ProbeResult(Reason.TIMEOUT, "127.0.0.1")


def _cells(table: StateTable, row: int) -> dict[str, float]:
    return {name: table.cell(row, i) for i, name in enumerate(MAIN)}


class TestRows:
    def test_published_after_each_result(self) -> None:
        """The row holds what the state counts: last result, health, counters, window."""
        state = ProbeState(Policy(failure_threshold=2), 10, ())
        for result in (_ok(0.001), LOST, _ok(0.003)):
            state.record(result, 1000.0)
        cells = _cells(state.table, state.row)
        assert (1.0, 0.003, 3.0, 2.0, 3.0, 1.0) == (
            cells["ok"], cells["last_rtt"], cells["sent"], cells["received"], cells["filled"],
            cells["lost"])
        assert 4e6 == cells["sum"]
        assert 1000.0 == cells["last_change"]

    def test_a_fresh_row_has_no_result(self) -> None:
        """Before any result: no success value, no RTT, no transition (NaN), zero counts."""
        state = ProbeState(Policy(), 10, ())
        cells = _cells(state.table, state.row)
        assert all(math.isnan(cells[k]) for k in ("ok", "last_rtt", "last_change"))
        assert 0.0 == cells["sent"] == cells["filled"]

    def test_freed_rows_are_reused_clean(self) -> None:
        """A released row comes back to the next state without its failure counts."""
        table = StateTable()
        first = ProbeState(Policy(), 10, (), table)
        first.record(LOST, 1.0)
        row = first.row
        first.release()
        second = ProbeState(Policy(), 10, (), table)
        assert row == second.row
        assert 0.0 == table.failure_column(Reason.TIMEOUT)[row]
        assert 0.0 == _cells(table, row)["sent"]

    def test_growing_keeps_the_rows(self) -> None:
        """Rows, failure columns and windows survive the buffers growing (in place)."""
        table = StateTable()
        states = [ProbeState(Policy(), 5, (), table) for _ in range(3)]
        for state in states:
            state.record(LOST, 1.0)
            state.record(_ok(0.002), 2.0)
        states += [ProbeState(Policy(), 5, (), table) for _ in range(200)]
        assert table.capacity >= 203
        for state in states[:3]:
            assert (2.0, 1.0) == (_cells(table, state.row)["sent"],
                                  table.failure_column(Reason.TIMEOUT)[state.row])
            assert [2e6] == state._window.received()

    def test_reserve_makes_room_at_once(self) -> None:
        """After reserve, allocating that much does not grow the buffers again."""
        table = StateTable()
        table.reserve(500, {100: 500}, {})
        capacity, pool = table.capacity, table.windows[100]
        pools = (pool.capacity, pool.data)
        for _ in range(500):
            ProbeState(Policy(), 100, (), table)
        assert (capacity, pools) == (table.capacity, (pool.capacity, pool.data))


class TestPool:
    def test_slots_are_reused_and_zeroed(self) -> None:
        pool = Pool("d", 3)
        a, b = pool.alloc(), pool.alloc()
        pool.view[a * 3:a * 3 + 3] = memoryview(struct.pack("3d", 1, 2, 3)).cast("d")
        pool.release(a)
        assert a == pool.alloc()
        assert [0.0, 0.0, 0.0] == pool.view[a * 3:a * 3 + 3].tolist()
        assert 2 == pool.live
        assert b != a


class TestSnapshot:
    def test_blocks_hold_the_tables_buffers(self, memfd: int) -> None:
        """One pwritev puts every buffer in the file, where the layout says."""
        table = StateTable()
        states = [ProbeState(Policy(), 4, (0.001, 0.01), table) for _ in range(3)]
        states[1].record(_ok(0.005), 1.0)
        states[2].record(LOST, 1.0)
        layout = table.snapshot(memfd)
        data = mmap.mmap(memfd, layout.size, prot=mmap.PROT_READ)
        try:
            kinds = {(b.kind, b.key) for b in layout.blocks}
            assert {("main", 0), ("fail", REASONS.index(Reason.TIMEOUT)), ("window", 4),
                    ("hist", 4)} == kinds
            main = next(b for b in layout.blocks if b.kind == "main")
            assert 3 * ROW == main.items
            assert bytes(table.main[:main.items * 8]) == data[main.offset:main.offset +
                                                              main.items * 8]
            assert layout.size >= sum(b.items * (4 if b.fmt == "f" else 8)
                                      for b in layout.blocks)
        finally:
            data.close()

    def test_phases_only_when_a_probe_timed_them(self, memfd: int) -> None:
        """The phases block exists once a result carried phases; NaN for the rest."""
        table = StateTable()
        plain, timed = ProbeState(Policy(), 4, (), table), ProbeState(Policy(), 4, (), table)
        assert "phases" not in {b.kind for b in table.snapshot(memfd).blocks}
        timed.record(ProbeResult(Reason.OK, "127.0.0.1", rtt=0.002,
                                 phases=(("resolve", 0.0), ("connect", 0.002))), 1.0)
        assert table.phases is not None
        cells = struct.unpack_from(f"{2 * len(PHASES)}d", table.phases)
        assert all(math.isnan(c) for c in cells[:len(PHASES)])  # `plain`'s row
        assert [0.0, 0.002] == list(cells[len(PHASES):len(PHASES) + 2])
        assert math.isnan(cells[-1])
        assert 0 == plain.row

    def test_unknown_phase_is_refused(self) -> None:
        """A phase the table has no cell for is an error, not silently dropped."""
        state = ProbeState(Policy(), 4, ())
        with pytest.raises(ValueError, match="unknown probe phases"):
            state.record(ProbeResult(Reason.OK, "127.0.0.1", rtt=0.1,
                                     phases=(("handshake", 0.1),)), 1.0)


class TestSortedWindow:
    @settings(max_examples=150, deadline=None)
    @given(st.integers(1, 300), st.lists(st.one_of(st.none(), st.integers(1, 50_000_000)),
                                         max_size=700))
    def test_same_as_the_last_results_sorted(self, capacity: int,
                                             results: list[int | None]) -> None:
        """After any pushes (None: a failure), the window holds the last `capacity` results
        sorted, RTTs first, and its counts, sums and statistics are those of that list.
        Windows above 256 results keep 2-byte ring positions."""
        state = ProbeState(Policy(), capacity, ())
        for ns in results:
            state.record(LOST if ns is None else _ok(ns / 1e9), 1.0)
        window = state._window
        kept = results[-capacity:]
        as_stored = [struct.unpack("f", struct.pack("f", ns))[0] for ns in kept
                     if ns is not None]
        assert sorted(as_stored) == window.received()
        assert (len(kept), kept.count(None)) == (window.filled, window.lost)
        stats = state.window_stats()
        if as_stored:
            assert stats.rtt_median == pytest.approx(statistics.median(as_stored) / 1e9)
            assert (min(as_stored) / 1e9, max(as_stored) / 1e9) == (stats.rtt_min,
                                                                    stats.rtt_max)
            assert stats.rtt_mean == pytest.approx(statistics.fmean(as_stored) / 1e9)
        else:
            assert stats.rtt_median is None
        positions = window.order.view[window.base:window.base + window.filled].tolist()
        assert sorted(positions) == list(range(window.filled))


class TestRelease:
    def test_a_late_result_after_release_changes_nothing(self) -> None:
        """A probe in flight when its watch was removed reports after the row went to a new
        watch: the new watch's row and window are left alone, and no transition comes."""
        table = StateTable()
        old = ProbeState(Policy(), 4, (), table)
        old.release()
        new = ProbeState(Policy(), 4, (), table)
        new.record(_ok(0.001), 1.0)
        before = (_cells(table, new.row), new._window.received())
        assert old.record(LOST, 2.0) is None
        assert before == (_cells(table, new.row), new._window.received())
