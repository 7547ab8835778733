"""Points in time as journalctl's `--since` takes them, the common forms.

- `now`, `today`, `yesterday`, `tomorrow` (midnight, local time);
- relative: `-1h`, `-30min`, `-1h30m`, `+5m`, `2 hours ago`, `1d ago`;
- absolute, local time unless an offset is given: `2026-11-23`, `2026-11-23 10:00`,
  `2026-11-23 10:00:30`, `2026-11-23T10:00:00+01:00`, and `10:00` (today);
- `@1795425057` (Unix seconds, fractions allowed).
"""

from __future__ import annotations

import re
from datetime import date, datetime, time, timedelta

__all__ = ["FORMS", "parse_time"]

FORMS = "-1h, 2 hours ago, today, yesterday, 2026-11-23 10:00, 10:00 or @UNIXSECONDS"

_UNITS = {
    **dict.fromkeys(("s", "sec", "secs", "second", "seconds"), 1),
    **dict.fromkeys(("m", "min", "mins", "minute", "minutes"), 60),
    **dict.fromkeys(("h", "hr", "hrs", "hour", "hours"), 3600),
    **dict.fromkeys(("d", "day", "days"), 86400),
    **dict.fromkeys(("w", "week", "weeks"), 7 * 86400),
}
_PART = re.compile(r"\s*(\d+)\s*([a-z]+)")
_DAYS = {"today": 0, "yesterday": -1, "tomorrow": 1}


def _span(text: str) -> float | None:
    """Seconds in `1h30min` / `2 hours`, or None if `text` is not such a span."""
    total, position = 0, 0
    while position < len(text):
        match = _PART.match(text, position)
        if match is None or match.group(2) not in _UNITS:
            return None
        total += int(match.group(1)) * _UNITS[match.group(2)]
        position = match.end()
    return float(total) if position else None


def _relative(text: str, now: datetime) -> datetime | None:
    sign = 0
    if text and text[0] in "+-":
        sign, text = (1 if text[0] == "+" else -1), text[1:]
    if text.endswith(" ago") and not sign:
        sign, text = -1, text.removesuffix(" ago")
    span = _span(text.strip()) if sign else None
    return None if span is None else now + timedelta(seconds=sign * span)


def _midnight(day: date) -> datetime:
    return datetime.combine(day, time()).astimezone()


def parse_time(text: str, now: datetime) -> datetime:
    """The time `text` means, timezone-aware; `now` is the current time (aware).

    ValueError with the accepted forms if `text` is none of them.
    """
    spec = " ".join(text.strip().lower().split())
    if spec == "now":
        return now
    if spec in _DAYS:
        return _midnight(now.date() + timedelta(days=_DAYS[spec]))
    if spec.startswith("@"):
        try:
            return datetime.fromtimestamp(float(spec[1:])).astimezone()
        except (ValueError, OverflowError, OSError):
            raise ValueError(f"{text!r}: write Unix seconds after @, such as @1795425057") \
                from None
    relative = _relative(spec, now)
    if relative is not None:
        return relative
    try:
        parsed = datetime.fromisoformat(spec.upper() if "t" in spec else spec)
    except ValueError:
        try:
            parsed = datetime.combine(now.date(), time.fromisoformat(spec))
        except ValueError:
            raise ValueError(f"{text!r} is not a time; write one such as {FORMS}") from None
    return parsed if parsed.tzinfo is not None else parsed.astimezone()
