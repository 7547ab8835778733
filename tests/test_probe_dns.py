"""dns probes against Debian's dnsmasq on a loopback port (NOERROR, NXDOMAIN, SERVFAIL), and the
whole daemon running one target of every new probe type against real loopback servers."""

from __future__ import annotations

import datetime
import subprocess
from collections.abc import Iterator
from pathlib import Path

import dns.flags
import dns.message
import dns.rcode
import pytest

from daemon_proc import Scrape, running
from hostwatch.model import DnsOptions, ProbeKind, ProbeSpec
from hostwatch.probes.base import ProbeResult, Reason
from hostwatch.probes.dns import DnsProber, check_reply, make_query, same_record
from servers import (
    CertAuthority,
    Dnsmasq,
    ServerLoop,
    closed_udp_port,
    pong,
    probe_once,
    require_dnsmasq,
    silent,
    spec_of,
    utc_now,
)


def probe(spec: ProbeSpec, timeout: float = 1.0, ip: str = "127.0.0.1") -> ProbeResult:
    """One probe of `spec` by a fresh DnsProber."""
    return probe_once(DnsProber, spec, timeout, ip)


@pytest.fixture(scope="module")
def dnsmasq(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dnsmasq]:
    """dnsmasq on a loopback port: ok.lab and www.lab exist, other *.lab are NXDOMAIN,
    *.fail.lab SERVFAIL."""
    require_dnsmasq()
    with Dnsmasq(tmp_path_factory.mktemp("dnsmasq"), {"www.lab": "198.18.0.7"}) as server:
        yield server


def ask(server: Dnsmasq, options: str) -> ProbeResult:
    """A dns probe of `server` with the YAML flow `options` (without the port)."""
    return probe(spec_of(f"{{dns: {{port: {server.port}, {options}}}}}"))


class TestConfig:
    def test_defaults(self) -> None:
        """Only `query.name` is required: port 53, type A, recursion desired, NOERROR."""
        assert ProbeSpec(ProbeKind.DNS, 53, dns=DnsOptions("example.lab")) == spec_of(
            "{dns: {query: {name: example.lab}}}")

    def test_every_key(self) -> None:
        """Types and rcodes are case-insensitive and kept canonical; a list of rcodes is
        allowed; answer_matches is compiled over text."""
        spec = spec_of("{dns: {port: 5353, query: {name: _sip._udp.lab, type: srv, "
                       "recursion_desired: false}, expect_rcode: [noerror, NXDomain], "
                       "answer_contains: sip.lab., answer_matches: ' 5060 '}}")
        assert spec.dns is not None
        matches = spec.dns.answer_matches
        assert matches is not None
        assert (5353, "_sip._udp.lab", "SRV", False, ("NOERROR", "NXDOMAIN"), "sip.lab.",
                " 5060 ") == (spec.port, spec.dns.name, spec.dns.rdtype,
                              spec.dns.recursion_desired, spec.dns.rcodes,
                              spec.dns.answer_contains, matches.pattern)

    def test_one_rcode_as_a_string(self) -> None:
        """`expect_rcode: SERVFAIL` is one rcode."""
        spec = spec_of("{dns: {query: {name: x.lab}, expect_rcode: SERVFAIL}}")
        assert spec.dns is not None
        assert ("SERVFAIL",) == spec.dns.rcodes


class TestDnsmasq:
    def test_noerror_with_the_answer(self, dnsmasq: Dnsmasq) -> None:
        """NOERROR and the expected record: success, the query time as RTT."""
        result = ask(dnsmasq, "query: {name: ok.lab}, answer_contains: 198.18.0.5")
        assert (Reason.OK, "") == (result.reason, result.detail)
        assert result.rtt is not None
        assert result.rtt > 0

    def test_answer_matches(self, dnsmasq: Dnsmasq) -> None:
        """`answer_matches` searches each record's data."""
        result = ask(dnsmasq, "query: {name: www.lab, type: A}, answer_matches: '^198\\.18\\.'")
        assert Reason.OK is result.reason

    def test_nxdomain_is_dns_rcode(self, dnsmasq: Dnsmasq) -> None:
        """NXDOMAIN when NOERROR is expected: `dns-rcode`, the rcode in the detail."""
        result = ask(dnsmasq, "query: {name: nx.lab}")
        assert (Reason.DNS_RCODE, "nx.lab A: NXDOMAIN, expected NOERROR") == (
            result.reason, result.detail)

    def test_servfail_is_dns_rcode(self, dnsmasq: Dnsmasq) -> None:
        """SERVFAIL (dnsmasq's DNSSEC validation fails): `dns-rcode`."""
        result = ask(dnsmasq, "query: {name: x.fail.lab}")
        assert (Reason.DNS_RCODE, "x.fail.lab A: SERVFAIL, expected NOERROR") == (
            result.reason, result.detail)

    def test_expected_rcodes(self, dnsmasq: Dnsmasq) -> None:
        """An rcode listed in `expect_rcode` is success, whatever it is."""
        assert Reason.OK is ask(dnsmasq, "query: {name: nx.lab}, expect_rcode: NXDOMAIN").reason
        assert Reason.OK is ask(dnsmasq, "query: {name: x.fail.lab}, "
                                         "expect_rcode: [NOERROR, SERVFAIL]").reason

    def test_missing_record_is_answer_mismatch(self, dnsmasq: Dnsmasq) -> None:
        """The right rcode with another answer: `dns-answer-mismatch`, the records shown."""
        result = ask(dnsmasq, "query: {name: ok.lab}, answer_contains: 198.18.0.6")
        assert (Reason.DNS_ANSWER_MISMATCH,
                "ok.lab A: no record '198.18.0.6'; the answer has 198.18.0.5") == (
            result.reason, result.detail)

    def test_empty_answer_is_answer_mismatch(self, dnsmasq: Dnsmasq) -> None:
        """NOERROR without records (NODATA) fails an answer check."""
        result = ask(dnsmasq, "query: {name: ok.lab, type: AAAA}, answer_matches: ':'")
        assert (Reason.DNS_ANSWER_MISMATCH, "ok.lab AAAA: no record matches ':'; the answer is "
                "empty") == (result.reason, result.detail)

    def test_without_recursion(self, dnsmasq: Dnsmasq) -> None:
        """`recursion_desired: false` still gets local data."""
        assert Reason.OK is ask(dnsmasq, "query: {name: ok.lab, recursion_desired: false}").reason


class TestTransport:
    @pytest.fixture
    def servers(self) -> Iterator[ServerLoop]:
        """Test servers in a thread of their own, stopped after the test."""
        with ServerLoop() as loop:
            yield loop

    def test_echo_is_not_a_response(self, servers: ServerLoop) -> None:
        """A UDP echo sends the query back: not a response to it, `dns-bad-reply`."""
        port = servers.udp_echo()
        result = probe(spec_of(f"{{dns: {{port: {port}, query: {{name: ok.lab}}}}}}"))
        assert (Reason.DNS_BAD_REPLY, "ok.lab A: the reply does not answer the query (flags, id "
                "or question differ)") == (result.reason, result.detail)

    @pytest.mark.parametrize("ip", ["127.0.0.1", "::1"])
    def test_closed_port_is_refused(self, ip: str) -> None:
        """No server on the port: ICMP port unreachable, `refused`."""
        port = closed_udp_port(ip)
        result = probe(spec_of(f"{{dns: {{port: {port}, query: {{name: ok.lab}}}}}}", ip),
                       ip=ip, timeout=5)
        assert Reason.REFUSED is result.reason

    def test_silence_is_timeout(self, servers: ServerLoop) -> None:
        """A server that never answers: `timeout`."""
        port = servers.udp_silent()
        result = probe(spec_of(f"{{dns: {{port: {port}, query: {{name: ok.lab}}}}}}"),
                       timeout=0.1)
        assert Reason.TIMEOUT is result.reason


class TestReplies:
    OPTIONS = DnsOptions("ok.lab")

    def test_garbage_is_bad_reply(self) -> None:
        """Bytes that are no DNS message: `dns-bad-reply`."""
        query = make_query(self.OPTIONS)
        result = check_reply(query, b"junk", self.OPTIONS, "127.0.0.1", 0.001)
        assert Reason.DNS_BAD_REPLY is result.reason
        assert result.detail.startswith("ok.lab A: 4 bytes that are not a DNS message")

    def test_other_id_is_bad_reply(self) -> None:
        """A response to another query (another id) is not accepted."""
        query = make_query(self.OPTIONS)
        other = dns.message.make_response(make_query(self.OPTIONS))
        other.id = (query.id + 1) % 65536
        result = check_reply(query, other.to_wire(), self.OPTIONS, "127.0.0.1", 0.001)
        assert Reason.DNS_BAD_REPLY is result.reason

    def test_recursion_flag(self) -> None:
        """The RD flag follows `recursion_desired`."""
        assert make_query(self.OPTIONS).flags & dns.flags.RD
        no_rd = DnsOptions("ok.lab", recursion_desired=False)
        assert not make_query(no_rd).flags & dns.flags.RD

    def test_refused_rcode(self) -> None:
        """Any rcode not expected is `dns-rcode`, REFUSED included."""
        query = make_query(self.OPTIONS)
        reply = dns.message.make_response(query)
        reply.set_rcode(dns.rcode.REFUSED)
        result = check_reply(query, reply.to_wire(), self.OPTIONS, "127.0.0.1", 0.001)
        assert (Reason.DNS_RCODE, "ok.lab A: REFUSED, expected NOERROR") == (
            result.reason, result.detail)

    @pytest.mark.parametrize(("text", "wanted", "same"), [
        ("198.18.0.5", "198.18.0.5", True),
        ("2001:db8::1", "2001:DB8:0::1", True),
        ("mail.lab.", "MAIL.lab", True),
        ("10 mail.lab.", "10 mail.lab.", True),
        ("198.18.0.5", "198.18.0.50", False),
        ("mail.lab.", "mail.lab.example", False),
    ])
    def test_same_record(self, text: str, wanted: str, same: bool) -> None:
        """answer_contains compares text, addresses as addresses and names without case."""
        assert same is same_record(text, wanted)


# --- the daemon -------------------------------------------------------------------------------


def _daemon_config(*, tls_port: int, ca_file: Path, lb_port: int, echo_port: int,
                   closed_port: int, dns_port: int) -> str:
    return f"""
defaults:
  interval: 200ms
  timeout: 150ms
  failure_threshold: 2
  success_threshold: 2
  rtt_histogram: true
targets:
  - name: tls-web
    host: 127.0.0.1
    probes:
      tcp:
        port: {tls_port}
        tls: {{ca_file: {ca_file}}}
        steps:
          - expect: '^\\+OK'
          - send: 'PING\\r\\n'
          - expect: '^\\+PONG'
  - name: lb-502
    host: 127.0.0.1
    probes:
      tcp:
        port: {lb_port}
        steps:
          - send: 'GET / HTTP/1.0\\r\\n\\r\\n'
          - expect: '^HTTP/1\\.[01] 200'
            timeout: 100ms
  - name: echo
    host: "::1"
    probes:
      udp: {{port: {echo_port}, payload: 'ping', expect: '^ping$'}}
  - name: udp-closed
    host: 127.0.0.1
    probes:
      udp: {{port: {closed_port}, payload: 'x'}}
  - name: dns-ok
    host: 127.0.0.1
    probes:
      dns: {{port: {dns_port}, query: {{name: ok.lab}}, answer_contains: 198.18.0.5}}
  - name: dns-nx
    host: 127.0.0.1
    probes:
      dns: {{port: {dns_port}, query: {{name: nx.lab}}}}
  - name: dns-servfail
    host: 127.0.0.1
    probes:
      dns: {{port: {dns_port}, query: {{name: x.fail.lab}}}}
"""


_EXPECTED = {
    ("tls-web", "tcp"): "up", ("lb-502", "tcp"): "down", ("echo", "udp"): "up",
    ("udp-closed", "udp"): "down", ("dns-ok", "dns"): "up", ("dns-nx", "dns"): "down",
    ("dns-servfail", "dns"): "down",
}


def _settled(scrape: Scrape) -> bool:
    try:
        return all(scrape.state(t, p) == s for (t, p), s in _EXPECTED.items())
    except AssertionError:
        return False


class TestDaemon:
    def test_one_target_per_new_probe_type(self, tmp_path: Path, dnsmasq: Dnsmasq) -> None:
        """The daemon schedules tcp-with-TLS-and-steps, udp and dns like any probe: states,
        failure reasons, phase timings and TLS metrics on /metrics; promtool is content."""
        ca = CertAuthority(tmp_path / "ca")
        issued = ca.issue("web", not_after=utc_now() + datetime.timedelta(days=10))
        with ServerLoop() as servers:
            config = _daemon_config(
                tls_port=servers.tcp(pong, tls=ca.server_context(issued)), ca_file=ca.ca_file,
                lb_port=servers.tcp(silent), echo_port=servers.udp_echo("::1"),
                closed_port=closed_udp_port(), dns_port=dnsmasq.port)
            with running(tmp_path, config) as daemon:
                scrape = daemon.wait_for(_settled, what="every target in its state")
        reasons = {
            "lb-502": "expect-timeout", "udp-closed": "refused", "dns-nx": "dns-rcode",
            "dns-servfail": "dns-rcode",
        }
        for target, reason in reasons.items():
            assert scrape.value("hostwatch_probe_failures_total", target=target,
                                reason=reason) >= 2
            assert 0.0 == scrape.value("hostwatch_probe_success", target=target)
        for target in ("tls-web", "echo", "dns-ok"):
            assert 1.0 == scrape.value("hostwatch_probe_success", target=target)
            assert scrape.value("hostwatch_probe_rtt_seconds_count", target=target) >= 2
        phases = {labels["phase"] for labels, _ in
                  scrape.find("hostwatch_probe_phase_seconds", target="tls-web")}
        assert {"resolve", "connect", "tls", "first_byte"} == phases
        assert {"resolve", "connect"} == {labels["phase"] for labels, _ in scrape.find(
            "hostwatch_probe_phase_seconds", target="lb-502")}
        assert 1.0 == scrape.value("hostwatch_probe_tls_version_info", target="tls-web",
                                   version="TLS 1.3")
        assert issued.not_after == scrape.value(
            "hostwatch_probe_ssl_earliest_cert_expiry_timestamp_seconds", target="tls-web")
        ((chain, _),) = scrape.find("hostwatch_probe_ssl_last_chain_info", target="tls-web")
        assert ("O=hostwatch tests,CN=localhost", "O=hostwatch tests,CN=hostwatch test CA") == (
            chain["subject"], chain["issuer"])
        assert [] == scrape.find("hostwatch_probe_tls_version_info", target="lb-502")
        check = subprocess.run(["promtool", "check", "metrics"], input=scrape.text,
                               capture_output=True, text=True, check=False)
        assert (0, "") == (check.returncode, check.stdout + check.stderr)
