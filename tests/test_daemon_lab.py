"""The daemon inside a test network: a host taken down and back, seen in /metrics and in a
real journald read back with journalctl.

The daemon runs in the lab's prober namespace (no route to the machine's real network) and in
the private journald's mount namespace, so it logs to that journald over the native protocol.
"""

from __future__ import annotations

import signal
from pathlib import Path

from daemon_proc import Scrape, running
from hostwatch.events import EventKind
from lab.journald import PrivateJournald
from lab.netns import NetLab

TRANSITION = EventKind.TRANSITION.value
WEB_PORT = 8080


def _config(lab: NetLab) -> str:
    return f"""
defaults:
  interval: 200ms
  timeout: 150ms
  failure_threshold: 3
  success_threshold: 2
targets:
  - name: self
    host: 127.0.0.1
    probes: {{icmp: }}
  - name: host
    host: {lab.host_ip4}
    probes: {{icmp: , tcp: {{port: {WEB_PORT}}}}}
    labels: {{site: lab}}
  - name: host-v6
    host: "{lab.host_ip6}"
    probes: {{icmp: }}
  - name: ghost
    host: 198.18.0.99
    probes: {{icmp: }}
"""


def _getter(lab: NetLab):  # type: ignore[no-untyped-def]
    def get(url: str) -> tuple[int, str]:
        try:
            return lab.http_get(url)
        except ConnectionError:
            return 0, ""
    return get


def _states(scrape: Scrape) -> dict[tuple[str, str], str]:
    return {(d["target"], d["probe"]): d["state"]
            for d, v in scrape.find("hostwatch_probe_state") if v == 1}


class TestUpDownUp:
    def test_transition_in_metrics_and_journal(self, lab: NetLab, journald: PrivateJournald,
                                               tmp_path: Path) -> None:
        """Dropping all traffic to the host makes icmp and tcp DOWN (timeout) and back UP when
        the drop is removed; each transition is one journal entry with its fields; a host that
        never answers is DOWN from the start while the others stay UP."""
        lab.serve_tcp(WEB_PORT)
        prefix = journald.wrap(lab.prober_cmd([]))
        with running(tmp_path, _config(lab), prefix=prefix, get=_getter(lab),
                     log_target="journal") as daemon:
            daemon.wait_for(lambda s: _states(s) == {
                ("self", "icmp"): "up", ("host", "icmp"): "up", ("host", "tcp"): "up",
                ("host-v6", "icmp"): "up", ("ghost", "icmp"): "down"}, what="initial states")
            journald.wait_for(MESSAGE_ID=TRANSITION, TARGET="host", PROBE="icmp", STATE="UP")

            lab.set_drop(True)
            down = daemon.wait_for(
                lambda s: _states(s)[("host", "icmp")] == "down"
                and _states(s)[("host", "tcp")] == "down", what="host DOWN")
            entry = journald.wait_for(MESSAGE_ID=TRANSITION, TARGET="host", PROBE="icmp",
                                      STATE="DOWN")
            assert ("UP", "timeout", lab.host_ip4) == (entry["PREVIOUS_STATE"], entry["REASON"],
                                                       entry["IP"])
            assert "host icmp UP -> DOWN: timeout" == entry["MESSAGE"]
            assert "4" == entry["PRIORITY"]
            assert ("up", "down") == (_states(down)[("self", "icmp")],
                                      _states(down)[("ghost", "icmp")])
            assert down.value("hostwatch_probe_failures_total", target="host", probe="tcp",
                              reason="timeout") >= 3
            assert "lab" == down.find("hostwatch_probe_state", target="host")[0][0]["site"]

            lab.set_drop(False)
            up = daemon.wait_for(lambda s: _states(s)[("host", "icmp")] == "up"
                                 and _states(s)[("host", "tcp")] == "up", what="host UP again")
            entry = journald.wait_for(MESSAGE_ID=TRANSITION, TARGET="host", PROBE="tcp",
                                      STATE="UP", PREVIOUS_STATE="DOWN")
            assert float(str(entry["RTT_SECONDS"])) > 0
            assert up.value("hostwatch_probe_transitions_total", target="host",
                            probe="icmp") == 3  # UNKNOWN->UP, UP->DOWN, DOWN->UP
            daemon.signal(signal.SIGTERM)
            assert 0 == daemon.proc.wait(5)

        for kind in (EventKind.STARTED, EventKind.CONFIG_LOADED, EventKind.STOPPING):
            journald.wait_for(MESSAGE_ID=kind.value, SYSLOG_IDENTIFIER="hostwatch")
        ghost = journald.wait_for(MESSAGE_ID=TRANSITION, TARGET="ghost")
        assert ("UNKNOWN", "DOWN") == (ghost["PREVIOUS_STATE"], ghost["STATE"])
        assert [] == journald.entries(MESSAGE_ID=TRANSITION, TARGET="self", STATE="DOWN")


class TestJournalTrouble:
    def test_stalled_journald_does_not_freeze(self, lab: NetLab, journald: PrivateJournald,
                                              tmp_path: Path) -> None:
        """With journald stopped (SIGSTOP) and 200 targets flapping (thousands of entries,
        more than its socket can queue), probes go on, /metrics answers, and what could not be
        written is dropped and counted instead of blocking the daemon."""
        prefix = journald.wrap(lab.prober_cmd([]))
        lines = ["defaults: {interval: 200ms, timeout: 150ms, failure_threshold: 1,",
                 "           success_threshold: 1, flap_start: 1000}", "targets:"]
        lines += [f"  - {{name: h{i:03d}, host: {lab.host_ip4}, probes: {{icmp: }}}}"
                  for i in range(200)]
        with running(tmp_path, "\n".join(lines) + "\n", prefix=prefix, get=_getter(lab),
                     log_target="journal") as daemon:
            daemon.wait_for(lambda s: set(_states(s).values()) == {"up"}, what="all up")
            journald.pause()
            try:
                for _ in range(6):  # each toggle: 200 transitions while journald is stopped
                    lab.set_drop(True)
                    daemon.wait_for(lambda s: set(_states(s).values()) == {"down"},
                                    what="all down")
                    lab.set_drop(False)
                    daemon.wait_for(lambda s: set(_states(s).values()) == {"up"},
                                    what="all up")
                after = daemon.scrape()
            finally:
                journald.resume()
        transitions = sum(v for _, v in after.find("hostwatch_probe_transitions_total"))
        assert transitions >= 200 * 13
        assert after.value("hostwatch_log_messages_dropped_total") > 0
        assert after.value("hostwatch_scheduler_skipped_total", reason="missed") == 0
        # Probes were not delayed: no slot job started more than 250 ms late meanwhile.
        runs = after.value("hostwatch_scheduler_lag_seconds_count")
        assert runs == after.value("hostwatch_scheduler_lag_seconds_bucket", le="0.25")
