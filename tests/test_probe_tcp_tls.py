"""tcp probes with send/expect steps and TLS, against real servers on loopback (tests/servers.py).

Specs come from YAML through `parse_config`, so each test also checks that the configuration
means what docs/probes.md says.
"""

from __future__ import annotations

import asyncio
import datetime
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding

from daemon_proc import free_port
from hostwatch.model import ProbeKind, ProbeSpec, Step, TlsOptions
from hostwatch.probes.base import ProbeResult, Reason
from hostwatch.probes.tcp import TcpProber
from hostwatch.probes.tcp_steps import MAX_READ, decode_escapes, show_bytes
from hostwatch.probes.tls import TlsContexts, parse_certificate, tls_info
from servers import (
    BlockingTlsServer,
    CertAuthority,
    Issued,
    ServerLoop,
    close_at_once,
    pong,
    probe_once,
    say,
    silent,
    spec_of,
    utc_now,
)


def probe(spec: ProbeSpec, timeout: float = 1.0, ip: str = "127.0.0.1",
          prober: TcpProber | None = None) -> ProbeResult:
    """One probe of `spec` by `prober`, or by a fresh TcpProber."""
    return probe_once(prober or TcpProber, spec, timeout, ip)


def phases(result: ProbeResult) -> list[str]:
    return [name for name, _ in result.phases]


@pytest.fixture
def servers() -> Iterator[ServerLoop]:
    """Test servers in a thread of their own, stopped after the test."""
    with ServerLoop() as loop:
        yield loop


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> CertAuthority:
    """A test CA; its files live as long as the module's tests."""
    return CertAuthority(tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="module")
def soon(ca: CertAuthority) -> Issued:
    """A server certificate for 127.0.0.1, ::1 and localhost that expires in 10 days."""
    return ca.issue("soon", not_after=utc_now() + datetime.timedelta(days=10))


class TestEscapes:
    @pytest.mark.parametrize(("text", "expected"), [
        ("PING\\r\\n", b"PING\r\n"),
        ("a\\tb\\0c\\\\d", b"a\tb\0c\\d"),
        ("\\x00\\x7f\\xFF", b"\x00\x7f\xff"),
        ("caf\u00e9", "caf\u00e9".encode()),
        ("already\r\nreal", b"already\r\nreal"),
        ("", b""),
    ])
    def test_decoded(self, text: str, expected: bytes) -> None:
        """The documented escapes become their bytes; other text is UTF-8."""
        assert expected == decode_escapes(text)

    @pytest.mark.parametrize(("text", "shown"), [
        ("a\\qb", "`\\q`"), ("\\x4", "`\\x4`"), ("\\xZZ", "`\\xZZ`"), ("end\\", "`\\`"),
        ("\\\n", "'\\\\\\n'"),
    ])
    def test_unknown_escape_named(self, text: str, shown: str) -> None:
        """Any other backslash sequence is an error naming it (nothing is evaluated)."""
        with pytest.raises(ValueError, match="unknown escape") as caught:
            decode_escapes(text)
        assert f"unknown escape {shown}; use \\r, \\n, \\t, \\0, \\\\ or \\xNN" == str(
            caught.value)

    def test_show_bytes_keeps_the_tail(self) -> None:
        """Details show at most the last 40 bytes, marked as cut."""
        assert "...b'" + "x" * 40 + "'" == show_bytes(b"y" + b"x" * 40)
        assert "b'ab'" == show_bytes(b"ab")


class TestConfig:
    def test_steps_and_tls_read(self, tmp_path: Path) -> None:
        """`steps` and `tls` become a Step per item and TlsOptions; the server name defaults
        to the target's DNS name."""
        ca_file = tmp_path / "ca.pem"
        CertAuthority(tmp_path).ca_file.rename(ca_file)
        spec = spec_of(
            "{tcp: {port: 6379, tls: {ca_file: " + str(ca_file) + "}, steps: ["
            "{send: 'PING\\r\\n'}, {expect: '^\\+PONG', timeout: 250ms}]}}", host="db.lab")
        assert ProbeKind.TCP == spec.kind
        assert 6379 == spec.port
        assert TlsOptions(server_name="db.lab", ca_file=str(ca_file)) == spec.tls
        send, expect = spec.steps
        assert Step(send=b"PING\r\n") == send
        assert expect.expect is not None
        assert (b"^\\+PONG", 0.25) == (expect.expect.pattern, expect.timeout)
        assert expect.expect.search(b"banner\n+PONG\r\n") is not None  # `^` at each line

    def test_tls_defaults(self) -> None:
        """`tls: {}` on an IP target verifies with the system store and sends no SNI."""
        assert TlsOptions() == spec_of("{tcp: {port: 443, tls: {}}}").tls
        assert TlsOptions() == spec_of("{tcp: {port: 443, tls: }}").tls

    def test_plain_tcp_unchanged(self) -> None:
        """`tcp: {port: N}` is still exactly the plain connect probe."""
        assert ProbeSpec(ProbeKind.TCP, 22) == spec_of("{tcp: {port: 22}}")


class TestSteps:
    def test_banner_ping_pong(self, servers: ServerLoop) -> None:
        """A banner check, a send and an expect, in order: success, RTT and phases."""
        port = servers.tcp(pong)
        spec = spec_of(f"{{tcp: {{port: {port}, steps: [{{expect: '^\\+OK'}}, "
                       "{send: 'PING\\r\\n'}, {expect: '^\\+PONG\\r$'}]}}")
        result = probe(spec)
        assert (Reason.OK, "") == (result.reason, result.detail)
        assert ["connect", "first_byte"] == phases(result)
        assert result.rtt is not None
        assert result.rtt >= sum(seconds for _, seconds in result.phases)
        assert result.tls is None

    def test_accepts_and_never_answers_is_expect_timeout(self, servers: ServerLoop) -> None:
        """The 502 case: the port accepts, nothing comes; the expect's own timeout ends it."""
        port = servers.tcp(silent)
        spec = spec_of(f"{{tcp: {{port: {port}, steps: [{{expect: '^HTTP', timeout: 50ms}}]}}}}")
        result = probe(spec)
        assert Reason.EXPECT_TIMEOUT is result.reason
        assert "steps[0] (expect '^HTTP'): no match within 0.05s; received nothing" == \
            result.detail
        assert ["connect"] == phases(result)

    def test_probe_timeout_bounds_every_step(self, servers: ServerLoop) -> None:
        """Without its own timeout, an expect waits at most for the rest of the probe's."""
        port = servers.tcp(silent)
        spec = spec_of(f"{{tcp: {{port: {port}, steps: [{{send: 'GET /\\r\\n'}}, "
                       "{expect: '^HTTP', timeout: 30s}]}}")
        result = probe(spec, timeout=0.2)
        assert Reason.EXPECT_TIMEOUT is result.reason
        assert "no match within the probe's timeout 0.2s; received nothing" in result.detail

    def test_closed_by_peer_is_expect_mismatch(self, servers: ServerLoop) -> None:
        """A connection closed before the match is `expect-mismatch`."""
        port = servers.tcp(close_at_once)
        result = probe(spec_of(f"{{tcp: {{port: {port}, steps: [{{expect: '^220 '}}]}}}}"))
        assert Reason.EXPECT_MISMATCH is result.reason
        assert "steps[0] (expect '^220 '): connection closed by the peer before a match; " \
               "received nothing" == result.detail

    def test_wrong_banner_shows_what_came(self, servers: ServerLoop) -> None:
        """The detail of a mismatch shows what arrived and was not matched."""
        port = servers.tcp(say(b"+OK not smtp\r\n"))
        result = probe(spec_of(f"{{tcp: {{port: {port}, steps: [{{expect: '^220 '}}]}}}}"))
        assert Reason.EXPECT_MISMATCH is result.reason
        assert result.detail.endswith("received 14 bytes, unmatched b'+OK not smtp\\r\\n'")
        assert ["connect", "first_byte"] == phases(result)

    def test_read_is_capped(self, servers: ServerLoop) -> None:
        """At most 64 KiB are read per probe; no match by then is a mismatch."""
        port = servers.tcp(say(b"x" * (MAX_READ + 4096)))
        result = probe(spec_of(f"{{tcp: {{port: {port}, steps: [{{expect: 'y'}}]}}}}"))
        assert Reason.EXPECT_MISMATCH is result.reason
        assert "steps[0] (expect 'y'): no match in the first 64 KiB; last bytes ..." in \
            result.detail

    def test_later_match_consumes_earlier_data(self, servers: ServerLoop) -> None:
        """Each expect searches what came after the previous match, not from the start."""
        port = servers.tcp(say(b"one\ntwo\n"))
        result = probe(spec_of(f"{{tcp: {{port: {port}, steps: [{{expect: two}}, "
                               "{expect: one}]}}"))
        assert Reason.EXPECT_MISMATCH is result.reason
        assert result.detail.startswith("steps[1] (expect 'one'): connection closed")

    def test_refused_before_any_step(self) -> None:
        """A closed port is `refused`, as for the plain probe; no step runs."""
        port = free_port()
        result = probe(spec_of(f"{{tcp: {{port: {port}, steps: [{{send: x}}]}}}}"))
        assert (Reason.REFUSED, []) == (result.reason, phases(result))

    def test_ipv6(self, servers: ServerLoop) -> None:
        """Steps work the same over IPv6."""
        port = servers.tcp(pong, host="::1")
        result = probe(spec_of(f"{{tcp: {{port: {port}, steps: [{{expect: OK}}]}}}}", "::1"),
                       ip="::1")
        assert Reason.OK is result.reason

    def test_in_flight_and_close(self, servers: ServerLoop) -> None:
        """A session waiting for its expect is in flight; close cancels it without a result."""
        port = servers.tcp(silent)
        spec = spec_of(f"{{tcp: {{port: {port}, steps: [{{expect: x}}]}}}}")

        async def go() -> tuple[int, int, list[ProbeResult]]:
            prober = TcpProber()
            results: list[ProbeResult] = []
            prober.start("127.0.0.1", port, 30.0, results.append, spec=spec)
            await asyncio.sleep(0.05)
            during = prober.in_flight()
            await prober.close()
            return during, prober.in_flight(), results

        assert (1, 0, []) == asyncio.run(go())

    def test_plain_spec_is_the_connect_probe(self, servers: ServerLoop) -> None:
        """Without steps or tls, the prober runs the plain connect probe (no phases)."""
        port = servers.tcp(silent)
        result = probe(spec_of(f"{{tcp: {{port: {port}}}}}"))
        assert (Reason.OK, ()) == (result.reason, result.phases)


class TestTls:
    def test_verified_handshake_reports_the_certificate(self, servers: ServerLoop,
                                                        ca: CertAuthority, soon: Issued) -> None:
        """A certificate expiring in 10 days: version, notAfter, subject, issuer, serial and
        fingerprint of the leaf, and the tls phase."""
        port = servers.tcp(pong, tls=ca.server_context(soon))
        result = probe(spec_of(f"{{tcp: {{port: {port}, tls: {{ca_file: {ca.ca_file}}}}}}}"))
        assert (Reason.OK, ["connect", "tls"]) == (result.reason, phases(result))
        tls = result.tls
        assert tls is not None
        cert = soon.cert
        assert ("TLS 1.3", soon.not_after) == (tls.version, tls.not_after)
        assert "O=hostwatch tests,CN=localhost" == tls.subject == cert.subject.rfc4514_string()
        assert "O=hostwatch tests,CN=hostwatch test CA" == tls.issuer
        assert format(cert.serial_number, "x") == tls.serial
        assert cert.fingerprint(hashes.SHA256()).hex() == tls.fingerprint_sha256
        assert tls.not_after is not None
        assert 9 * 86400 < tls.not_after - utc_now().timestamp() <= 10 * 86400

    def test_steps_after_the_handshake(self, servers: ServerLoop, ca: CertAuthority,
                                       soon: Issued) -> None:
        """send/expect run inside TLS: phases connect, tls, first_byte."""
        port = servers.tcp(pong, tls=ca.server_context(soon))
        spec = spec_of(f"{{tcp: {{port: {port}, tls: {{server_name: localhost, ca_file: "
                       f"{ca.ca_file}}}, steps: [{{send: 'PING\\n'}}, {{expect: PONG}}]}}}}")
        result = probe(spec)
        assert (Reason.OK, ["connect", "tls", "first_byte"]) == (result.reason, phases(result))

    def test_wrong_server_name_is_tls_error(self, servers: ServerLoop, ca: CertAuthority,
                                            soon: Issued) -> None:
        """The certificate must match server_name: a mismatch is `tls-error`, with why."""
        port = servers.tcp(pong, tls=ca.server_context(soon))
        result = probe(spec_of(f"{{tcp: {{port: {port}, tls: {{server_name: www.lab, ca_file: "
                               f"{ca.ca_file}}}}}}}"))
        assert Reason.TLS_ERROR is result.reason
        assert "certificate verify failed: Hostname mismatch" in result.detail
        assert ["connect"] == phases(result)

    def test_unknown_ca_is_tls_error(self, servers: ServerLoop, ca: CertAuthority,
                                     soon: Issued) -> None:
        """Verified against the system's CA store, a test CA is unknown: `tls-error`."""
        port = servers.tcp(pong, tls=ca.server_context(soon))
        result = probe(spec_of(f"{{tcp: {{port: {port}, tls: {{}}}}}}"))
        assert (Reason.TLS_ERROR, "certificate verify failed: unable to get local issuer "
                "certificate") == (result.reason, result.detail)

    def test_expired_certificate(self, servers: ServerLoop, ca: CertAuthority) -> None:
        """Verified, an expired certificate is `cert-expired`; unverified it passes and its
        notAfter (in the past) is reported."""
        now = utc_now()
        expired = ca.issue("expired", not_before=now - datetime.timedelta(days=30),
                           not_after=now - datetime.timedelta(days=1))
        port = servers.tcp(pong, tls=ca.server_context(expired))
        verified = probe(spec_of(f"{{tcp: {{port: {port}, tls: {{ca_file: {ca.ca_file}}}}}}}"))
        assert (Reason.CERT_EXPIRED, "certificate verify failed: certificate has expired") == (
            verified.reason, verified.detail)
        unverified = probe(spec_of(f"{{tcp: {{port: {port}, tls: {{verify: false}}}}}}"))
        assert Reason.OK is unverified.reason
        assert unverified.tls is not None
        assert expired.not_after == unverified.tls.not_after

    def test_handshake_never_answered_is_tls_timeout(self, servers: ServerLoop) -> None:
        """A port that accepts and never speaks TLS: `tls-timeout`, after the connect phase."""
        port = servers.tcp(silent)
        result = probe(spec_of(f"{{tcp: {{port: {port}, tls: {{verify: false}}}}}}"),
                       timeout=0.2)
        assert Reason.TLS_TIMEOUT is result.reason
        assert "connected, but the TLS handshake did not finish within the probe's timeout " \
               "0.2s" == result.detail
        assert ["connect"] == phases(result)

    def test_plain_server_is_tls_error(self, servers: ServerLoop) -> None:
        """A server that answers in clear text breaks the handshake: `tls-error`."""
        port = servers.tcp(pong)
        result = probe(spec_of(f"{{tcp: {{port: {port}, tls: {{verify: false}}}}}}"))
        assert (Reason.TLS_ERROR, "wrong version number") == (result.reason, result.detail)

    def test_client_certificate(self, ca: CertAuthority, soon: Issued) -> None:
        """With cert_file and key_file a server requiring client certificates accepts the
        probe; without, it refuses (TLS 1.3 says so after the handshake, at the first read)."""
        client = ca.issue("client", common_name="hostwatch", client=True, dns_names=(), ips=())
        context = ca.server_context(soon, require_client_cert=True)
        with BlockingTlsServer(context) as server:
            tls = f"tls: {{ca_file: {ca.ca_file}"
            steps = "steps: [{expect: '^\\+OK'}]"
            with_cert = probe(spec_of(f"{{tcp: {{port: {server.port}, {tls}, cert_file: "
                                      f"{client.cert_file}, key_file: {client.key_file}}}, "
                                      f"{steps}}}}}"))
            assert Reason.OK is with_cert.reason
            without = probe(spec_of(f"{{tcp: {{port: {server.port}, {tls}}}, {steps}}}}}"))
        assert (Reason.TLS_ERROR, "steps[0] (expect '^\\\\+OK'): tlsv13 alert certificate "
                "required") == (without.reason, without.detail)

    def test_unreadable_files_at_probe_time(self, tmp_path: Path) -> None:
        """TLS files gone after the config was loaded: `tls-error`, nothing connects."""
        spec = ProbeSpec(ProbeKind.TCP, free_port(),
                         tls=TlsOptions(ca_file=str(tmp_path / "gone.pem")))
        result = probe(spec)
        assert Reason.TLS_ERROR is result.reason
        assert result.detail.startswith("cannot load the TLS files: ")
        assert () == result.phases

    def test_closed_with_reset(self, servers: ServerLoop, ca: CertAuthority,
                               soon: Issued) -> None:
        """After a TLS probe the server sees a reset, not an orderly close."""
        seen: list[str] = []
        ended = threading.Event()

        async def record(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                writer.write(b"+OK\r\n")
                await writer.drain()
                seen.append("eof" if await reader.read() == b"" else "data")
            except (ConnectionResetError, ssl.SSLError) as err:
                seen.append(type(err).__name__)
            ended.set()

        port = servers.tcp(record, tls=ca.server_context(soon))
        result = probe(spec_of(f"{{tcp: {{port: {port}, tls: {{ca_file: {ca.ca_file}}}, "
                               "steps: [{expect: OK}]}}"))
        assert Reason.OK is result.reason
        assert ended.wait(10)
        assert ["ConnectionResetError"] == seen


class TestContexts:
    def test_shared_across_server_names_and_rebuilt_on_change(self, tmp_path: Path) -> None:
        """One context per set of files whatever the server name; a changed file gives a new
        one after the recheck interval, an unchanged one does not."""
        now = [1000.0]
        contexts = TlsContexts(clock=lambda: now[0])
        ca = CertAuthority(tmp_path)
        first = contexts.get(TlsOptions(server_name="a.lab", ca_file=str(ca.ca_file)))
        assert first is contexts.get(TlsOptions(server_name="b.lab", ca_file=str(ca.ca_file)))
        now[0] += 10
        assert first is contexts.get(TlsOptions(ca_file=str(ca.ca_file)))
        CertAuthority(tmp_path)  # writes a new ca.pem
        assert first is contexts.get(TlsOptions(ca_file=str(ca.ca_file)))  # not rechecked yet
        now[0] += 10
        assert first is not contexts.get(TlsOptions(ca_file=str(ca.ca_file)))
        assert 1 == len(contexts)

    def test_unused_contexts_forgotten(self, tmp_path: Path) -> None:
        """A context unused for an hour is dropped when another is built."""
        now = [0.0]
        contexts = TlsContexts(clock=lambda: now[0])
        contexts.get(TlsOptions(verify=False))
        now[0] += 3601
        contexts.get(TlsOptions(ca_file=str(CertAuthority(tmp_path).ca_file)))
        assert 1 == len(contexts)


class TestCertificateParser:
    def test_fields_equal_cryptography(self, ca: CertAuthority, soon: Issued) -> None:
        """notAfter, subject, issuer and serial read from DER equal what `cryptography`
        reads, for a CA and a leaf."""
        for cert in (ca.cert, soon.cert):
            fields = parse_certificate(cert.public_bytes(Encoding.DER))
            assert cert.not_valid_after_utc.timestamp() == fields.not_after
            assert cert.subject.rfc4514_string() == fields.subject
            assert cert.issuer.rfc4514_string() == fields.issuer
            assert format(cert.serial_number, "x") == fields.serial

    def test_generalized_time_and_escaped_names(self, ca: CertAuthority) -> None:
        """A notAfter from 2050 on (GeneralizedTime) and a subject with characters RFC 4514
        escapes."""
        far = datetime.datetime(2061, 3, 4, 5, 6, 7, tzinfo=datetime.UTC)
        issued = ca.issue("odd", common_name='#a,b+c;"d" <e> ', not_after=far)
        fields = parse_certificate(issued.cert.public_bytes(Encoding.DER))
        assert far.timestamp() == fields.not_after
        assert issued.cert.subject.rfc4514_string() == fields.subject

    @pytest.mark.parametrize("der", [b"", b"\x30", b"\x30\x03\x02\x01", b"\x04\x00",
                                     b"\x30\x84\xff\xff\xff\xff"])
    def test_garbage_is_a_value_error(self, der: bytes) -> None:
        """Bytes that are not a certificate raise ValueError (and only that)."""
        with pytest.raises(ValueError, match=r"DER|certificate|TBS"):
            parse_certificate(der)

    def test_unparsable_leaf_keeps_version_and_fingerprint(self) -> None:
        """TlsInfo of an unreadable certificate has the version and fingerprint only."""
        info = tls_info("TLSv1.2", "ECDHE", b"\x04\x00")
        assert ("TLS 1.2", "ECDHE", None, "") == (info.version, info.cipher, info.not_after,
                                                  info.subject)
        assert 64 == len(info.fingerprint_sha256)

