"""The TCP connect prober: plain asyncio, failure reasons told apart, no TIME_WAIT left behind.

The connect time is the RTT. The socket is closed with SO_LINGER 0 (a reset), so our side
keeps no TIME_WAIT entry: at thousands of probes per second a normal close would exhaust the
ephemeral port range within a minute. IP_RECVERR makes an ICMP unreachable end the connect at
once instead of after the timeout.

A probe whose spec has `tls` or `steps` runs `hostwatch.probes.tcp_steps` instead: the same
socket, then the TLS handshake and the send/expect dialogue (docs/probes.md).
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import struct
import time

from hostwatch.model import ProbeSpec
from hostwatch.probes.base import DoneCallback, ProbeResult, Reason
from hostwatch.probes.tls import TlsContexts

__all__ = ["TcpProber"]

_LINGER_RESET = struct.pack("ii", 1, 0)
_UNREACHABLE = {errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EHOSTDOWN, errno.EACCES,
                errno.EPERM}
IP_RECVERR = 11
IPV6_RECVERR = 25


def _new_socket(ip: str) -> socket.socket:
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setblocking(False)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    if family == socket.AF_INET:
        sock.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)
    else:
        sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVERR, 1)
    return sock


def classify(ip: str, err: OSError) -> ProbeResult:
    """A connect error as a result: refused, unreachable, or send-error with the errno text."""
    detail = os.strerror(err.errno) if err.errno else str(err)
    if isinstance(err, ConnectionRefusedError):
        return ProbeResult(Reason.REFUSED, ip, detail=detail)
    if err.errno in _UNREACHABLE:
        return ProbeResult(Reason.UNREACHABLE, ip, detail=detail)
    return ProbeResult(Reason.SEND_ERROR, ip, detail=detail)


async def connect_once(ip: str, port: int, timeout: float) -> ProbeResult:
    """Connect to ip:port within `timeout` seconds; never raises for a network outcome."""
    loop = asyncio.get_running_loop()
    try:
        sock = _new_socket(ip)
    except OSError as err:
        return classify(ip, err)
    started = time.monotonic_ns()
    try:
        async with asyncio.timeout(timeout):
            await loop.sock_connect(sock, (ip, port))
        rtt = (time.monotonic_ns() - started) / 1e9
    except TimeoutError:
        return ProbeResult(Reason.TIMEOUT, ip)
    except OSError as err:
        return classify(ip, err)
    finally:
        sock.close()
    return ProbeResult(Reason.OK, ip, rtt=rtt)


class _Connect:
    """One plain connect probe driven by callbacks: a non-blocking connect, a writer callback
    for its end and a timer for its timeout. Half the CPU of a task around `sock_connect` in
    `asyncio.timeout` (the task, the future and the timeout object are what cost)."""

    __slots__ = ("_done", "_ip", "_loop", "_owner", "_sock", "_started", "_timer")

    def __init__(self, owner: set[_Connect], ip: str, port: int, timeout: float,
                 done: DoneCallback) -> None:
        self._loop = asyncio.get_running_loop()
        self._owner, self._ip, self._done = owner, ip, done
        self._timer: asyncio.TimerHandle | None = None
        try:
            self._sock = _new_socket(ip)
        except OSError as err:
            self._loop.call_soon(done, classify(ip, err))
            return
        owner.add(self)
        self._started = time.monotonic_ns()
        try:
            self._sock.connect((ip, port))
        except BlockingIOError:
            if self._connected():  # loopback: the handshake completed inside connect()
                self._loop.call_soon(self._finish, self._ok())
                return
            self._loop.add_writer(self._sock.fileno(), self._writable)
            self._timer = self._loop.call_later(timeout, self._timed_out)
        except OSError as err:
            self._loop.call_soon(self._finish, classify(ip, err))
        else:
            self._loop.call_soon(self._finish, self._ok())

    def _connected(self) -> bool:
        try:
            self._sock.getpeername()
        except OSError:
            return False
        return True

    def _ok(self) -> ProbeResult:
        return ProbeResult(Reason.OK, self._ip, rtt=(time.monotonic_ns() - self._started) / 1e9)

    def _writable(self) -> None:
        self._loop.remove_writer(self._sock.fileno())
        err = self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err == 0:
            self._finish(self._ok())
        elif err not in (errno.EINPROGRESS, errno.EALREADY):
            self._finish(classify(self._ip, OSError(err, os.strerror(err))))
        else:
            self._loop.add_writer(self._sock.fileno(), self._writable)  # not done after all

    def _timed_out(self) -> None:
        self._timer = None
        self._loop.remove_writer(self._sock.fileno())
        self._finish(ProbeResult(Reason.TIMEOUT, self._ip))

    def _finish(self, result: ProbeResult) -> None:
        if self not in self._owner:
            return  # closed meanwhile
        self.cancel()
        self._done(result)

    def cancel(self) -> None:
        """Stop without a result (the prober is closing)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._loop.remove_writer(self._sock.fileno())
        self._sock.close()
        self._owner.discard(self)


class TcpProber:
    """The `Prober` for TCP connects: a plain connect is a `_Connect`, a probe with TLS or
    steps a task; each is tracked until it ends."""

    name = "tcp"

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()
        self._connects: set[_Connect] = set()
        self._contexts = TlsContexts()

    def start(self, ip: str, port: int | None, timeout: float, done: DoneCallback, *,
              spec: ProbeSpec | None = None) -> None:
        if port is None:
            raise ValueError("a tcp probe needs a port")
        if spec is None or (spec.tls is None and not spec.steps):
            _Connect(self._connects, ip, port, timeout, done)
            return
        task = asyncio.get_running_loop().create_task(
            self._session(ip, port, timeout, done, spec))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _session(self, ip: str, port: int, timeout: float, done: DoneCallback,
                       spec: ProbeSpec) -> None:
        from hostwatch.probes.tcp_steps import run_session  # noqa: PLC0415  # it imports us

        done(await run_session(ip, port, timeout, spec, self._contexts))

    def in_flight(self) -> int:
        return len(self._tasks) + len(self._connects)

    async def close(self) -> None:
        for connect in list(self._connects):
            connect.cancel()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
