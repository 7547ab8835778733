"""`hostwatch events`: time specifications and line formats as pure functions, then the real
command reading a real private journald, and --follow seeing a real daemon's transition."""

from __future__ import annotations

import itertools
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from daemon_proc import running
from hostwatch.commands.events import _attach_times, format_text
from hostwatch.commands.journal_read import Event
from hostwatch.commands.timespec import parse_time
from hostwatch.events import EventKind, transition_entry
from hostwatch.probes.base import ProbeResult, Reason
from hostwatch.state import Health, Transition
from lab.journald import PrivateJournald

EVENTS = [sys.executable, "-m", "hostwatch", "events"]
TRANSITION = EventKind.TRANSITION.value
NOW = datetime(2026, 11, 23, 10, 30, 15, tzinfo=UTC).astimezone()


class TestTimes:
    @pytest.mark.parametrize(("text", "expected"), [
        ("now", NOW),
        ("-1h", NOW - timedelta(hours=1)),
        ("-1h30min", NOW - timedelta(minutes=90)),
        ("- 2 days", NOW - timedelta(days=2)),
        ("+5m", NOW + timedelta(minutes=5)),
        ("2 hours ago", NOW - timedelta(hours=2)),
        ("1w ago", NOW - timedelta(weeks=1)),
        ("@1795425057.5", datetime.fromtimestamp(1795425057.5, UTC)),
        ("2026-11-23T10:00:00+01:00", datetime(2026, 11, 23, 9, 0, tzinfo=UTC)),
        ("2026-11-23 10:00", datetime(2026, 11, 23, 10, 0).astimezone()),
        ("2026-11-23", datetime(2026, 11, 23).astimezone()),
        ("today", datetime.combine(NOW.date(), datetime.min.time()).astimezone()),
        ("Yesterday", datetime.combine(NOW.date() - timedelta(days=1),
                                       datetime.min.time()).astimezone()),
        ("10:00", datetime.combine(NOW.date(), datetime.min.time()).astimezone().replace(
            hour=10)),
    ])
    def test_forms(self, text: str, expected: datetime) -> None:
        """Relative, named, absolute (local unless an offset is given) and @epoch forms."""
        assert expected == parse_time(text, NOW)

    @pytest.mark.parametrize("bad", ["", "soon", "1h", "-1x", "-h", "@never", "2026-13-01",
                                     "25:00"])
    def test_rejected(self, bad: str) -> None:
        """Anything else is an error that lists the accepted forms."""
        with pytest.raises(ValueError, match="write"):
            parse_time(bad, NOW)

    def test_option_values_may_start_with_a_dash(self) -> None:
        """`--since -1h` reaches argparse as one token, so `-1h` is not taken for an option."""
        assert ["--since=-1h", "-U-5m", "--target", "-x"] == _attach_times(
            ["--since", "-1h", "-U", "-5m", "--target", "-x"])


class TestFormat:
    def test_text_line(self) -> None:
        """TIME TARGET PROBE PREVIOUS -> STATE: REASON (DETAIL) ip=IP rtt=MSms."""
        event = Event(usec=1795425057_123456, target="db1", probe="icmp", ip="127.0.0.1",
                      state="DOWN", previous_state="UP", reason="unreachable",
                      detail="host-unreachable (icmp type 3 code 1)", rtt_seconds=None)
        expected = ("2026-11-23T09:10:57+00:00 db1 icmp UP -> DOWN: unreachable "
                    "(host-unreachable (icmp type 3 code 1)) ip=127.0.0.1")
        assert expected == format_text(event, utc=True)
        up = Event(1795425057_000000, "web", "tcp", "::1", "UP", "DOWN", "ok", "", 0.00125)
        assert format_text(up, utc=True).endswith("web tcp DOWN -> UP: ok ip=::1 rtt=1.250ms")


def _entry(target: str, probe: str, change: tuple[Health, Health], result: ProbeResult
           ) -> tuple[int, str, dict[str, str]]:
    """Priority, message and fields of a transition, by the daemon's own encoder."""
    return transition_entry(target, probe, Transition(*change, result, time.time()))


def _send_transition(journald: PrivateJournald, target: str, probe: str,
                     change: tuple[Health, Health], result: ProbeResult) -> None:
    """Write a transition exactly as the daemon encodes it, and wait until it is readable."""
    priority, message, fields = _entry(target, probe, change, result)
    marker = os.urandom(6).hex()
    journald.send(message, PRIORITY=str(priority), HWTEST=marker, **fields)
    journald.wait_for(HWTEST=marker)


def run_events(journald: PrivateJournald, args: Sequence[str]
               ) -> subprocess.CompletedProcess[str]:
    """`hostwatch events --directory <the private journal> ARGS`."""
    return subprocess.run([*EVENTS, "--directory", str(journald.journal_dir), *args],
                          capture_output=True, text=True, timeout=60, check=False)


def _changes(stdout: str) -> list[str]:
    """The lines without their timestamp."""
    return [line.split(" ", 1)[1] for line in stdout.splitlines()]


OK = ProbeResult(Reason.OK, "127.0.0.1", rtt=0.00005)
TIMEOUT = ProbeResult(Reason.TIMEOUT, "127.0.0.1")
REFUSED = ProbeResult(Reason.REFUSED, "::1", detail="Connection refused")


@pytest.fixture
def history(journald: PrivateJournald) -> PrivateJournald:
    """Four transitions of three targets, and entries that are not transitions."""
    journald.send("hostwatch started", MESSAGE_ID=EventKind.STARTED.value)
    _send_transition(journald, "db1", "icmp", (Health.UNKNOWN, Health.UP), OK)
    journald.send("not ours", TARGET="db1", STATE="DOWN")
    _send_transition(journald, "web", "tcp", (Health.UP, Health.DOWN), REFUSED)
    _send_transition(journald, "db1", "icmp", (Health.UP, Health.DOWN), TIMEOUT)
    _send_transition(journald, "lb", "icmp", (Health.UNKNOWN, Health.UP), OK)
    return journald


ALL = ["db1 icmp UNKNOWN -> UP: ok ip=127.0.0.1 rtt=0.050ms",
       "web tcp UP -> DOWN: refused ip=::1",
       "db1 icmp UP -> DOWN: timeout ip=127.0.0.1",
       "lb icmp UNKNOWN -> UP: ok ip=127.0.0.1 rtt=0.050ms"]


class TestEventsJournal:
    def test_all_transitions_oldest_first(self, history: PrivateJournald) -> None:
        """Only transition entries (by MESSAGE_ID), oldest first; exit 0; nothing on stderr."""
        proc = run_events(history, [])
        assert (0, "") == (proc.returncode, proc.stderr)
        assert ALL == _changes(proc.stdout)

    @pytest.mark.parametrize(("args", "expected"), [
        (["--target", "db1"], [ALL[0], ALL[2]]),
        (["--target", "web", "--target", "lb"], [ALL[1], ALL[3]]),
        (["--state", "down"], [ALL[1], ALL[2]]),
        (["--state", "DOWN", "--probe", "icmp"], [ALL[2]]),
        (["--target", "db1", "--state", "up", "--state", "down"], [ALL[0], ALL[2]]),
        (["--target", "nosuch"], []),
        (["-n", "2"], ALL[2:]),
        (["--lines", "2", "--target", "db1"], [ALL[0], ALL[2]]),
        (["--since", "-1h"], ALL),
        (["--since", "+1h"], []),
        (["--until", "-1h"], []),
    ])
    def test_filters(self, history: PrivateJournald, args: list[str],
                     expected: list[str]) -> None:
        """One filter's values are ORed, different filters ANDed; -n keeps the last N."""
        proc = run_events(history, args)
        assert 0 == proc.returncode, proc.stderr
        assert expected == _changes(proc.stdout)

    def test_since_and_until_between_entries(self, history: PrivateJournald) -> None:
        """--since/--until at the midpoints between entries' journal timestamps cut there."""
        stamps = [int(str(e["__REALTIME_TIMESTAMP"]))
                  for e in history.entries(MESSAGE_ID=TRANSITION)]
        middle = [f"@{(a + b) / 2e6:.6f}" for a, b in itertools.pairwise(stamps)]
        since = run_events(history, ["--since", middle[0]])
        assert ALL[1:] == _changes(since.stdout)
        both = run_events(history, ["--since", middle[0], "--until", middle[2]])
        assert ALL[1:3] == _changes(both.stdout)

    def test_json_lines(self, history: PrivateJournald) -> None:
        """--format json: one object per line, states lowercase as in the HTTP API."""
        proc = run_events(history, ["--format", "json", "--target", "web"])
        (line,) = proc.stdout.splitlines()
        event = json.loads(line)
        fields = _entry("web", "tcp", (Health.UP, Health.DOWN), REFUSED)[2]
        assert {"target": "web", "probe": "tcp", "ip": "::1", "state": "down",
                "previous_state": "up", "reason": "refused",
                "detail": fields.get("REASON_DETAIL", ""), "rtt_seconds": None,
                "maintenance": None} == {
            k: v for k, v in event.items() if k not in ("time", "timestamp")}
        assert abs(datetime.fromisoformat(event["time"]).timestamp() - event["timestamp"]) \
            < 1e-3

    @pytest.mark.parametrize(("args", "message"), [
        (["--since", "soon"], "--since: 'soon' is not a time"),
        (["--since", "-1h", "--until", "-2h"], "--until is before --since"),
        (["--follow", "--until", "now"], "--until cannot be used with --follow"),
        (["--state", "sideways"], "invalid choice"),
    ])
    def test_usage_errors(self, history: PrivateJournald, args: list[str],
                          message: str) -> None:
        """Bad arguments exit 2 with the problem named."""
        proc = run_events(history, args)
        assert (2, "") == (proc.returncode, proc.stdout)
        assert message in proc.stderr

    def test_missing_directory(self, tmp_path: Path) -> None:
        """A journal directory that does not exist: exit 1 and a message."""
        missing = tmp_path / "nowhere"
        proc = subprocess.run([*EVENTS, "--directory", str(missing)], capture_output=True,
                              text=True, timeout=60, check=False)
        assert (1, "") == (proc.returncode, proc.stdout)
        assert f"hostwatch events: cannot open {missing}: No such file or directory\n" == \
            proc.stderr


def _read_line(proc: subprocess.Popen[bytes], buffer: bytearray, timeout: float = 20.0) -> str:
    """The next line of the process's unbuffered stdout, within `timeout` seconds."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while b"\n" not in buffer:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([proc.stdout], [], [], left)[0]:
            raise AssertionError(f"no line within {timeout}s; so far {bytes(buffer)!r}")
        chunk = os.read(proc.stdout.fileno(), 4096)
        if not chunk:
            raise AssertionError(f"stdout closed (exit {proc.poll()}); so far {bytes(buffer)!r}")
        buffer += chunk
    line, _, rest = bytes(buffer).partition(b"\n")
    buffer[:] = rest
    return line.decode()


def _config(port: int) -> str:
    return f"""
defaults:
  interval: 100ms
  timeout: 50ms
  failure_threshold: 1
  success_threshold: 1
targets:
  - name: web
    host: 127.0.0.1
    probes: {{tcp: {{port: {port}}}}}
"""


class TestFollow:
    @pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT])
    def test_follow_sees_a_daemon_transition(self, journald: PrivateJournald, tmp_path: Path,
                                             stop: signal.Signals) -> None:
        """--follow prints the history, then the DOWN transition a real daemon logs when its
        TCP target stops listening, and exits 0 at once on SIGTERM or SIGINT."""
        server = socket.socket()
        server.bind(("127.0.0.1", 0))
        server.listen(16)
        port = server.getsockname()[1]
        with running(tmp_path, _config(port), prefix=journald.wrap([]),
                     log_target="journal"):
            journald.wait_for(MESSAGE_ID=TRANSITION, TARGET="web", STATE="UP")
            follower = subprocess.Popen(
                [*EVENTS, "--follow", "--directory", str(journald.journal_dir), "--target",
                 "web"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0)
            try:
                buffer = bytearray()
                first = _read_line(follower, buffer)
                assert first.split(" ", 1)[1].startswith("web tcp UNKNOWN -> UP: ok ip=127.0.0.1")
                server.close()
                second = _read_line(follower, buffer)
                assert "web tcp UP -> DOWN: refused ip=127.0.0.1" == second.split(" ", 1)[1]
                follower.send_signal(stop)
                assert 0 == follower.wait(10)
                assert follower.stderr is not None
                assert b"" == follower.stderr.read()
            finally:
                if follower.poll() is None:
                    follower.kill()
                    follower.wait()
                server.close()
