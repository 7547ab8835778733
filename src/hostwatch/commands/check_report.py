"""What `hostwatch check` prints: a table, a JSON document, or Nagios plugin output.

Each (host, probe) gets a status from the thresholds (`thresholds.evaluate`); the run's status
is the worst of them and is the exit code.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from hostwatch.commands.check_probe import Outcome
from hostwatch.commands.nagios import PerfItem, Status, status_output, worst
from hostwatch.commands.output import format_ms, format_percent, table
from hostwatch.commands.thresholds import Threshold, evaluate

__all__ = ["Judged", "judge", "render_json", "render_nagios", "render_text", "run_status"]


@dataclass(frozen=True, slots=True)
class Judged:
    """An outcome with its status."""

    outcome: Outcome
    status: Status

    @property
    def name(self) -> str:
        """`HOST PROBE`, e.g. `127.0.0.1 tcp/22`."""
        return f"{self.outcome.plan.host} {self.outcome.plan.probe}"


def judge(outcomes: Sequence[Outcome], warning: Threshold, critical: Threshold) -> list[Judged]:
    """The status of every outcome under the thresholds."""
    judged = []
    for outcome in outcomes:
        rtt = outcome.rtt_avg
        status = evaluate(None if rtt is None else rtt * 1000, outcome.loss_ratio * 100,
                          warning, critical)
        judged.append(Judged(outcome, status))
    return judged


def run_status(judged: Sequence[Judged]) -> Status:
    """The worst status of the run."""
    return worst([j.status for j in judged])


def render_text(judged: Sequence[Judged]) -> str:
    """One row per (host, probe): address, counts, loss, RTT in ms, status and reason."""
    header = ["HOST", "PROBE", "ADDRESS", "SENT", "RECV", "LOSS", "MIN ms", "AVG ms", "MAX ms",
              "STATUS", "REASON"]
    rows = []
    for j in judged:
        o = j.outcome
        rows.append([o.plan.host, o.plan.probe, o.resolution.ip or "-", str(o.sent),
                     str(o.received), format_percent(o.loss_ratio), format_ms(o.rtt_min),
                     format_ms(o.rtt_avg), format_ms(o.rtt_max), j.status.name, o.reason_text])
    return table(header, rows, right=(3, 4, 5, 6, 7, 8))


def _rtt_seconds(o: Outcome) -> dict[str, float | None]:
    return {"min": o.rtt_min, "avg": o.rtt_avg, "max": o.rtt_max}


def render_json(judged: Sequence[Judged]) -> str:
    """`{"status", "exit_code", "checks": [...]}`; times in seconds, as in the daemon's API."""
    status = run_status(judged)
    checks: list[dict[str, Any]] = []
    for j in judged:
        o = j.outcome
        checks.append({
            "host": o.plan.host, "probe": o.plan.kind.value, "port": o.plan.port,
            "ip": o.resolution.ip, "status": j.status.name, "sent": o.sent,
            "received": o.received, "loss_ratio": o.loss_ratio, "rtt_seconds": _rtt_seconds(o),
            "reason": o.reasons[0][0].value if o.reasons else "ok",
            "detail": o.reason_text,
            "results": [{"reason": r.reason.value, "rtt_seconds": r.rtt, "detail": r.detail}
                        for r in o.results],
        })
    document = {"status": status.name, "exit_code": int(status), "checks": checks}
    return json.dumps(document, indent=2) + "\n"


def _one_line(j: Judged) -> str:
    o = j.outcome
    text = f"{j.name}: loss {format_percent(o.loss_ratio)}"
    if o.rtt_avg is not None:
        text += f", rta {format_ms(o.rtt_avg)} ms"
    if o.reasons:
        text += f" ({o.reason_text})"
    return text


def _perf(judged: Sequence[Judged], warning: Threshold, critical: Threshold) -> list[PerfItem]:
    items = []
    for j in judged:
        prefix = "" if len(judged) == 1 else f"{j.name} "
        avg = j.outcome.rtt_avg
        items.append(PerfItem(f"{prefix}rta", None if avg is None else avg * 1000, "ms",
                              warning.rtt_ms, critical.rtt_ms, 0))
        items.append(PerfItem(f"{prefix}pl", j.outcome.loss_ratio * 100, "%",
                              warning.loss_percent, critical.loss_percent, 0, 100))
    return items


def render_nagios(judged: Sequence[Judged], warning: Threshold, critical: Threshold) -> str:
    """`HOSTWATCH STATE - summary|perfdata`, then one line per check.

    One check: its loss and average RTT. Several: how many are in each state, then the
    checks that are not OK. Perfdata labels are `rta` and `pl` for a single check, else
    `'HOST PROBE rta'` and `'HOST PROBE pl'`; RTT in ms, loss in %.
    """
    status = run_status(judged)
    if len(judged) == 1:
        summary = _one_line(judged[0])
    else:
        counts = ", ".join(f"{sum(1 for j in judged if j.status is s)} {s.name.lower()}"
                           for s in (Status.CRITICAL, Status.WARNING, Status.OK))
        problems = "; ".join(_one_line(j) for j in judged if j.status is not Status.OK)
        summary = f"{len(judged)} checks: {counts}" + (f"; {problems}" if problems else "")
    details = [f"{j.status.name}: {_one_line(j)}" for j in judged] if len(judged) > 1 else []
    return status_output(status, summary, _perf(judged, warning, critical), details)
