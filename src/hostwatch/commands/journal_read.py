"""Reading the daemon's transition entries back with systemd-python's journal reader.

Matches are applied by the journal itself (its field index, like `journalctl MESSAGE_ID=…
TARGET=…`): several values of one field are ORed, different fields ANDed. `follow` waits on the
reader's inotify descriptor and on a self-pipe that SIGINT and SIGTERM write to, so a stop
request ends the wait at once and the command exits cleanly.
"""

from __future__ import annotations

import collections
import contextlib
import os
import select
import signal
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from types import FrameType
from typing import Any

from systemd import journal

from hostwatch.events import EventKind

__all__ = ["Event", "Query", "event_from", "follow", "open_reader", "read"]

TRANSITION = EventKind.TRANSITION.value


@dataclass(frozen=True, slots=True)
class Query:
    """What to read: journal directory (None: the system journal) and field filters."""

    directory: str | None = None
    targets: Sequence[str] = ()
    probes: Sequence[str] = ()
    states: Sequence[str] = ()  # UP, DOWN, UNKNOWN


@dataclass(frozen=True, slots=True)
class Event:
    """One transition entry; `usec` is the journal's realtime timestamp (µs since the epoch)."""

    usec: int
    target: str
    probe: str
    ip: str
    state: str
    previous_state: str
    reason: str
    detail: str
    rtt_seconds: float | None
    maintenance: str = ""  # the maintenance window the change happened in, if any

    @property
    def time(self) -> datetime:
        return datetime.fromtimestamp(self.usec / 1e6, UTC)


def _text(entry: Mapping[str, Any], name: str) -> str:
    value = entry.get(name, "")
    if isinstance(value, list):  # a field given more than once: the first value
        value = value[0] if value else ""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def event_from(entry: Mapping[str, Any]) -> Event:
    """An Event from a reader entry (`__REALTIME_TIMESTAMP` as integer µs)."""
    rtt_text = _text(entry, "RTT_SECONDS")
    try:
        rtt: float | None = float(rtt_text) if rtt_text else None
    except ValueError:
        rtt = None
    return Event(
        usec=int(entry["__REALTIME_TIMESTAMP"]), target=_text(entry, "TARGET"),
        probe=_text(entry, "PROBE"), ip=_text(entry, "IP"), state=_text(entry, "STATE"),
        previous_state=_text(entry, "PREVIOUS_STATE"), reason=_text(entry, "REASON"),
        detail=_text(entry, "REASON_DETAIL"), rtt_seconds=rtt,
        maintenance=_text(entry, "MAINTENANCE_WINDOW"))


def open_reader(query: Query) -> Any:
    """A `systemd.journal.Reader` limited to transitions and the query's fields.

    OSError (FileNotFoundError, PermissionError) when the journal cannot be opened.
    """
    converters = {"__REALTIME_TIMESTAMP": int}
    if query.directory is None:
        reader = journal.Reader(converters=converters)
    else:
        reader = journal.Reader(path=query.directory, converters=converters)
    reader.add_match(f"MESSAGE_ID={TRANSITION}")
    for field, values in (("TARGET", query.targets), ("PROBE", query.probes),
                          ("STATE", query.states)):
        for value in values:
            reader.add_match(f"{field}={value}")
    return reader


def _entries(reader: Any) -> Iterator[Mapping[str, Any]]:
    while entry := reader.get_next():
        yield entry


def read(reader: Any, since_usec: int | None, until_usec: int | None,
         lines: int | None) -> list[Event]:
    """The matching events from `since` (else the start) to `until` (else the end); with
    `lines`, only the last so many. Without `until` the reader is left at the end, ready to
    follow."""
    if since_usec is None:
        reader.seek_head()
    else:
        reader.seek_realtime(since_usec)
    found: collections.deque[Event] = collections.deque(maxlen=lines)
    for entry in _entries(reader):
        event = event_from(entry)
        if until_usec is not None and event.usec > until_usec:
            break
        found.append(event)
    return list(found)


@contextlib.contextmanager
def _stop_signals() -> Iterator[tuple[int, list[int]]]:
    """SIGINT and SIGTERM recorded in a list and written to a pipe that poll() watches."""
    read_fd, write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    received: list[int] = []

    def handler(signum: int, _frame: FrameType | None) -> None:
        received.append(signum)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    old_wakeup = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    try:
        yield read_fd, received
    finally:
        signal.set_wakeup_fd(old_wakeup)
        for signum, action in previous.items():
            signal.signal(signum, action)
        os.close(read_fd)
        os.close(write_fd)


def follow(reader: Any, emit: Callable[[Event], None], poll_ms: int = 1000) -> int:
    """Emit new events as they are written until SIGINT or SIGTERM; returns that signal."""
    with _stop_signals() as (wake_fd, received):
        poller = select.poll()
        poller.register(reader.fileno(), reader.get_events())
        poller.register(wake_fd, select.POLLIN)
        while not received:
            poller.poll(poll_ms)
            reader.process()
            for entry in _entries(reader):
                emit(event_from(entry))
                if received:
                    break
        return received[0]
