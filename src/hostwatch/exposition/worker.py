"""The /metrics renderer process: `python -m hostwatch.exposition.worker SOCKET MEMFD PID`.

Started by the daemon (hostwatch.exposition.client) with its end of a socketpair, the memfd
the daemon copies its state table into at each scrape, and the daemon's pid (for process_*).
It keeps the rows' descriptions the daemon sends, and for each scrape renders the snapshot
(hostwatch.exposition.text) and writes the body itself: as HTTP chunks straight to the client's
socket (the daemon passed it over), or bare to a pipe the daemon relays (TLS connections,
whose encryption state lives in the daemon). So a scrape costs the daemon's event loop only
the snapshot copy; rendering, gzip and sending happen here, on another CPU.

Each response is written by a thread of its own, so a slow client holds up only itself; the
main thread goes on to the next scrape as soon as it has rendered (and told the daemon the
snapshot may be overwritten). gzip: each family is compressed on its own (raw deflate ending
in a full flush), so a family whose text did not change since the last scrape is not
compressed again; the pieces make one gzip member with a running CRC-32.

It runs at SCHED_IDLE where allowed (the daemon's sends come first; the hardened unit's
system-call filter refuses it, and it runs at the normal priority there), without the
daemon's CAP_NET_RAW, ignores SIGINT and SIGHUP (the daemon decides when it ends), and exits
when the daemon's end of the socket closes.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import mmap
import os
import queue
import select
import signal
import socket
import struct
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from typing import Final

from prometheus_client import ProcessCollector
from prometheus_client.exposition import generate_latest

from hostwatch.heap import return_large_buffers

from .book import RowBook
from .rows import RowDynamic, RowStatic
from .text import Renderer, TableView, _Fixed
from .wire import Receiver, RenderRequest, fragments

__all__ = ["Body", "main"]

WRITE_TIMEOUT: Final = 10.0  # seconds a client may take to accept more of the body
BODY_TIMEOUT: Final = 60.0  # seconds one response may take in all
_GZIP_HEADER: Final = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"  # RFC 1952, no name/time
_GZIP_LEVEL: Final = 1  # ~10x smaller for ~40 ms per 17 MB; higher levels cost 3-5x the CPU
_END = object()


class RenderError(Exception):
    """The renderer failed part-way: the response must be cut short, not ended."""


class Reporter:
    """Sends messages to the daemon from any thread."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._lock = threading.Lock()

    def send(self, message: object) -> None:
        with self._lock:
            for packet in fragments(message):
                self._sock.sendall(packet)


class Body(threading.Thread):
    """Writes one response: the pieces the renderer made, compressed if asked, as HTTP chunks
    (after `head`) or bare; then reports it done, or failed, to the daemon."""

    # A family's compressed form, by family name: (its text, compressed), reused while the
    # renderer hands out the same text object.
    compressed: Final[dict[str, tuple[bytes, bytes]]] = {}

    def __init__(self, request: RenderRequest, fd: int, reporter: Reporter) -> None:
        super().__init__(name=f"body-{request.id}", daemon=True)
        self.request, self.fd, self.reporter = request, fd, reporter
        self.pieces: queue.SimpleQueue[tuple[str, bytes] | object] = queue.SimpleQueue()
        self._deadline = time.monotonic() + BODY_TIMEOUT

    def run(self) -> None:
        error: str | None = None
        try:
            self._write_body()
        except MemoryError:
            os._exit(70)  # fatal, as in the daemon: the daemon starts a fresh renderer
        except Exception as err:  # reported; the daemon cuts the response short
            error = f"{type(err).__name__}: {err}"
        finally:
            os.close(self.fd)
        with contextlib.suppress(OSError):
            self.reporter.send(("done", self.request.id, error))

    def _write_body(self) -> None:
        request = self.request
        if request.chunked and request.head:
            self._write([request.head])
        gzipped = request.gzipped
        crc, size = 0, 0
        if gzipped:
            self._send(_GZIP_HEADER)
        while (item := self.pieces.get()) is not _END:
            if isinstance(item, RenderError):
                raise item
            if not isinstance(item, tuple):
                raise TypeError(f"not a piece: {item!r}")
            name, piece = item
            if not gzipped:
                self._send(piece)
                continue
            crc, size = zlib.crc32(piece, crc), size + len(piece)
            self._send(self._compress(name, piece))
        if gzipped:
            end = zlib.compressobj(_GZIP_LEVEL, zlib.DEFLATED, -15).flush(zlib.Z_FINISH)
            self._send(end + struct.pack("<II", crc, size & 0xFFFFFFFF))
        if request.chunked:
            self._write([b"0\r\n\r\n"])

    def _compress(self, name: str, piece: bytes) -> bytes:
        cached = self.compressed.get(name) if name else None
        if cached is not None and cached[0] is piece:
            return cached[1]
        z = zlib.compressobj(_GZIP_LEVEL, zlib.DEFLATED, -15)
        packed = z.compress(piece) + z.flush(zlib.Z_FULL_FLUSH)  # byte-aligned, not final
        if name:
            self.compressed[name] = (piece, packed)
        return packed

    def _send(self, data: bytes) -> None:
        if not data:
            return  # an empty HTTP chunk would end the body
        if self.request.chunked:
            self._write([b"%x\r\n" % len(data), data, b"\r\n"])
        else:
            self._write([data])

    def _write(self, buffers: list[bytes]) -> None:
        """Write all of `buffers`, waiting (with timeouts) while the peer is not reading."""
        views = [memoryview(b) for b in buffers]
        poller = select.poll()
        poller.register(self.fd, select.POLLOUT)
        while views:
            try:
                written = os.writev(self.fd, views)
            except BlockingIOError:
                written = 0
            while written and views:
                if written >= len(views[0]):
                    written -= len(views.pop(0))
                else:
                    views[0], written = views[0][written:], 0
            if views:
                wait = min(WRITE_TIMEOUT, self._deadline - time.monotonic())
                if wait <= 0 or not poller.poll(wait * 1000):
                    raise TimeoutError("the client did not take the body in time")


class Worker:
    """The renderer's state: the snapshot mapping, the rows, the renderer and its caches."""

    def __init__(self, sock: socket.socket, memfd: int, daemon_pid: int) -> None:
        self.sock, self.memfd = sock, memfd
        self.reporter = Reporter(sock)
        self.rows = RowBook()
        self.renderer = Renderer()
        self._map: mmap.mmap | None = None
        self._process = ProcessCollector(pid=lambda: daemon_pid, registry=None)

    def run(self) -> None:
        self.reporter.send(("ready", os.getpid()))
        receiver = Receiver()
        while True:
            packet, fds = receiver.receive(self.sock)
            try:
                message = receiver.feed(packet)
            except EOFError:
                return  # the daemon is gone, or stopping
            if message is None:
                for fd in fds:
                    os.close(fd)
                continue
            self.handle(message, fds)

    def handle(self, message: object, fds: list[int]) -> None:
        if not isinstance(message, tuple) or not message:
            raise TypeError(f"not a message: {message!r}")
        kind = message[0]
        if kind == "describe":
            updates: list[tuple[int, RowStatic, RowDynamic]] = message[1]
            for row, static, dynamic in updates:
                self.rows.describe(row, static, dynamic)
        elif kind == "forget":
            for row in message[1]:
                self.rows.describe(row, None, None)
        elif kind == "order":  # the end of a sync
            self.rows.set_order(message[1])
            self.rows.prepare()
            gc.freeze()  # the descriptions stay until the next sync: no collection walks them
        elif kind == "render":
            request: RenderRequest = message[1]
            if len(fds) != 1:
                raise ValueError(f"a render request comes with one descriptor, not {len(fds)}")
            self.render(request, fds[0])
        else:
            raise ValueError(f"unknown message {kind!r}")

    def render(self, request: RenderRequest, fd: int) -> None:
        """Render one scrape; its body thread writes and reports. A failure other than
        MemoryError fails this response only (the next scrape may well succeed); a
        MemoryError ends the process, which the daemon then starts again."""
        body = Body(request, fd, self.reporter)
        body.start()
        end: object = _END
        try:
            for row, dynamic in request.dynamic:
                self.rows.update(row, dynamic)
            view = TableView.of_snapshot(self._snapshot(request.layout.size), request.layout)
            for name, piece in self._pieces(view, request):
                body.pieces.put((name, piece))
        except MemoryError:
            end = RenderError("out of memory")
            raise
        except Exception as err:
            end = RenderError(f"rendering failed: {type(err).__name__}: {err}")
            print(f"hostwatch renderer: {end}", file=sys.stderr)
        finally:
            body.pieces.put(end)
            self.reporter.send(("rendered", request.id))

    def _pieces(self, view: TableView, request: RenderRequest) -> Iterator[tuple[str, bytes]]:
        pieces = self.renderer.render(view, self.rows, request.numbers, request.now,
                                      lambda: generate_latest(_Fixed(self._process.collect())))
        return ((f"{i}", piece) for i, piece in enumerate(pieces))

    def _snapshot(self, size: int) -> memoryview:
        if self._map is None or len(self._map) < size:
            if self._map is not None:
                self._map.close()
            self._map = mmap.mmap(self.memfd, size, prot=mmap.PROT_READ)
        return memoryview(self._map)


_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL = 47, 4  # from linux/prctl.h
_DROPPED = "HOSTWATCH_RENDERER_NO_CAPS"


def _drop_capabilities(argv: list[str]) -> None:
    """The daemon runs with CAP_NET_RAW as an ambient capability (the unit's
    AmbientCapabilities=), which an exec hands on: this process needs none. Clear the
    ambient set and exec again, after which a process that is not root has no capabilities
    at all (capset itself is outside the unit's system-call filter). Root keeps its own."""
    if os.getuid() == 0 or os.environ.get(_DROPPED) == "1" or not _effective_capabilities():
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0:
            return  # keep going with what we have; the renderer works either way
    except (OSError, AttributeError):
        return
    os.environ[_DROPPED] = "1"
    # our own interpreter and module, the same arguments: no shell, nothing from outside
    os.execv(sys.executable, [sys.executable, "-m", "hostwatch.exposition.worker", *argv])  # noqa: S606


def _effective_capabilities() -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    return 0


def _detach() -> None:
    """The daemon decides when this process ends; its sends come first where allowed."""
    for signum in (signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)
    with contextlib.suppress(OSError, AttributeError):
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print("usage: python -m hostwatch.exposition.worker SOCKET_FD MEMFD DAEMON_PID",
              file=sys.stderr)
        return 2
    _drop_capabilities(argv)
    _detach()
    return_large_buffers()  # a family's text (megabytes) is given back when dropped
    gc.freeze()  # what was imported stays as it is: no collection walks it again
    sock = socket.socket(fileno=int(argv[0]))
    sock.setblocking(True)
    try:
        Worker(sock, int(argv[1]), int(argv[2])).run()
    except (ConnectionError, BrokenPipeError):
        return 0  # the daemon went away mid-message
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
