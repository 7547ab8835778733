"""The TCP connect prober: plain asyncio, failure reasons told apart, no TIME_WAIT left behind.

The connect time is the RTT. The socket is closed with SO_LINGER 0 (a reset), so our side
keeps no TIME_WAIT entry: at thousands of probes per second a normal close would exhaust the
ephemeral port range within a minute. IP_RECVERR makes an ICMP unreachable end the connect at
once instead of after the timeout.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import struct
import time

from hostwatch.probes.base import DoneCallback, ProbeResult, Reason

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


class TcpProber:
    """The `Prober` for TCP connects; each probe is one task, tracked until it ends."""

    name = "tcp"

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()

    def start(self, ip: str, port: int | None, timeout: float, done: DoneCallback) -> None:
        if port is None:
            raise ValueError("a tcp probe needs a port")
        task = asyncio.get_running_loop().create_task(self._run(ip, port, timeout, done))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, ip: str, port: int, timeout: float, done: DoneCallback) -> None:
        done(await connect_once(ip, port, timeout))

    def in_flight(self) -> int:
        return len(self._tasks)

    async def close(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
