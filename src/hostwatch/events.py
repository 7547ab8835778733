"""Events as journal entries: a stable MESSAGE_ID per kind, UPPERCASE fields, one line each.

`journalctl MESSAGE_ID=<id>` lists every event of a kind; `journalctl TARGET=db1` one target's.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Mapping

from hostwatch.journal import EventSink
from hostwatch.state import Health, Transition

__all__ = ["EventKind", "Events", "SinkHandler", "transition_entry"]

LOG_CRIT, LOG_ERR, LOG_WARNING, LOG_NOTICE, LOG_INFO, LOG_DEBUG = 2, 3, 4, 5, 6, 7


class EventKind(enum.Enum):
    """Each kind of event and its MESSAGE_ID (128-bit, fixed forever once released)."""

    TRANSITION = "1ba1052a4ec54e008cd98df0ab82494f"
    STARTED = "7bd5ff5ced8c4ee499a20299f91e7f88"
    STOPPING = "002830f2088e40d1ab97e8b8e74feef5"
    CONFIG_LOADED = "1d3f6cd774204bcf9d4dcee413b487ce"
    CONFIG_FAILED = "beea5e6af59d4d889a16d7fb574297e8"
    FATAL = "973efbffabab498298dbea9ea890a700"
    ADDRESS_CHANGED = "5f5e2ab08e1d498681b9811e44efc746"


def _format_rtt(rtt: float | None) -> str:
    return "" if rtt is None else f"{rtt:.6f}"


def transition_entry(target: str, probe: str, transition: Transition,
                     maintenance: str | None = None) -> tuple[int, str, dict[str, str]]:
    """Priority, message and fields of a state transition. During planned maintenance the
    entry is flagged (MAINTENANCE=1, MAINTENANCE_WINDOW=name) and logged at INFO."""
    result = transition.result
    reason = transition.reason or result.reason.value
    shown = reason + (f" ({transition.detail})" if transition.detail else "")
    message = (f"{target} {probe} {transition.previous.value.upper()} -> "
               f"{transition.current.value.upper()}: {shown}")
    fields = {
        "MESSAGE_ID": EventKind.TRANSITION.value,
        "TARGET": target,
        "PROBE": probe,
        "IP": result.ip,
        "STATE": transition.current.value.upper(),
        "PREVIOUS_STATE": transition.previous.value.upper(),
        "REASON": reason,
    }
    if transition.detail:
        fields["REASON_DETAIL"] = transition.detail
    if result.rtt is not None:
        fields["RTT_SECONDS"] = _format_rtt(result.rtt)
    priority = _PRIORITIES.get(transition.current, LOG_NOTICE)
    if maintenance is not None:
        fields["MAINTENANCE"] = "1"
        fields["MAINTENANCE_WINDOW"] = maintenance
        message += f" [maintenance {maintenance}]"
        priority = LOG_INFO
    return priority, message, fields


_PRIORITIES = {Health.DOWN: LOG_WARNING, Health.FLAPPING: LOG_WARNING,
               Health.DEGRADED: LOG_WARNING}


class Events:
    """Emits lifecycle and transition events to a sink."""

    def __init__(self, sink: EventSink) -> None:
        self.sink = sink

    def transition(self, target: str, probe: str, transition: Transition,
                   maintenance: str | None = None) -> None:
        priority, message, fields = transition_entry(target, probe, transition, maintenance)
        self.sink.emit(priority, message, fields)

    def lifecycle(self, kind: EventKind, message: str, priority: int = LOG_NOTICE,
                  fields: Mapping[str, str] | None = None) -> None:
        self.sink.emit(priority, message, {"MESSAGE_ID": kind.value, **(fields or {})})


_LEVELS = ((logging.CRITICAL, LOG_CRIT), (logging.ERROR, LOG_ERR),
           (logging.WARNING, LOG_WARNING), (logging.INFO, LOG_INFO))


class SinkHandler(logging.Handler):
    """Routes `logging` records to the same sink, with LOGGER and syslog PRIORITY."""

    def __init__(self, sink: EventSink) -> None:
        super().__init__()
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = self.format(record)
        except Exception:
            self.handleError(record)
            return
        priority = next((p for level, p in _LEVELS if record.levelno >= level), LOG_DEBUG)
        self.sink.emit(priority, message, {"LOGGER": record.name})
