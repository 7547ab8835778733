"""Where events and log lines go: the journal (native protocol) or readable stderr lines.

The journal writer speaks journald's native protocol over an AF_UNIX datagram socket through
asyncio-dgram, so the event loop never blocks in C (systemd-python's `journal.send` does, and
froze the whole daemon when journald stalled). Messages wait in a bounded queue; when journald
is slow, stalled or gone, what does not fit is dropped and counted, never waited for.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import struct
import sys
import time
from collections import deque
from collections.abc import Mapping
from typing import Protocol, TextIO

import asyncio_dgram

__all__ = [
    "JOURNAL_SOCKET",
    "EventSink",
    "JournalSink",
    "SinkStats",
    "StderrSink",
    "encode_native",
    "stderr_is_journal",
]

JOURNAL_SOCKET = "/run/systemd/journal/socket"
PRIORITY_NAMES = {0: "EMERG", 1: "ALERT", 2: "CRIT", 3: "ERR", 4: "WARNING", 5: "NOTICE",
                  6: "INFO", 7: "DEBUG"}
_FIELD_NAME = re.compile(r"[A-Z0-9][A-Z0-9_]{0,63}")
_U64 = struct.Struct("<Q")


class SinkStats:
    """Counters exported as metrics: messages written and messages dropped."""

    __slots__ = ("dropped", "written")

    def __init__(self) -> None:
        self.written = 0
        self.dropped = 0


class EventSink(Protocol):
    """Accepts one structured entry without blocking; may drop it (and count the drop)."""

    stats: SinkStats

    def emit(self, priority: int, message: str, fields: Mapping[str, str]) -> None: ...

    async def close(self) -> None: ...


def encode_native(message: str, priority: int, identifier: str,
                  fields: Mapping[str, str]) -> bytes:
    """One entry in journald's native protocol; fields with invalid names are left out."""
    parts = [_field("MESSAGE", message), _field("PRIORITY", str(priority)),
             _field("SYSLOG_IDENTIFIER", identifier)]
    parts.extend(_field(k, v) for k, v in fields.items() if _FIELD_NAME.fullmatch(k))
    return b"".join(parts)


def _field(name: str, value: str) -> bytes:
    data = value.encode("utf-8", "replace")
    key = name.encode("ascii")
    if b"\n" in data:
        return key + b"\n" + _U64.pack(len(data)) + data + b"\n"
    return key + b"=" + data + b"\n"


def stderr_is_journal() -> bool:
    """True when systemd connected our stderr to the journal (JOURNAL_STREAM matches fd 2)."""
    stream = os.environ.get("JOURNAL_STREAM", "")
    try:
        device, inode = (int(x) for x in stream.split(":"))
        st = os.fstat(2)
    except (ValueError, OSError):
        return False
    return st.st_dev == device and st.st_ino == inode


class JournalSink:
    """Writes entries to journald from a single task; never blocks the caller."""

    def __init__(self, path: str = JOURNAL_SOCKET, identifier: str = "hostwatch",
                 max_queue: int = 1024, retry_seconds: float = 2.0) -> None:
        self.stats = SinkStats()
        self._path = path
        self._identifier = identifier
        self._queue: deque[bytes] = deque()
        self._max_queue = max_queue
        self._retry_seconds = retry_seconds
        self._wakeup = asyncio.Event()
        self._stream: asyncio_dgram.DatagramClient | None = None
        self._task = asyncio.get_running_loop().create_task(self._run(), name="journal-writer")

    def emit(self, priority: int, message: str, fields: Mapping[str, str]) -> None:
        if len(self._queue) >= self._max_queue:
            self.stats.dropped += 1
            return
        self._queue.append(encode_native(message, priority, self._identifier, fields))
        self._wakeup.set()

    async def _run(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._queue:
                if not await self._send_one(self._queue[0]):
                    await asyncio.sleep(self._retry_seconds)

    async def _send_one(self, data: bytes) -> bool:
        """Send the head of the queue; on failure drop it, forget the socket, return False."""
        try:
            if self._stream is None:
                self._stream = await asyncio_dgram.connect(self._path)
            await self._stream.send(data)
        except (OSError, asyncio_dgram.TransportClosed):
            self._drop_stream()
            self._queue.popleft()
            self.stats.dropped += 1
            return False
        self._queue.popleft()
        self.stats.written += 1
        return True

    def _drop_stream(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None

    async def close(self, timeout: float = 1.0) -> None:
        """Flush what journald accepts within `timeout`, then stop; the rest counts as dropped."""
        deadline = time.monotonic() + timeout
        while self._queue and time.monotonic() < deadline and not self._task.done():
            await asyncio.sleep(0.01)
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self.stats.dropped += len(self._queue)
        self._queue.clear()
        self._drop_stream()


class StderrSink:
    """Readable lines for a terminal: time, priority, message, then key=value fields."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stats = SinkStats()
        self._stream = stream

    def emit(self, priority: int, message: str, fields: Mapping[str, str]) -> None:
        stream = self._stream or sys.stderr
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
        extra = " ".join(f"{k.lower()}={_quote(v)}" for k, v in fields.items()
                         if k not in ("MESSAGE_ID", "CODE_FUNC"))
        line = f"{stamp}Z {PRIORITY_NAMES.get(priority, priority)} {message}"
        try:
            stream.write(f"{line}  {extra}\n" if extra else f"{line}\n")
            stream.flush()
        except (OSError, ValueError):
            self.stats.dropped += 1
            return
        self.stats.written += 1

    async def close(self) -> None:
        return None


def _quote(value: str) -> str:
    if value and not any(c.isspace() or c in "\"=" for c in value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
