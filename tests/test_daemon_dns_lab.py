"""The daemon against a real DNS server in the lab: every DNS failure is a reported state, and
an address change is logged to the journal. dnsmasq runs in the lab's host namespace
(tests/lab/dns.py); the daemon runs in the prober namespace with `dns_servers` set to it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon_proc import running
from hostwatch.events import EventKind
from lab.dns import DnsServers, drop_udp_to_port, require_dnsmasq
from lab.journald import PrivateJournald
from lab.netns import NetLab

SILENT_PORT = 5301


@pytest.fixture
def dns(lab: NetLab, tmp_path: Path) -> Iterator[DnsServers]:
    require_dnsmasq()
    drop_udp_to_port(SILENT_PORT, lab.host_cmd)
    records = {"web.lab": [lab.host_ip4]}
    with DnsServers(tmp_path / "dns", records, silent=f"127.0.0.1#{SILENT_PORT}",
                    address=lab.host_ip4, port=53, upstream_port=5300,
                    wrap=lab.host_cmd) as servers:
        yield servers


def _getter(lab: NetLab):  # type: ignore[no-untyped-def]
    def get(url: str) -> tuple[int, str]:
        try:
            return lab.http_get(url)
        except ConnectionError:
            return 0, ""
    return get


class TestDnsStates:
    def test_reasons_and_address_change(self, lab: NetLab, dns: DnsServers,
                                        journald: PrivateJournald, tmp_path: Path) -> None:
        """NXDOMAIN, SERVFAIL and a silent server are DOWN with their own reasons while the
        resolvable target stays UP; changing its record is logged as an address change and
        the probe follows the new address."""
        lab.add_host_ip("198.18.0.3")
        config = f"""
dns_servers: [{lab.host_ip4}]
dns_refresh: 2s
defaults: {{interval: 250ms, timeout: 200ms, failure_threshold: 2}}
targets:
  - {{name: web, host: web.lab, ip_protocol: ip4, probes: {{icmp: }}}}
  - {{name: nx, host: nx.lab, probes: {{icmp: }}}}
  - {{name: broken, host: www.broken.lab, probes: {{icmp: }}}}
  - {{name: silent, host: www.silent.lab, probes: {{icmp: }}}}
"""
        prefix = journald.wrap(lab.prober_cmd([]))
        with running(tmp_path, config, prefix=prefix, get=_getter(lab),
                     log_target="journal") as daemon:
            scrape = daemon.wait_for(
                lambda s: all(s.state(t, "icmp") == "down" for t in ("nx", "broken", "silent"))
                and s.state("web", "icmp") == "up", timeout=30, what="DNS states")
            for target, reason in (("nx", "dns-nxdomain"), ("broken", "dns-servfail"),
                                   ("silent", "dns-timeout")):
                assert scrape.value("hostwatch_probe_failures_total", target=target,
                                    reason=reason) >= 2
                entry = journald.wait_for(MESSAGE_ID=EventKind.TRANSITION.value,
                                          TARGET=target, STATE="DOWN")
                assert reason == entry["REASON"]
            assert 0 == scrape.value("hostwatch_probe_sent_total", target="nx")
            dns.set_records({"web.lab": ["198.18.0.3"]})
            daemon.wait_for(lambda s: bool(s.find("hostwatch_probe_success", target="web",
                                                  ip="198.18.0.3")), timeout=30,
                            what="web probed at its new address")
        changed = journald.wait_for(MESSAGE_ID=EventKind.ADDRESS_CHANGED.value, HOST="web.lab")
        assert ("198.18.0.3", lab.host_ip4) == (changed["IP"], changed["PREVIOUS_IP"])
