"""The daemon's side of /metrics: the renderer process, and serving each scrape through it.

`Scraper` starts `python -m hostwatch.exposition.worker` and keeps it told about the rows of
the state table (`sync`, after every swap of the watches). A scrape (`serve`) then costs the
event loop a copy of the table into the shared memfd (one pwritev, ~0.5 ms at 10,000
targets, done between two slot batches) and a message with the client's socket: the worker
renders and writes the response itself, and says when it is done. For a TLS connection the
worker writes the bare body to a pipe instead, which the loop relays (the TLS state is the
daemon's).

If the renderer dies it is started again (after 0.5 s, doubling to 30 s while it keeps
dying); a scrape meanwhile waits for it up to START_WAIT. If it cannot be started at all,
scrapes are rendered in the event loop with the same renderer (slow at thousands of targets,
never wrong) and a warning says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Final

from hostwatch.numbers import DaemonView
from hostwatch.watch import Watch, Watches

from .rows import RowDynamic, RowStatic, row_dynamic, row_static
from .wire import Receiver, RenderRequest, fragments, pair

if TYPE_CHECKING:
    from .book import RowBook
    from .text import Renderer

__all__ = ["Scraper"]

log = logging.getLogger(__name__)

START_WAIT: Final = 10.0  # seconds a scrape waits for a renderer that is starting
RESPONSE_TIMEOUT: Final = 90.0  # seconds a response may take before the renderer is killed
DESCRIBE_BATCH: Final = 200  # row descriptions per message
MAX_IN_FLIGHT: Final = 4  # responses the renderer writes at once; more wait for a turn
RESTART_FIRST, RESTART_MAX = 0.5, 30.0  # seconds before starting a dead renderer again
WRITE_TIMEOUT: Final = 10.0  # seconds a client may take to accept more of what we send
SNAPSHOT_QUIET: Final = 0.002  # seconds of quiet event loop the snapshot copy waits for
_ENV_DROP: Final = ("NOTIFY_SOCKET", "WATCHDOG_PID", "WATCHDOG_USEC", "LISTEN_PID",
                    "LISTEN_FDS", "LISTEN_FDNAMES")


class _Process:
    """One running renderer: the process, our end of its socket, its pending replies."""

    def __init__(self, proc: subprocess.Popen[bytes], sock: socket.socket) -> None:
        self.proc, self.sock = proc, sock
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.ready.add_done_callback(_retrieved)  # a renderer may die before anyone waited
        self.replies: dict[tuple[str, int], asyncio.Future[str | None]] = {}
        self.ended: BaseException | None = None

    def expect(self, kind: str, request: int) -> asyncio.Future[str | None]:
        """The future of a reply; already failed if the process has ended."""
        future: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        future.add_done_callback(_retrieved)  # a request that failed early awaits only one
        if self.ended is not None:
            future.set_exception(self.ended)
        else:
            self.replies[(kind, request)] = future
        return future

    def fail_all(self, error: BaseException) -> None:
        self.ended = error
        futures: list[asyncio.Future[Any]] = [self.ready, *self.replies.values()]
        for future in futures:
            if not future.done():
                future.set_exception(error)
        self.replies.clear()


class Scraper:
    """Serves /metrics through the renderer process (see the module doc)."""

    def __init__(self, view: DaemonView, watches: Callable[[], Watches], *,
                 process: bool = True, quiet: Callable[[float], Awaitable[None]] | None = None,
                 others: Callable[[], bytes] = lambda: b"") -> None:
        """`others`: the exposition of the registry's other collectors (process_*), for
        the in-loop fallback; the renderer process writes process_* of this pid itself."""
        self._view, self._watches, self._quiet, self._others = view, watches, quiet, others
        self._use_process = process
        self._memfd = os.memfd_create("hostwatch-snapshot", os.MFD_CLOEXEC) if process else -1
        self._process: _Process | None = None
        self._ids = itertools.count(1)
        # Messages to send, in order, each made when it is sent (a description of 10,000 rows
        # is ~3 MB of pickle: made 200 rows at a time, it never all exists at once).
        self._outbox: list[tuple[Callable[[], object], list[int]]] = []
        self._send_lock = asyncio.Lock()
        self._snapshot_lock = asyncio.Lock()
        self._turns = asyncio.Semaphore(MAX_IN_FLIGHT)
        # By row: the watch the renderer was told of, and its version then (Watch.version).
        self._watch_of: list[Watch | None] = []
        self._described: list[int] = []
        self._order: tuple[int, ...] = ()
        self._closing = False
        self._supervisor: asyncio.Task[None] | None = None
        self._local: tuple[RowBook, Renderer] | None = None  # the in-loop fallback, when used

    # --- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        """Start the renderer (it becomes ready in the background)."""
        if self._use_process and self._supervisor is None:
            self._supervisor = asyncio.get_running_loop().create_task(self._supervise())

    async def close(self) -> None:
        self._closing = True
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
        if self._memfd >= 0:
            os.close(self._memfd)
            self._memfd = -1

    async def _supervise(self) -> None:
        delay = RESTART_FIRST
        while not self._closing:
            started = time.monotonic()
            try:
                process = self._spawn()
            except OSError as err:
                log.warning("cannot start the /metrics renderer (%s); rendering /metrics in "
                            "the event loop", err)
                self._use_process = False
                return
            self._process = process
            self._queue_everything()
            try:
                await self._run(process)
            finally:
                self._process = None
                self._stop(process)
            if self._closing:
                return
            code = process.proc.returncode
            if time.monotonic() - started > 60:
                delay = RESTART_FIRST
            log.warning("the /metrics renderer exited (%s); starting it again in %.1f s",
                        _status(code), delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, RESTART_MAX)

    def _spawn(self) -> _Process:
        ours, theirs = pair()
        env = {k: v for k, v in os.environ.items() if k not in _ENV_DROP}
        argv = [sys.executable, "-m", "hostwatch.exposition.worker", str(theirs.fileno()),
                str(self._memfd), str(os.getpid())]
        try:
            proc = subprocess.Popen(argv, pass_fds=(theirs.fileno(), self._memfd), env=env,
                                    stdin=subprocess.DEVNULL, close_fds=True)
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        ours.setblocking(False)
        return _Process(proc, ours)

    async def _run(self, process: _Process) -> None:
        """Read the renderer's replies until its socket ends."""
        loop = asyncio.get_running_loop()
        receiver = Receiver()
        readable = asyncio.Event()
        loop.add_reader(process.sock, readable.set)
        try:
            while True:
                await readable.wait()
                readable.clear()
                try:
                    while True:
                        packet, fds = receiver.receive(process.sock)
                        for fd in fds:
                            os.close(fd)
                        message = receiver.feed(packet)
                        if message is not None:
                            self._dispatch(process, message)
                except BlockingIOError:
                    continue
                except (EOFError, ConnectionError, ValueError):
                    return
        finally:
            loop.remove_reader(process.sock)
            process.fail_all(ConnectionAbortedError("the /metrics renderer exited"))

    def _dispatch(self, process: _Process, message: object) -> None:
        if not isinstance(message, tuple) or not message:
            return
        if message[0] == "ready":
            if not process.ready.done():
                process.ready.set_result(None)
            return
        future = process.replies.pop((str(message[0]), int(message[1])), None)
        if future is not None and not future.done():
            future.set_result(message[2] if len(message) > 2 else None)

    def _stop(self, process: _Process) -> None:
        process.sock.close()
        with contextlib.suppress(ProcessLookupError):
            process.proc.send_signal(signal.SIGTERM)
        try:
            process.proc.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            process.proc.kill()
            process.proc.wait()

    # --- describing the rows --------------------------------------------------------------
    def sync(self, watches: Watches) -> None:
        """After a swap: tell the renderer which rows changed, which went, and the order.
        Synchronous, so nothing can be rendered between the swap and these messages."""
        if self._local is not None:
            self._local = None  # the fallback's rows are made again when next needed
        watch_of, versions = self._watch_of, self._described
        order = []
        described: list[Watch] = []
        for watch in watches:
            row = watch.state.row
            order.append(row)
            if row >= len(watch_of):
                watch_of.extend([None] * (row + 1 - len(watch_of)))
                versions.extend([0] * (row + 1 - len(versions)))
            if watch_of[row] is not watch or versions[row] != watch.version:
                watch_of[row], versions[row] = watch, watch.version
                described.append(watch)
                watches.table.dirty.discard(row)
        rows = set(order)
        gone = [r for r in self._order if r not in rows]
        for row in gone:
            watch_of[row] = None
        if self._process is None:
            self._order = tuple(order)
            return  # nothing to tell: a renderer that starts is told everything then
        if gone:
            self._queue(lambda: ("forget", gone))
        for i in range(0, len(described), DESCRIBE_BATCH):
            self._queue(functools.partial(_describe, described[i:i + DESCRIBE_BATCH]))
        if tuple(order) != self._order or described:
            self._order = sent = tuple(order)
            self._queue(lambda: ("order", sent))
        self._kick()

    def _queue_everything(self) -> None:
        """A new renderer knows nothing: describe every row again."""
        self._outbox.clear()
        self._watch_of, self._described = [], []
        self._order = ()
        self.sync(self._watches())

    def _queue(self, message: Callable[[], object], fds: Sequence[int] = ()) -> None:
        self._outbox.append((message, list(fds)))

    def _kick(self) -> None:
        process = self._process
        if process is not None and self._outbox:
            asyncio.get_running_loop().create_task(self._flush_quietly())

    async def _flush_quietly(self) -> None:
        """`_flush` from a task of its own: a renderer that died meanwhile is the
        supervisor's to notice and restart."""
        with contextlib.suppress(OSError):
            await self._flush()

    async def _flush(self) -> None:
        """Send what is queued, in order."""
        async with self._send_lock:
            process = self._process
            while self._outbox and process is not None:
                message, fds = self._outbox.pop(0)
                packets = fragments(message())
                for packet in packets[:-1]:
                    await _send_packet(process.sock, packet, ())
                await _send_packet(process.sock, packets[-1], fds)

    # --- serving --------------------------------------------------------------------------
    async def serve(self, writer: asyncio.StreamWriter, head: bytes, gzipped: bool) -> None:
        """Write the response (`head`, then the body as HTTP chunks) to `writer`'s client.
        Raises ConnectionAbortedError if the body could not be completed: the caller must
        then close the connection (the client sees an incomplete response)."""
        async with self._turns:
            process = await self._ready_process()
            if process is None:
                await self._serve_in_loop(writer, head, gzipped)
                return
            if writer.get_extra_info("sslcontext") is not None:
                await self._serve_relayed(process, writer, head, gzipped)
            else:
                await self._serve_direct(process, writer, head, gzipped)

    async def _ready_process(self) -> _Process | None:
        if not self._use_process:
            return None
        deadline = time.monotonic() + START_WAIT
        while self._use_process and time.monotonic() < deadline:
            process = self._process
            if process is not None:
                with contextlib.suppress(ConnectionAbortedError):
                    async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                        await asyncio.shield(process.ready)
                    return process
            await asyncio.sleep(0.05)
        if self._use_process:
            log.warning("the /metrics renderer is not ready; rendering this scrape in the "
                        "event loop")
        return None

    async def _serve_direct(self, process: _Process, writer: asyncio.StreamWriter,
                            head: bytes, gzipped: bool) -> None:
        """The worker writes head and body straight to the client's socket."""
        transport = writer.transport
        transport.set_write_buffer_limits(high=0)
        try:
            async with asyncio.timeout(WRITE_TIMEOUT):
                await writer.drain()  # nothing of ours may still be queued for this socket
        finally:
            transport.set_write_buffer_limits()
        sock = writer.get_extra_info("socket")
        await self._render(process, sock.fileno(), gzipped, chunked=True, head=head)

    async def _serve_relayed(self, process: _Process, writer: asyncio.StreamWriter,
                             head: bytes, gzipped: bool) -> None:
        """The worker writes the bare body to a pipe; the loop sends it as HTTP chunks."""
        read_fd, write_fd = os.pipe()
        closed = False

        def sent() -> None:  # the worker has its own copy of the write end now
            nonlocal closed
            if not closed:
                os.close(write_fd)
                closed = True

        rendering = asyncio.ensure_future(self._render(process, write_fd, gzipped,
                                                       chunked=False, head=b"", sent=sent))
        rendering.add_done_callback(lambda _: sent())
        writer.write(head)
        try:
            async for piece in _read_pipe(read_fd):
                writer.write(b"%x\r\n%b\r\n" % (len(piece), piece))
                async with asyncio.timeout(WRITE_TIMEOUT):
                    await writer.drain()
        except BaseException:
            rendering.cancel()  # the client went away: the worker's writes end in EPIPE
            raise
        await rendering  # the worker's verdict: complete, or failed part-way
        writer.write(b"0\r\n\r\n")

    async def _render(self, process: _Process, fd: int, gzipped: bool, *, chunked: bool,
                      head: bytes, sent: Callable[[], None] = lambda: None) -> None:
        """Have the worker render a snapshot taken now into `fd`; `sent` is called once the
        request (and with it a copy of `fd`) is on its way."""
        request_id = next(self._ids)
        done = process.expect("done", request_id)
        async with self._snapshot_lock:  # one snapshot in use at a time
            if self._quiet is not None:
                await self._quiet(SNAPSHOT_QUIET)
            rendered = process.expect("rendered", request_id)
            watches = self._watches()
            layout = watches.table.snapshot(self._memfd)
            request = RenderRequest(request_id, layout, self._dynamic(watches),
                                    self._view.numbers(), time.time(), gzipped, chunked, head)
            self._queue(lambda: ("render", request), [fd])
            try:
                await self._flush()
            finally:
                sent()
            async with asyncio.timeout(RESPONSE_TIMEOUT):
                await rendered
        try:
            async with asyncio.timeout(RESPONSE_TIMEOUT):
                error = await done
        except TimeoutError:
            process.proc.kill()
            raise ConnectionAbortedError("the /metrics renderer did not finish") from None
        if error is not None:
            raise ConnectionAbortedError(f"the /metrics renderer failed: {error}")

    def _dynamic(self, watches: Watches) -> list[tuple[int, RowDynamic]]:
        """The rows whose address, TLS details or flap history moved since the last
        scrape."""
        dirty = watches.table.dirty
        changed = []
        for row in dirty:
            watch = self._watch_of[row] if row < len(self._watch_of) else None
            if watch is not None:
                changed.append((row, row_dynamic(watch)))
        dirty.clear()
        return changed

    # --- the fallback ---------------------------------------------------------------------
    async def _serve_in_loop(self, writer: asyncio.StreamWriter, head: bytes,
                             gzipped: bool) -> None:
        writer.write(head)
        # Rendered whole before the first await: one instant of the live table, and no view
        # of its buffers held while a reload might grow them.
        pieces = list(_encode(self.render_here(), gzipped))
        for piece in pieces:
            if piece:
                writer.write(b"%x\r\n%b\r\n" % (len(piece), piece))
                async with asyncio.timeout(WRITE_TIMEOUT):
                    await writer.drain()
        writer.write(b"0\r\n\r\n")

    def render_here(self) -> Iterator[bytes]:
        """The exposition rendered in this process from the live table (prometheus-client
        and the renderer are imported only then)."""
        from .book import RowBook  # noqa: PLC0415
        from .text import Renderer, TableView  # noqa: PLC0415

        watches = self._watches()
        if self._local is None:
            rows = RowBook()
            for watch in watches:
                rows.describe(watch.state.row, row_static(watch), row_dynamic(watch))
            rows.set_order(w.state.row for w in watches)
            self._local = (rows, Renderer())
        rows, renderer = self._local
        # The dirty rows stay dirty: a renderer process may still need to hear of them (a
        # scrape rendered here while it was starting). At most every row, and `update`
        # leaves a row that did not change alone.
        for row in watches.table.dirty:
            owner = self._watch_of[row] if row < len(self._watch_of) else None
            if owner is not None:
                rows.update(row, row_dynamic(owner))
        return renderer.render(TableView.of_table(watches.table), rows, self._view.numbers(),
                               time.time(), self._others)


def _describe(watches: list[Watch]) -> tuple[str, list[tuple[int, RowStatic, RowDynamic]]]:
    return "describe", [(w.state.row, row_static(w), row_dynamic(w)) for w in watches]


def _retrieved(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


def _encode(pieces: Iterator[bytes], gzipped: bool) -> Iterator[bytes]:
    if not gzipped:
        yield from pieces
        return
    z = zlib.compressobj(1, zlib.DEFLATED, 31)
    for piece in pieces:
        yield z.compress(piece)
    yield z.flush()


async def _send_packet(sock: socket.socket, packet: bytes, fds: Sequence[int]) -> None:
    """One packet (with `fds`), waiting for room in the socket's buffer."""
    ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                  b"".join(fd.to_bytes(4, sys.byteorder, signed=True) for fd in fds))
                 ] if fds else []
    loop = asyncio.get_running_loop()
    while True:
        try:
            sock.sendmsg([packet], ancillary)
        except BlockingIOError:
            await _writable(loop, sock)
        else:
            return


async def _writable(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
    room: asyncio.Future[None] = loop.create_future()

    def ready() -> None:
        if not room.done():
            room.set_result(None)

    loop.add_writer(sock, ready)
    try:
        await room
    finally:
        loop.remove_writer(sock)


async def _read_pipe(fd: int) -> AsyncIterator[bytes]:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 20, loop=loop)
    pipe = os.fdopen(fd, "rb", buffering=0)
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader, loop=loop), pipe)
    try:
        while piece := await reader.read(1 << 20):
            yield piece
    finally:
        transport.close()


def _status(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"status {code}"
