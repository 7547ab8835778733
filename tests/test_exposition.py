"""hostwatch.exposition: the fast /metrics renderer writes what generate_latest writes, byte for
byte, and the forked scrape serves it (plain and gzip) without the event loop doing the work."""

from __future__ import annotations

import asyncio
import gzip
import http.client
import logging
import os
import time
import zlib
from collections.abc import Iterator
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest

from hostwatch import exposition, segments
from hostwatch.config import parse_config
from hostwatch.journal import SinkStats
from hostwatch.metrics import DaemonView, HostwatchCollector, ReloadStatus, new_registry
from hostwatch.model import MaintenanceWindow
from hostwatch.probes.base import ProbeResult, Reason, TlsInfo
from hostwatch.scheduler import SchedulerStats
from hostwatch.watch import Watch, Watches
from hostwatch.web import ListenAddress, WebServer

CONFIG = """\
defaults: {labels: {team: "ops \\"blue\\" \\\\ 2"}, rtt_histogram: true}
targets:
  - {name: plain, host: 127.0.0.1, probes: {icmp: }, rtt_histogram: false}
  - {name: labelled, host: 127.0.0.2, probes: {icmp: , tcp: {port: 22}},
     labels: {role: db, zone: a, aaa: first}}
  - {name: both, host: "::1", ip_protocol: dual, probes: {icmp: }}
  - {name: quiet, host: 127.0.0.3, probes: {icmp: }}
"""


def _watches() -> list[Watch]:
    return list(Watches.build(parse_config(CONFIG, "test.yml")))


def _view(watches: list[Watch]) -> DaemonView:
    return DaemonView(watches=lambda: watches, scheduler=SchedulerStats(),
                      skipped_in_flight=lambda: 3, in_flight=lambda: {"icmp": 2},
                      journal=SinkStats(), reload=ReloadStatus(True, 1.7e9, "test.yml"),
                      icmp_sockets={"ipv4": "raw", "ipv6": "dgram"}, slots=lambda: 20)


def _registry(watches: list[Watch]) -> CollectorRegistry:
    """Our collector alone: no process_* series, whose CPU seconds change between renders."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(HostwatchCollector(_view(watches)))
    return registry


def _feed(watch: Watch, results: list[ProbeResult], now: float = 1.7e9) -> None:
    for i, result in enumerate(results):
        watch.state.record(result, now + i)


def _ok(ip: str, rtt: float) -> ProbeResult:
    return ProbeResult(Reason.OK, ip, rtt=rtt)


@pytest.fixture
def watches() -> list[Watch]:
    """Watches in every shape the renderer handles: unprobed, up, failing with several
    reasons, huge counters, TLS details, user labels needing escapes, dual stack."""
    ws = _watches()
    plain, labelled_icmp, labelled_tcp, both4, both6, _quiet = ws
    _feed(plain, [_ok("127.0.0.1", 2.5e-5 * (i + 1)) for i in range(30)])
    _feed(labelled_icmp, [_ok("127.0.0.2", 0.003), ProbeResult(Reason.TIMEOUT, "127.0.0.2"),
                          ProbeResult(Reason.UNREACHABLE, "127.0.0.2", detail="x")] * 10)
    tls = TlsInfo("TLS 1.3", "TLS_AES", 1.9e9, 'CN="a",O=b\\c', "CN=ca", "0a", "ff" * 32)
    _feed(labelled_tcp, [ProbeResult(Reason.OK, "127.0.0.2", rtt=0.0005,
                                     phases=(("connect", 0.0004), ("tls", 0.001)), tls=tls)])
    _feed(both4, [_ok("127.0.0.1", 1e-4)])
    _feed(both6, [ProbeResult(Reason.REFUSED, "::1")] * 13)
    plain.state.sent = 12_345_678
    plain.state.received = 1_000_000
    return ws


class TestSameBytes:
    def test_equal_to_generate_latest(self, watches: list[Watch]) -> None:
        """Every per-target and daemon-wide family, byte for byte."""
        registry = _registry(watches)
        assert generate_latest(registry) == exposition.render(registry)

    def test_equal_without_user_labels(self) -> None:
        """Targets labelled only target, ip and probe take the renderer's short label form,
        with the histogram and without; RTTs above 16.8 ms are rounded in the window."""
        config = ("defaults: {rtt_histogram: true}\ntargets:\n"
                  "  - {name: a, host: 127.0.0.1, probes: {icmp: }}\n"
                  "  - {name: b, host: \"::1\", probes: {icmp: }, rtt_histogram: false}\n")
        ws = list(Watches.build(parse_config(config, "short.yml")))
        for watch, ip in zip(ws, ("127.0.0.1", "::1"), strict=True):
            _feed(watch, [_ok(ip, 0.000_123_456), ProbeResult(Reason.TIMEOUT, ip),
                          _ok(ip, 0.042_123_457), _ok(ip, 1.5)])
        registry = _registry(ws)
        assert generate_latest(registry) == exposition.render(registry)

    def test_histogram_only_where_asked(self, watches: list[Watch]) -> None:
        """`rtt_histogram: false` (target `plain`) leaves out its histogram, nothing else."""
        body = exposition.render(_registry(watches)).decode()
        histogram = {line.split('target="')[1].split('"')[0] for line in body.splitlines()
                     if line.startswith("hostwatch_probe_rtt_seconds_bucket")}
        assert histogram == {"labelled", "both", "quiet"}
        assert 'hostwatch_probe_sent_total{ip="127.0.0.1",probe="icmp",target="plain"' in body

    def test_equal_with_process_metrics(self, watches: list[Watch]) -> None:
        """With the daemon's own registry (process_* included), all but the CPU line match."""
        registry = new_registry(_view(watches))

        def stable(body: bytes) -> list[bytes]:
            return [line for line in body.splitlines() if b"cpu_seconds" not in line]

        assert stable(generate_latest(registry)) == stable(exposition.render(registry))

    def test_maintenance_window(self, watches: list[Watch]) -> None:
        """An active window adds its `window` label."""
        now = time.time()
        window = MaintenanceWindow("rollout", now - 60, now + 60, targets=("labelled",))
        for watch in watches:
            watch.maintenance = (window,) if watch.target.name == "labelled" else ()
        registry = _registry(watches)
        body = exposition.render(registry)
        assert b'window="rollout"' in body
        assert generate_latest(registry) == body

    def test_odd_watches_take_the_generic_path(self, watches: list[Watch]) -> None:
        """Other buckets, and a label value holding a template placeholder character."""
        odd = Watch(replace(watches[0].target, name="odd", labels=(("x", "a\x01b"),)),
                    watches[0].spec, watches[0].protocol, (0.5, 1.0))
        _feed(odd, [_ok("127.0.0.1", 0.7)])
        registry = _registry([*watches, odd])
        assert generate_latest(registry) == exposition.render(registry)

    def test_no_watches(self) -> None:
        """An empty config still writes every family header."""
        registry = _registry([])
        assert generate_latest(registry) == exposition.render(registry)

    @settings(max_examples=40, deadline=None)
    @given(st.lists(st.one_of(st.none(), st.floats(1e-6, 2.0)), min_size=1, max_size=40),
           st.integers(0, 3_000_000))
    def test_any_results(self, rtts: list[float | None], sent: int) -> None:
        """Random histories (None is a timeout) and counters around Go's exponent form."""
        ws = _watches()
        _feed(ws[0], [ProbeResult(Reason.TIMEOUT, "127.0.0.1") if r is None
                      else _ok("127.0.0.1", r) for r in rtts])
        ws[0].state.sent = sent
        registry = _registry(ws)
        assert generate_latest(registry) == exposition.render(registry)


class TestFallback:
    def test_unknown_family_renders_with_prometheus_client(
            self, watches: list[Watch], monkeypatch: pytest.MonkeyPatch,
            caplog: pytest.LogCaptureFixture) -> None:
        """A family metrics.py has and this module does not know: the slow path, and a
        warning, never a wrong exposition."""
        monkeypatch.setattr(exposition, "KNOWN", exposition.KNOWN[:-1])
        registry = _registry(watches)
        with caplog.at_level(logging.WARNING, logger="hostwatch.exposition"):
            assert generate_latest(registry) == exposition.render(registry)
        assert "does not know" in caplog.text


def _collect(scraper: exposition.Scraper, gzipped: bool) -> bytes:
    async def run() -> bytes:
        return b"".join([piece async for piece in scraper.chunks(gzipped)])
    return asyncio.run(run())


class TestScraper:
    @pytest.mark.parametrize("fork", [True, False])
    def test_plain_and_gzip(self, watches: list[Watch], fork: bool) -> None:
        """Forked or not, the body is the rendering; gzipped, it decompresses to it."""
        registry = _registry(watches)
        scraper = exposition.Scraper(registry, fork=fork)
        expected = exposition.render(registry)
        assert expected == _collect(scraper, gzipped=False)
        assert expected == gzip.decompress(_collect(scraper, gzipped=True))

    def test_process_metrics_are_the_daemons(self, watches: list[Watch]) -> None:
        """process_* in a forked render describe the daemon, not the child: the start time
        is the daemon's, and the CPU seconds include what the daemon used before the fork."""
        registry = new_registry(_view(watches))
        before = sum(os.times()[:2])
        body = _collect(exposition.Scraper(registry, fork=True), gzipped=False).decode()
        values = {line.split(" ")[0]: float(line.split(" ")[1]) for line in body.splitlines()
                  if line.startswith("process_")}
        with open("/proc/self/stat", encoding="ascii") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/stat", encoding="ascii") as f:
            boot = next(float(line.split()[1]) for line in f if line.startswith("btime"))
        assert values["process_start_time_seconds"] == boot + ticks / os.sysconf("SC_CLK_TCK")
        assert values["process_cpu_seconds_total"] >= before - 0.02  # /proc's 10 ms ticks

    def test_failed_child_aborts(self, watches: list[Watch],
                                 monkeypatch: pytest.MonkeyPatch) -> None:
        """A render that fails in the child is an aborted response, not a short body."""
        def broken(_registry: CollectorRegistry, _part: int = 0,
                   _parts: int = 1) -> Iterator[bytes | None]:
            yield b"# partial\n"
            raise RuntimeError("boom")

        monkeypatch.setattr(exposition, "render_segments", broken)
        scraper = exposition.Scraper(_registry(watches))
        with pytest.raises(ConnectionAbortedError):
            _collect(scraper, gzipped=False)

    @pytest.mark.parametrize(("fork", "runs"), [(True, True), (False, False)])
    def test_loop_keeps_running_during_a_scrape(self, watches: list[Watch], fork: bool,
                                                runs: bool) -> None:
        """While a forked child renders, the event loop goes on: another task runs between
        the scrape's start and its end. Rendering in the loop (no fork) lets nothing run.
        Counted in loop turns, not timed."""
        many = [w for _ in range(200) for w in watches]  # ~1,200 watches, tens of ms to render
        scraper = exposition.Scraper(_registry(many), fork=fork)

        async def run() -> int:
            turns = 0
            done = False

            async def spin() -> None:
                nonlocal turns
                while not done:
                    turns += 1
                    await asyncio.sleep(0)

            spinner = asyncio.create_task(spin())
            await asyncio.sleep(0)
            before = turns
            assert [piece async for piece in scraper.chunks(False)]
            during = turns - before
            done = True
            await spinner
            return during

        assert (asyncio.run(run()) > 0) is runs


class TestHttp:
    def test_metrics_streamed_chunked(self, watches: list[Watch]) -> None:
        """GET /metrics: 200, chunked, plain or gzip as asked; HEAD: headers only."""
        registry = _registry(watches)
        expected = exposition.render(registry)

        async def reload() -> tuple[bool, str]:
            return True, ""

        async def run() -> list[tuple[int, dict[str, str], bytes]]:
            server = WebServer(registry, reload, lambda: True, lambda: b"{}", lambda _q: b"")
            (host, port), *_ = await server.start(ListenAddress("127.0.0.1", 0))
            try:
                return [await asyncio.to_thread(_get, host, port, method, gz)
                        for method, gz in (("GET", False), ("GET", True), ("HEAD", False))]
            finally:
                await server.close()

        (s1, h1, plain), (s2, h2, packed), (s3, h3, empty) = asyncio.run(run())
        assert (200, 200, 200) == (s1, s2, s3)
        assert "chunked" == h1["transfer-encoding"]
        assert expected == plain
        assert "gzip" == h2["content-encoding"]
        assert expected == gzip.decompress(packed)
        assert b"" == empty
        assert "chunked" == h3["transfer-encoding"]


def _get(host: str, port: int, method: str, gz: bool) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection(host, port, timeout=10)
    try:
        conn.request(method, "/metrics", headers={"Accept-Encoding": "gzip"} if gz else {})
        response = conn.getresponse()
        body = response.read()
        headers = {k.lower(): v for k, v in response.getheaders()}
        return response.status, headers, body
    finally:
        conn.close()


def _interleaved(registry: CollectorRegistry, parts: int) -> bytes:
    """Segment k of part 0, then of part 1, ...: how the renderers' output is joined."""
    rendered = []
    for part in range(parts):
        segments: list[list[bytes]] = [[]]
        for chunk in exposition.render_segments(registry, part, parts):
            if chunk is None:
                segments.append([])
            else:
                segments[-1].append(chunk)
        rendered.append(segments)
    longest = max(len(r) for r in rendered)
    return b"".join(b"".join(r[k]) for k in range(longest) for r in rendered if k < len(r))


class TestParallelRenderers:
    @pytest.mark.parametrize("parts", [2, 3, 7])
    def test_parts_joined_are_the_rendering(self, watches: list[Watch], parts: int) -> None:
        """Shares of the watches rendered apart and joined segment by segment are the
        whole rendering, byte for byte, even with more parts than watches."""
        registry = _registry(watches)
        assert exposition.render(registry) == _interleaved(registry, parts)

    def test_unknown_family_parts(self, watches: list[Watch],
                                  monkeypatch: pytest.MonkeyPatch) -> None:
        """In the generate_latest fallback, part 0 writes everything, the others nothing."""
        monkeypatch.setattr(exposition, "KNOWN", exposition.KNOWN[:-1])
        registry = _registry(watches)
        assert generate_latest(registry) == _interleaved(registry, 3)

    @pytest.mark.parametrize("parts", [2, 3])
    def test_forked_helpers_plain_and_gzip(self, watches: list[Watch], parts: int,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
        """With helper renderers the body is the rendering; gzipped, it is one gzip member
        (what every HTTP client reads) that decompresses to it."""
        monkeypatch.setattr(exposition, "parts_for", lambda _watches: parts)
        registry = _registry([w for _ in range(50) for w in watches])
        scraper = exposition.Scraper(registry)
        expected = exposition.render(registry)
        assert expected == _collect(scraper, gzipped=False)
        body = _collect(scraper, gzipped=True)
        member = zlib.decompressobj(31)
        assert expected == member.decompress(body) + member.flush()
        assert member.eof
        assert member.unused_data == b""

    def test_failed_helper_aborts(self, watches: list[Watch],
                                  monkeypatch: pytest.MonkeyPatch) -> None:
        """A helper that fails makes the scrape an aborted response, not a short body."""
        real = exposition.render_segments

        def broken(registry: CollectorRegistry, part: int = 0,
                   parts: int = 1) -> Iterator[bytes | None]:
            if part == 1:
                raise RuntimeError("boom")
            return real(registry, part, parts)

        monkeypatch.setattr(exposition, "parts_for", lambda _watches: 2)
        monkeypatch.setattr(exposition, "render_segments", broken)
        with pytest.raises(ConnectionAbortedError):
            _collect(exposition.Scraper(_registry(watches)), gzipped=True)

    def test_parts_follow_cpus_and_size(self) -> None:
        """One renderer for a small scrape; for a big one, one per usable CPU but one (the
        daemon's), at least one and at most MAX_PARTS."""
        cpus = len(os.sched_getaffinity(0))
        assert exposition.parts_for(10) == 1
        big = exposition.parts_for(100 * exposition.PART_WATCHES)
        assert big == max(1, min(cpus - 1, exposition.MAX_PARTS))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=3000), st.binary(max_size=3000))
def test_crc32_combine(first: bytes, second: bytes) -> None:
    """crc32_combine gives zlib's CRC-32 of the concatenation."""
    combined = segments.crc32_combine(zlib.crc32(first), zlib.crc32(second), len(second))
    assert combined == zlib.crc32(first + second)
