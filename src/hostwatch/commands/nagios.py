"""Nagios plugin conventions: the four states as exit codes, the status line, performance data.

Following the Monitoring Plugins development guidelines: one line
`HOSTWATCH STATE - text|perfdata`, optionally more lines of long text; perfdata items are
`'label'=value[UOM];[warn];[crit];[min];[max]`, `U` when the value could not be determined.
"""

from __future__ import annotations

import enum
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["PerfItem", "Status", "format_number", "status_output", "unknown", "worst"]

PLUGIN = "HOSTWATCH"


class Status(enum.IntEnum):
    """A plugin state; the value is the exit code."""

    OK = 0
    WARNING = 1
    CRITICAL = 2
    UNKNOWN = 3


def worst(statuses: Sequence[Status]) -> Status:
    """The most severe of `statuses` (OK when there are none); UNKNOWN ranks highest."""
    return max(statuses, default=Status.OK)


def format_number(value: float) -> str:
    """A plain decimal without exponent and without trailing zeros (`0.0525`, `100`)."""
    text = f"{value:.6f}".rstrip("0").rstrip(".")
    return "0" if text in ("", "-0") else text


@dataclass(frozen=True, slots=True)
class PerfItem:
    """One performance data item; None fields are left empty (value None is `U`)."""

    label: str
    value: float | None
    unit: str = ""
    warn: float | None = None
    crit: float | None = None
    minimum: float | None = None
    maximum: float | None = None

    def __str__(self) -> str:
        if any(c in self.label for c in "'="):
            raise ValueError(f"perfdata label {self.label!r} contains ' or =")
        label = f"'{self.label}'" if " " in self.label else self.label
        if self.value is None or not math.isfinite(self.value):
            value = "U"
        else:
            value = format_number(self.value) + self.unit
        fields = [_optional(x) for x in (self.warn, self.crit, self.minimum, self.maximum)]
        while fields and not fields[-1]:
            fields.pop()
        return ";".join([f"{label}={value}", *fields])


def _optional(value: float | None) -> str:
    return "" if value is None else format_number(value)


def status_output(status: Status, summary: str, perf: Sequence[PerfItem],
                  details: Sequence[str] = ()) -> str:
    """The plugin output: the status line with perfdata, then the long text lines."""
    line = f"{PLUGIN} {status.name} - {summary}".replace("|", "/")
    if perf:
        line += "|" + " ".join(str(item) for item in perf)
    return "\n".join([line, *(d.replace("|", "/") for d in details)]) + "\n"


def unknown(command: str, message: str, *, nagios: bool) -> int:
    """Report a run that could check nothing and return 3: as plugin output on stdout in Nagios
    format (monitoring systems read stdout), else as `command: message` on stderr."""
    if nagios:
        sys.stdout.write(status_output(Status.UNKNOWN, message, ()))
    else:
        print(f"{command}: {message}", file=sys.stderr)
    return int(Status.UNKNOWN)
