"""What each phase measured, and the tables printed at the end."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from bench.wire import WireStats

__all__ = ["Goal", "ToolResult", "goals_table", "tools_table"]


@dataclass(slots=True)
class ToolResult:
    """One tool over its steady window, judged by the wire and by /proc."""

    tool: str
    targets: int
    window: float
    cpu: float  # user + system seconds over the window
    wire: WireStats | None
    rss_peak_mib: float
    answered: float | None = None  # share of sent probes the tool counted as answered
    scrape_seconds: float | None = None
    scrape_mib: float | None = None
    note: str = ""
    probes: int | None = None  # probes sent, when the wire does not see them (TCP)

    @property
    def sent(self) -> int:
        if self.probes is not None:
            return self.probes
        return self.wire.sent if self.wire is not None else 0

    @property
    def probes_per_second(self) -> float:
        return self.sent / self.window if self.window else 0.0

    @property
    def cpu_us_per_probe(self) -> float | None:
        return self.cpu / self.sent * 1e6 if self.sent else None


@dataclass(frozen=True, slots=True)
class Goal:
    """One target of the issue: what, the goal as text, the measured value, met or not."""

    what: str
    goal: str
    measured: str
    met: bool | None  # None: not measured in this run
    detail: str = ""


@dataclass(slots=True)
class Report:
    tools: list[ToolResult] = field(default_factory=list)
    goals: list[Goal] = field(default_factory=list)
    facts: dict[str, object] = field(default_factory=dict)


def _num(value: float | None, fmt: str, unit: str = "") -> str:
    return "-" if value is None else f"{value:{fmt}}{unit}"


def tools_table(tools: Sequence[ToolResult], interval: float) -> str:
    """The side-by-side table; ratios are CPU per probe relative to hostwatch."""
    ours = next((t.cpu_us_per_probe for t in tools if t.tool == "hostwatch"), None)
    head = ("| tool | targets | probes/s sent | on schedule | answered | CPU µs/probe "
            "| x hostwatch | peak RSS MiB | scrape | note |")
    rows = [head, "|" + "---|" * 10]
    for t in tools:
        per = t.cpu_us_per_probe
        ratio = f"{per / ours:.1f}x" if per is not None and ours else "-"
        on_time = _num(t.wire.on_schedule * 100 if t.wire else None, ".2f", "%")
        answered = _num(t.answered * 100 if t.answered is not None else None, ".2f", "%")
        scrape = "-"
        if t.scrape_seconds is not None:
            scrape = f"{t.scrape_seconds * 1000:.0f} ms / {t.scrape_mib or 0:.1f} MiB"
        rows.append(f"| {t.tool} | {t.targets:,} | {t.probes_per_second:,.0f} | {on_time} "
                    f"| {answered} | {_num(per, '.1f')} | {ratio} | {t.rss_peak_mib:.0f} "
                    f"| {scrape} | {t.note} |")
    legend = (f"on schedule: probes that left within {interval / 20 * 1000:g} ms of their "
              "destination's phase, over probes due (sent + intervals missed), as seen on lo. "
              "answered: replies the tool itself counted over probes on the wire.")
    return "\n".join(rows) + "\n\n" + legend


def goals_table(goals: Sequence[Goal]) -> str:
    rows = ["| target | goal | measured | met |", "|---|---|---|---|"]
    for g in goals:
        met = {True: "yes", False: "**no**", None: "not measured"}[g.met]
        detail = f" ({g.detail})" if g.detail else ""
        rows.append(f"| {g.what} | {g.goal} | {g.measured}{detail} | {met} |")
    return "\n".join(rows)
