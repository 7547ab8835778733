"""`hostwatch check`: host arguments, thresholds and Nagios output as pure functions, then the
real command against loopback targets and inside a test network (drops, no DNS, no ICMP
permission)."""

from __future__ import annotations

import json
import os
import pty
import re
import socket
import subprocess
import sys
from collections.abc import Iterator, Sequence

import pytest

from hostwatch.commands.check_probe import Outcome, Plan
from hostwatch.commands.check_report import judge, render_nagios
from hostwatch.commands.hosts import normalise_host
from hostwatch.commands.nagios import PerfItem, Status
from hostwatch.commands.thresholds import Threshold, check_order, evaluate, parse_threshold
from hostwatch.model import ProbeKind
from hostwatch.probes.base import ProbeResult, Reason
from hostwatch.resolve import Resolution
from lab.netns import NetLab

CHECK = [sys.executable, "-m", "hostwatch", "check"]


def run_check(args: Sequence[str]) -> subprocess.CompletedProcess[str]:
    """`hostwatch check ARGS` with stdout and stderr piped."""
    return subprocess.run([*CHECK, *args], capture_output=True, text=True, timeout=60,
                          check=False)


def rows(stdout: str) -> list[dict[str, str]]:
    """The text table as dicts by column name (the REASON column may contain spaces)."""
    lines = stdout.splitlines()
    header = re.split(r"\s{2,}", lines[0].strip())
    return [dict(zip(header, re.split(r"\s{2,}", line.strip(), maxsplit=len(header) - 1),
                     strict=True)) for line in lines[1:]]



@pytest.fixture
def listener6() -> Iterator[int]:
    """A listening TCP port on ::1."""
    with socket.socket(socket.AF_INET6) as s:
        s.bind(("::1", 0))
        s.listen(64)
        yield s.getsockname()[1]


def closed_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (connects are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


class TestHostArguments:
    @pytest.mark.parametrize(("given", "expected"), [
        ("127.0.0.1", "127.0.0.1"), ("::0001", "::1"), ("LocalHost", "localhost"),
        ("localhost.", "localhost."), ("db-1.example.org", "db-1.example.org"),
    ])
    def test_accepted_in_canonical_form(self, given: str, expected: str) -> None:
        """IP literals come out canonical, names lowercase."""
        assert expected == normalise_host(given)

    @pytest.mark.parametrize("bad", [
        "", "foo bar", "db1;rm -rf /", "$(reboot)", "[::1]", "127.0.0.1:22", "256.1.1.1",
        "127.00.0.1", "-x", "a..b", "host-.example", "::1%lo", "é.example", "a" * 64,
    ])
    def test_rejected(self, bad: str) -> None:
        """Anything that is neither an IP literal nor an RFC 1123 name is refused."""
        with pytest.raises(ValueError, match=r"not a valid|neither|empty"):
            normalise_host(bad)


class TestThresholds:
    @pytest.mark.parametrize(("text", "expected"), [
        ("100,20%", Threshold(100, 20)), ("100ms,20", Threshold(100, 20)),
        ("0.5s,5%", Threshold(500, 5)), ("100", Threshold(100, None)),
        ("20%", Threshold(None, 20)), (",20%", Threshold(None, 20)),
        ("100,", Threshold(100, None)), ("0,100%", Threshold(0, 100)),
    ])
    def test_parse(self, text: str, expected: Threshold) -> None:
        """RTT in ms (or with ms / s), loss in percent; either part may be left out."""
        assert expected == parse_threshold(text)

    @pytest.mark.parametrize("bad", ["", ",", "abc", "100,20%,3", "-1", "100,120%", "nan",
                                     "1e400"])
    def test_parse_rejects(self, bad: str) -> None:
        """Malformed, negative, infinite or above-100% limits are errors."""
        with pytest.raises(ValueError, match=r"RTT|loss"):
            parse_threshold(bad)

    def test_warning_above_critical_is_an_error(self) -> None:
        """A warning limit above the critical one could never show, so it is refused."""
        with pytest.raises(ValueError, match="warning RTT"):
            check_order(Threshold(500, 20), Threshold(100, 60))
        check_order(Threshold(100, 20), Threshold(100, 20))

    @pytest.mark.parametrize(("rtt", "loss", "expected"), [
        (10.0, 0.0, Status.OK), (100.0, 0.0, Status.WARNING), (499.9, 19.0, Status.WARNING),
        (500.0, 0.0, Status.CRITICAL), (1.0, 20.0, Status.WARNING),
        (1.0, 60.0, Status.CRITICAL), (None, 100.0, Status.CRITICAL),
    ])
    def test_evaluate_like_check_ping(self, rtt: float | None, loss: float,
                                      expected: Status) -> None:
        """A value at or above a limit reaches it (>=); no answer at all is CRITICAL."""
        assert expected == evaluate(rtt, loss, Threshold(100, 20), Threshold(500, 60))

    def test_without_limits_only_silence_is_critical(self) -> None:
        """Without -w and -c, any answer is OK and no answer is CRITICAL."""
        none = Threshold()
        assert (Status.OK, Status.CRITICAL) == (evaluate(9e9, 99.0, none, none),
                                                evaluate(None, 100.0, none, none))


def _outcome(host: str, port: int | None, results: Sequence[ProbeResult]) -> Outcome:
    kind = ProbeKind.ICMP if port is None else ProbeKind.TCP
    return Outcome(Plan(host, kind, port), Resolution(host), tuple(results))


class TestNagiosOutput:
    def test_perf_items(self) -> None:
        """label=value[UOM];warn;crit;min;max, trailing empty fields dropped, U for unknown,
        labels with spaces quoted."""
        assert "rta=0.0525ms;100;500;0" == str(PerfItem("rta", 0.0525, "ms", 100, 500, 0))
        assert "pl=0%;;;0;100" == str(PerfItem("pl", 0, "%", None, None, 0, 100))
        assert "'::1 icmp rta'=U;;;0" == str(PerfItem("::1 icmp rta", None, "ms", minimum=0))
        with pytest.raises(ValueError, match="contains"):
            str(PerfItem("a=b", 1))

    def test_single_check(self) -> None:
        """One check: its loss and RTA in the status line, rta/pl perfdata as check_ping."""
        ok = ProbeResult(Reason.OK, "127.0.0.1", rtt=0.0004)
        lost = ProbeResult(Reason.TIMEOUT, "127.0.0.1")
        warning, critical = Threshold(100, 20), Threshold(500, 60)
        judged = judge([_outcome("127.0.0.1", None, [ok, ok, ok, lost])], warning, critical)
        expected = ("HOSTWATCH WARNING - 127.0.0.1 icmp: loss 25%, rta 0.400 ms (timeout)"
                    "|rta=0.4ms;100;500;0 pl=25%;20;60;0;100\n")
        assert expected == render_nagios(judged, warning, critical)

    def test_several_checks(self) -> None:
        """Several checks: counts per state, the problems, labelled perfdata, one long-output
        line per check."""
        ok = ProbeResult(Reason.OK, "::1", rtt=0.001)
        refused = ProbeResult(Reason.REFUSED, "::1", detail="Connection refused")
        judged = judge([_outcome("::1", None, [ok]), _outcome("::1", 9, [refused])],
                       Threshold(), Threshold())
        expected = [
            "HOSTWATCH CRITICAL - 2 checks: 1 critical, 0 warning, 1 ok; ::1 tcp/9: loss 100% "
            "(refused)|'::1 icmp rta'=1ms;;;0 '::1 icmp pl'=0%;;;0;100 '::1 tcp/9 rta'=U;;;0 "
            "'::1 tcp/9 pl'=100%;;;0;100",
            "OK: ::1 icmp: loss 0%, rta 1.000 ms",
            "CRITICAL: ::1 tcp/9: loss 100% (refused)",
        ]
        assert expected == render_nagios(judged, Threshold(), Threshold()).splitlines()


class TestCheckLoopback:
    def test_icmp_both_families(self) -> None:
        """ICMP echo to 127.0.0.1 and ::1, three each: every probe answered, exit 0, and
        nothing on stderr when it is not a terminal (no progress when piped)."""
        proc = run_check(["--count", "3", "--interval", "20ms", "127.0.0.1", "::1"])
        assert (0, "") == (proc.returncode, proc.stderr)
        table = rows(proc.stdout)
        assert [("127.0.0.1", "icmp", "127.0.0.1", "3", "3", "0%", "OK", "ok"),
                ("::1", "icmp", "::1", "3", "3", "0%", "OK", "ok")] == [
            (r["HOST"], r["PROBE"], r["ADDRESS"], r["SENT"], r["RECV"], r["LOSS"], r["STATUS"],
             r["REASON"]) for r in table]
        assert all(float(r["MIN ms"]) <= float(r["AVG ms"]) <= float(r["MAX ms"])
                   for r in table)

    def test_tcp_open_and_refused(self, listener: int) -> None:
        """--tcp twice: the listening port is OK, the closed one CRITICAL (refused): exit 2."""
        closed = closed_port()
        proc = run_check(["--tcp", str(listener), "--tcp", str(closed), "127.0.0.1"])
        assert 2 == proc.returncode, proc.stderr
        assert [(f"tcp/{listener}", "1", "OK", "ok"), (f"tcp/{closed}", "0", "CRITICAL",
                                                       "refused")] == [
            (r["PROBE"], r["RECV"], r["STATUS"], r["REASON"]) for r in rows(proc.stdout)]

    def test_icmp_and_tcp_json(self, listener6: int) -> None:
        """--icmp with --tcp probes both; JSON carries counts, RTTs in seconds, each result."""
        listener = listener6
        proc = run_check(["--format", "json", "--icmp", "--tcp", str(listener), "-n", "2",
                          "-i", "10ms", "::1"])
        assert 0 == proc.returncode, proc.stderr
        document = json.loads(proc.stdout)
        assert ("OK", 0) == (document["status"], document["exit_code"])
        assert [("icmp", None), ("tcp", listener)] == [(c["probe"], c["port"])
                                                       for c in document["checks"]]
        for check in document["checks"]:
            assert ("::1", 2, 2, 0.0, "ok") == (check["ip"], check["sent"], check["received"],
                                                check["loss_ratio"], check["reason"])
            assert 0 < check["rtt_seconds"]["min"] <= check["rtt_seconds"]["max"] < 1
            assert ["ok", "ok"] == [r["reason"] for r in check["results"]]

    def test_nagios_warning_threshold(self) -> None:
        """-w 0,100% is reached by any answer (RTT >= 0): WARNING, exit 1, and the
        thresholds appear in the perfdata."""
        proc = run_check(["--format", "nagios", "-w", "0,100%", "-c", "10000,100%",
                          "-H", "127.0.0.1"])
        assert 1 == proc.returncode, proc.stderr
        line = proc.stdout.splitlines()[0]
        assert line.startswith("HOSTWATCH WARNING - 127.0.0.1 icmp: loss 0%, rta ")
        assert re.fullmatch(r".*\|rta=\d+(\.\d+)?ms;0;10000;0 pl=0%;100;100;0;100", line), line

    def test_nagios_critical_refused(self) -> None:
        """A refused TCP port: CRITICAL, exit 2, rta U and pl 100% in the perfdata."""
        port = closed_port()
        proc = run_check(["--format", "nagios", "--tcp", str(port), "127.0.0.1"])
        assert 2 == proc.returncode
        expected = (f"HOSTWATCH CRITICAL - 127.0.0.1 tcp/{port}: loss 100% (refused)"
                    "|rta=U;;;0 pl=100%;;;0;100\n")
        assert expected == proc.stdout

    def test_address_family_mismatch(self) -> None:
        """-6 with an IPv4 literal: nothing is sent, CRITICAL with no-address-for-family."""
        proc = run_check(["-6", "127.0.0.1"])
        assert 2 == proc.returncode
        (row,) = rows(proc.stdout)
        assert ("-", "0", "CRITICAL") == (row["ADDRESS"], row["SENT"], row["STATUS"])
        assert row["REASON"].startswith("no-address-for-family")

    @pytest.mark.parametrize(("args", "message"), [
        ([], "give at least one HOST"),
        (["foo bar"], "'foo bar' is neither an IP address nor a valid DNS name"),
        (["127.0.0.1:22"], "not a valid IPv6 address"),
        (["--count", "0", "127.0.0.1"], "0 is out of range"),
        (["--tcp", "70000", "127.0.0.1"], "70000 is out of range"),
        (["--timeout", "5x", "127.0.0.1"], "not a valid duration"),
        (["-w", "500", "-c", "100", "127.0.0.1"], "warning RTT (500) is above"),
        (["-w", "fast", "127.0.0.1"], "RTT 'fast' is not a number"),
        (["--format", "xml", "127.0.0.1"], "invalid choice"),
    ])
    def test_usage_errors_are_unknown(self, args: list[str], message: str) -> None:
        """Bad arguments exit 3 (UNKNOWN) with a message that names the problem; nothing is
        probed and nothing goes to stdout."""
        proc = run_check(args)
        assert (3, "") == (proc.returncode, proc.stdout)
        assert message in proc.stderr

    def test_progress_only_on_a_terminal(self) -> None:
        """With stderr on a terminal, progress is drawn and erased there; stdout (piped)
        gets only the table."""
        master, slave = pty.openpty()
        try:
            proc = subprocess.run([*CHECK, "-n", "3", "-i", "20ms", "127.0.0.1"],
                                  stdout=subprocess.PIPE, stderr=slave, text=True, timeout=60,
                                  check=False, env={**os.environ, "TERM": "xterm"})
            os.close(slave)
            shown = b""
            while True:
                try:
                    chunk = os.read(master, 4096)
                except OSError:  # EIO: the terminal has no writer left
                    break
                if not chunk:
                    break
                shown += chunk
        finally:
            os.close(master)
        assert 0 == proc.returncode
        assert b"\r\x1b[Khostwatch check: probing 1 host 0/3" in shown
        assert shown.endswith(b"\r\x1b[K")
        assert "\x1b" not in proc.stdout


def _in_lab(lab: NetLab, args: Sequence[str], *privileges: str
            ) -> subprocess.CompletedProcess[str]:
    """`hostwatch check ARGS` inside the prober namespace, optionally under setpriv."""
    argv = [*privileges, *CHECK, *args]
    return lab.prober_run(argv, timeout=60, check=False)


NO_NET_RAW = ("setpriv", "--inh-caps=-net_raw", "--bounding-set=-net_raw", "--")


class TestCheckLab:
    def test_dropped_host_times_out(self, lab: NetLab) -> None:
        """A host that drops everything is CRITICAL (timeout) while loopback in the same run
        stays OK: the Nagios summary counts both and lists the problem."""
        lab.set_drop(True)
        proc = _in_lab(lab, ["--format", "nagios", "-n", "2", "-i", "50ms", "-t", "200ms",
                             lab.host_ip4, "127.0.0.1"])
        assert 2 == proc.returncode, proc.stderr
        lines = proc.stdout.splitlines()
        assert lines[0].startswith(f"HOSTWATCH CRITICAL - 2 checks: 1 critical, 0 warning, 1 "
                                   f"ok; {lab.host_ip4} icmp: loss 100% (timeout)|")
        assert f"'{lab.host_ip4} icmp pl'=100%;;;0;100" in lines[0]
        assert [f"CRITICAL: {lab.host_ip4} icmp: loss 100% (timeout)"] == [
            line for line in lines[1:] if line.startswith("CRITICAL")]

    def test_host_answers_again(self, lab: NetLab) -> None:
        """The same host without the drop answers both ICMP and a TCP listener."""
        lab.serve_tcp(8080)
        proc = _in_lab(lab, ["--icmp", "--tcp", "8080", lab.host_ip4, lab.host_ip6])
        assert 0 == proc.returncode, proc.stdout + proc.stderr
        assert ["OK"] * 4 == [r["STATUS"] for r in rows(proc.stdout)]

    def test_unresolvable_name_is_critical(self, lab: NetLab) -> None:
        """A name that does not resolve is CRITICAL with a dns reason (as in check_ping); the
        prober namespace has no route out, so no query leaves the machine."""
        proc = _in_lab(lab, ["no-such-host.invalid"])
        assert 2 == proc.returncode, proc.stderr
        (row,) = rows(proc.stdout)
        assert ("no-such-host.invalid", "-", "0", "CRITICAL") == (
            row["HOST"], row["ADDRESS"], row["SENT"], row["STATUS"])
        assert row["REASON"].startswith("dns") or row["REASON"].startswith("no-address")

    def test_name_from_hosts_file(self, lab: NetLab) -> None:
        """localhost resolves through /etc/hosts and is probed at its address."""
        proc = _in_lab(lab, ["-4", "localhost"])
        assert 0 == proc.returncode, proc.stdout + proc.stderr
        (row,) = rows(proc.stdout)
        assert ("localhost", "127.0.0.1", "OK") == (row["HOST"], row["ADDRESS"], row["STATUS"])

    def test_no_icmp_permission(self, lab: NetLab) -> None:
        """Without CAP_NET_RAW and outside ping_group_range, ICMP exits 3 with the one-line
        hint; in Nagios format the hint is the UNKNOWN status line on stdout."""
        proc = _in_lab(lab, ["127.0.0.1"], *NO_NET_RAW)
        assert (3, "") == (proc.returncode, proc.stdout)
        assert 1 == len(proc.stderr.splitlines())
        assert proc.stderr.startswith("hostwatch check: cannot open an ICMP socket")
        assert "CAP_NET_RAW" in proc.stderr
        assert "ping_group_range" in proc.stderr
        nagios = _in_lab(lab, ["--format", "nagios", "127.0.0.1"], *NO_NET_RAW)
        assert 3 == nagios.returncode
        assert nagios.stdout.startswith("HOSTWATCH UNKNOWN - cannot open an ICMP socket")

    def test_tcp_needs_no_icmp_permission(self, lab: NetLab) -> None:
        """A TCP-only check opens no ICMP socket, so it works without CAP_NET_RAW."""
        lab.serve_tcp(8080)
        proc = _in_lab(lab, ["--tcp", "8080", lab.host_ip4], *NO_NET_RAW)
        assert 0 == proc.returncode, proc.stderr
        assert ["OK"] == [r["STATUS"] for r in rows(proc.stdout)]
