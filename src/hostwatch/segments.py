"""One /metrics body from renderers working in parallel: framing, gzip joining, the writer.

`hostwatch.exposition.render_segments` cuts the exposition into segments that several forked
renderers produce side by side, each for a share of the watches. The first renderer (the
"joiner") writes the body to the daemon; every other one (a "helper") writes its segments to
the joiner as frames, already compressed, and the joiner puts them in order between its own.

gzip: every renderer compresses its own segments as raw deflate ending with a full flush (no
back-reference into another segment, byte-aligned), and reports each segment's CRC-32 and
length. The joiner writes one gzip member around them: its header, the segments in order, a
final empty block, then the CRC-32 of the whole (combined from the segments' CRCs) and its
length. One member, as every HTTP client expects, compressed by every renderer at once.

Frames from a helper: `<I length><bytes>`, and at the end of a segment
`<I 0xFFFFFFFF><I crc32><Q length of the plain text>`. The end of the pipe ends the helper's
segments; a part with fewer segments has empty ones.
"""

from __future__ import annotations

import os
import queue
import struct
import threading
import zlib
from typing import Final

__all__ = ["FrameReader", "Sink", "crc32_combine"]

PIECE: Final = 256 * 1024  # bytes compressed and written at a time
_END: Final = 0xFFFFFFFF
_HEAD: Final = struct.Struct("<I")
_SEGMENT_END: Final = struct.Struct("<IQ")
# gzip header (RFC 1952): magic, deflate, no flags, no time, no extra flags, OS unknown.
_GZIP_HEADER: Final = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
_GZIP_LEVEL: Final = 1  # ~10x smaller for ~40 ms per 17 MB; higher levels cost 3-5x the CPU

# CRC-32 (zlib's, reflected polynomial 0xEDB88320) as polynomials over GF(2): bit 31 is x^0.
_POLY: Final = 0xEDB88320
_ONE: Final = 1 << 31


def _multiply(a: int, b: int) -> int:
    """a * b modulo the CRC-32 polynomial."""
    product = 0
    bit = _ONE
    while a:
        if a & bit:
            product ^= b
            a ^= bit
        bit >>= 1
        b = (b >> 1) ^ _POLY if b & 1 else b >> 1
    return product


def _powers() -> tuple[int, ...]:
    """x^(8 * 2^k) modulo the polynomial, k = 0..63: the shift by 2^k bytes."""
    out = [_ONE >> 8]  # x^8
    for _ in range(63):
        out.append(_multiply(out[-1], out[-1]))
    return tuple(out)


_SHIFT: Final = _powers()


def crc32_combine(crc1: int, crc2: int, length2: int) -> int:
    """zlib.crc32(a + b) from crc1 = zlib.crc32(a), crc2 = zlib.crc32(b), length2 = len(b)."""
    k = 0
    while length2:
        if length2 & 1:
            crc1 = _multiply(_SHIFT[k], crc1)
        length2 >>= 1
        k += 1
    return crc1 ^ crc2


class Sink:
    """Compresses (if asked) and writes in a thread, so that the next families are rendered
    meanwhile (zlib and write() release the GIL). As a joiner (`framed=False`) it writes the
    body; as a helper (`framed=True`) it writes frames for the joiner."""

    def __init__(self, fd: int, gzipped: bool, *, framed: bool) -> None:
        self._fd = fd
        self._framed = framed
        self._z = zlib.compressobj(_GZIP_LEVEL, zlib.DEFLATED, -15) if gzipped else None
        # CRC-32 (gzip only) and length of the plain text: the body's, or the segment's
        self._crc, self._length = 0, 0
        self._queue: queue.Queue[tuple[int, bytes | memoryview, int, int]] = queue.Queue(64)
        self._error: OSError | None = None
        self._thread = threading.Thread(target=self._run, name="metrics-writer")
        self._thread.start()
        if gzipped and not framed:
            self._queue.put((_RAW, _GZIP_HEADER, 0, 0))

    def put(self, chunk: bytes) -> None:
        """Plain text of the current segment."""
        view = memoryview(chunk)
        for start in range(0, len(view), PIECE):
            self._queue.put((_TEXT, view[start:start + PIECE], 0, 0))

    def end_segment(self) -> None:
        self._queue.put((_SEGMENT, b"", 0, 0))

    def relayed(self, data: bytes) -> None:
        """A helper's bytes of a segment, as it wrote them (joiner only)."""
        self._queue.put((_RAW, data, 0, 0))

    def relayed_end(self, crc: int, length: int) -> None:
        """The end of a helper's segment: its plain text's CRC-32 and length (joiner only)."""
        self._queue.put((_RELAYED_END, b"", crc, length))

    def close(self) -> None:
        self._queue.put((_CLOSE, b"", 0, 0))
        self._thread.join()
        os.close(self._fd)
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        while True:
            kind, data, crc, length = self._queue.get()
            if kind == _CLOSE:
                break
            if self._error is None:
                try:
                    self._write(self._handle(kind, data, crc, length))
                except OSError as err:  # the reader went away: keep draining, report at close
                    self._error = err
        if self._error is None:
            try:
                self._write(self._finish())
            except OSError as err:
                self._error = err

    def _handle(self, kind: int, data: bytes | memoryview, crc: int,
                length: int) -> bytes | memoryview:
        z = self._z
        if kind == _TEXT:
            self._length += len(data)
            if z is None:
                out: bytes | memoryview = data
            else:
                self._crc = zlib.crc32(data, self._crc)
                out = z.compress(data)
            return _HEAD.pack(len(out)) + out if self._framed and out else out
        if kind == _RAW:
            return data
        if kind == _RELAYED_END:
            self._crc = crc32_combine(self._crc, crc, length)
            self._length += length
            return b""
        # _SEGMENT: flush so that the next segment (maybe another renderer's) starts clean
        out = z.flush(zlib.Z_FULL_FLUSH) if z is not None else b""
        if not self._framed:
            return out
        end = _HEAD.pack(_END) + _SEGMENT_END.pack(self._crc, self._length)
        self._crc, self._length = 0, 0
        return (_HEAD.pack(len(out)) + out if out else b"") + end

    def _finish(self) -> bytes:
        if self._framed or self._z is None:
            return b""
        # The last block (empty, final), then the gzip trailer over the whole plain text.
        return self._z.flush() + struct.pack("<II", self._crc, self._length & 0xFFFFFFFF)

    def _write(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view):]


_TEXT, _RAW, _SEGMENT, _RELAYED_END, _CLOSE = range(5)


class FrameReader:
    """The joiner's end of a helper's pipe."""

    def __init__(self, fd: int) -> None:
        self._file = os.fdopen(fd, "rb")
        self.ended = False

    def relay_segment(self, sink: Sink) -> None:
        """Pass the helper's next segment to `sink`; nothing if its pipe has ended."""
        while not self.ended:
            head = self._file.read(_HEAD.size)
            if not head:
                self.ended = True
                return
            (length,) = _HEAD.unpack(self._exactly(head, _HEAD.size))
            if length == _END:
                crc, plain = _SEGMENT_END.unpack(self._exactly(b"", _SEGMENT_END.size))
                sink.relayed_end(crc, plain)
                return
            sink.relayed(self._exactly(b"", length))

    def close(self) -> None:
        self._file.close()

    def _exactly(self, start: bytes, size: int) -> bytes:
        data = start + self._file.read(size - len(start))
        if len(data) != size:
            raise EOFError(f"a /metrics helper's frame ended after {len(data)} of {size} bytes")
        return data
