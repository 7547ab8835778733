"""The journal writer on real AF_UNIX datagram sockets: encoding, stalls and absence."""

from __future__ import annotations

import asyncio
import io
import socket
import struct
from pathlib import Path

from hostwatch.journal import JournalSink, StderrSink, encode_native


def _decode(data: bytes) -> dict[str, str]:
    """A minimal reader of the native protocol (both the simple and the binary form)."""
    fields: dict[str, str] = {}
    while data:
        line_end = data.index(b"\n")
        line = data[:line_end]
        if b"=" in line:
            key, value = line.split(b"=", 1)
            data = data[line_end + 1:]
        else:
            key = line
            size = struct.unpack("<Q", data[line_end + 1:line_end + 9])[0]
            value = data[line_end + 9:line_end + 9 + size]
            data = data[line_end + 10 + size:]
        fields[key.decode()] = value.decode()
    return fields


class TestEncoding:
    def test_fields_and_multiline(self) -> None:
        """Simple fields as KEY=value, a value with a newline in the binary form."""
        data = encode_native("two\nlines", 5, "hostwatch", {"TARGET": "db1", "STATE": "UP"})
        assert {"MESSAGE": "two\nlines", "PRIORITY": "5", "SYSLOG_IDENTIFIER": "hostwatch",
                "TARGET": "db1", "STATE": "UP"} == _decode(data)

    def test_invalid_field_names_are_left_out(self) -> None:
        """journald drops lowercase or underscore-first names; we never send them."""
        data = encode_native("m", 6, "hostwatch", {"target": "x", "_PID": "1", "OK_1": "y"})
        assert {"MESSAGE", "PRIORITY", "SYSLOG_IDENTIFIER", "OK_1"} == set(_decode(data))


class TestJournalSink:
    def test_entries_arrive(self, tmp_path: Path) -> None:
        """Entries reach a listening datagram socket, in order."""
        path = str(tmp_path / "journal.sock")
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
            server.bind(path)
            server.settimeout(2)

            async def go() -> int:
                sink = JournalSink(path)
                for i in range(3):
                    sink.emit(5, f"m{i}", {"TARGET": "db1"})
                await sink.close()
                return sink.stats.written

            written = asyncio.run(go())
            messages = [_decode(server.recv(4096))["MESSAGE"] for _ in range(3)]
        assert (3, ["m0", "m1", "m2"]) == (written, messages)

    def test_stalled_journal_never_blocks(self, tmp_path: Path) -> None:
        """A receiver that never reads: 20,000 emits return at once; the excess is dropped
        and counted, and the event loop keeps running on time."""
        path = str(tmp_path / "stalled.sock")
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
            server.bind(path)

            async def go() -> tuple[int, int, int]:
                ticks = 0

                async def ticker() -> None:
                    nonlocal ticks
                    while True:
                        await asyncio.sleep(0.01)
                        ticks += 1

                task = asyncio.create_task(ticker())
                sink = JournalSink(path, max_queue=256)
                for i in range(20_000):
                    sink.emit(6, f"message {i}", {"TARGET": "db1"})
                await asyncio.sleep(0.2)  # the writer is stuck on the full socket meanwhile
                task.cancel()
                await sink.close(timeout=0.2)
                return ticks, sink.stats.written, sink.stats.dropped

            ticks, written, dropped = asyncio.run(go())
        assert written + dropped == 20_000
        assert dropped > 0
        assert ticks > 0  # other tasks ran while the journal was stalled

    def test_missing_journal_drops_and_counts(self, tmp_path: Path) -> None:
        """No socket at the path: nothing raises, every entry counts as dropped."""
        async def go() -> tuple[int, int]:
            sink = JournalSink(str(tmp_path / "absent.sock"), retry_seconds=0.01)
            for i in range(5):
                sink.emit(6, f"m{i}", {})
            await asyncio.sleep(0.2)
            await sink.close()
            return sink.stats.written, sink.stats.dropped

        assert (0, 5) == asyncio.run(go())


class TestStderrSink:
    def test_readable_line(self) -> None:
        """One line: time, priority name, message, then lowercase key=value fields."""
        out = io.StringIO()
        StderrSink(out).emit(4, "db1 icmp UP -> DOWN: timeout",
                             {"MESSAGE_ID": "x", "TARGET": "db1", "REASON": "timeout"})
        line = out.getvalue()
        assert line.endswith(" WARNING db1 icmp UP -> DOWN: timeout  target=db1 "
                             "reason=timeout\n")
        assert 1 == line.count("\n")
