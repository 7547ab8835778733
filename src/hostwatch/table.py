"""Every watch's numbers in a few flat buffers, so that /metrics can be rendered elsewhere.

`ProbeState` (hostwatch.state) keeps its logic in Python objects and publishes what the
exposition needs into a row of `StateTable` after each result: one `struct.pack_into` of the
scalars (`MAIN`), a cell per failure reason, and the result window and RTT histogram, which
live only here (in `Pool` slots). The table is ordinary memory of the daemon; a scrape copies
it whole into a memfd with one `pwritev` (~0.5 ms at 10,000 targets, between two event-loop
callbacks, so the copy is one consistent instant) and the renderer process reads that copy
(hostwatch.exposition). The daemon never maps the copy: it is not part of its RSS.

Rows are allocated and freed with the watches (a reload frees the rows of removed targets);
freed rows and pool slots are reused, so the buffers are bounded by the largest number of
watches the daemon ever had.
"""

from __future__ import annotations

import math
import mmap
import os
import struct
from collections.abc import Sequence
from typing import Any, Final, NamedTuple, cast

from hostwatch.probes.base import Reason

__all__ = ["MAIN", "PACK_ROW", "PHASES", "REASONS", "ROW", "ROW_BYTES", "Block", "Layout", "Pool",
           "StateTable", "items"]

# The scalars of a row, in order; `ProbeState` packs them all after each result.
MAIN: Final = ("ok", "last_rtt", "health", "sent", "received", "transitions", "last_change",
               "filled", "lost", "sum", "sumsq")
ROW: Final = len(MAIN)
OK, LAST_RTT, HEALTH, SENT, RECEIVED, TRANSITIONS, LAST_CHANGE = range(7)
FILLED, LOST, SUM, SUMSQ = range(7, 11)
# The phases a probe may time, in the order a result lists them (hostwatch.probes.tcp_steps);
# kept, for the rows whose probes time them, in a block of their own (NaN: not reached).
PHASES: Final = ("resolve", "connect", "tls", "first_byte")
REASONS: Final = tuple(Reason)
REASON_INDEX: Final = {reason: i for i, reason in enumerate(REASONS)}
NAN: Final = math.nan
_PHASE_BYTES: Final = len(PHASES) * 8
_MAX_WINDOW: Final = 1 << 16  # ring positions are 2 bytes (the config allows up to 10,000)
_DOUBLE: Final = 8
ROW_BYTES: Final = ROW * _DOUBLE
PACK_ROW: Final = struct.Struct(f"={ROW}d").pack_into
_PACK_PHASES: Final = struct.Struct(f"={len(PHASES)}d").pack_into
_NO_PHASES: Final = struct.pack(f"={len(PHASES)}d", *(NAN,) * len(PHASES))


class Pool:
    """Equal slots of `size` items (format "f" for windows, "d" for histograms), by index."""

    __slots__ = ("_free", "capacity", "data", "fmt", "size", "slot_bytes", "used", "view")

    def __init__(self, fmt: str, size: int) -> None:
        self.fmt, self.size = fmt, size
        self.slot_bytes = size * struct.calcsize(fmt)
        self.capacity = 0
        self.used = 0  # slots ever handed out (the free ones below it are in _free)
        self._free: list[int] = []
        self.data = _zeros(0)
        self.view = items(self.data, fmt)

    def alloc(self) -> int:
        """A slot, its items zero; `view[slot * size:(slot + 1) * size]` are its items."""
        if self._free:
            slot = self._free.pop()
            size = self.slot_bytes
            self.data[slot * size:(slot + 1) * size] = bytes(size)
            return slot
        if self.used == self.capacity:
            self._grow(max(16, self.capacity * 2))
        self.used += 1
        return self.used - 1

    def release(self, slot: int) -> None:
        self._free.append(slot)

    def reserve(self, count: int) -> None:
        """Room for `count` more slots without growing step by step."""
        need = self.used + max(0, count - len(self._free))
        if need > self.capacity:
            self._grow(max(16, need))

    @property
    def live(self) -> int:
        return self.used - len(self._free)

    def _grow(self, capacity: int) -> None:
        self.view.release()
        self.data = _resized(self.data, capacity * self.slot_bytes)
        self.view = items(self.data, self.fmt)
        self.capacity = capacity


class Block(NamedTuple):
    """One buffer of a snapshot: what it holds, where it starts in the file, its items."""

    kind: str  # "main", "phases", "fail" (key: reason index), "window", "hist" (key: size)
    key: int
    offset: int
    items: int
    fmt: str


class Layout(NamedTuple):
    """Where a snapshot put each buffer; `size` is the file's length."""

    rows: int  # rows in the main block (the high-water mark)
    blocks: tuple[Block, ...]
    size: int


class StateTable:
    """The daemon's table: rows of MAIN, failure counts by reason, window and histogram pools
    (a histogram slot: the count of each bucket and +Inf, then the sum of the RTTs), and the
    phase timings of the rows whose probes time them."""

    def __init__(self) -> None:
        self.capacity = 0
        self.rows = 0  # high-water mark: rows ever handed out
        self._free: list[int] = []
        self.main = _zeros(0)
        self.phases: mmap.mmap | None = None  # made when a probe first times one
        self.fail: list[memoryview[float] | None] = [None] * len(REASONS)  # a column per reason
        self.windows: dict[int, Pool] = {}  # by window size
        self.hists: dict[int, Pool] = {}  # by bucket count (+Inf included)
        self._orders: dict[int, Pool] = {}  # by window size: the ring positions
        self.dirty: set[int] = set()  # rows whose address, TLS details or flap history moved
        self._file_size = 0

    # --- rows -----------------------------------------------------------------------------
    def allocate(self) -> int:
        """A row, its scalars NaN or zero (the owner publishes its own right away)."""
        if self._free:
            return self._free.pop()
        if self.rows == self.capacity:
            self._grow(max(16, self.capacity * 2))
        self.rows += 1
        return self.rows - 1

    def free(self, row: int) -> None:
        for column in self.fail:
            if column is not None:
                column[row] = 0.0
        if self.phases is not None:
            self.phases[row * _PHASE_BYTES:(row + 1) * _PHASE_BYTES] = _NO_PHASES
        self.dirty.discard(row)
        self._free.append(row)

    def reserve(self, rows: int, windows: dict[int, int], hists: dict[int, int]) -> None:
        """Room for `rows` more rows and for `windows[size]` more windows of each size (and
        histograms), made at once: growing by doubling while a config is built would copy
        each buffer into a new one beside the old (a transient 1.5 times the table)."""
        need = self.rows + max(0, rows - len(self._free))
        if need > self.capacity:
            self._grow(need)
        for size, count in windows.items():
            values, order = self.window_pools(size)
            values.reserve(count)
            order.reserve(count)
        for size, count in hists.items():
            self.hist_pool(size).reserve(count)

    def set_phases(self, row: int, values: Sequence[float]) -> None:
        if self.phases is None:
            self.phases = _zeros(self.capacity * _PHASE_BYTES)
            _fill(self.phases, 0, self.capacity)
        _PACK_PHASES(self.phases, row * _PHASE_BYTES, *values)

    @property
    def live(self) -> int:
        return self.rows - len(self._free)

    def publish(self, row: int, values: Sequence[float]) -> None:
        """The scalars of a row (what `ProbeState` packs itself on its hot path)."""
        PACK_ROW(self.main, row * ROW_BYTES, *values)

    def cell(self, row: int, index: int) -> float:
        value: float = struct.unpack_from("=d", self.main, (row * ROW + index) * _DOUBLE)[0]
        return value

    def failure_column(self, reason: Reason) -> memoryview[float]:
        """The column of `reason`'s counts, made at its first failure in this table."""
        index = REASON_INDEX[reason]
        column = self.fail[index]
        if column is None:
            column = self.fail[index] = memoryview(_zeros(self.capacity * _DOUBLE)).cast("d")
        return column

    # --- pools ----------------------------------------------------------------------------
    def window_pools(self, size: int) -> tuple[Pool, Pool]:
        """The pools of windows of `size` results: the values (sorted, 4-byte floats, in the
        snapshot) and their ring positions (1 or 2 bytes; the daemon's alone)."""
        if not 0 < size <= _MAX_WINDOW:
            raise ValueError(f"a window holds 1 to {_MAX_WINDOW} results, not {size}")
        pool = self.windows.get(size)
        if pool is None:
            pool = self.windows[size] = Pool("f", size)
            self._orders[size] = Pool("B" if size <= 256 else "H", size)
        return pool, self._orders[size]

    def release_window(self, size: int, slot: int) -> None:
        self.release(self.windows, size, slot)
        self.release(self._orders, size, slot)

    def hist_pool(self, size: int) -> Pool:
        pool = self.hists.get(size)
        if pool is None:
            pool = self.hists[size] = Pool("d", size)
        return pool

    def release(self, pools: dict[int, Pool], size: int, slot: int) -> None:
        """Give back a slot; a pool left without slots goes (a window size no longer used)."""
        pool = pools[size]
        pool.release(slot)
        if pool.live == 0:
            del pools[size]

    # --- snapshot -------------------------------------------------------------------------
    def snapshot(self, fd: int) -> Layout:
        """Copy every buffer into file `fd` (a memfd) with one pwritev; where each went."""
        buffers: list[memoryview] = []
        blocks: list[Block] = []
        offset = 0

        def add(kind: str, key: int, raw: memoryview, fmt: str) -> None:
            nonlocal offset
            blocks.append(Block(kind, key, offset, len(raw) // struct.calcsize(fmt), fmt))
            buffers.append(raw)
            offset += len(raw)

        add("main", 0, memoryview(self.main)[:self.rows * ROW_BYTES], "d")
        if self.phases is not None:
            add("phases", 0, memoryview(self.phases)[:self.rows * _PHASE_BYTES], "d")
        for index, column in enumerate(self.fail):
            if column is not None:
                add("fail", index, column.cast("B")[:self.rows * _DOUBLE], "d")
        for kind, pools in (("window", self.windows), ("hist", self.hists)):
            for size, pool in pools.items():
                add(kind, size, pool.view.cast("B")[:pool.used * pool.slot_bytes], pool.fmt)
        if offset > self._file_size:
            self._file_size = max(offset, self._file_size * 2, 1 << 20)
            os.ftruncate(fd, self._file_size)
        written = os.pwritev(fd, buffers, 0) if buffers else 0
        if written != offset:
            raise OSError(f"snapshot: wrote {written} of {offset} bytes")
        return Layout(self.rows, tuple(blocks), self._file_size)

    def _grow(self, capacity: int) -> None:
        capacity = max(capacity, 16)
        self.main = _resized(self.main, capacity * ROW_BYTES)
        if self.phases is not None:
            self.phases = _resized(self.phases, capacity * _PHASE_BYTES)
            _fill(self.phases, self.capacity, capacity)
        for index, column in enumerate(self.fail):
            if column is not None:
                data = cast("mmap.mmap", column.obj)
                column.release()
                self.fail[index] = memoryview(_resized(data, capacity * _DOUBLE)).cast("d")
        self.capacity = capacity


def items(data: mmap.mmap | memoryview, fmt: str) -> memoryview[Any]:
    """`data` as items of struct format `fmt` ("f", "d": floats; "B", "H": ints)."""
    return cast("memoryview[Any]", memoryview(data).cast(fmt))  # type: ignore[call-overload]


def _fill(phases: mmap.mmap, start: int, end: int) -> None:
    """Rows `start` to `end` of the phases block: not reached (NaN)."""
    phases[start * _PHASE_BYTES:end * _PHASE_BYTES] = _NO_PHASES * (end - start)


def _zeros(size: int) -> mmap.mmap:
    """`size` zero bytes whose pages cost nothing until written: an anonymous mapping (a
    bytearray is memset, so a buffer grown ahead would be resident in full at once), given
    back to the system when dropped."""
    # Private: a shared anonymous mapping cannot grow (past its size, SIGBUS), and a forked
    # child (the config parse) must not write into the daemon's table.
    return mmap.mmap(-1, max(size, mmap.PAGESIZE), flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)


def _resized(data: mmap.mmap, size: int) -> mmap.mmap:
    """`data` made `size` bytes long: in place (mremap, no copy) when no view of it is left,
    else copied into a new mapping."""
    if size <= len(data):
        return data
    try:
        data.resize(size)
    except BufferError:  # a view of it still exists somewhere: copy instead
        grown = _zeros(size)
        grown[:len(data)] = data[:]
        return grown
    return data
