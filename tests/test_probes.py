"""The probe engines on real loopback sockets: ICMP (raw and datagram) and TCP."""

from __future__ import annotations

import asyncio
import gc
import socket
import subprocess
import sys
import time
import weakref

import pytest

from hostwatch.model import IcmpMode
from hostwatch.probes.base import Prober, ProbeResult, Reason
from hostwatch.probes.icmp import IcmpProber, _Deadlines, _Pending
from hostwatch.probes.tcp import TcpProber

pytestmark = pytest.mark.skipif(not hasattr(socket, "AF_INET6"), reason="needs IPv6")


async def _probe_all(prober: Prober, ips: list[str], port: int | None = None,
                     timeout: float = 1.0) -> list[ProbeResult]:
    loop = asyncio.get_running_loop()
    futures: list[asyncio.Future[ProbeResult]] = []
    for ip in ips:
        future: asyncio.Future[ProbeResult] = loop.create_future()
        prober.start(ip, port, timeout, future.set_result)
        futures.append(future)
    return list(await asyncio.gather(*futures))


class TestIcmpRaw:
    def test_several_loopback_addresses_and_ipv6(self) -> None:
        """Pings to several 127.x addresses and ::1 all come back, with plausible RTTs."""
        ips = ["127.0.0.1", "127.0.0.2", "127.1.2.3", "127.255.0.9", "::1"]

        async def go() -> tuple[list[ProbeResult], dict[str, str], int]:
            prober = IcmpProber.open(IcmpMode.RAW, 56)
            try:
                return await _probe_all(prober, ips), prober.describe(), prober.in_flight()
            finally:
                await prober.close()

        results, sockets, left = asyncio.run(go())
        assert ips == [r.ip for r in results]
        assert all(r.reason is Reason.OK for r in results), results
        assert all(r.rtt is not None and 0 < r.rtt < 0.5 for r in results), results
        assert ({"ipv4": "raw", "ipv6": "raw"}, 0) == (sockets, left)

    def test_many_probes_to_one_address_are_told_apart(self) -> None:
        """200 concurrent pings to one address each get their own reply (by sequence)."""
        async def go() -> list[ProbeResult]:
            prober = IcmpProber.open(IcmpMode.AUTO, 56)
            try:
                return await _probe_all(prober, ["127.0.0.1"] * 200)
            finally:
                await prober.close()

        results = asyncio.run(go())
        assert 200 == sum(r.reason is Reason.OK for r in results)

    def test_an_answered_probe_lets_go_of_its_callback(self) -> None:
        """The callback of an answered probe is freed with the reply, not kept until its
        timeout would have come (10,000 probes a second at a 1 s timeout held ~4 MB)."""
        async def go() -> tuple[ProbeResult, bool, int]:
            prober = IcmpProber.open(IcmpMode.AUTO, 56)
            loop = asyncio.get_running_loop()
            try:
                future: asyncio.Future[ProbeResult] = loop.create_future()

                class Callback:
                    def __call__(self, result: ProbeResult) -> None:
                        future.set_result(result)

                callback = Callback()
                freed = weakref.ref(callback)
                prober.start("127.0.0.1", None, 30.0, callback)
                del callback
                result = await future
                gc.collect()
                return result, freed() is None, prober.in_flight()
            finally:
                await prober.close()

        result, freed, left = asyncio.run(go())
        assert (Reason.OK, True, 0) == (result.reason, freed, left)

    def test_unanswered_address_times_out(self) -> None:
        """An IPv6 address nobody has (::2 has no route on lo) fails, as a value."""
        async def go() -> ProbeResult:
            prober = IcmpProber.open(IcmpMode.AUTO, 56)
            try:
                return (await _probe_all(prober, ["::2"], timeout=0.3))[0]
            finally:
                await prober.close()

        result = asyncio.run(go())
        assert result.reason in (Reason.TIMEOUT, Reason.UNREACHABLE)
        assert result.rtt is None


class TestDeadlines:
    def test_a_reused_key_is_not_timed_out_by_the_old_entry(self) -> None:
        """An answered probe leaves its deadline entry behind; a later probe with the same
        (address, sequence) key is timed out at its own deadline, not at the old one's."""
        async def go() -> tuple[list[str], list[str]]:
            loop = asyncio.get_running_loop()
            pending: dict[tuple[str, int], _Pending] = {}
            deadlines = _Deadlines(loop, pending)
            fired: list[str] = []
            key = ("127.0.0.1", 7)
            first = pending[key] = _Pending("127.0.0.1", time.monotonic_ns(),
                                            lambda r: fired.append("first"))
            deadlines.add(0.05, key, first)
            del pending[key]  # answered
            second = pending[key] = _Pending("127.0.0.1", time.monotonic_ns(),
                                             lambda r: fired.append("second"))
            deadlines.add(0.3, key, second)
            await asyncio.sleep(0.15)  # past the first deadline only
            early = list(fired)
            await asyncio.sleep(0.3)
            deadlines.close()
            return early, fired

        early, fired = asyncio.run(go())
        assert ([], ["second"]) == (early, fired)


# Run in a fresh network namespace: ping_group_range is per namespace, so the test can allow
# datagram ICMP there (or not) without touching the machine's setting.
_DGRAM_SCRIPT = """
import asyncio, sys
from hostwatch.model import IcmpMode
from hostwatch.probes.icmp import IcmpProber
from hostwatch.probes.icmp_socket import IcmpPermissionError
async def main():
    try:
        prober = IcmpProber.open(IcmpMode(sys.argv[1]), 56)
    except IcmpPermissionError as err:
        print("ERROR", err); return
    loop = asyncio.get_running_loop()
    futures = []
    for ip in ("127.0.0.1", "127.0.0.3", "::1"):
        f = loop.create_future(); prober.start(ip, None, 1.0, f.set_result); futures.append(f)
    results = await asyncio.gather(*futures)
    print(sorted(prober.describe().items()), [r.reason.value for r in results])
    await prober.close()
asyncio.run(main())
"""


def _in_fresh_netns(argv: list[str], groups: str, drop_raw: bool) -> str:
    name = f"hwt-icmp-{id(argv) & 0xFFFF}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        ns = ["ip", "netns", "exec", name]
        subprocess.run([*ns, "ip", "link", "set", "lo", "up"], check=True)
        subprocess.run([*ns, "sysctl", "-qw", f"net.ipv4.ping_group_range={groups}"],
                       check=True)
        prefix = ["setpriv", "--bounding-set", "-net_raw"] if drop_raw else []
        out = subprocess.run([*ns, *prefix, *argv], capture_output=True, text=True,
                             check=True, timeout=30)
        return out.stdout.strip()
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


@pytest.mark.netns
class TestIcmpSocketChoice:
    def test_datagram_socket_when_allowed(self) -> None:
        """mode dgram works where ping_group_range admits the group, for both families."""
        out = _in_fresh_netns([sys.executable, "-c", _DGRAM_SCRIPT, "dgram"], "0 0", False)
        assert "[('ipv4', 'dgram'), ('ipv6', 'dgram')] ['ok', 'ok', 'ok']" == out

    def test_auto_falls_back_to_datagram_without_cap_net_raw(self) -> None:
        """Without CAP_NET_RAW, auto picks the datagram socket by itself."""
        out = _in_fresh_netns([sys.executable, "-c", _DGRAM_SCRIPT, "auto"], "0 0", True)
        assert "[('ipv4', 'dgram'), ('ipv6', 'dgram')] ['ok', 'ok', 'ok']" == out

    def test_neither_allowed_is_one_clear_line(self) -> None:
        """Without CAP_NET_RAW and outside ping_group_range: one line saying how to grant."""
        out = _in_fresh_netns([sys.executable, "-c", _DGRAM_SCRIPT, "auto"], "1 0", True)
        assert out.startswith("ERROR cannot open an ICMP socket: raw ICMP needs CAP_NET_RAW")
        assert "net.ipv4.ping_group_range (now '1 0'" in out
        assert "\n" not in out


class TestTcp:
    def test_listening_port_is_ok_with_connect_time(self) -> None:
        """A listening loopback port: OK, the connect time as RTT, v4 and v6."""
        with socket.socket() as v4, socket.socket(socket.AF_INET6) as v6:
            v4.bind(("127.0.0.1", 0))
            v6.bind(("::1", 0))
            v4.listen()
            v6.listen()

            async def go() -> list[ProbeResult]:
                prober = TcpProber()
                a = await _probe_all(prober, ["127.0.0.1"], v4.getsockname()[1])
                b = await _probe_all(prober, ["::1"], v6.getsockname()[1])
                return a + b

            results = asyncio.run(go())
        assert [Reason.OK, Reason.OK] == [r.reason for r in results]
        assert all(r.rtt is not None and r.rtt > 0 for r in results)

    def test_closed_port_is_refused(self) -> None:
        """A closed loopback port is `refused`, not a timeout."""
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]  # bound, not listening: connects are refused
            result = asyncio.run(_probe_all(TcpProber(), ["127.0.0.1"], port))[0]
        assert Reason.REFUSED == result.reason

    def test_no_time_wait_left(self) -> None:
        """Closing with a reset leaves no TIME_WAIT entry for our probes' ports."""
        with socket.socket() as server:
            server.bind(("127.0.0.2", 0))
            server.listen(512)
            port = server.getsockname()[1]
            results = asyncio.run(_probe_all(TcpProber(), ["127.0.0.2"] * 100, port))
            ss = subprocess.run(["ss", "-tan", "state", "time-wait", "dst", "127.0.0.2"],
                                capture_output=True, text=True, check=True).stdout
        assert 100 == sum(r.ok for r in results)
        assert f"127.0.0.2:{port}" not in ss
