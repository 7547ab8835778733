"""The udp prober: send a payload over asyncio-dgram, succeed on a reply (matching `expect`).

Each probe has its own connected socket (`asyncio_dgram.connect`), so the kernel delivers only
the peer's datagrams, and an ICMP port-unreachable becomes ECONNREFUSED: the reason `refused`.
Silence until the timeout is `timeout`. asyncio-dgram queues an ICMP error and raises it only on
the *next* call, not in a `recv` already waiting, so the wait for a reply is cut into slices
(2 ms, 10 ms, 50 ms, then 250 ms) and each slice ends with a new call: a refusal is seen within
one slice. The RTT is from just before the send to the reply's arrival in the event loop.

`exchange` is shared with the dns prober.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, Final

import asyncio_dgram

from hostwatch.model import ProbeSpec
from hostwatch.probes.base import DoneCallback, ProbeResult, Reason
from hostwatch.probes.tcp import classify
from hostwatch.probes.tcp_steps import show_bytes

__all__ = ["Reply", "TaskSet", "UdpProber", "exchange"]

_SLICES: Final = (0.002, 0.01, 0.05, 0.25)
_MAX_DATAGRAM: Final = 65535


@dataclass(frozen=True, slots=True)
class Reply:
    """The first datagram the peer sent back, and the seconds it took."""

    data: bytes
    rtt: float


def _failure(ip: str, err: OSError) -> ProbeResult:
    result = classify(ip, err)
    if result.reason is Reason.REFUSED:
        return ProbeResult(Reason.REFUSED, ip, detail="ICMP port unreachable")
    return result


async def exchange(ip: str, port: int, payload: bytes, timeout: float) -> Reply | ProbeResult:
    """Send `payload` to ip:port and wait for one datagram back; a failure is a ProbeResult."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    try:
        stream = await asyncio_dgram.connect((ip, port))
    except OSError as err:
        return _failure(ip, err)
    try:
        sent = loop.time()
        await stream.send(payload)
        slices = iter(_SLICES)
        while (remaining := deadline - loop.time()) > 0:
            try:
                async with asyncio.timeout(min(remaining, next(slices, _SLICES[-1]))):
                    data, _peer = await stream.recv()
            except TimeoutError:
                continue
            return Reply(bytes(data[:_MAX_DATAGRAM]), loop.time() - sent)
        _ = stream.exception  # raises an ICMP error that came in the last slice
        return ProbeResult(Reason.TIMEOUT, ip, detail=f"no reply within {timeout:g}s")
    except OSError as err:
        return _failure(ip, err)
    except asyncio_dgram.TransportClosed:
        return ProbeResult(Reason.SEND_ERROR, ip, detail="the socket was closed")
    finally:
        stream.close()


class TaskSet:
    """The probes (tasks) of one prober in flight, cancelled by `close`."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()

    def add(self, run: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(run)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def __len__(self) -> int:
        return len(self._tasks)

    async def close(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class UdpProber:
    """The `Prober` for udp: one connected datagram socket per probe."""

    name = "udp"

    def __init__(self) -> None:
        self._tasks = TaskSet()

    def start(self, ip: str, port: int | None, timeout: float, done: DoneCallback, *,
              spec: ProbeSpec | None = None) -> None:
        if port is None or spec is None or spec.udp is None:
            raise ValueError("a udp probe needs a port and its options")
        self._tasks.add(self._run(ip, port, timeout, done, spec))

    async def _run(self, ip: str, port: int, timeout: float, done: DoneCallback,
                   spec: ProbeSpec) -> None:
        assert spec.udp is not None  # noqa: S101  # checked in start
        outcome = await exchange(ip, port, spec.udp.payload, timeout)
        if isinstance(outcome, ProbeResult):
            done(outcome)
            return
        expect = spec.udp.expect
        if expect is not None and expect.search(outcome.data) is None:
            shown = expect.pattern.decode("utf-8", "replace")
            done(ProbeResult(Reason.EXPECT_MISMATCH, ip, detail=(
                f"a reply of {len(outcome.data)} bytes does not match {shown!r}: "
                f"{show_bytes(outcome.data)}")))
            return
        done(ProbeResult(Reason.OK, ip, rtt=outcome.rtt))

    def in_flight(self) -> int:
        return len(self._tasks)

    async def close(self) -> None:
        await self._tasks.close()
