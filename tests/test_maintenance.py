"""Planned maintenance: transitions during a window are logged but flagged, and a metric says
so, so alert rules can stay quiet during a rollout. Real daemon, real journald."""

from __future__ import annotations

import datetime
import json
from pathlib import Path

from daemon_proc import free_port, local_get, running
from hostwatch.events import EventKind
from lab.journald import PrivateJournald


def _iso(offset: float) -> str:
    now = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=offset)
    return now.strftime("%Y-%m-%dT%H:%M:%SZ")


class TestMaintenance:
    def test_flagged_transitions_and_metric(self, journald: PrivateJournald,
                                            tmp_path: Path) -> None:
        """A target selected by label inside an active window: its DOWN is logged at INFO
        with MAINTENANCE=1 and the window's name; the metric is 1 for it and absent for a
        target outside the window, whose transition is not flagged."""
        closed = free_port()
        config = f"""
defaults: {{interval: 200ms, timeout: 150ms, failure_threshold: 2}}
targets:
  - {{name: db1, host: 127.0.0.1, probes: {{tcp: {{port: {closed}}}}}, labels: {{role: db}}}}
  - {{name: web1, host: 127.0.0.2, probes: {{tcp: {{port: {closed}}}}}, labels: {{role: web}}}}
maintenance:
  - name: db-rollout
    start: {_iso(-60)}
    end: {_iso(3600)}
    match_labels: {{role: db}}
  - name: tomorrow
    start: {_iso(86400)}
    end: {_iso(90000)}
    targets: [web1]
"""
        with running(tmp_path, config, prefix=journald.wrap([]), log_target="journal") as d:
            scrape = d.wait_for(lambda s: len(s.find("hostwatch_probe_state", state="down")) == 2
                                and all(v == 1 for _, v in
                                        s.find("hostwatch_probe_state", state="down")),
                                what="both down")
            _, body = local_get(d.url + "/api/v1/targets")
        flagged = journald.wait_for(MESSAGE_ID=EventKind.TRANSITION.value, TARGET="db1",
                                    STATE="DOWN")
        assert ("1", "db-rollout", "6") == (flagged["MAINTENANCE"],
                                            flagged["MAINTENANCE_WINDOW"], flagged["PRIORITY"])
        plain = journald.wait_for(MESSAGE_ID=EventKind.TRANSITION.value, TARGET="web1",
                                  STATE="DOWN")
        assert ("MAINTENANCE" not in plain, "4") == (True, plain["PRIORITY"])
        assert 1.0 == scrape.value("hostwatch_probe_maintenance", target="db1",
                                   window="db-rollout")
        assert [] == scrape.find("hostwatch_probe_maintenance", target="web1")
        entries = {e["target"]: e for e in json.loads(body)["data"]}
        assert ("db-rollout", None) == (entries["db1"]["maintenance"],
                                        entries["web1"]["maintenance"])
