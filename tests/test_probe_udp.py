"""udp probes over asyncio-dgram against real loopback sockets: an echo server, a closed port
(ICMP port unreachable: `refused`) and a port that never answers (`timeout`)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from hostwatch.model import ProbeKind, ProbeSpec, UdpOptions
from hostwatch.probes.base import ProbeResult, Reason
from hostwatch.probes.udp import UdpProber
from servers import ServerLoop, closed_udp_port, probe_once, spec_of


def probe(spec: ProbeSpec, timeout: float = 1.0, ip: str = "127.0.0.1") -> ProbeResult:
    """One probe of `spec` by a fresh UdpProber."""
    return probe_once(UdpProber, spec, timeout, ip)


@pytest.fixture
def servers() -> Iterator[ServerLoop]:
    """Test servers in a thread of their own, stopped after the test."""
    with ServerLoop() as loop:
        yield loop


class TestConfig:
    def test_payload_and_expect(self) -> None:
        """`payload` is decoded (escapes), `expect` compiled over bytes."""
        spec = spec_of("{udp: {port: 7, payload: 'ping\\n\\x00', expect: '^ping'}}")
        assert (ProbeKind.UDP, 7) == (spec.kind, spec.port)
        assert spec.udp is not None
        assert b"ping\n\x00" == spec.udp.payload
        assert spec.udp.expect is not None
        assert b"^ping" == spec.udp.expect.pattern

    def test_empty_payload_allowed(self) -> None:
        """An empty datagram is a valid payload; without `expect` any reply will do."""
        assert ProbeSpec(ProbeKind.UDP, 7, udp=UdpOptions(b"")) == spec_of(
            "{udp: {port: 7, payload: ''}}")


class TestUdp:
    @pytest.mark.parametrize("ip", ["127.0.0.1", "::1"])
    def test_echo_matches(self, servers: ServerLoop, ip: str) -> None:
        """An echoed payload matching `expect` is success, with an RTT."""
        port = servers.udp_echo(ip)
        result = probe(spec_of(f"{{udp: {{port: {port}, payload: 'ping\\n', expect: '^ping$'}}}}",
                               ip), ip=ip)
        assert (Reason.OK, ip, "") == (result.reason, result.ip, result.detail)
        assert result.rtt is not None
        assert result.rtt > 0

    def test_any_reply_without_expect(self, servers: ServerLoop) -> None:
        """Without `expect`, any datagram back is success."""
        port = servers.udp_echo()
        assert Reason.OK is probe(spec_of(f"{{udp: {{port: {port}, payload: x}}}}")).reason

    def test_binary_payload(self, servers: ServerLoop) -> None:
        """Escaped bytes go out as bytes; the regex matches bytes."""
        port = servers.udp_echo()
        spec = spec_of(f"{{udp: {{port: {port}, payload: '\\x00\\xff\\r\\n', "
                       "expect: '^\\x00\\xff\\r$'}}")
        assert Reason.OK is probe(spec).reason

    def test_reply_not_matching_is_expect_mismatch(self, servers: ServerLoop) -> None:
        """A reply that does not match is `expect-mismatch`, and the detail shows it."""
        port = servers.udp_echo()
        result = probe(spec_of(f"{{udp: {{port: {port}, payload: 'ping', expect: pong}}}}"))
        assert (Reason.EXPECT_MISMATCH, "a reply of 4 bytes does not match 'pong': b'ping'") == (
            result.reason, result.detail)

    @pytest.mark.parametrize("ip", ["127.0.0.1", "::1"])
    def test_closed_port_is_refused(self, ip: str) -> None:
        """ICMP port unreachable from a closed port is `refused`, well before the timeout."""
        port = closed_udp_port(ip)
        result = probe(spec_of(f"{{udp: {{port: {port}, payload: x}}}}", ip), ip=ip, timeout=5)
        assert (Reason.REFUSED, "ICMP port unreachable") == (result.reason, result.detail)

    def test_silence_is_timeout(self, servers: ServerLoop) -> None:
        """A port that takes the datagram and never answers: `timeout`."""
        port = servers.udp_silent()
        result = probe(spec_of(f"{{udp: {{port: {port}, payload: x}}}}"), timeout=0.1)
        assert (Reason.TIMEOUT, "no reply within 0.1s") == (result.reason, result.detail)

    def test_in_flight_and_close(self, servers: ServerLoop) -> None:
        """A probe waiting for a reply is in flight until it ends; close cancels it."""
        port = servers.udp_silent()
        spec = spec_of(f"{{udp: {{port: {port}, payload: x}}}}")

        async def go() -> tuple[int, int, list[ProbeResult]]:
            prober = UdpProber()
            results: list[ProbeResult] = []
            prober.start("127.0.0.1", port, 30.0, results.append, spec=spec)
            await asyncio.sleep(0)
            during = prober.in_flight()
            await prober.close()
            return during, prober.in_flight(), results

        assert (1, 0, []) == asyncio.run(go())

    def test_needs_options(self) -> None:
        """A udp probe without its options is a programming error, not a result."""
        async def go() -> None:
            UdpProber().start("127.0.0.1", 7, 1.0, lambda _: None)

        with pytest.raises(ValueError, match="needs a port and its options"):
            asyncio.run(go())
