"""`hostwatch status`: the API document turned into a table, JSON or Nagios output, and the
real command against a real daemon on loopback (UP, DOWN and UNKNOWN targets)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from daemon_proc import DaemonProcess, Scrape, free_port, running
from hostwatch.commands.nagios import Status
from hostwatch.commands.status import (
    FetchError,
    api_url,
    overall,
    parse_document,
    render_nagios,
    render_text,
)

STATUS = [sys.executable, "-m", "hostwatch", "status"]


def run_status(args: Sequence[str]) -> subprocess.CompletedProcess[str]:
    """`hostwatch status ARGS` with stdout and stderr piped."""
    return subprocess.run([*STATUS, *args], capture_output=True, text=True, timeout=60,
                          check=False)


def _item(target: str, state: str, **extra: Any) -> dict[str, Any]:
    item: dict[str, Any] = {
        "target": target, "host": "127.0.0.1", "ip": "127.0.0.1", "probe": "icmp",
        "port": None, "labels": {}, "state": state, "reason": "ok", "detail": "",
        "last_rtt_seconds": 5.2e-05, "last_transition_timestamp": 1000.0, "transitions": 1,
        "sent": 10, "received": 10, "interval_seconds": 1.0,
        "window": {"results": 10, "lost": 0, "loss_ratio": 0.0, "rtt_seconds": {}}}
    item.update(extra)
    return item


def _document(*items: dict[str, Any]) -> dict[str, Any]:
    return {"status": "success", "data": list(items)}


class TestDocument:
    @pytest.mark.parametrize(("given", "expected"), [
        ("http://127.0.0.1:10115", "http://127.0.0.1:10115/api/v1/targets"),
        ("127.0.0.1:10115/", "http://127.0.0.1:10115/api/v1/targets"),
        ("http://[::1]:10115/api/v1/targets", "http://[::1]:10115/api/v1/targets"),
        ("https://localhost/hostwatch", "https://localhost/hostwatch/api/v1/targets"),
    ])
    def test_api_url(self, given: str, expected: str) -> None:
        """--url is the daemon's base address; the scheme defaults to http."""
        assert expected == api_url(given)

    @pytest.mark.parametrize("bad", ["ftp://127.0.0.1/", "http://", "file:///etc/passwd"])
    def test_api_url_rejects(self, bad: str) -> None:
        """Only http and https URLs with a host are accepted."""
        with pytest.raises(ValueError, match="not an http"):
            api_url(bad)

    @pytest.mark.parametrize("bad", [[], {"status": "error"}, {"status": "success"},
                                     {"status": "success", "data": [1]},
                                     {"status": "success", "data": [{"name": "x"}]}])
    def test_rejects_other_documents(self, bad: object) -> None:
        """Anything that is not a targets document is an error, not an empty table."""
        with pytest.raises(FetchError, match="not a hostwatch targets document"):
            parse_document(bad)

    @pytest.mark.parametrize(("states", "expected"), [
        ([], Status.OK), (["up", "up"], Status.OK), (["up", "unknown"], Status.WARNING),
        (["degraded", "up"], Status.WARNING), (["flapping"], Status.WARNING),
        (["up", "down", "unknown"], Status.CRITICAL),
    ])
    def test_exit_status(self, states: list[str], expected: Status) -> None:
        """Any DOWN is CRITICAL; any other state than UP is WARNING; else OK."""
        rows = parse_document(_document(*(_item(f"t{i}", s) for i, s in enumerate(states))))
        assert expected == overall(rows)

    def test_table(self) -> None:
        """One row per (target, probe) with state, last RTT, window loss and last change; a
        count of the states below."""
        rows = parse_document(_document(
            _item("web", "up"),
            _item("db1", "down", probe="tcp", port=5432, reason="refused",
                  detail="Connection refused", last_rtt_seconds=None,
                  last_transition_timestamp=1000.0,
                  window={"results": 4, "lost": 4, "loss_ratio": 1.0}),
            _item("new", "unknown", ip=None, reason=None, detail=None, last_rtt_seconds=None,
                  last_transition_timestamp=None, window={"loss_ratio": 0.0}),
            _item("far", "down", reason="unreachable", detail="host-unreachable (icmp type 3 "
                  "code 1)", last_transition_timestamp=999.0)))
        lines = render_text(rows, now=1000.0 + 3 * 3600 + 5).splitlines()
        assert ["TARGET", "PROBE", "IP", "STATE", "RTT", "ms", "LOSS", "LAST", "CHANGE",
                "REASON"] == lines[0].split()
        assert ["web", "icmp", "127.0.0.1", "UP", "0.052", "0%"] == lines[1].split()[:6]
        assert lines[1].endswith("(3h ago)  ok")
        assert ["db1", "tcp/5432", "127.0.0.1", "DOWN", "-", "100%"] == lines[2].split()[:6]
        assert lines[2].endswith("(3h ago)  refused")
        assert ["new", "icmp", "-", "UNKNOWN", "-", "0%", "-", "-"] == lines[3].split()
        assert lines[4].endswith("(3h ago)  unreachable (host-unreachable (icmp type 3 code "
                                 "1))")
        assert "4 probes, 1 up, 1 unknown, 2 down" == lines[5]

    def test_state_reason_and_maintenance(self) -> None:
        """The reason shown is why the state holds (state_reason) when the daemon gives one;
        a probe in a maintenance window is marked and does not count in the exit status."""
        rows = parse_document(_document(
            _item("web", "degraded", reason="ok", state_reason="loss",
                  state_detail="12% of 100 results lost"),
            _item("db1", "down", reason="timeout", state_reason="timeout",
                  maintenance="db-rollout")))
        lines = render_text(rows, now=1000.0).splitlines()
        assert lines[1].endswith("  loss (12% of 100 results lost)")
        assert lines[2].endswith("  timeout [maintenance db-rollout]")
        assert "2 probes, 1 degraded, 1 down; 1 in maintenance (not counted in the exit " \
            "status)" == lines[3]
        assert Status.WARNING == overall(rows)

    def test_nagios(self) -> None:
        """Status line with the counts and the probes that are not UP; perfdata per state."""
        rows = parse_document(_document(
            _item("web", "up"), _item("db1", "down", reason="timeout")))
        line = render_nagios(rows)
        assert line.startswith("HOSTWATCH CRITICAL - 2 probes, 1 up, 1 down; db1 icmp DOWN "
                               "(timeout)|up=1;;;0;2 degraded=0;;;0;2 flapping=0;;;0;2 "
                               "unknown=0;;;0;2 down=1;;;0;2")



def _config(listen_port: int, closed_port: int) -> str:
    return f"""
defaults:
  interval: 200ms
  timeout: 150ms
  failure_threshold: 2
  success_threshold: 1
targets:
  - name: lo
    host: 127.0.0.1
    probes: {{icmp: , tcp: {{port: {listen_port}}}}}
  - name: closed
    host: "::1"
    probes: {{tcp: {{port: {closed_port}}}}}
  - name: pending
    host: 127.0.0.1
    failure_threshold: 1000
    probes: {{tcp: {{port: {closed_port}}}}}
"""


def _settled(scrape: Scrape) -> bool:
    states = {(d["target"], d["probe"]): d["state"]
              for d, v in scrape.find("hostwatch_probe_state") if v == 1}
    return states == {("lo", "icmp"): "up", ("lo", "tcp"): "up", ("closed", "tcp"): "down",
                      ("pending", "tcp"): "unknown"}


@dataclass(frozen=True)
class Running:
    """The daemon, the port its `lo` target connects to and the closed port."""

    daemon: DaemonProcess
    open_port: int
    closed_port: int

    @property
    def url(self) -> str:
        return self.daemon.url


@pytest.fixture
def daemon(tmp_path: Path, listener: int) -> Iterator[Running]:
    """A real daemon on loopback with UP, DOWN and UNKNOWN probes, settled."""
    closed = free_port()
    with running(tmp_path, _config(listener, closed)) as process:
        process.wait_for(_settled, what="lo up, closed down, pending unknown")
        yield Running(process, listener, closed)


def _table(stdout: str) -> dict[tuple[str, str], list[str]]:
    lines = stdout.splitlines()
    return {(line.split()[0], line.split()[1]): line.split() for line in lines[1:-1]}


class TestStatusDaemon:
    def test_table_and_exit_status(self, daemon: Running) -> None:
        """The table shows each probe's state and reason; one probe DOWN: exit 2."""
        proc = run_status(["--url", daemon.url])
        assert (2, "") == (proc.returncode, proc.stderr)
        table = _table(proc.stdout)
        assert {("lo", "icmp"), ("lo", f"tcp/{daemon.open_port}"),
                ("closed", f"tcp/{daemon.closed_port}"),
                ("pending", f"tcp/{daemon.closed_port}")} == set(table)
        closed = table[("closed", f"tcp/{daemon.closed_port}")]
        assert ["::1", "DOWN", "-", "100%"] == closed[2:6]
        assert ["refused"] == closed[-1:]
        assert ["127.0.0.1", "UP"] == table[("lo", "icmp")][2:4]
        assert float(table[("lo", "icmp")][4]) > 0
        assert "UNKNOWN" == table[("pending", f"tcp/{daemon.closed_port}")][3]
        footer = proc.stdout.splitlines()[-1]
        assert "4 probes, 2 up, 1 unknown, 1 down" == footer

    def test_target_filter_sets_exit_status(self, daemon: Running) -> None:
        """--target limits the table and the exit status: 0 all UP, 1 UNKNOWN, 3 unknown
        name."""
        up = run_status(["--url", daemon.url, "--target", "lo"])
        assert 0 == up.returncode
        assert {"lo"} == {key[0] for key in _table(up.stdout)}
        assert 1 == run_status(["--url", daemon.url, "--target", "pending"]).returncode
        missing = run_status(["--url", daemon.url, "--target", "lo", "--target", "nosuch"])
        assert (3, "") == (missing.returncode, missing.stdout)
        assert f"no target named 'nosuch' at {daemon.url}/api/v1/targets" in missing.stderr

    def test_json(self, daemon: Running) -> None:
        """--format json: the status, exit code, counts and the daemon's own entries."""
        proc = run_status(["--url", daemon.url, "--format", "json"])
        assert 2 == proc.returncode
        document = json.loads(proc.stdout)
        assert ("CRITICAL", 2) == (document["status"], document["exit_code"])
        assert (2, 1, 1) == (document["counts"]["up"], document["counts"]["down"],
                             document["counts"]["unknown"])
        assert {"lo", "closed", "pending"} == {t["target"] for t in document["targets"]}

    def test_nagios(self, daemon: Running) -> None:
        """--format nagios: one status line naming the DOWN and UNKNOWN probes."""
        proc = run_status(["--url", daemon.url, "--format", "nagios"])
        assert 2 == proc.returncode
        line = proc.stdout.splitlines()[0]
        assert line.startswith("HOSTWATCH CRITICAL - 4 probes, 2 up, 1 unknown, 1 down; ")
        port = daemon.closed_port
        assert f"closed tcp/{port} DOWN (refused)" in line
        assert f"pending tcp/{port} UNKNOWN (refused)" in line
        assert "|up=2;;;0;4 " in line

    def test_not_hostwatch(self, daemon: Running) -> None:
        """A URL where hostwatch has no API (404) is UNKNOWN, exit 3."""
        proc = run_status(["--url", daemon.url + "/elsewhere"])
        assert (3, "") == (proc.returncode, proc.stdout)
        assert "answered 404" in proc.stderr


class TestStatusUnreachable:
    def test_no_daemon(self) -> None:
        """Nothing listening: exit 3 with the reason on stderr (text) or stdout (nagios)."""
        url = f"http://127.0.0.1:{free_port()}"
        proc = run_status(["--url", url])
        assert (3, "") == (proc.returncode, proc.stdout)
        assert f"hostwatch status: cannot reach the daemon at {url}/api/v1/targets" in \
            proc.stderr
        nagios = run_status(["--url", url, "--format", "nagios"])
        assert 3 == nagios.returncode
        assert nagios.stdout.startswith("HOSTWATCH UNKNOWN - cannot reach the daemon at ")

    @pytest.mark.parametrize(("args", "message"), [
        (["--url", "ftp://127.0.0.1/"], "is not an http:// or https:// URL"),
        (["--timeout", "0"], "out of range"),
        (["--format", "xml"], "invalid choice"),
    ])
    def test_usage_errors_are_unknown(self, args: list[str], message: str) -> None:
        """Bad arguments exit 3 (UNKNOWN) and say what is wrong."""
        proc = run_status(args)
        assert (3, "") == (proc.returncode, proc.stdout)
        assert message in proc.stderr
