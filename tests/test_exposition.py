"""hostwatch.exposition: the renderer writes what generate_latest writes, byte for byte, from
the state table (live or a snapshot); the renderer process serves scrapes over HTTP (plain,
gzip, TLS through the daemon) while the event loop goes on, survives its own death, and a
slow client holds up nobody else."""

from __future__ import annotations

import asyncio
import gzip
import http.client
import os
import signal
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest

from hostwatch.config import parse_config
from hostwatch.exposition.book import RowBook
from hostwatch.exposition.client import Scraper, _Process
from hostwatch.exposition.rows import row_dynamic, row_static
from hostwatch.exposition.text import Renderer, TableView
from hostwatch.journal import SinkStats
from hostwatch.metrics import HostwatchCollector, new_registry, process_text
from hostwatch.model import MaintenanceWindow
from hostwatch.numbers import DaemonView, ReloadStatus
from hostwatch.probes.base import ProbeResult, Reason, TlsInfo
from hostwatch.scheduler import SchedulerStats
from hostwatch.watch import Watch, Watches
from hostwatch.web import ListenAddress, WebServer
from hostwatch.webconfig import WebConfig
from tls_certs import make_certs

CONFIG = """\
defaults: {labels: {team: "ops \\"blue\\" \\\\ 2"}, rtt_histogram: true}
targets:
  - {name: plain, host: 127.0.0.1, probes: {icmp: }, rtt_histogram: false}
  - {name: labelled, host: 127.0.0.2, probes: {icmp: , tcp: {port: 22}},
     labels: {role: db, zone: a, aaa: first}}
  - {name: both, host: "::1", ip_protocol: dual, probes: {icmp: }}
  - {name: quiet, host: 127.0.0.3, probes: {icmp: }}
"""


def _build(config: str = CONFIG, previous: Watches | None = None) -> Watches:
    return Watches.build(parse_config(config, "test.yml"), previous)


def _view(watches: Watches) -> DaemonView:
    return DaemonView(watches=lambda: watches, scheduler=SchedulerStats(),
                      skipped_in_flight=lambda: 3, in_flight=lambda: {"icmp": 2},
                      journal=SinkStats(), reload=ReloadStatus(True, 1.7e9, "test.yml"),
                      icmp_sockets={"ipv4": "raw", "ipv6": "dgram"}, slots=lambda: 20)


def _reference(watches: Watches) -> bytes:
    """What prometheus-client writes for our collector alone (process_* left out: their CPU
    seconds change between renders)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(HostwatchCollector(_view(watches)))
    return generate_latest(registry)


def _book(watches: Watches) -> RowBook:
    book = RowBook()
    for watch in watches:
        book.describe(watch.state.row, row_static(watch), row_dynamic(watch))
    book.set_order(w.state.row for w in watches)
    return book


def _render(watches: Watches, renderer: Renderer | None = None,
            view: TableView | None = None, book: RowBook | None = None) -> bytes:
    pieces = (renderer or Renderer()).render(
        view or TableView.of_table(watches.table), book or _book(watches),
        _view(watches).numbers(), time.time(), lambda: b"")
    return b"".join(pieces)


def _feed(watch: Watch, results: list[ProbeResult], now: float = 1.7e9) -> None:
    for i, result in enumerate(results):
        watch.state.record(result, now + i)


def _ok(ip: str, rtt: float) -> ProbeResult:
    return ProbeResult(Reason.OK, ip, rtt=rtt)


TLS = TlsInfo("TLS 1.3", "TLS_AES", 1.9e9, 'CN="a",O=b\\c', "CN=ca", "0a", "ff" * 32)


@pytest.fixture
def watches() -> Watches:
    """Watches in every shape the renderer handles: unprobed, up, failing with several
    reasons, huge counters, TLS details and phases, user labels needing escapes, dual
    stack."""
    ws = _build()
    plain, labelled_icmp, labelled_tcp, both4, both6, _quiet = ws
    _feed(plain, [_ok("127.0.0.1", 2.5e-5 * (i + 1)) for i in range(30)])
    _feed(labelled_icmp, [_ok("127.0.0.2", 0.003), ProbeResult(Reason.TIMEOUT, "127.0.0.2"),
                          ProbeResult(Reason.UNREACHABLE, "127.0.0.2", detail="x")] * 10)
    _feed(labelled_tcp, [ProbeResult(Reason.OK, "127.0.0.2", rtt=0.0005,
                                     phases=(("resolve", 0.0), ("connect", 0.0004),
                                             ("tls", 0.001)), tls=TLS)])
    _feed(both4, [_ok("127.0.0.1", 1e-4)])
    _feed(both6, [ProbeResult(Reason.REFUSED, "::1")] * 13)
    plain.state.sent = 12_345_678
    plain.state.received = 1_000_000
    plain.state.publish()
    return ws


class TestSameBytes:
    def test_equal_to_generate_latest(self, watches: Watches) -> None:
        """Every per-target and daemon-wide family, byte for byte."""
        assert _reference(watches) == _render(watches)

    def test_equal_without_user_labels(self) -> None:
        """Targets labelled only target, ip and probe, with the histogram and without;
        RTTs above 16.8 ms are rounded in the window."""
        ws = _build("defaults: {rtt_histogram: true}\ntargets:\n"
                    "  - {name: a, host: 127.0.0.1, probes: {icmp: }}\n"
                    "  - {name: b, host: \"::1\", probes: {icmp: }, rtt_histogram: false}\n")
        for watch, ip in zip(ws, ("127.0.0.1", "::1"), strict=True):
            _feed(watch, [_ok(ip, 0.000_123_456), ProbeResult(Reason.TIMEOUT, ip),
                          _ok(ip, 0.042_123_457), _ok(ip, 1.5)])
        assert _reference(ws) == _render(ws)

    def test_histogram_only_where_asked(self, watches: Watches) -> None:
        """`rtt_histogram: false` (target `plain`) leaves out its histogram, nothing else."""
        body = _render(watches).decode()
        histogram = {line.split('target="')[1].split('"')[0] for line in body.splitlines()
                     if line.startswith("hostwatch_probe_rtt_seconds_bucket")}
        assert {"labelled", "both", "quiet"} == histogram
        assert 'hostwatch_probe_sent_total{ip="127.0.0.1",probe="icmp",target="plain"' in body

    def test_maintenance_window(self, watches: Watches) -> None:
        """An active window adds its `window` label."""
        now = time.time()
        window = MaintenanceWindow("rollout", now - 60, now + 60, targets=("labelled",))
        for watch in watches:
            watch.maintenance = (window,) if watch.target.name == "labelled" else ()
        body = _render(watches)
        assert b'window="rollout"' in body
        assert _reference(watches) == body

    def test_other_buckets_and_odd_label_values(self, watches: Watches) -> None:
        """A watch with buckets of its own, and label values holding control characters,
        quotes, backslashes and newlines."""
        first = next(iter(watches))
        odd = Watch(replace(first.target, name="odd", labels=(("x", 'a\x01"b\\\nc'),)),
                    first.spec, first.protocol, (0.5, 1.0), watches.table)
        _feed(odd, [_ok("127.0.0.1", 0.7)])
        both = Watches([*watches, odd], watches.table)
        assert _reference(both) == _render(both)

    def test_no_watches(self) -> None:
        """An empty config still writes every family header."""
        ws = Watches([])
        assert _reference(ws) == _render(ws)

    def test_from_a_snapshot(self, watches: Watches) -> None:
        """The renderer process's view (the memfd copy, mapped) renders the same bytes."""
        fd = os.memfd_create("snapshot")
        try:
            layout = watches.table.snapshot(fd)
            with open(fd, "rb", closefd=False) as file:
                data = memoryview(file.read())
            view = TableView.of_snapshot(data, layout)
            assert _reference(watches) == _render(watches, view=view)
        finally:
            os.close(fd)

    @settings(max_examples=40, deadline=None)
    @given(st.lists(st.one_of(st.none(), st.floats(1e-6, 2.0)), min_size=1, max_size=40),
           st.integers(0, 3_000_000))
    def test_any_results(self, rtts: list[float | None], sent: int) -> None:
        """Random histories (None is a timeout) and counters around Go's exponent form."""
        ws = _build()
        watch = next(iter(ws))
        _feed(watch, [ProbeResult(Reason.TIMEOUT, "127.0.0.1") if r is None
                      else _ok("127.0.0.1", r) for r in rtts])
        watch.state.sent = sent
        watch.state.publish()
        assert _reference(ws) == _render(ws)


class TestCache:
    def test_unchanged_families_are_not_written_again(self, watches: Watches) -> None:
        """A second scrape without changes returns the very same bytes for the families
        kept (so their compressed form is reused too); the counters are written anew."""
        renderer, book = Renderer(), _book(watches)

        def pieces() -> list[bytes]:
            return list(renderer.render(TableView.of_table(watches.table), book,
                                        _view(watches).numbers(), time.time(), lambda: b""))

        first, second = pieces(), pieces()
        same = [a is b for a, b in zip(first, second, strict=True)]
        assert [True, True] == same[:2]  # success, state
        assert not same[3]  # last_rtt: written every time
        assert first == second

    def test_changes_reach_the_output(self, watches: Watches) -> None:
        """After new failures, a transition, a new address and new TLS details (sent as the
        rows' dynamic part), the output is prometheus-client's again, not the cache's."""
        renderer, book = Renderer(), _book(watches)
        _render(watches, renderer, book=book)
        plain, labelled_icmp, labelled_tcp, *_ = watches
        _feed(plain, [ProbeResult(Reason.TIMEOUT, "127.0.0.9")] * 12, now=1.8e9)
        _feed(labelled_icmp, [_ok("127.0.0.2", 0.001)] * 5, now=1.8e9)
        _feed(labelled_tcp, [ProbeResult(Reason.OK, "127.0.0.2", rtt=0.0004,
                                         tls=replace(TLS, version="TLS 1.2"))], now=1.8e9)
        for row in watches.table.dirty:
            watch = next(w for w in watches if w.state.row == row)
            book.update(row, row_dynamic(watch))
        body = _render(watches, renderer, book=book)
        assert b'ip="127.0.0.9"' in body
        assert b'version="TLS 1.2"' in body
        assert _reference(watches) == body


# --- the renderer process, over HTTP --------------------------------------------------------
def _get(port: int, *, method: str = "GET", gz: bool = False,
         context: ssl.SSLContext | None = None) -> tuple[int, dict[str, str], bytes]:
    conn: http.client.HTTPConnection
    if context is None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    else:
        conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=20, context=context)
    try:
        conn.request(method, "/metrics", headers={"Accept-Encoding": "gzip"} if gz else {})
        response = conn.getresponse()
        body = response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, body
    finally:
        conn.close()


def _ours(body: bytes) -> bytes:
    """The body without process_* (the daemon's CPU seconds and memory move)."""
    return b"".join(line + b"\n" for line in body.splitlines() if b"process_" not in line)


async def _reload() -> tuple[bool, str]:
    return True, ""


class _Served:
    """A Scraper behind a WebServer on a free loopback port, in the test's event loop."""

    def __init__(self, watches: Watches, *, process: bool = True,
                 web_config: WebConfig | None = None) -> None:
        self.watches = watches
        self.scraper = Scraper(_view(watches), lambda: self.watches, process=process,
                               others=lambda: process_text(os.getpid()))
        self.server = WebServer(self.scraper, _reload, lambda: True, lambda: b"{}",
                                lambda _q: b"")
        if web_config is not None:
            self.server.secure(web_config)
        self.port = 0

    async def __aenter__(self) -> _Served:
        await self.scraper.start()
        self.scraper.sync(self.watches)
        (_, self.port), *_ = await self.server.start(ListenAddress("127.0.0.1", 0))
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.server.close()
        await self.scraper.close()

    def worker_pid(self) -> int:
        process = self.scraper._process  # the test looks at the renderer it started
        assert process is not None
        return process.proc.pid

    async def get(self, **kwargs: object) -> tuple[int, dict[str, str], bytes]:
        return await asyncio.to_thread(_get, self.port, **kwargs)  # type: ignore[arg-type]


def _run(test: Callable[[], object]) -> None:
    async def main() -> None:
        await test()  # type: ignore[misc]
    asyncio.run(main())


class TestRendererProcess:
    def test_plain_gzip_and_head(self, watches: Watches) -> None:
        """GET /metrics: 200, chunked, plain or gzip as asked, the reference's bytes (and the
        daemon's own process_*); HEAD: headers only."""
        expected = _reference(watches)

        async def test() -> None:
            async with _Served(watches) as served:
                status, headers, plain = await served.get()
                assert (200, "chunked") == (status, headers["transfer-encoding"])
                assert expected == _ours(plain)
                assert b"process_start_time_seconds" in plain
                status, headers, packed = await served.get(gz=True)
                assert (200, "gzip") == (status, headers["content-encoding"])
                assert expected == _ours(gzip.decompress(packed))
                assert (200, b"") == (await served.get(method="HEAD"))[::2]
        _run(test)

    def test_process_metrics_are_the_daemons(self, watches: Watches) -> None:
        """process_* in the renderer's output describe the daemon (this process), not the
        renderer: the start time is this process's."""
        async def test() -> None:
            async with _Served(watches) as served:
                _, _, body = await served.get()
                assert served.worker_pid() != os.getpid()
            values = {line.split(" ")[0]: float(line.split(" ")[1])
                      for line in body.decode().splitlines() if line.startswith("process_")}
            with open("/proc/self/stat", encoding="ascii") as f:
                ticks = int(f.read().rsplit(")", 1)[1].split()[19])
            with open("/proc/stat", encoding="ascii") as f:
                boot = next(float(line.split()[1]) for line in f if line.startswith("btime"))
            assert boot + ticks / os.sysconf("SC_CLK_TCK") == values[
                "process_start_time_seconds"]
        _run(test)

    def test_tls_is_relayed_by_the_daemon(self, watches: Watches, tmp_path: Path) -> None:
        """Over TLS the renderer writes to a pipe and the daemon sends it on: same bytes,
        plain and gzip, and the connection serves a second request."""
        certs = make_certs(tmp_path / "certs")
        server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server.load_cert_chain(certs.server_cert, certs.server_key)
        client = ssl.create_default_context(cafile=str(certs.ca))
        client.check_hostname = False
        expected = _reference(watches)

        async def test() -> None:
            async with _Served(watches, web_config=WebConfig(server, {})) as served:
                _, _, plain = await served.get(context=client)
                _, _, packed = await served.get(context=client, gz=True)
                assert expected == _ours(plain)
                assert expected == _ours(gzip.decompress(packed))
        _run(test)

    def test_a_sync_after_a_reload_reaches_the_renderer(self, watches: Watches) -> None:
        """Targets removed, added and changed by a reload: the next scrape is the new set's
        reference (rows forgotten, described, reordered)."""
        changed = CONFIG.replace("- {name: quiet, host: 127.0.0.3",
                                 "- {name: fresh, host: 127.0.0.4").replace(
                                     "zone: a", "zone: b")

        async def test() -> None:
            async with _Served(watches) as served:
                await served.get()
                new = _build(changed, watches)
                new.retire(watches)
                served.watches = new
                served.scraper.sync(new)
                _, _, body = await served.get()
                assert _reference(new) == _ours(body)
                assert b'target="fresh"' in body
                assert b'target="quiet"' not in body
        _run(test)

    def test_the_loop_runs_during_a_scrape(self) -> None:
        """While the renderer process renders ~6,000 watches, another task of the event loop
        keeps running (counted in loop turns, not timed)."""
        many = _build("targets:\n" + "".join(
            f"  - {{name: t{i}, host: 127.0.{i // 250}.{i % 250 + 1}, probes: {{icmp: }}}}\n"
            for i in range(6000)))
        for watch in many:
            _feed(watch, [_ok("127.0.0.1", 1e-5)] * 3)

        async def test() -> None:
            async with _Served(many) as served:
                await served.get()  # the renderer is up and knows the rows
                turns = 0
                done = False

                async def spin() -> None:
                    nonlocal turns
                    while not done:
                        turns += 1
                        await asyncio.sleep(0)

                spinner = asyncio.create_task(spin())
                before = turns
                status, _, body = await served.get()
                during = turns - before
                done = True
                await spinner
                assert (200, True) == (status, during > 100)
                assert body.count(b"hostwatch_probe_sent_total{") == 6000
        _run(test)

    def test_a_dead_renderer_cuts_its_scrape_and_comes_back(self, watches: Watches) -> None:
        """The renderer killed while a scrape waits on it (stopped first, so the scrape is
        surely in progress): that connection closes without a complete response, the
        renderer is started again and the next scrape is complete."""
        async def test() -> None:
            async with _Served(watches) as served:
                await served.get()
                pid = served.worker_pid()
                os.kill(pid, signal.SIGSTOP)
                pending = asyncio.ensure_future(served.get())
                await asyncio.sleep(0.5)
                os.kill(pid, signal.SIGKILL)
                with pytest.raises((http.client.RemoteDisconnected, http.client.IncompleteRead)):
                    await pending
                status, _, body = await served.get()
                assert (200, _reference(watches)) == (status, _ours(body))
                assert pid != served.worker_pid()
        _run(test)

    def test_a_slow_client_holds_up_nobody_else(self, watches: Watches) -> None:
        """A client that asks for /metrics and never reads keeps its response waiting in
        the renderer's thread for it; another client's scrape meanwhile is complete."""
        big = Watches([*watches, *(Watch(replace(next(iter(watches)).target, name=f"n{i}"),
                                         next(iter(watches)).spec,
                                         next(iter(watches)).protocol, (), watches.table)
                                   for i in range(3000))], watches.table)

        async def test() -> None:
            async with _Served(big) as served:
                await served.get()
                stuck = socket.create_connection(("127.0.0.1", served.port))
                stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                stuck.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
                try:
                    await asyncio.sleep(0.3)
                    status, _, body = await served.get()
                    assert (200, _reference(big)) == (status, _ours(body))
                finally:
                    stuck.close()
        _run(test)

    def test_without_the_process_it_renders_in_the_loop(self, watches: Watches) -> None:
        """process=False (or a renderer that cannot start): the same bytes, from the loop."""
        async def test() -> None:
            async with _Served(watches, process=False) as served:
                _, _, plain = await served.get()
                _, _, packed = await served.get(gz=True)
                assert _reference(watches) == _ours(plain)
                assert _reference(watches) == _ours(gzip.decompress(packed))
        _run(test)


def test_the_daemon_registry_matches_the_process_metrics() -> None:
    """new_registry (what tests and tools use to read the collector) has the same families
    as the renderer's output: ours, then process_* of this pid."""
    ws = _build()
    families = [m.name for m in new_registry(_view(ws)).collect()]
    assert "process_cpu_seconds" in families
    assert families[-6:] == [line.split()[2].removesuffix("_total")
                             for line in process_text(os.getpid()).decode().splitlines()
                             if line.startswith("# TYPE")]


@pytest.fixture(autouse=True)
def _no_stray_renderers() -> Iterator[None]:
    """Every test stops the renderer processes it started."""
    yield
    children = [p for p in os.listdir("/proc") if p.isdigit() and _parent(int(p)) == os.getpid()]
    assert [] == [p for p in children if b"hostwatch.exposition.worker" in _cmdline(int(p))]


def _parent(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except OSError:
        return -1


def _cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


def test_a_reply_expected_from_an_ended_renderer_fails_at_once() -> None:
    """A scrape that asks a renderer which has just died for a reply is not left waiting
    (it would hold the snapshot for every other scrape until its timeout)."""
    async def test() -> None:
        process = _Process(None, socket.socket())  # type: ignore[arg-type]
        before = process.expect("done", 1)
        process.fail_all(ConnectionAbortedError("gone"))
        after = process.expect("rendered", 1)
        for future in (before, after):
            with pytest.raises(ConnectionAbortedError):
                await future
        process.sock.close()
    asyncio.run(test())
