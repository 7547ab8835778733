"""Output for people: aligned tables, numbers with units, and progress on a terminal only.

Nothing here colours or moves the cursor when the stream is not a terminal, so piped output
is plain text that `grep`, `awk` and `cut` can read.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import TextIO

__all__ = [
    "Progress",
    "format_ago",
    "format_ms",
    "format_percent",
    "is_terminal",
    "reason_text",
    "table",
]


def is_terminal(stream: TextIO) -> bool:
    """True if `stream` is an interactive terminal (and TERM is not `dumb`)."""
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):
        return False
    return tty and os.environ.get("TERM", "") != "dumb"


def table(header: Sequence[str], rows: Sequence[Sequence[str]],
          right: Sequence[int] = ()) -> str:
    """Columns separated by two spaces, padded to the widest cell; `right` aligns by index.

    The last column is never padded, so lines carry no trailing blanks.
    """
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    lines = []
    for row in (header, *rows):
        cells = [cell.rjust(widths[i]) if i in right else cell.ljust(widths[i])
                 for i, cell in enumerate(row)]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines) + "\n"


def format_ms(seconds: float | None) -> str:
    """A duration in milliseconds with three decimals (`0.052`), or `-` when there is none."""
    return "-" if seconds is None else f"{seconds * 1000:.3f}"


def format_percent(ratio: float | None) -> str:
    """A ratio 0..1 as a percentage with up to three significant digits (`0%`, `12.5%`)."""
    return "-" if ratio is None else f"{ratio * 100:.3g}%"


def format_ago(seconds: float) -> str:
    """How long ago, coarsely: `12s`, `5m`, `3h`, `2d` followed by ` ago`."""
    seconds = max(seconds, 0.0)
    for size, unit in ((86400, "d"), (3600, "h"), (60, "m")):
        if seconds >= size:
            return f"{int(seconds // size)}{unit} ago"
    return f"{int(seconds)}s ago"


def reason_text(reason: str, detail: str | None) -> str:
    """`reason (detail)`; a detail that only repeats the reason (`refused` and `Connection
    refused`) is left out."""
    said = reason.replace("-", " ")
    if not detail or detail.lower().replace("-", " ") in (said, f"connection {said}"):
        return reason
    return f"{reason} ({detail})"


class Progress:
    """`label done/total` rewritten in place on a terminal, at most ten times a second.

    When `stream` is not a terminal it writes nothing at all. `close()` erases the line.
    """

    def __init__(self, stream: TextIO, label: str, total: int) -> None:
        self._stream = stream
        self._label = label
        self._total = total
        self._done = 0
        self._enabled = is_terminal(stream) and total > 0
        self._shown_at = 0.0

    @property
    def enabled(self) -> bool:
        return self._enabled

    def advance(self, amount: int = 1) -> None:
        self._done += amount
        now = time.monotonic()
        if self._enabled and (now - self._shown_at >= 0.1 or self._done >= self._total):
            self._shown_at = now
            self._stream.write(f"\r\x1b[K{self._label} {self._done}/{self._total}")
            self._stream.flush()

    def close(self) -> None:
        if self._enabled:
            self._stream.write("\r\x1b[K")
            self._stream.flush()
            self._enabled = False
