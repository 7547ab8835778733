"""Name resolution (resolve.py) against real dnsmasq servers on loopback (tests/lab/dns.py).

Every server a test starts is on 127.0.0.0/8 and forwards only to other loopback sockets of the
test; resolv.conf is never read (servers are passed, and `resolv_conf` points nowhere).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hostwatch.model import IpProtocol
from hostwatch.probes.base import Reason
from hostwatch.resolve import (
    PENDING,
    HostsFile,
    Key,
    Resolution,
    Resolver,
    literal,
    lookup,
    parse_hosts,
    refresh_delay,
)
from lab.dns import TXT_ONLY, DnsServers, queries, require_dnsmasq

IP4, IP6, AUTO = IpProtocol.IP4, IpProtocol.IP6, IpProtocol.AUTO
NO_RESOLV_CONF = "/nonexistent/resolv.conf"  # the machine's is never read
RECORDS = {
    "db1.lab": ["127.0.0.10"],
    "dual.lab": ["127.0.0.11", "::1"],
    "v6only.lab": ["::1"],
}
TIMEOUT = 0.5  # per server: a silent one costs this much

Change = tuple[Key, Resolution, Resolution]


@pytest.fixture
def silent() -> Iterator[str]:
    """A UDP socket on loopback that receives and never answers: dnsmasq's dead upstream."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"127.0.0.1#{sock.getsockname()[1]}"


@pytest.fixture
def dns(tmp_path: Path, silent: str) -> Iterator[DnsServers]:
    """The front + upstream dnsmasq on 127.0.0.1 (high ports), answering RECORDS, TTL 1 s."""
    require_dnsmasq()
    with DnsServers(tmp_path / "dns", RECORDS, silent=silent) as servers:
        yield servers


@pytest.fixture
def silent_twin(dns: DnsServers) -> Iterator[str]:
    """A silent 'server' on 127.0.0.2 with the same port as `dns`: a dead first server."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.2", dns.port))
        yield "127.0.0.2"


@pytest.fixture
def empty_hosts(tmp_path: Path) -> str:
    """A hosts file with nothing in it, so only DNS answers."""
    path = tmp_path / "hosts"
    path.write_text("")
    return str(path)


def resolve(dns: DnsServers, host: str, protocol: IpProtocol, hosts_file: str,
            servers: tuple[str, ...] | None = None) -> Resolution:
    """One lookup through `servers` (default: the front dnsmasq) on the front's port."""
    return asyncio.run(lookup(host, protocol, servers=servers or (dns.address,), port=dns.port,
                              timeout=TIMEOUT, hosts_file=hosts_file,
                              resolv_conf=NO_RESOLV_CONF))


def new_resolver(dns: DnsServers, hosts_file: str, changes: list[Change] | None = None, *,
                 refresh: float = 3600.0, event: asyncio.Event | None = None,
                 servers: tuple[str, ...] | None = None) -> Resolver:
    """A Resolver on the front dnsmasq that appends every on_change call to `changes`."""
    def on_change(key: Key, old: Resolution, new: Resolution) -> None:
        if changes is not None:
            changes.append((key, old, new))
        if event is not None:
            event.set()

    return Resolver(refresh, on_change, servers=servers or (dns.address,), port=dns.port,
                    timeout=TIMEOUT, hosts_file=hosts_file, resolv_conf=NO_RESOLV_CONF)


async def wait_for(event: asyncio.Event) -> None:
    """Wait for an on_change call; the bound only keeps a broken test from hanging."""
    async with asyncio.timeout(30):
        await event.wait()
    event.clear()


class TestRefreshDelay:
    def test_ttl_between_floor_and_refresh_is_used(self) -> None:
        """An answer's TTL sets the next lookup when it lies between the floor and refresh."""
        assert 30.0 == refresh_delay(300.0, 30.0, 0)

    def test_short_ttl_is_raised_to_the_floor(self) -> None:
        """A TTL of 0 never makes a name looked up in a loop: the floor (1 s) applies."""
        assert 1.0 == refresh_delay(300.0, 0.0, 0)

    def test_long_ttl_is_capped_by_refresh(self) -> None:
        """A day-long TTL still means a lookup every `refresh` seconds."""
        assert 300.0 == refresh_delay(300.0, 86400.0, 0)

    def test_no_ttl_means_refresh(self) -> None:
        """Answers without a TTL (hosts file) are looked up again every `refresh`."""
        assert 300.0 == refresh_delay(300.0, None, 0)

    def test_failures_back_off_doubling_up_to_refresh(self) -> None:
        """Consecutive failures retry after 1, 2, 4, 8 s … capped at refresh, whatever the TTL."""
        assert [1.0, 2.0, 4.0, 8.0, 10.0, 10.0] == [
            refresh_delay(10.0, 5.0, n) for n in range(1, 7)]

    def test_huge_failure_count_does_not_overflow(self) -> None:
        """A name failing for years keeps retrying every `refresh`."""
        assert 300.0 == refresh_delay(300.0, None, 10**6)


class TestHostsFile:
    def test_parse_hosts(self) -> None:
        """Comments, aliases, case, trailing dots, zone indexes and junk lines as the C library."""
        text = (
            "# comment\n"
            "127.0.0.1\tlocalhost  Loopback.  # trailing comment\n"
            "::1 localhost ip6-localhost\n"
            "fe80::1%eth0 router\n"
            "not-an-address name\n"
            "127.0.0.9\n"
            "127.0.0.1 localhost\n"
        )
        assert {
            "localhost": ("127.0.0.1", "::1"),
            "loopback": ("127.0.0.1",),
            "ip6-localhost": ("::1",),
            "router": ("fe80::1",),
        } == parse_hosts(text)

    def test_reread_when_changed_and_missing_is_empty(self, tmp_path: Path) -> None:
        """A rewritten file is read again on the next lookup; a missing file has no names."""
        path = tmp_path / "hosts"
        hosts = HostsFile(str(path))
        assert () == hosts.addresses("db1")
        path.write_text("127.0.0.5 db1\n")
        assert ("127.0.0.5",) == hosts.addresses("DB1.")
        path.write_text("127.0.0.6 db1 db1.example\n")
        assert ("127.0.0.6",) == hosts.addresses("db1")
        path.unlink()
        assert () == hosts.addresses("db1")


class TestLiteral:
    def test_literals_need_no_resolver(self) -> None:
        """IP literals resolve to themselves; the wrong family is NO_ADDRESS; names are None."""
        assert Resolution("2001:db8::1") == literal("2001:DB8::1", AUTO)
        assert Resolution(None, Reason.NO_ADDRESS, "::1 is not an IPv4 address") == literal(
            "::1", IP4)
        assert literal("db1.lab", IP4) is None


class TestLookup:
    def test_address_and_where_it_came_from(self, dns: DnsServers, empty_hosts: str) -> None:
        """An A record gives the address; `source` names the server that said so."""
        assert Resolution("127.0.0.10", source=dns.label) == resolve(
            dns, "db1.lab", IP4, empty_hosts)

    def test_trailing_dot_is_the_same_name(self, dns: DnsServers, empty_hosts: str) -> None:
        """`db1.lab.` (absolute) resolves like `db1.lab`."""
        assert "127.0.0.10" == resolve(dns, "db1.lab.", IP4, empty_hosts).ip

    def test_auto_prefers_routable_ipv6(self, dns: DnsServers, empty_hosts: str) -> None:
        """AUTO asks AAAA and A; with both, an IPv6 address the host has a route to wins."""
        assert Resolution("::1", source=dns.label) == resolve(dns, "dual.lab", AUTO, empty_hosts)

    def test_each_family_on_its_own(self, dns: DnsServers, empty_hosts: str) -> None:
        """IP4 and IP6 of a dual-stack name give one address each (per-family watches)."""
        assert ("127.0.0.11", "::1") == (resolve(dns, "dual.lab", IP4, empty_hosts).ip,
                                         resolve(dns, "dual.lab", IP6, empty_hosts).ip)

    def test_auto_falls_back_to_ipv4(self, dns: DnsServers, empty_hosts: str) -> None:
        """AUTO of a name with only an A record gives the IPv4 address."""
        assert Resolution("127.0.0.10", source=dns.label) == resolve(
            dns, "db1.lab", AUTO, empty_hosts)

    def test_nxdomain(self, dns: DnsServers, empty_hosts: str) -> None:
        """A name that does not exist is DNS_NXDOMAIN, naming the server that said so."""
        expected = Resolution(None, Reason.DNS_NXDOMAIN,
                              f"nx.lab: NXDOMAIN from {dns.label}", dns.label)
        assert expected == resolve(dns, "nx.lab", AUTO, empty_hosts)

    def test_no_record_of_the_family(self, dns: DnsServers, empty_hosts: str) -> None:
        """An existing name without the family's record (NODATA) is NO_ADDRESS, per family."""
        assert Resolution(None, Reason.NO_ADDRESS,
                          f"db1.lab: no AAAA record (empty answer from {dns.label})",
                          dns.label) == resolve(dns, "db1.lab", IP6, empty_hosts)
        assert Resolution(None, Reason.NO_ADDRESS,
                          f"v6only.lab: no A record (empty answer from {dns.label})",
                          dns.label) == resolve(dns, "v6only.lab", IP4, empty_hosts)

    def test_no_record_of_either_family(self, dns: DnsServers, empty_hosts: str) -> None:
        """AUTO of a name with neither A nor AAAA (only TXT) is NO_ADDRESS."""
        assert Resolution(None, Reason.NO_ADDRESS,
                          f"{TXT_ONLY}: no AAAA or A record (empty answers from {dns.label})",
                          dns.label) == resolve(dns, TXT_ONLY, AUTO, empty_hosts)

    def test_servfail(self, dns: DnsServers, empty_hosts: str) -> None:
        """dnsmasq failing DNSSEC validation answers SERVFAIL: DNS_SERVFAIL with the rcode."""
        assert Resolution(None, Reason.DNS_SERVFAIL,
                          f"www.broken.lab: SERVFAIL from {dns.label}") == resolve(
            dns, "www.broken.lab", IP4, empty_hosts)

    def test_refused_counts_as_servfail(self, dns: DnsServers, empty_hosts: str) -> None:
        """REFUSED (passed on from dnsmasq's upstream) is DNS_SERVFAIL, and the detail says
        REFUSED."""
        assert Resolution(None, Reason.DNS_SERVFAIL,
                          f"www.refused.lab: REFUSED from {dns.label}") == resolve(
            dns, "www.refused.lab", IP4, empty_hosts)

    def test_no_answer_is_a_timeout(self, dns: DnsServers, empty_hosts: str) -> None:
        """dnsmasq forwarding to a silent upstream never answers: DNS_TIMEOUT after `timeout`."""
        assert Resolution(None, Reason.DNS_TIMEOUT,
                          f"www.silent.lab: no answer from {dns.label} within {TIMEOUT:g} s"
                          ) == resolve(dns, "www.silent.lab", AUTO, empty_hosts)

    def test_next_server_after_a_dead_one(self, dns: DnsServers, silent_twin: str,
                                          empty_hosts: str) -> None:
        """Servers are asked in order: a silent first one costs its timeout, the second
        answers."""
        servers = (silent_twin, dns.address)
        assert Resolution("127.0.0.10", source=dns.label) == resolve(
            dns, "db1.lab", IP4, empty_hosts, servers)

    def test_every_server_failing_is_reported(self, dns: DnsServers, silent_twin: str,
                                              empty_hosts: str) -> None:
        """When no server gives a final answer the detail has each one's failure; one REFUSED
        among timeouts makes it DNS_SERVFAIL."""
        servers = (silent_twin, dns.address)
        expected = Resolution(None, Reason.DNS_SERVFAIL,
                              f"www.refused.lab: no answer from {silent_twin}#{dns.port} within "
                              f"{TIMEOUT:g} s; REFUSED from {dns.label}")
        assert expected == resolve(dns, "www.refused.lab", IP4, empty_hosts, servers)

    def test_hosts_file_first(self, dns: DnsServers, tmp_path: Path) -> None:
        """/etc/hosts answers `localhost` with no DNS query (this dnsmasq would refuse it)."""
        assert Resolution("127.0.0.1", source="/etc/hosts") == resolve(
            dns, "localhost", IP4, "/etc/hosts")
        assert [] == [q for q in queries(dns.front_log()) if q[1].startswith("localhost")]

    def test_hosts_file_overrides_dns(self, dns: DnsServers, tmp_path: Path) -> None:
        """A name in the hosts file is not asked of DNS, even if DNS knows it."""
        hosts = tmp_path / "hosts"
        hosts.write_text("127.0.0.99 DB1.lab\n")
        assert Resolution("127.0.0.99", source=str(hosts)) == resolve(
            dns, "db1.lab.", IP4, str(hosts))

    def test_hosts_file_without_the_family_falls_through(self, dns: DnsServers,
                                                         tmp_path: Path) -> None:
        """A hosts entry of the other family does not answer: DNS is asked (as glibc does)."""
        hosts = tmp_path / "hosts"
        hosts.write_text("127.0.0.99 dual.lab\n")
        assert Resolution("::1", source=dns.label) == resolve(dns, "dual.lab", IP6, str(hosts))

    def test_bad_name(self, dns: DnsServers, empty_hosts: str) -> None:
        """A name DNS cannot carry is a DNS failure that says why."""
        assert Resolution(None, Reason.DNS, "a..lab: not a valid DNS name (A DNS label is "
                          "empty.)") == resolve(dns, "a..lab", IP4, empty_hosts)

    def test_no_servers_configured(self, empty_hosts: str) -> None:
        """Without servers and without a resolv.conf every name fails with Reason.DNS, and the
        hosts file still works."""
        async def go() -> tuple[Resolution, Resolution]:
            kwargs: dict[str, Any] = {"resolv_conf": NO_RESOLV_CONF}
            return (await lookup("db1.lab", IP4, hosts_file=empty_hosts, **kwargs),
                    await lookup("localhost", IP4, hosts_file="/etc/hosts", **kwargs))

        failed, local = asyncio.run(go())
        assert Resolution(None, Reason.DNS, "db1.lab: no DNS server configured: cannot open "
                          f"{NO_RESOLV_CONF}") == failed
        assert "127.0.0.1" == local.ip


class TestResolver:
    def test_pending_until_resolved_and_literals_direct(self, dns: DnsServers,
                                                        empty_hosts: str) -> None:
        """get() is PENDING for an unknown name and answers literals without tracking them."""
        async def go() -> tuple[Resolution, Resolution, frozenset[Key]]:
            resolver = new_resolver(dns, empty_hosts)
            await resolver.update({("127.0.0.1", IP4)})
            try:
                return resolver.get("db1.lab", IP4), resolver.get("127.0.0.1", IP4), \
                    resolver.keys()
            finally:
                await resolver.close()

        assert (PENDING, Resolution("127.0.0.1"), frozenset()) == asyncio.run(go())

    def test_update_tracks_exactly_the_keys(self, dns: DnsServers, empty_hosts: str) -> None:
        """update() resolves new names before returning and forgets names no longer given."""
        async def go() -> list[Any]:
            resolver = new_resolver(dns, empty_hosts)
            try:
                await resolver.update({("db1.lab", IP4), ("dual.lab", IP6)})
                first = [resolver.get("db1.lab", IP4).ip, resolver.get("dual.lab", IP6).ip]
                await resolver.update({("dual.lab", IP6)})
                return [*first, resolver.get("db1.lab", IP4), resolver.keys()]
            finally:
                await resolver.close()

        assert ["127.0.0.10", "::1", PENDING, frozenset({("dual.lab", IP6)})] == asyncio.run(
            go())

    def test_ttl_drives_refresh(self, dns: DnsServers, empty_hosts: str) -> None:
        """With refresh an hour and a 1 s TTL, an address change is seen and reported (once,
        not for the first resolution)."""
        async def go() -> list[Change]:
            changes: list[Change] = []
            event = asyncio.Event()
            resolver = new_resolver(dns, empty_hosts, changes, refresh=3600, event=event)
            try:
                await resolver.update({("db1.lab", IP4)})
                resolver.start()
                assert [] == changes
                await asyncio.to_thread(dns.set_records, {**RECORDS, "db1.lab": ["127.0.0.12"]})
                await wait_for(event)
                return changes
            finally:
                await resolver.close()

        key = ("db1.lab", IP4)
        assert [(key, Resolution("127.0.0.10", source=dns.label),
                 Resolution("127.0.0.12", source=dns.label))] == asyncio.run(go())

    def test_refresh_caps_a_long_ttl(self, tmp_path: Path, silent: str,
                                     empty_hosts: str) -> None:
        """With a one-hour TTL and refresh 1 s (set after creation), a change is still seen."""
        require_dnsmasq()

        async def go(dns: DnsServers) -> list[Change]:
            changes: list[Change] = []
            event = asyncio.Event()
            resolver = new_resolver(dns, empty_hosts, changes, refresh=3600, event=event)
            resolver.set_refresh(1.0)
            try:
                await resolver.update({("db1.lab", IP4)})
                resolver.start()
                await asyncio.to_thread(dns.set_records, {"db1.lab": ["127.0.0.13"]})
                await wait_for(event)
                return changes
            finally:
                await resolver.close()

        with DnsServers(tmp_path / "dns", RECORDS, silent=silent, ttl=3600) as dns:
            assert ["127.0.0.13"] == [new.ip for _key, _old, new in asyncio.run(go(dns))]

    def test_stopping_and_starting_to_resolve_are_changes(self, dns: DnsServers,
                                                          empty_hosts: str) -> None:
        """A name that disappears (NXDOMAIN) and comes back gives two on_change calls; the
        failure is retried with backoff (1 s) although refresh is an hour."""
        async def go() -> list[tuple[str | None, Reason | None, str | None]]:
            changes: list[Change] = []
            event = asyncio.Event()
            resolver = new_resolver(dns, empty_hosts, changes, refresh=3600, event=event)
            try:
                await resolver.update({("db1.lab", IP4)})
                resolver.start()
                await asyncio.to_thread(dns.set_records, {"dual.lab": RECORDS["dual.lab"]})
                await wait_for(event)
                await asyncio.to_thread(dns.set_records, RECORDS)
                await wait_for(event)
                return [(old.ip, new.reason, new.ip) for _key, old, new in changes]
            finally:
                await resolver.close()

        assert [("127.0.0.10", Reason.DNS_NXDOMAIN, None),
                (None, None, "127.0.0.10")] == asyncio.run(go())

    def test_slow_name_does_not_delay_another(self, dns: DnsServers, empty_hosts: str) -> None:
        """While a name whose lookup gets no answer is still pending, another name added in the
        same update() is already resolved."""
        async def go() -> tuple[Resolution, Resolution, bool]:
            resolver = Resolver(3600, None, servers=(dns.address,), port=dns.port, timeout=30,
                                hosts_file=empty_hosts, resolv_conf=NO_RESOLV_CONF)
            update = asyncio.create_task(
                resolver.update({("www.silent.lab", IP4), ("db1.lab", IP4)}, timeout=60))
            try:
                while resolver.get("db1.lab", IP4) == PENDING:
                    await asyncio.sleep(0.01)
                return resolver.get("www.silent.lab", IP4), resolver.get("db1.lab", IP4), \
                    update.done()
            finally:
                await resolver.close()
                await update

        assert (PENDING, Resolution("127.0.0.10", source=dns.label), False) == asyncio.run(go())

    def test_new_servers_re_resolve_every_name(self, dns: DnsServers, silent_twin: str,
                                               empty_hosts: str) -> None:
        """A name failing on a dead server resolves as soon as set_servers() names a live one."""
        async def go() -> tuple[Reason | None, list[Change]]:
            changes: list[Change] = []
            event = asyncio.Event()
            resolver = new_resolver(dns, empty_hosts, changes, event=event,
                                    servers=(silent_twin,))
            try:
                await resolver.update({("db1.lab", IP4)})
                resolver.start()
                before = resolver.get("db1.lab", IP4).reason
                resolver.set_servers((dns.address,), dns.port)
                await wait_for(event)
                return before, changes
            finally:
                await resolver.close()

        before, changes = asyncio.run(go())
        assert Reason.DNS_TIMEOUT == before
        assert [(None, "127.0.0.10")] == [(old.ip, new.ip) for _key, old, new in changes]

    def test_set_servers_takes_addresses_only(self, empty_hosts: str) -> None:
        """A name server given by name is a ValueError (the config gives addresses)."""
        resolver = Resolver(60, hosts_file=empty_hosts, resolv_conf=NO_RESOLV_CONF)
        with pytest.raises(ValueError, match="does not appear to be an IPv4 or IPv6 address"):
            resolver.set_servers(("ns1.example",))

    def test_error_in_on_change_is_not_lost(self, dns: DnsServers, empty_hosts: str) -> None:
        """An exception raised by on_change reaches the loop's exception handler (the daemon
        makes that fatal) instead of vanishing in a task."""
        async def go() -> BaseException | None:
            seen: asyncio.Future[BaseException | None] = asyncio.Future()

            def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
                if not seen.done():
                    seen.set_result(context.get("exception"))

            def on_change(key: Key, old: Resolution, new: Resolution) -> None:
                raise RuntimeError(f"bug handling {key[0]}")

            asyncio.get_running_loop().set_exception_handler(handler)
            resolver = Resolver(3600, on_change, servers=(dns.address,), port=dns.port,
                                timeout=TIMEOUT, hosts_file=empty_hosts,
                                resolv_conf=NO_RESOLV_CONF)
            try:
                await resolver.update({("db1.lab", IP4)})
                resolver.start()
                await asyncio.to_thread(dns.set_records, {"db1.lab": ["127.0.0.14"]})
                async with asyncio.timeout(30):
                    return await seen
            finally:
                await resolver.close()

        error = asyncio.run(go())
        assert "bug handling db1.lab" == str(error)
