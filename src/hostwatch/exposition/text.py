"""The /metrics text from the state table: byte for byte what prometheus-client writes.

`generate_latest` over `HostwatchCollector` would spend ~10 µs per sample validating and
escaping labels (3.6 s for 10,000 targets in one measurement). `Renderer` writes the same
bytes from the table's numbers (hostwatch.table) and the rows' descriptions
(hostwatch.exposition.rows), family by family:

- a row's label text is made once (when its description changes), not per scrape;
- a family's values are read as whole columns of the table (`memoryview` slices, in C);
- a family whose inputs (its columns' bytes and the rows' descriptions) are the same as at the
  last scrape is not written again: the same `bytes` object is returned, so the caller can
  reuse what it made of it too (its compressed form). State, transitions, loss and most
  families of a healthy fleet change rarely; counters, RTTs and the window change with every
  result, and are written each time.

Names, help texts, types and the order of the families come from `hostwatch.metrics`
(`_Families`), so they are defined once; the sample logic of each per-target family is
repeated here, and `tests/test_exposition.py` proves the output equal to `generate_latest`.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import accumulate
from operator import itemgetter
from typing import Final, NamedTuple

from prometheus_client.core import Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from hostwatch.health import Health
from hostwatch.metrics import DaemonNumbers, _Families, daemon_families
from hostwatch.probes.base import ProbeResult, Reason
from hostwatch.table import (
    FILLED,
    HEALTH,
    LAST_CHANGE,
    LAST_RTT,
    LOST,
    OK,
    PHASES,
    REASONS,
    RECEIVED,
    ROW,
    SENT,
    SUM,
    SUMSQ,
    TRANSITIONS,
    Layout,
    StateTable,
    items,
)

from .book import RowBook, RowInfo, label_text

__all__ = ["KNOWN", "Renderer", "TableView"]

P: Final = "hostwatch_probe_"
# The per-target families, in the order `_Families.all()` yields them.
KNOWN: Final = (
    "success", "state", "rtt_seconds", "last_rtt_seconds", "sent", "received", "failures",
    "transitions", "last_transition_timestamp_seconds", "loss_ratio", "window_rtt_seconds",
    "window_results", "maintenance", "flap_changes", "phase_seconds", "tls_version_info",
    "ssl_earliest_cert_expiry_timestamp_seconds", "ssl_last_chain_info",
)
_DETAILS: Final = KNOWN.index("phase_seconds")  # from here on: rendered by prometheus-client
_STATS: Final = ("min", "median", "max", "mean", "stddev")  # hostwatch.state.summary's order
_COUNT_LIMIT: Final = 1_000_000  # from here on Go (and prometheus-client) write 1.234567e+06
_HEALTHS: Final = tuple(h.value for h in Health)


def _go_string(value: float) -> str:
    """prometheus-client's value format (Go's: 1.234567e+06 from 1e6 on, +Inf, NaN)."""
    return str(floatToGoString(value))  # type: ignore[no-untyped-call]


def _go(value: float) -> str:
    """_go_string, with the common case (a finite value below 1e6) inline."""
    return repr(value) if -1e308 < value < 1e6 else _go_string(value)


def _count(value: float) -> str:
    """A count (an integral float) as prometheus-client writes it."""
    return repr(value) if 0 <= value < _COUNT_LIMIT else _go_string(value)


def _sample_line(name: str, labels: dict[str, str], value: float) -> str:
    """One sample exactly as generate_latest writes it (legacy-valid metric name)."""
    if not labels:
        return f"{name} {_go_string(value)}\n"
    return f"{name}{{{label_text(labels)}}} {_go_string(value)}\n"


def _header(metric: Metric) -> str:
    shown = metric.name + "_total" if metric.type == "counter" else metric.name
    doc = metric.documentation.replace("\\", r"\\").replace("\n", r"\n")
    return f"# HELP {shown} {doc}\n# TYPE {shown} {metric.type}\n"


class TableView(NamedTuple):
    """The buffers of a state table (the live one, or a snapshot of it), as item views."""

    main: memoryview[float]  # rows of hostwatch.table.MAIN, doubles
    phases: memoryview[float] | None  # rows of hostwatch.table.PHASES, if any probe timed
    fail: dict[int, memoryview[float]]  # reason index -> counts by row
    windows: dict[int, memoryview[float]]  # window size -> its pool (4-byte floats)
    hists: dict[int, memoryview[float]]  # histogram size -> its pool (doubles)

    @classmethod
    def of_table(cls, table: StateTable) -> TableView:
        phases = None if table.phases is None else memoryview(table.phases).cast("d")
        return cls(memoryview(table.main).cast("d"), phases,
                   {i: c for i, c in enumerate(table.fail) if c is not None},
                   {size: pool.view for size, pool in table.windows.items()},
                   {size: pool.view for size, pool in table.hists.items()})

    @classmethod
    def of_snapshot(cls, data: memoryview, layout: Layout) -> TableView:
        """Views into `data` (the snapshot file, mapped) as `layout` describes it."""
        main: memoryview[float] = memoryview(b"").cast("d")
        phases: memoryview[float] | None = None
        fail: dict[int, memoryview[float]] = {}
        windows: dict[int, memoryview[float]] = {}
        hists: dict[int, memoryview[float]] = {}
        for block in layout.blocks:
            size = 4 if block.fmt == "f" else 8
            view: memoryview[float] = items(data[block.offset:block.offset
                                                 + block.items * size], block.fmt)
            if block.kind == "main":
                main = view
            elif block.kind == "phases":
                phases = view
            else:
                {"fail": fail, "window": windows, "hist": hists}[block.kind][block.key] = view
        return cls(main, phases, fail, windows, hists)


def _gather(values: Sequence[float], order: tuple[int, ...]) -> Sequence[float]:
    """`values[row]` for each row of `order`, in C."""
    if len(order) > 1:
        gathered: Sequence[float] = itemgetter(*order)(values)
        return gathered
    return [values[row] for row in order]


class _Fixed(Collector):
    """A collector that yields given families (to reuse generate_latest on them)."""

    def __init__(self, metrics: Iterable[Metric]) -> None:
        self._metrics = list(metrics)

    def collect(self) -> Iterator[Metric]:
        return iter(self._metrics)


class _Scrape:
    """One scrape's inputs and the columns read so far."""

    def __init__(self, view: TableView, rows: RowBook, now: float) -> None:
        self.view, self.rows, self.now = view, rows, now
        self.infos = [rows.info(row) for row in rows.order]
        self._columns: dict[int, Sequence[float]] = {}
        self._failures: list[tuple[str, Sequence[float]]] | None = None

    def column(self, index: int) -> Sequence[float]:
        """Field `index` of hostwatch.table.MAIN for each row, in order."""
        found = self._columns.get(index)
        if found is None:
            found = self._columns[index] = _gather(self.view.main[index::ROW].tolist(),
                                                   self.rows.order)
        return found

    def failures(self) -> list[tuple[str, Sequence[float]]]:
        """Each failure reason that occurred (in the label's sort order), with its counts
        for each row, in order."""
        if self._failures is None:
            self._failures = sorted((REASONS[i].value, _gather(c.tolist(), self.rows.order))
                                    for i, c in self.view.fail.items())
        return self._failures

    def phases(self) -> list[Sequence[float]]:
        """Each of hostwatch.table.PHASES for each row, in order (none if no probe timed)."""
        block = self.view.phases
        if block is None:
            return []
        count = len(PHASES)
        return [_gather(block[i::count].tolist(), self.rows.order) for i in range(count)]

    def raw(self, *indexes: int) -> tuple[bytes, ...]:
        """The bytes of whole columns (every row): a cache key."""
        return tuple(self.view.main[i::ROW].tobytes() for i in indexes)


# Writes rows a..b (positions in the order) of one family.
Family = Callable[["_Scrape", int, int], Iterable[str]]
_BLOCK: Final = 512  # rows written at a time: their strings die before the next block's


class Renderer:
    """Writes the exposition; keeps what it wrote of each family for the next scrape."""

    def __init__(self) -> None:
        self._cache: dict[str, tuple[object, bytes]] = {}
        self._kinds: tuple[int, tuple[str, ...]] = (-1, ())

    def render(self, view: TableView, rows: RowBook, numbers: DaemonNumbers, now: float,
               others: Callable[[], bytes]) -> Iterator[bytes]:
        """The exposition, one piece per family (then the daemon-wide families, then what
        `others` renders: the registry's other collectors, such as process_*)."""
        scrape = _Scrape(view, rows, now)
        metrics = _Families(now).all()
        names = tuple(m.name.removeprefix(P) for m in metrics)
        if names != KNOWN:
            raise ValueError("hostwatch.metrics has families hostwatch.exposition does not "
                             f"write: {sorted(set(names) ^ set(KNOWN))}")
        writers = self._writers()
        for metric, (name, writer, key) in zip(metrics[:_DETAILS], writers, strict=True):
            yield self._family(name, _header(metric), writer, scrape, key(scrape))
        yield generate_latest(_Fixed(self._details(scrape)))
        yield generate_latest(_Fixed(daemon_families(numbers, self._targets(scrape))))
        yield others()

    def _family(self, name: str, header: str, writer: Family, scrape: _Scrape,
                key: object) -> bytes:
        """A family's text; the cached bytes if `key` (its inputs) did not change."""
        full_key = (scrape.rows.generation, key)
        cached = self._cache.get(name)
        if cached is not None and key is not None and cached[0] == full_key:
            return cached[1]
        rows = len(scrape.infos)
        text = b"".join([header.encode(), *("".join(writer(scrape, a, min(rows, a + _BLOCK)))
                                            .encode() for a in range(0, rows, _BLOCK))])
        if key is not None:
            self._cache[name] = (full_key, text)
        return text

    def _writers(self) -> list[tuple[str, Family, Callable[[_Scrape], object]]]:
        """For each per-target family before the details: its name, its writer, and its cache
        key (None: written every time)."""
        def never(_s: _Scrape) -> object:
            return None

        def columns(*indexes: int) -> Callable[[_Scrape], object]:
            return lambda s: s.raw(*indexes)

        return [
            ("success", _success, columns(OK)),
            ("state", _state, columns(HEALTH)),
            ("rtt_seconds", _histogram, lambda s: tuple(v.tobytes()
                                                        for v in s.view.hists.values())),
            ("last_rtt_seconds", _last_rtt, never),
            ("sent", _counts(SENT, "sent_total"), never),
            ("received", _counts(RECEIVED, "received_total"), never),
            ("failures", _failures, lambda s: tuple(sorted(
                (i, c.tobytes()) for i, c in s.view.fail.items()))),
            ("transitions", _counts(TRANSITIONS, "transitions_total"), columns(TRANSITIONS)),
            ("last_transition_timestamp_seconds", _last_change, columns(LAST_CHANGE)),
            ("loss_ratio", _loss, columns(FILLED, LOST)),
            ("window_rtt_seconds", _window, never),
            ("window_results", _counts(FILLED, "window_results"), columns(FILLED)),
            ("maintenance", _maintenance, _maintenance_key),
            ("flap_changes", _flap_changes, _flap_key),
        ]

    def _details(self, scrape: _Scrape) -> list[Metric]:
        """Phase timings and TLS details, through metrics.py's own code (few rows have
        them): the last result as far as it matters here, rebuilt from the row."""
        families = _Families(scrape.now).details
        phases = scrape.phases()
        timed = {pos for column in phases for pos, v in enumerate(column) if v == v}  # noqa: PLR0124 - NaN test
        with_tls = {pos for pos, info in enumerate(scrape.infos) if info.dynamic.tls}
        for pos in sorted(timed | with_tls):
            info = scrape.infos[pos]
            done = tuple((name, column[pos]) for name, column in zip(PHASES, phases,
                                                                      strict=True)
                         if column[pos] == column[pos])
            families.add(info.labels, ProbeResult(Reason.OK, "", phases=done,
                                                  tls=info.dynamic.tls))
        return families.all()

    def _targets(self, scrape: _Scrape) -> dict[tuple[str, str], int]:
        """Watches by (probe kind, state), for hostwatch_targets."""
        generation, kinds = self._kinds
        if generation != scrape.rows.generation:
            kinds = tuple(info.static.probe for info in scrape.infos)
            self._kinds = (scrape.rows.generation, kinds)
        healths = [_HEALTHS[int(h)] for h in scrape.column(HEALTH)]
        return dict(Counter(zip(kinds, healths, strict=True)))


# --- the families -------------------------------------------------------------------------
def _success(s: _Scrape, first: int, end: int) -> list[str]:
    name = P + "success{"
    return [f"{name}{info.base}}} {'1.0' if ok else '0.0'}\n"
            for info, ok in zip(s.infos[first:end], s.column(OK)[first:end], strict=True)
            if ok == ok]  # NaN: no result yet  # noqa: PLR0124 - NaN test


def _state(s: _Scrape, first: int, end: int) -> Iterator[str]:
    name = P + "state{"
    for info, health in zip(s.infos[first:end], s.column(HEALTH)[first:end], strict=True):
        b, a = info.split("state")
        mine = _HEALTHS[int(health)]
        yield "".join(f'{name}{b}state="{h}"{a}}} {"1.0" if h == mine else "0.0"}\n'
                      for h in _HEALTHS)


def _histogram(s: _Scrape, first: int, end: int) -> Iterator[str]:
    for info in s.infos[first:end]:
        st = info.static
        if st.hist_slot < 0:
            continue
        size = len(st.buckets) + 2  # the counts, then the sum
        view = s.view.hists[size]
        *counts, total = view[st.hist_slot * size:(st.hist_slot + 1) * size].tolist()
        b, a = info.split("le")
        les = (*(repr(float(bound)) for bound in st.buckets), "+Inf")
        cumulative = list(accumulate(counts))
        yield "".join(f'{P}rtt_seconds_bucket{{{b}le="{le}"{a}}} {_count(c)}\n'
                      for le, c in zip(les, cumulative, strict=True))
        yield (f"{P}rtt_seconds_count{{{info.base}}} {_count(cumulative[-1])}\n"
               f"{P}rtt_seconds_sum{{{info.base}}} {_go(total)}\n")


def _last_rtt(s: _Scrape, first: int, end: int) -> list[str]:
    name = P + "last_rtt_seconds{"
    return [f"{name}{info.base}}} {repr(rtt) if 0.0 <= rtt < 1e6 else _go(rtt)}\n"
            for info, rtt in zip(s.infos[first:end], s.column(LAST_RTT)[first:end], strict=True)
            if rtt == rtt]  # noqa: PLR0124 - NaN test


def _counts(index: int, suffix: str) -> Family:
    name = P + suffix + "{"

    def write(s: _Scrape, first: int, end: int) -> list[str]:
        return [f"{name}{info.base}}} {value!r}\n" if value < _COUNT_LIMIT else
                f"{name}{info.base}}} {_count(value)}\n"
                for info, value in zip(s.infos[first:end], s.column(index)[first:end], strict=True)]
    return write


def _failures(s: _Scrape, first: int, end: int) -> Iterator[str]:
    columns = s.failures()
    failing = sorted({pos for _, column in columns
                      for pos, n in enumerate(column[first:end], start=first) if n})
    for pos in failing:
        b, a = s.infos[pos].split("reason")
        for reason, column in columns:
            if column[pos]:
                yield f'{P}failures_total{{{b}reason="{reason}"{a}}} {_count(column[pos])}\n'


def _last_change(s: _Scrape, first: int, end: int) -> Iterator[str]:
    name = P + "last_transition_timestamp_seconds{"
    for info, at in zip(s.infos[first:end], s.column(LAST_CHANGE)[first:end], strict=True):
        if at == at:  # noqa: PLR0124 - NaN test
            yield f"{name}{info.base}}} {_go(at)}\n"


def _loss(s: _Scrape, first: int, end: int) -> Iterator[str]:
    name = P + "loss_ratio{"
    for info, filled, lost in zip(s.infos[first:end], s.column(FILLED)[first:end],
                                  s.column(LOST)[first:end], strict=True):
        if filled:
            yield f"{name}{info.base}}} {_go(lost / filled)}\n"


def _window(s: _Scrape, first: int, end: int) -> list[str]:
    """min, median, max, mean and stddev over a row's window: `hostwatch.state.summary`
    inline (this runs for every row at every scrape). The window is kept sorted, RTTs first
    (hostwatch.state._Window), so min, median and max are read by index."""
    w = P + "window_rtt_seconds{"
    windows = s.view.windows
    out: list[str] = []
    add = out.append
    sqrt = math.sqrt
    rows = slice(first, end)
    for info, filled, lost, total, squares in zip(
            s.infos[rows], s.column(FILLED)[rows], s.column(LOST)[rows], s.column(SUM)[rows],
            s.column(SUMSQ)[rows], strict=True):
        n = filled - lost  # replies in the window
        if not n:
            continue  # none (or no result yet): no statistics
        size, slot = info.static.window
        values = windows[size]
        start = slot * size
        half = start + int(n) // 2
        median = values[half] / 1e9 if n % 2 else (values[half - 1] + values[half]) / 2e9
        low, high = values[start] / 1e9, values[start + int(n) - 1] / 1e9
        mean = total / n
        stddev = sqrt(max(squares / n - mean * mean, 0.0)) / 1e9
        mean /= 1e9
        b, a = info.middle  # where `stat` goes
        if low >= 0.0 and high < 1e6:
            add(f'{w}{b}stat="min"{a}}} {low!r}\n{w}{b}stat="median"{a}}} {median!r}\n'
                f'{w}{b}stat="max"{a}}} {high!r}\n{w}{b}stat="mean"{a}}} {mean!r}\n'
                f'{w}{b}stat="stddev"{a}}} {stddev!r}\n')
        else:
            add("".join(f'{w}{b}stat="{stat}"{a}}} {_go(value)}\n' for stat, value in
                        zip(_STATS, (low, median, high, mean, stddev), strict=True)))
    return out


def _in_maintenance(info: RowInfo, now: float) -> str | None:
    return next((w.name for w in info.static.maintenance if w.active(now)), None)


def _maintenance_key(s: _Scrape) -> object:
    return tuple(_in_maintenance(info, s.now) for info in s.infos if info.static.maintenance)


def _maintenance(s: _Scrape, first: int, end: int) -> Iterator[str]:
    for info in s.infos[first:end]:
        if info.static.maintenance:
            window = _in_maintenance(info, s.now)
            if window is not None:
                yield _sample_line(P + "maintenance", {**info.labels, "window": window}, 1)


def _recent(info: RowInfo, now: float) -> int:
    """Underlying state changes within the flap window (Tracker.recent_changes)."""
    flap_window = info.static.flap_window
    return sum(1 for t in info.dynamic.changes if now - t <= flap_window)


def _flap_key(s: _Scrape) -> object:
    return tuple(_recent(info, s.now) for info in s.infos if info.dynamic.changes)


def _flap_changes(s: _Scrape, first: int, end: int) -> Iterator[str]:
    name = P + "flap_changes{"
    for info in s.infos[first:end]:
        recent = _recent(info, s.now) if info.dynamic.changes else 0
        yield f"{name}{info.base}}} {_count(float(recent))}\n"
