"""check_ping-style thresholds: `-w RTT,LOSS%` and `-c RTT,LOSS%`.

RTT is the average round-trip time in milliseconds (`100`, `100ms`, or `0.1s`); LOSS is the
share of probes without an answer in percent (`20%`). Either part may be left out: `-w 100`,
`-w 20%`, `-w ,20%`. A check is at the threshold's level when its value is greater than *or
equal to* the threshold, as in check_ping.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from hostwatch.commands.nagios import Status

__all__ = ["Threshold", "check_order", "evaluate", "parse_threshold"]


@dataclass(frozen=True, slots=True)
class Threshold:
    """Average RTT in milliseconds and loss in percent; None where not set."""

    rtt_ms: float | None = None
    loss_percent: float | None = None

    def reached(self, rtt_ms: float | None, loss_percent: float) -> bool:
        """True when either value is at or above its limit (an unknown RTT never is)."""
        if self.loss_percent is not None and loss_percent >= self.loss_percent:
            return True
        return self.rtt_ms is not None and rtt_ms is not None and rtt_ms >= self.rtt_ms


def _rtt_ms(text: str) -> float:
    scale = 1.0
    if text.endswith("ms"):
        text = text[:-2]
    elif text.endswith("s"):
        text, scale = text[:-1], 1000.0
    return _number(text, "RTT") * scale


def _loss(text: str) -> float:
    value = _number(text.removesuffix("%"), "loss")
    if value > 100:
        raise ValueError(f"loss {text!r} is above 100%")
    return value


def _number(text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{what} {text!r} is not a number") from None
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{what} {text!r} must be a finite number, 0 or more")
    return value


def parse_threshold(text: str) -> Threshold:
    """`RTT,LOSS%`, `RTT`, `LOSS%` or `,LOSS%`; ValueError with what is wrong."""
    parts = [p.strip() for p in text.split(",")]
    if len(parts) > 2 or not any(parts):
        raise ValueError(f"{text!r} is not RTT,LOSS% (such as 100,20%)")
    if len(parts) == 1:
        part = parts[0]
        return Threshold(loss_percent=_loss(part)) if part.endswith("%") else \
            Threshold(rtt_ms=_rtt_ms(part))
    rtt, loss = parts
    return Threshold(rtt_ms=_rtt_ms(rtt) if rtt else None,
                     loss_percent=_loss(loss) if loss else None)


def check_order(warning: Threshold, critical: Threshold) -> None:
    """ValueError if a warning limit is above the critical one (it could never be seen)."""
    pairs = (("RTT", warning.rtt_ms, critical.rtt_ms),
             ("loss", warning.loss_percent, critical.loss_percent))
    for what, warn, crit in pairs:
        if warn is not None and crit is not None and warn > crit:
            raise ValueError(f"the warning {what} ({warn:g}) is above the critical one "
                             f"({crit:g})")


def evaluate(rtt_ms: float | None, loss_percent: float, warning: Threshold,
             critical: Threshold) -> Status:
    """CRITICAL without any answer or at a critical limit; WARNING at a warning limit."""
    if loss_percent >= 100 or critical.reached(rtt_ms, loss_percent):
        return Status.CRITICAL
    if warning.reached(rtt_ms, loss_percent):
        return Status.WARNING
    return Status.OK
