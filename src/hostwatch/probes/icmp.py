"""The ICMP echo prober: one socket per address family for every target.

Each send is registered under (source address, sequence); the reader callback drains the socket
in one go, reads the kernel's receive timestamp of each reply (SO_TIMESTAMPNS) and converts it
to the monotonic clock, so a late event loop does not inflate RTTs. An ICMP error quoting one of
our requests ends that probe at once as `unreachable` with the ICMP type and code.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import ipaddress
import os
import socket
import struct
import time
from collections import deque
from dataclasses import dataclass

from hostwatch.model import IcmpMode, ProbeSpec
from hostwatch.probes.base import DoneCallback, ProbeResult, Reason
from hostwatch.probes.icmp_packet import (
    ERRORS_V4,
    ERRORS_V6,
    EchoTemplate,
    Parsed,
    parse_v4,
    parse_v6,
)
from hostwatch.probes.icmp_socket import (
    SO_TIMESTAMPNS,
    IcmpPermissionError,
    OpenedSocket,
    open_icmp_socket,
)

__all__ = ["IcmpPermissionError", "IcmpProber"]

MSG_ERRQUEUE = 0x2000
_TIMESPEC = struct.Struct("@qq")
_EXTENDED_ERR = struct.Struct("@IBBBBII")  # errno, origin, type, code, pad, info, data
_UNREACHABLE_ERRNOS = {errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EHOSTDOWN}
_CMSG_SPACE = socket.CMSG_SPACE(_TIMESPEC.size) + socket.CMSG_SPACE(_EXTENDED_ERR.size + 32)
_BATCH = 512  # replies read per wake-up before yielding to other callbacks


@dataclass(slots=True)
class _Pending:
    ip: str
    sent_ns: int
    done: DoneCallback


Key = tuple[str, int]  # (destination, sequence)


class _Deadlines:
    """Probe timeouts with one event-loop timer per engine, not one per probe (a TimerHandle
    costs a heap push and pop in Python, ~4 µs a probe). Probes with the same timeout expire
    in the order they were sent, so each timeout value keeps a FIFO of (destination, send
    time and sequence); replies leave their entry behind, skipped when it comes due. The
    entry names the probe by its key and send time, not by its `_Pending`: an answered
    probe's pending and callback are freed at once, not a timeout later (at 10,000 probes a
    second with a 1 s timeout, ~4 MB held for nothing). Its deadline is its send time plus
    the queue's timeout; send time and sequence are one int (`sent_ns << 16 | sequence`):
    an entry is a pair and an int, ~90 bytes, and a queue holds a timeout's worth of
    probes."""

    def __init__(self, loop: asyncio.AbstractEventLoop,
                 pending: dict[Key, _Pending]) -> None:
        self._loop = loop
        self._pending = pending
        self._queues: dict[float, deque[tuple[str, int]]] = {}
        self._timer: asyncio.TimerHandle | None = None

    def add(self, timeout: float, key: Key, pending: _Pending) -> None:
        queue = self._queues.get(timeout)
        if queue is None:
            queue = self._queues[timeout] = deque()
        queue.append((key[0], pending.sent_ns << 16 | key[1]))
        deadline = pending.sent_ns / 1e9 + timeout  # the loop's clock is time.monotonic
        if self._timer is None or deadline < self._timer.when():
            self._arm(deadline)

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._loop.call_at(when, self._expire)

    def _expire(self) -> None:
        self._timer = None
        now = self._loop.time()
        for timeout, queue in list(self._queues.items()):
            # Sent at or before this (ns) is due; 1 µs of slack for the float arithmetic.
            due = int((now - timeout) * 1e9 + 1000) << 16 | 0xFFFF
            while queue and queue[0][1] <= due:
                ip, stamp = queue.popleft()
                key, sent_ns = (ip, stamp & 0xFFFF), stamp >> 16
                pending = self._pending.get(key)
                if pending is not None and pending.sent_ns == sent_ns:
                    del self._pending[key]
                    pending.done(ProbeResult(Reason.TIMEOUT, pending.ip))
            if not queue:
                del self._queues[timeout]
        if self._queues:
            self._arm(min((queue[0][1] >> 16) / 1e9 + timeout
                          for timeout, queue in self._queues.items()))

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._queues.clear()


def _realtime_minus_monotonic_ns() -> int:
    return time.clock_gettime_ns(time.CLOCK_REALTIME) - time.monotonic_ns()


def _kernel_rx_ns(ancdata: list[tuple[int, int, bytes]]) -> int | None:
    """The receive timestamp (CLOCK_REALTIME ns) from SCM_TIMESTAMPNS, if present."""
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(data) >= 16:
            sec, nsec = _TIMESPEC.unpack_from(data)
            return int(sec) * 1_000_000_000 + int(nsec)
    return None


class _FamilyEngine:
    """Sends and receives on one socket of one address family."""

    def __init__(self, opened: OpenedSocket, payload_size: int, loop: asyncio.AbstractEventLoop):
        self._opened = opened
        self._sock = opened.sock
        self._loop = loop
        self._v4 = opened.family == socket.AF_INET
        request_type = 8 if self._v4 else 128
        self._template = EchoTemplate(request_type, os.urandom(8), payload_size)
        self._pending: dict[tuple[str, int], _Pending] = {}
        self._deadlines = _Deadlines(loop, self._pending)
        self._sequence = int.from_bytes(os.urandom(2), "big")
        loop.add_reader(self._sock.fileno(), self._on_readable)

    @property
    def raw(self) -> bool:
        return self._opened.raw

    def in_flight(self) -> int:
        return len(self._pending)

    def _next_key(self, ip: str) -> tuple[str, int]:
        for _ in range(65536):
            self._sequence = (self._sequence + 1) & 0xFFFF
            key = (ip, self._sequence)
            if key not in self._pending:
                return key
        raise RuntimeError("65,536 probes to one address in flight")  # pragma: no cover

    def start(self, ip: str, timeout: float, done: DoneCallback) -> None:
        key = self._next_key(ip)
        packet = self._template.build(self._opened.identifier, key[1])
        sent_ns = time.monotonic_ns()
        try:
            self._sock.sendto(packet, (ip, 0))
        except OSError as err:
            self._loop.call_soon(done, _send_failure(ip, err))
            return
        pending = self._pending[key] = _Pending(ip, sent_ns, done)
        self._deadlines.add(timeout, key, pending)

    def _on_readable(self) -> None:
        offset = _realtime_minus_monotonic_ns()
        for _ in range(_BATCH):
            try:
                data, ancdata, _flags, address = self._sock.recvmsg(2048, _CMSG_SPACE)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                break  # an error for this socket; the error queue below holds the details
            self._on_packet(data, ancdata, address[0], offset)
        if not self._opened.raw:
            self._drain_error_queue()

    def _on_packet(self, data: bytes, ancdata: list[tuple[int, int, bytes]], src: str,
                   offset: int) -> None:
        if self._v4:
            parsed = parse_v4(data, self._template.cookie, has_ip_header=self._opened.raw)
        else:
            parsed = parse_v6(data, self._template.cookie)
        if parsed is None or parsed.identifier != self._opened.identifier:
            return
        rx = _kernel_rx_ns(ancdata)
        if parsed.is_error:
            self._on_error(parsed)
        else:
            rx_mono = time.monotonic_ns() if rx is None else rx - offset
            # An IPv4 source is already in the one textual form there is (no cache entry).
            self._on_reply(src if self._v4 else _canonical(src), parsed.sequence, rx_mono)

    def _on_reply(self, src: str, sequence: int, rx_mono_ns: int) -> None:
        pending = self._pending.pop((src, sequence), None)
        if pending is None:
            return  # late (already timed out), duplicate or not ours
        rtt_ns = rx_mono_ns - pending.sent_ns
        if rtt_ns < 0:  # the realtime clock stepped between receive and now
            rtt_ns = time.monotonic_ns() - pending.sent_ns
        pending.done(ProbeResult(Reason.OK, pending.ip, rtt=rtt_ns / 1e9))

    def _on_error(self, parsed: Parsed) -> None:
        # The quoted request carries our sequence; the destination is not in the ICMP error
        # header, so find the pending probe by sequence (unique among in-flight probes).
        for key, pending in self._pending.items():
            if key[1] == parsed.sequence:
                del self._pending[key]
                pending.done(_icmp_error(pending.ip, parsed.icmp_type, parsed.icmp_code,
                                         self._v4))
                return

    def _drain_error_queue(self) -> None:
        for _ in range(_BATCH):
            try:
                data, ancdata, _flags, address = self._sock.recvmsg(
                    2048, _CMSG_SPACE, MSG_ERRQUEUE)
            except (BlockingIOError, InterruptedError, OSError):
                return
            self._on_queued_error(data, ancdata, address)

    def _on_queued_error(self, data: bytes, ancdata: list[tuple[int, int, bytes]],
                         address: tuple[str, int] | tuple[str, int, int, int]) -> None:
        # A datagram ICMP socket returns our own request (ICMP header first) with a
        # sock_extended_err giving the ICMP type and code received for it.
        if len(data) < 8:
            return
        sequence = struct.unpack_from("!H", data, 6)[0]
        for level, _kind, cdata in ancdata:
            if level in (socket.IPPROTO_IP, socket.IPPROTO_IPV6) and len(cdata) >= 16:
                _err, origin, icmp_type, code, _pad, _info, _d = _EXTENDED_ERR.unpack_from(cdata)
                if origin in (2, 3):  # SO_EE_ORIGIN_ICMP / ICMP6
                    self._fail_key((_canonical(address[0]), sequence), icmp_type, code)
                    return

    def _fail_key(self, key: tuple[str, int], icmp_type: int, code: int) -> None:
        pending = self._pending.pop(key, None)
        if pending is not None:
            pending.done(_icmp_error(pending.ip, icmp_type, code, self._v4))

    def close(self) -> None:
        self._loop.remove_reader(self._sock.fileno())
        self._deadlines.close()
        self._pending.clear()
        self._opened.holder.close()


@functools.lru_cache(maxsize=65536)  # one entry per IPv6 address answering: ~2 µs a reply
def _canonical(address: str) -> str:
    """The textual form used for keys: strips an IPv6 scope and compresses like `ipaddress`."""
    return str(ipaddress.ip_address(address.split("%", 1)[0]))


def _icmp_error(ip: str, icmp_type: int, code: int, v4: bool) -> ProbeResult:
    names = ERRORS_V4 if v4 else ERRORS_V6
    name = names.get(icmp_type, "icmp-error")
    detail = f"{name} (icmp{'' if v4 else 'v6'} type {icmp_type} code {code})"
    return ProbeResult(Reason.UNREACHABLE, ip, detail=detail)


def _send_failure(ip: str, err: OSError) -> ProbeResult:
    reason = Reason.UNREACHABLE if err.errno in _UNREACHABLE_ERRNOS else Reason.SEND_ERROR
    return ProbeResult(reason, ip, detail=f"sendto: {os.strerror(err.errno or 0)}")


class IcmpProber:
    """The `Prober` for ICMP: dispatches each probe to the socket of its address family."""

    name = "icmp"

    def __init__(self, engines: dict[int, _FamilyEngine], unavailable: dict[int, str]) -> None:
        self._engines = engines
        self._unavailable = unavailable
        self._loop = asyncio.get_running_loop()

    @classmethod
    def open(cls, mode: IcmpMode, payload_size: int) -> IcmpProber:
        """Open both families. IcmpPermissionError if IPv4 ICMP cannot be opened at all."""
        loop = asyncio.get_running_loop()
        identifier = int.from_bytes(os.urandom(2), "big")
        engines: dict[int, _FamilyEngine] = {}
        unavailable: dict[int, str] = {}
        for family in (socket.AF_INET, socket.AF_INET6):
            try:
                opened = open_icmp_socket(family, mode, identifier)
            except IcmpPermissionError:
                if family == socket.AF_INET:
                    raise
                unavailable[family] = "no permission for an ICMPv6 socket"
                continue
            except OSError as err:
                unavailable[family] = f"ICMP socket unavailable: {err.strerror or err}"
                continue
            engines[family] = _FamilyEngine(opened, payload_size, loop)
        return cls(engines, unavailable)

    def describe(self) -> dict[str, str]:
        """Per family: `raw`, `dgram` or why it is unavailable (for logs and metrics)."""
        names: dict[int, str] = {socket.AF_INET: "ipv4", socket.AF_INET6: "ipv6"}
        out = {names[f]: ("raw" if e.raw else "dgram") for f, e in self._engines.items()}
        out.update({names[f]: why for f, why in self._unavailable.items()})
        return out

    def start(self, ip: str, port: int | None, timeout: float, done: DoneCallback, *,
              spec: ProbeSpec | None = None) -> None:
        family = socket.AF_INET6 if ":" in ip else socket.AF_INET
        engine = self._engines.get(family)
        if engine is None:
            why = self._unavailable.get(family, "no socket")
            self._loop.call_soon(done, ProbeResult(Reason.SEND_ERROR, ip, detail=why))
            return
        engine.start(ip, timeout, done)

    def in_flight(self) -> int:
        return sum(engine.in_flight() for engine in self._engines.values())

    async def close(self) -> None:
        for engine in self._engines.values():
            engine.close()
        self._engines.clear()
