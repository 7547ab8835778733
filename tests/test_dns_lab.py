"""Name resolution across the lab: dnsmasq in the host namespace on 198.18.0.2:53, hostwatch's
resolver in the prober namespace (a child process, tests/lab/dns.py's ResolverProcess).

dnsmasq forwards only to loopback sockets of the host namespace; the resolver is given its
servers (or a resolv.conf written by the test), never the machine's.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from lab.dns import (
    DnsServers,
    Json,
    ResolverProcess,
    drop_udp_to_port,
    require_dnsmasq,
    resolution,
)
from lab.netns import NetLab

SERVER = "198.18.0.2"
UPSTREAM_PORT, SILENT_PORT = 5300, 5301
TIMEOUT = 1.0
RECORDS = {
    "db1.lab": ["198.18.0.10"],
    "web.lab": ["198.18.0.20", "2001:2::20"],
    "far6.lab": ["198.18.0.30", "2001:3::30"],  # 2001:3::/64 has no route in the prober netns
}


@pytest.fixture
def dns(lab: NetLab, tmp_path: Path) -> Iterator[DnsServers]:
    """dnsmasq on the lab host (198.18.0.2:53) with its upstream and a silent port beside it."""
    require_dnsmasq()
    drop_udp_to_port(SILENT_PORT, lab.host_cmd)
    with DnsServers(tmp_path / "dns", RECORDS, silent=f"127.0.0.1#{SILENT_PORT}",
                    address=lab.host_ip4, port=53, upstream_port=UPSTREAM_PORT,
                    wrap=lab.host_cmd) as servers:
        yield servers


@pytest.fixture
def prober(lab: NetLab, tmp_path: Path) -> Iterator[tuple[ResolverProcess, Json]]:
    """The resolver in the prober namespace and the arguments that point it at the lab host."""
    hosts = tmp_path / "hosts"
    hosts.write_text("")
    args: Json = {"servers": [lab.host_ip4], "port": 53, "timeout": TIMEOUT,
                  "hosts_file": str(hosts), "resolv_conf": "/nonexistent/resolv.conf"}
    with ResolverProcess(lab.prober_cmd) as proc:
        yield proc, args


def test_every_reason(dns: DnsServers, prober: tuple[ResolverProcess, Json]) -> None:
    """Each way a name fails is told apart, with a detail naming the server."""
    proc, args = prober
    asked = {
        ("db1.lab", "ip4"): resolution("198.18.0.10", source=SERVER),
        ("nx.lab", "auto"): resolution(
            None, "dns-nxdomain", "nx.lab: NXDOMAIN from 198.18.0.2", SERVER),
        ("db1.lab", "ip6"): resolution(
            None, "no-address-for-family",
            "db1.lab: no AAAA record (empty answer from 198.18.0.2)", SERVER),
        ("www.broken.lab", "ip4"): resolution(
            None, "dns-servfail", "www.broken.lab: SERVFAIL from 198.18.0.2"),
        ("www.refused.lab", "ip4"): resolution(
            None, "dns-servfail", "www.refused.lab: REFUSED from 198.18.0.2"),
        ("www.silent.lab", "ip4"): resolution(
            None, "dns-timeout", "www.silent.lab: no answer from 198.18.0.2 within 1 s"),
    }
    actual = {key: proc.lookup(*key, **args) for key in asked}
    assert asked == actual


def test_dead_server_is_a_timeout(lab: NetLab, dns: DnsServers,
                                  prober: tuple[ResolverProcess, Json]) -> None:
    """When the host drops everything, a name that resolved before times out."""
    proc, args = prober
    assert "198.18.0.10" == proc.lookup("db1.lab", "ip4", **args)["ip"]
    lab.set_drop(True)
    assert resolution(None, "dns-timeout", "db1.lab: no answer from 198.18.0.2 within 1 s") \
        == proc.lookup("db1.lab", "ip4", **args)


def test_address_change_is_reported(dns: DnsServers,
                                    prober: tuple[ResolverProcess, Json]) -> None:
    """A changed record is picked up on its TTL (refresh is an hour) and reported once."""
    proc, args = prober
    proc.start(3600, **args)
    proc.update([("db1.lab", "ip4")])
    dns.set_records({**RECORDS, "db1.lab": ["198.18.0.11"]})
    assert {"event": "change", "host": "db1.lab", "protocol": "ip4",
            "old": resolution("198.18.0.10", source=SERVER),
            "new": resolution("198.18.0.11", source=SERVER)} == proc.next_event()
    assert resolution("198.18.0.11", source=SERVER) == proc.get("db1.lab", "ip4")


def test_ipv6_broken_ipv4_fine(dns: DnsServers, prober: tuple[ResolverProcess, Json]) -> None:
    """Per-family keys of one name keep their own state: the AAAA record going away fails
    only the IPv6 key."""
    proc, args = prober
    proc.start(3600, **args)
    proc.update([("web.lab", "ip4"), ("web.lab", "ip6")])
    dns.set_records({**RECORDS, "web.lab": ["198.18.0.20"]})
    event = proc.next_event()
    assert ("ip6", "2001:2::20", "no-address-for-family") == (
        event["protocol"], event["old"]["ip"], event["new"]["reason"])
    assert [resolution("198.18.0.20", source=SERVER),
            resolution(None, "no-address-for-family",
                       "web.lab: no AAAA record (empty answer from 198.18.0.2)", SERVER)] == [
        proc.get("web.lab", p) for p in ("ip4", "ip6")]


def test_auto_takes_ipv6_only_where_routed(dns: DnsServers,
                                           prober: tuple[ResolverProcess, Json]) -> None:
    """AUTO prefers the AAAA address when the prober has a route to it, else the A address."""
    proc, args = prober
    assert ["2001:2::20", "198.18.0.30"] == [
        proc.lookup(h, "auto", **args)["ip"]
        for h in ("web.lab", "far6.lab")]


def test_system_configuration_and_search_list(dns: DnsServers, tmp_path: Path,
                                              prober: tuple[ResolverProcess, Json]) -> None:
    """Without configured servers the resolver reads resolv.conf (here the test's own):
    its server and its search list."""
    proc, args = prober
    conf = tmp_path / "resolv.conf"
    conf.write_text("nameserver 198.18.0.2\nsearch lab\n")
    system = {**args, "servers": [], "resolv_conf": str(conf)}
    assert [resolution("198.18.0.10", source=SERVER)] * 2 == [
        proc.lookup(h, "ip4", **system) for h in ("db1", "db1.lab.")]


def test_resolv_conf_is_read_again(dns: DnsServers, tmp_path: Path,
                                   prober: tuple[ResolverProcess, Json]) -> None:
    """A resolver on the system configuration fails while resolv.conf is missing and starts
    resolving (an on_change call) once the file appears, without a restart."""
    proc, args = prober
    conf = tmp_path / "resolv.conf"
    proc.start(3600, **{**args, "servers": [], "resolv_conf": str(conf)})
    proc.update([("db1.lab", "ip4")])
    assert resolution(None, "dns", f"db1.lab: no DNS server configured: cannot open {conf}") \
        == proc.get("db1.lab", "ip4")
    conf.write_text("nameserver 198.18.0.2\n")
    event = proc.next_event()
    assert (None, "198.18.0.10") == (event["old"]["ip"], event["new"]["ip"])
