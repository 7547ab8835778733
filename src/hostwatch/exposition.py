"""/metrics: a fast renderer, byte for byte what prometheus-client writes, run in a child.

`generate_latest` spends ~10 µs per sample validating, sorting and escaping labels: 3.6 s for
10,000 targets (~400,000 samples) in one measurement. Here the per-target families are written
straight from the watches: each watch's labels are escaped and sorted once per scrape, a
family's lines for one watch come from one template, and integer counts are formatted as
integers. The daemon-wide families and `process_*` still go through `generate_latest` (a few
dozen samples).

Names, help texts, types and the order of the families come from `hostwatch.metrics`
(`_Families`), so they are defined once. The sample logic of each per-target family is repeated
here; `tests/test_exposition.py` proves the output equal to `generate_latest` on the same
registry. A family this module does not know (added to metrics.py but not here) makes `render`
fall back to `generate_latest` for the whole scrape: slow, never wrong.

Even so, 10,000 targets take a few hundred ms of CPU, which the event loop cannot spare: probe
sends would wait. `Scraper` therefore forks: the child holds a copy-on-write snapshot of every
watch as it was at the fork (so one scrape is consistent across families), renders and gzips
it on the other cores, and writes it to a pipe that the event loop relays to the client. The
loop only pays for the fork (~1-2 ms). With enough watches the child forks helpers, one per
usable CPU but one (`parts_for`): each renders a contiguous share of the watches, family by family
(`render_segments`), and the child joins their segments in order (hostwatch.segments, which
also joins their gzip output into one member). The children's CPU shows in the daemon's
(children's) accounting. Where fork is impossible the render runs in the loop, as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import gc
import logging
import os
import signal
import time
import zlib
from bisect import bisect_left
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable, Iterator, Sequence
from itertools import accumulate
from typing import Final, NoReturn

from prometheus_client import CollectorRegistry
from prometheus_client.core import Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.openmetrics.exposition import escape_label_name
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from hostwatch.heap import reuse_freed_memory
from hostwatch.metrics import HostwatchCollector, _Families, _watch_labels
from hostwatch.segments import PIECE, FrameReader, Sink
from hostwatch.state import Health
from hostwatch.watch import Watch

__all__ = ["Scraper", "render", "render_chunks", "render_segments"]

log = logging.getLogger(__name__)

P: Final = "hostwatch_probe_"
# The per-target families this module writes, in the order `_Families.all()` yields them.
KNOWN: Final = (
    "success", "state", "rtt_seconds", "last_rtt_seconds", "sent", "received", "failures",
    "transitions", "last_transition_timestamp_seconds", "loss_ratio", "window_rtt_seconds",
    "window_results", "maintenance", "flap_changes", "phase_seconds", "tls_version_info",
    "ssl_earliest_cert_expiry_timestamp_seconds", "ssl_last_chain_info",
)
FIRST: Final = KNOWN.index("last_rtt_seconds")  # families of the first pass
_DETAILS: Final = KNOWN.index("phase_seconds")  # from here on: _ProbeDetails, rendered generically
_STATS: Final = ("min", "median", "max", "mean", "stddev")
_COUNT_LIMIT: Final = 1_000_000  # from here on Go (and prometheus-client) write 1.234567e+06


def _go_string(value: float) -> str:
    """prometheus-client's value format (Go's: 1.234567e+06 from 1e6 on, +Inf, NaN)."""
    return str(floatToGoString(value))  # type: ignore[no-untyped-call]


def _go(value: float) -> str:
    """_go_string, with the common case (a finite value below 1e6) inline."""
    return repr(value) if -1e308 < value < 1e6 else _go_string(value)


def _count(value: int) -> str:
    """An integer count as prometheus-client writes float(count)."""
    return f"{value}.0" if 0 <= value < _COUNT_LIMIT else _go_string(value)


def _escape_value(value: str) -> str:
    if "\\" in value or "\n" in value or '"' in value:
        return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")
    return value


def _help(doc: str) -> str:
    return doc.replace("\\", r"\\").replace("\n", r"\n")


class _Labels:
    """One watch's labels, sorted and escaped once: the text alone (`base`), and the text
    before and after the place of an extra label, each with its comma (`split`)."""

    __slots__ = ("base", "keys", "pairs", "s", "short")

    def __init__(self, labels: dict[str, str]) -> None:
        if len(labels) == 3:  # target, ip, probe: sorted as ip, probe, target
            ip, probe = _escape_value(labels["ip"]), _escape_value(labels["probe"])
            target = _escape_value(labels["target"])
            self.base = f'ip="{ip}",probe="{probe}",target="{target}"'
            self.s = (f'ip="{ip}",probe="{probe}",', f',target="{target}"')
            self.short = (ip, probe, target)
            self.keys: list[str] = []
            return
        items = sorted(labels.items())
        self.keys = [k for k, _ in items]
        self.pairs = [f'{escape_label_name(k)}="{_escape_value(v)}"' for k, v in items]
        self.base = ",".join(self.pairs)
        self.s = self._split("state")

    def split(self, key: str) -> tuple[str, str]:
        """For `le` (made when asked: only targets with the histogram need it), `state`,
        `stat` and `reason`."""
        if key == "le":
            if self.keys:
                return self._split("le")
            ip, probe, target = self.short
            return f'ip="{ip}",', f',probe="{probe}",target="{target}"'
        if not self.keys or key == "state":
            return self.s  # no label sorts between state, stat and reason in the short form
        return self._split(key)

    def _split(self, key: str) -> tuple[str, str]:
        i = bisect_left(self.keys, key)
        before, after = ",".join(self.pairs[:i]), ",".join(self.pairs[i:])
        return (before + "," if before else ""), ("," + after if after else "")

    def plain(self) -> bool:
        """True if no label text holds a character the templates use as a placeholder."""
        base = self.base
        return "\x01" not in base and "\x02" not in base and "\x03" not in base


def _sample_line(name: str, labels: dict[str, str], value: float) -> str:
    """One sample exactly as generate_latest writes it (legacy-valid metric name)."""
    if not labels:
        return f"{name} {_go_string(value)}\n"
    text = ",".join(f'{escape_label_name(k)}="{_escape_value(v)}"'
                    for k, v in sorted(labels.items()))
    return f"{name}{{{text}}} {_go_string(value)}\n"


class _Templates:
    """Per-scrape templates: \x01 and \x02 stand for the text before and after the extra
    label, \x03 for the watch's labels alone; `%` slots take the values."""

    def __init__(self, buckets: Sequence[float]) -> None:
        les = [repr(float(b)) for b in buckets] + ["+Inf"]
        self.buckets = tuple(buckets)
        bucket = "".join(f'{P}rtt_seconds_bucket{{\x01le="{le}"\x02}} %d.0\n' for le in les)
        self.histogram = (bucket + f"{P}rtt_seconds_count{{\x03}} %d.0\n"
                          + f"{P}rtt_seconds_sum{{\x03}} %s\n")
        self.states = {
            mine: "".join(f'{P}state{{\x01state="{h.value}"\x02}} '
                          f'{"1.0" if h is mine else "0.0"}\n' for h in Health)
            for mine in Health}


class _Writer:
    """Renders the per-target families, watch by watch, into one list per family."""

    def __init__(self, families: _Families, buckets: Sequence[float], now: float) -> None:
        self.families = families
        self.now = now
        t = _Templates(buckets)
        self.buckets, self.histogram, self.states = t.buckets, t.histogram, t.states
        self.out: list[list[str]] = [[] for _ in KNOWN[:_DETAILS]]
        self.kinds: dict[tuple[object, Health], int] = {}

    @property
    def counts(self) -> dict[tuple[str, str], int]:
        """Watches by (probe, state), for hostwatch_targets."""
        out: dict[tuple[str, str], int] = {}
        for (kind, health), n in self.kinds.items():
            key = (str(kind), health.value)
            out[key] = out.get(key, 0) + n
        return out

    def prepare(self, watch: Watch) -> _Labels | _Families:
        """The watch's labels, or (for the rare watch the templates cannot take: a label
        holding a placeholder character, other buckets) its families from metrics.py."""
        labels = _Labels(_watch_labels(watch))
        if labels.plain() and watch.buckets in ((), self.buckets):
            return labels
        one = _Families(self.now)
        one.add(watch)
        return one

    def first(self, watch: Watch, labels: _Labels | _Families) -> None:
        """Families FIRST: success, state, the RTT histogram."""
        st = watch.state
        if isinstance(labels, _Families):
            self._slow(labels, range(FIRST))
            return
        out, base = self.out, labels.base
        last = st.last_result
        if last is not None:
            out[0].append(f"{P}success{{{base}}} {'1.0' if last.ok else '0.0'}\n")
        before, after = labels.s
        out[1].append(self.states[st.health].replace("\x01", before).replace("\x02", after))
        if watch.buckets:
            out[2].append(self._histogram(labels, watch))

    def rest(self, watch: Watch, labels: _Labels | _Families) -> None:
        """The other per-target families."""
        st = watch.state
        last = st.last_result
        if isinstance(labels, _Families):
            self._slow(labels, range(FIRST, _DETAILS))
            return
        out, base = self.out, labels.base
        if last is not None and last.ok and last.rtt is not None:
            out[3].append(f"{P}last_rtt_seconds{{{base}}} {_go(last.rtt)}\n")
        out[4].append(f"{P}sent_total{{{base}}} {_count(st.sent)}\n")
        out[5].append(f"{P}received_total{{{base}}} {_count(st.received)}\n")
        if st.failures:
            out[6].append(self._failures(labels, watch))
        out[7].append(f"{P}transitions_total{{{base}}} {_count(st.transitions)}\n")
        if st.last_transition_at is not None:
            out[8].append(f"{P}last_transition_timestamp_seconds{{{base}}} "
                          f"{_go(st.last_transition_at)}\n")
        self._window(labels, watch)
        if watch.maintenance:
            window = watch.active_maintenance(self.now)
            if window is not None:
                labelled = {**_watch_labels(watch), "window": window.name}
                out[12].append(_sample_line(P + "maintenance", labelled, 1))
        changes = st.tracker.recent_changes(self.now)
        out[13].append(f"{P}flap_changes{{{base}}} {_count(changes)}\n")

    def flush(self, metrics: Sequence[Metric], which: range,
              headers: bool) -> Iterator[bytes | None]:
        """The text of the families `which` (header first, if `headers`), each family a
        segment; their lines are let go."""
        for i in which:
            metric, lines = metrics[i], self.out[i]
            head = _header(metric.name, metric.documentation, metric.type) if headers else ""
            yield (head + "".join(lines)).encode()
            yield None
            lines.clear()

    def tail(self, watches: Iterable[Watch]) -> None:
        """What is counted over every watch: hostwatch_targets and the probe details."""
        kinds, details = self.kinds, self.families.details
        for watch in watches:
            st = watch.state
            key = (watch.spec.kind, st.health)
            kinds[key] = kinds.get(key, 0) + 1
            last = st.last_result
            if last is not None and (last.phases or last.tls is not None):
                details.add(_watch_labels(watch), last)

    def _histogram(self, labels: _Labels, watch: Watch) -> str:
        st = watch.state
        counts = tuple(accumulate(st.bucket_counts))
        if counts[-1] >= _COUNT_LIMIT:
            return self._slow_histogram(labels.base, watch)
        before, after = labels.split("le")
        text = self.histogram % (*counts, counts[-1], _go(st.rtt_sum))
        return text.replace("\x01", before).replace("\x02", after).replace("\x03", labels.base)

    def _slow_histogram(self, base: str, watch: Watch) -> str:
        st = watch.state
        plain = _watch_labels(watch)
        lines = []
        bounds = (*(repr(float(b)) for b in watch.buckets), "+Inf")
        for le, total in zip(bounds, accumulate(st.bucket_counts), strict=True):
            lines.append(_sample_line(P + "rtt_seconds_bucket", {**plain, "le": le}, total))
        total = sum(st.bucket_counts)
        lines.append(f"{P}rtt_seconds_count{{{base}}} {_go_string(total)}\n")
        lines.append(f"{P}rtt_seconds_sum{{{base}}} {_go(st.rtt_sum)}\n")
        return "".join(lines)

    def _failures(self, labels: _Labels, watch: Watch) -> str:
        before, after = labels.split("reason")
        return "".join(f'{P}failures_total{{{before}reason="{reason.value}"{after}}} '
                       f"{_count(count)}\n"
                       for reason, count in sorted(watch.state.failures.items()))

    def _window(self, labels: _Labels, watch: Watch) -> None:
        size, _, loss, low, median, high, mean, stddev = watch.state.window_summary()
        base, out = labels.base, self.out
        if size:
            out[9].append(f"{P}loss_ratio{{{base}}} {_go(loss)}\n")
        if (low is not None and median is not None and high is not None and mean is not None
                and stddev is not None and low >= 0.0 and high < 1e6):
            b, a = labels.split("stat")
            w = P + "window_rtt_seconds{"
            out[10].append(f'{w}{b}stat="min"{a}}} {low!r}\n{w}{b}stat="median"{a}}} {median!r}\n'
                           f'{w}{b}stat="max"{a}}} {high!r}\n{w}{b}stat="mean"{a}}} {mean!r}\n'
                           f'{w}{b}stat="stddev"{a}}} {stddev!r}\n')
        else:
            values = (low, median, high, mean, stddev)
            out[10].extend(
                _sample_line(P + "window_rtt_seconds", {**_watch_labels(watch), "stat": s}, v)
                for s, v in zip(_STATS, values, strict=True) if v is not None)
        out[11].append(f"{P}window_results{{{base}}} {size}.0\n" if size < _COUNT_LIMIT else
                       f"{P}window_results{{{base}}} {_count(size)}\n")

    def _slow(self, one: _Families, which: range) -> None:
        """The lines metrics.py made for one watch, through the generic line writer."""
        metrics = one.all()
        for i in which:
            self.out[i].extend(_sample_line(s.name, s.labels, s.value)
                               for s in metrics[i].samples)


class _Fixed(Collector):
    """A collector that yields given families (to reuse generate_latest on them)."""

    def __init__(self, metrics: Iterable[Metric]) -> None:
        self._metrics = list(metrics)

    def collect(self) -> Iterator[Metric]:
        return iter(self._metrics)


def _header(name: str, doc: str, kind: str) -> str:
    shown = name + "_total" if kind == "counter" else name
    return f"# HELP {shown} {_help(doc)}\n# TYPE {shown} {kind}\n"


def _hostwatch_collector(registry: CollectorRegistry) -> HostwatchCollector | None:
    collectors = registry._collector_to_names  # no public way to list them
    return next((c for c in collectors if isinstance(c, HostwatchCollector)), None)


def _others(registry: CollectorRegistry, ours: HostwatchCollector) -> bytes:
    """generate_latest over every collector of the registry except ours, in their order."""
    collectors = registry._collector_to_names
    return generate_latest(_Fixed(m for c in collectors if c is not ours for m in c.collect()))


def render_segments(registry: CollectorRegistry, part: int = 0,
                    parts: int = 1) -> Iterator[bytes | None]:
    """Part `part` of `parts` of the exposition of `registry`, in segments (None ends one).

    Every part yields the same number of segments, one per per-target family and one for the
    rest, and writes the lines of its share of the watches (a contiguous slice, in order);
    part 0 also writes the family headers and the rest. Segment k of part 0, then of part 1,
    ... is the exposition generate_latest would write. So parts can render in parallel."""
    collector = _hostwatch_collector(registry)
    now = time.time()
    families = _Families(now)
    metrics = families.all()
    names = tuple(m.name.removeprefix(P) for m in metrics)
    if collector is None or names != KNOWN:
        if part != 0:
            return  # part 0 writes it all; the other parts' segments are empty
        if collector is not None:
            log.warning("metrics.py has families exposition.py does not know (%s); "
                        "rendering with prometheus-client", ", ".join(sorted(set(names) -
                                                                            set(KNOWN))))
        yield generate_latest(registry)
        yield None
        return
    yield from _render(collector, families, now, part, parts)
    if part == 0:
        yield _others(registry, collector)
    yield None


def render_chunks(registry: CollectorRegistry) -> Iterator[bytes]:
    """The exposition of `registry`, as generate_latest would write it, in pieces."""
    return (chunk for chunk in render_segments(registry) if chunk is not None)


def _render(collector: HostwatchCollector, families: _Families, now: float, part: int,
            parts: int) -> Iterator[bytes | None]:
    """Two passes over the watches, so that the first families can be sent (and compressed)
    while the others are rendered."""
    metrics = families.all()
    watches = list(collector.view.watches())
    # The config's, shared by every watch that has a histogram.
    buckets = next((w.buckets for w in watches if w.buckets), ())
    share = watches[len(watches) * part // parts:len(watches) * (part + 1) // parts]
    writer = _Writer(families, buckets, now)
    labels = [writer.prepare(w) for w in share]
    for watch, label in zip(share, labels, strict=True):
        writer.first(watch, label)
    yield from writer.flush(metrics, range(FIRST), part == 0)
    for watch, label in zip(share, labels, strict=True):
        writer.rest(watch, label)
    yield from writer.flush(metrics, range(FIRST, _DETAILS), part == 0)
    if part == 0:
        writer.tail(watches)
        yield generate_latest(_Fixed(metrics[_DETAILS:]))
        yield generate_latest(_Fixed(collector.daemon_families(writer.counts)))


def render(registry: CollectorRegistry) -> bytes:
    """The whole exposition of `registry` at once."""
    return b"".join(render_chunks(registry))


# --- rendering in a forked child --------------------------------------------------------------
MAX_CHILDREN: Final = 2  # scrapes rendering at once; more wait for a turn
CHILD_TIMEOUT: Final = 60.0  # seconds a child may take before it is killed
F_SETPIPE_SZ: Final = 1031
MAX_PARTS: Final = 4  # renderers of one scrape, at most (one per usable CPU but one)
PART_WATCHES: Final = 1000  # below this many watches per renderer, a second costs more


class Scraper:
    """Serves the exposition of `registry`, rendered in a forked child (see the module doc)."""

    def __init__(self, registry: CollectorRegistry, *, fork: bool = True,
                 quiet: Callable[[], Awaitable[None]] | None = None) -> None:
        """`quiet`: awaited before each fork, to fork when the loop can spare the 3-5 ms a
        fork of a large daemon takes (`SlotScheduler.between_slots`)."""
        self._registry = registry
        self._quiet = quiet
        self._fork = fork and hasattr(os, "fork")
        self._turns = asyncio.Semaphore(MAX_CHILDREN)

    async def chunks(self, gzipped: bool) -> AsyncGenerator[bytes, None]:
        """The body, gzip-compressed if `gzipped`. Raises ConnectionAbortedError if the render
        failed after bytes were produced: the response must then be cut short."""
        async with self._turns:
            if self._fork and self._quiet is not None:
                await self._quiet()
            child = self._start(gzipped) if self._fork else None
            if child is None:
                for piece in _encode(render_chunks(self._registry), gzipped):
                    yield piece
                return
            async with contextlib.aclosing(child.read()) as pieces:
                async for piece in pieces:
                    yield piece

    def _start(self, gzipped: bool) -> _Child | None:
        try:
            return _Child.fork(self._registry, gzipped)
        except OSError as err:
            log.warning("cannot fork to render /metrics (%s); rendering in the event loop", err)
            self._fork = False
            return None


def _encode(chunks: Iterable[bytes], gzipped: bool) -> Iterator[bytes]:
    if not gzipped:
        yield from chunks
        return
    z = zlib.compressobj(1, zlib.DEFLATED, 31)
    for chunk in chunks:
        yield z.compress(chunk)
    yield z.flush()


class _Child:
    """One forked renderer: its pid and the read end of its pipe."""

    def __init__(self, pid: int, fd: int) -> None:
        self.pid, self.fd = pid, fd
        self._reaped = False

    @classmethod
    def fork(cls, registry: CollectorRegistry, gzipped: bool) -> _Child:
        pid, read_fd, write_fd = _fork_with_pipe()
        if pid == 0:
            _child_main(registry, write_fd, gzipped)
        os.close(write_fd)
        return cls(pid, read_fd)

    async def read(self) -> AsyncGenerator[bytes, None]:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=4 * PIECE, loop=loop)
        pipe = os.fdopen(self.fd, "rb", buffering=0)
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader, loop=loop), pipe)
        try:
            async with asyncio.timeout(CHILD_TIMEOUT):
                while piece := await reader.read(4 * PIECE):
                    yield piece
                status = await self._reap()
            if status != 0:
                raise ConnectionAbortedError(f"the /metrics renderer exited with {status}")
        finally:
            transport.close()
            if not self._reaped:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, signal.SIGKILL)
                await self._reap()

    async def _reap(self) -> int:
        """Wait (without blocking the loop) for the child to end; its exit status."""
        loop = asyncio.get_running_loop()
        pidfd = os.pidfd_open(self.pid)
        try:
            ended: asyncio.Future[None] = loop.create_future()

            def readable() -> None:
                if not ended.done():
                    ended.set_result(None)

            loop.add_reader(pidfd, readable)
            try:
                await ended
            finally:
                loop.remove_reader(pidfd)
        finally:
            os.close(pidfd)
        _, status = os.waitpid(self.pid, 0)
        self._reaped = True
        return os.waitstatus_to_exitcode(status)


def _fork_with_pipe() -> tuple[int, int, int]:
    """fork() with a pipe (1 MiB where allowed) from the child to the parent: (pid, read end,
    write end); in the child the read end is already closed, pid is 0."""
    read_fd, write_fd = os.pipe()
    with contextlib.suppress(OSError):
        fcntl.fcntl(write_fd, F_SETPIPE_SZ, 1024 * 1024)
    try:
        pid = os.fork()
    except OSError:
        os.close(read_fd)
        os.close(write_fd)
        raise
    if pid == 0:
        os.close(read_fd)
    return pid, read_fd, write_fd


def _child_main(registry: CollectorRegistry, fd: int, gzipped: bool) -> NoReturn:
    """The forked child: render (with helpers on the other CPUs), write, exit. Never returns
    to the event loop's code."""
    code = 70
    try:
        _detach()
        helpers = _start_helpers(registry, gzipped)
        try:
            sink = Sink(fd, gzipped, framed=False)
            try:
                for chunk in render_segments(registry, 0, len(helpers) + 1):
                    if chunk is not None:
                        sink.put(chunk)
                        continue
                    sink.end_segment()
                    for helper in helpers:
                        helper.relay_segment(sink)
                for helper in helpers:
                    helper.relay_segment(sink)  # nothing is left: sees the end of its pipe
            finally:
                sink.close()
        finally:
            succeeded = _reap(helpers)
        code = 0 if succeeded else 70
    except BaseException as err:  # reported, then the child ends
        with contextlib.suppress(OSError):
            os.write(2, f"hostwatch: rendering /metrics failed: {err!r}\n".encode())
    finally:
        os._exit(code)


def parts_for(watches: int) -> int:
    """How many renderers share a scrape of `watches` watches: one per usable CPU but one
    (at most MAX_PARTS), with PART_WATCHES watches each at least.

    The CPU left over is the daemon's: a renderer beside it on the same core slows its sends
    through the caches even at SCHED_IDLE. Measured at 10,000 targets on two CPUs, send lag
    p99 during back-to-back scrapes: +4.7 and +9.1 ms over quiet with two renderers, +0.8 and
    +3.5 ms with one (two runs each). Pinning the renderers away from the daemon's CPU
    instead was worse (+4.9, +5.1 ms)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except OSError:
        cpus = 1
    return max(1, min(cpus - 1, MAX_PARTS, watches // PART_WATCHES))


class _Helper(FrameReader):
    """A helper renderer forked by the child: its pid and the read end of its frames."""

    def __init__(self, pid: int, fd: int) -> None:
        super().__init__(fd)
        self.pid = pid

    def wait(self) -> int:
        self.close()
        return os.waitstatus_to_exitcode(os.waitpid(self.pid, 0)[1])


def _start_helpers(registry: CollectorRegistry, gzipped: bool) -> list[_Helper]:
    """Fork the helpers (parts 1..n-1); none if the scrape is small or fork fails."""
    collector = _hostwatch_collector(registry)
    watches = sum(1 for _ in collector.view.watches()) if collector is not None else 0
    parts = parts_for(watches)
    helpers: list[_Helper] = []
    for part in range(1, parts):
        try:
            pid, read_fd, write_fd = _fork_with_pipe()
        except OSError:
            break  # fewer parts than planned would leave watches out: render alone
        if pid == 0:
            for helper in helpers:
                helper.close()
            _helper_main(registry, write_fd, part, parts, gzipped)
        os.close(write_fd)
        helpers.append(_Helper(pid, read_fd))
    else:
        return helpers
    _reap(helpers)
    return []


def _reap(helpers: Sequence[_Helper]) -> bool:
    """Wait for every helper, killing the ones whose pipe has not ended; True if all of them
    ended their pipe and exited 0."""
    succeeded = True
    for helper in helpers:
        if not helper.ended:
            with contextlib.suppress(ProcessLookupError):
                os.kill(helper.pid, signal.SIGKILL)
            succeeded = False
        succeeded = helper.wait() == 0 and succeeded
    return succeeded


def _helper_main(registry: CollectorRegistry, fd: int, part: int, parts: int,
                 gzipped: bool) -> NoReturn:
    """A helper: render part `part` of `parts` as frames for the child, exit."""
    code = 70
    try:
        sink = Sink(fd, gzipped, framed=True)
        try:
            for chunk in render_segments(registry, part, parts):
                if chunk is None:
                    sink.end_segment()
                else:
                    sink.put(chunk)
        finally:
            sink.close()
        code = 0
    except BaseException as err:
        with contextlib.suppress(OSError):
            os.write(2, f"hostwatch: rendering /metrics (part {part}) failed: {err!r}\n"
                     .encode())
    finally:
        os._exit(code)


def _detach() -> None:
    """Leave the parent's signals to the parent; no cyclic GC (it would copy every page);
    run only when a CPU is otherwise idle, where allowed (a seccomp filter may refuse)."""
    signal.set_wakeup_fd(-1)
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, signal.SIG_DFL)
    gc.disable()
    reuse_freed_memory()  # it lives for one render (hostwatch.heap)
    with contextlib.suppress(OSError, AttributeError):
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
