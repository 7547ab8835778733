"""The wire view: every ICMP echo request on `lo`, with the kernel's timestamp, per destination.

Runs as its own process (`python -m bench.wire`) beside the tool being measured, so the tool
is judged by what it put on the wire, not by what it says about itself. A packet socket with a
classic BPF filter keeps only outgoing echo requests (IPv4 type 8, IPv6 type 128). The capture
is written as JSON; `analyse` turns it into probes sent, intervals missed and send lag.

Send lag of a probe = how much later than its destination's best phase it left: for a probe
sent every interval I, the k-th send should be at t0 + k*I. A tool that probes on a fixed
schedule has lag near 0 for every send; a blocked event loop or a starved scheduler shows up as
lag, a dropped run as a missed interval.
"""

from __future__ import annotations

import argparse
import ctypes
import ipaddress
import itertools
import json
import math
import select
import socket
import statistics
import struct
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

__all__ = ["Capture", "WireStats", "analyse", "analyse_windows", "load_capture"]

SO_TIMESTAMPNS = 35
SO_ATTACH_FILTER = 26
SO_RCVBUFFORCE = 33
SOL_PACKET = 263
PACKET_STATISTICS = 6
ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4
SKF_AD_OFF = 0xFFFFF000  # -0x1000 as an unsigned 32-bit offset
SKF_AD_PROTOCOL, SKF_AD_PKTTYPE = 0, 4
_TIMESPEC = struct.Struct("@qq")
_CMSG = socket.CMSG_SPACE(_TIMESPEC.size)

# Classic BPF opcodes.
_LD_W_ABS, _LD_B_ABS, _LD_B_IND, _LDX_MSH, _JEQ, _RET = 0x20, 0x30, 0x50, 0xB1, 0x15, 0x06


def _program() -> list[tuple[int, int, int, int]]:
    """Accept outgoing ICMPv4 type 8 and ICMPv6 type 128 (echo requests); drop the rest.
    A SOCK_DGRAM packet socket's filter sees the packet from the network header on."""
    accept, drop = 14, 15
    labelled = [
        (_LD_W_ABS, 0, 0, SKF_AD_OFF + SKF_AD_PKTTYPE),  # 0
        (_JEQ, 2, drop, PACKET_OUTGOING),  # 1
        (_LD_W_ABS, 0, 0, SKF_AD_OFF + SKF_AD_PROTOCOL),  # 2: ethertype, host order
        (_JEQ, 4, 9, 0x0800),  # 3: IPv4?
        (_LD_B_ABS, 0, 0, 9),  # 4: IPv4 protocol
        (_JEQ, 6, drop, 1),  # 5: ICMP?
        (_LDX_MSH, 0, 0, 0),  # 6: X = IPv4 header length
        (_LD_B_IND, 0, 0, 0),  # 7: ICMP type
        (_JEQ, accept, drop, 8),  # 8: echo request?
        (_JEQ, 10, drop, 0x86DD),  # 9: IPv6?
        (_LD_B_ABS, 0, 0, 6),  # 10: next header
        (_JEQ, 12, drop, 58),  # 11: ICMPv6 (no extension headers)?
        (_LD_B_ABS, 0, 0, 40),  # 12: ICMPv6 type
        (_JEQ, accept, drop, 128),  # 13: echo request?
        (_RET, 0, 0, 0xFFFF),  # 14: accept
        (_RET, 0, 0, 0),  # 15: drop
    ]
    return [(code, jt - i - 1, jf - i - 1, k) if code == _JEQ else (code, jt, jf, k)
            for i, (code, jt, jf, k) in enumerate(labelled)]


def _attach_filter(sock: socket.socket) -> None:
    ops = _program()
    program = b"".join(struct.pack("HBBI", *op) for op in ops)
    buffer = ctypes.create_string_buffer(program)
    fprog = struct.pack("HL", len(ops), ctypes.addressof(buffer))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)


def open_sniffer(interface: str = "lo") -> socket.socket:
    """A non-blocking packet socket on `interface` that sees our outgoing echo requests."""
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_ALL))
    _attach_filter(sock)
    sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 64 * 1024 * 1024)
    sock.bind((interface, 0))
    sock.setblocking(False)
    return sock


def _destination(data: bytes) -> bytes:
    return data[16:20] if data[0] >> 4 == 4 else data[24:40]


def _drain(sock: socket.socket, out: dict[bytes, list[float]]) -> None:
    recv = sock.recvmsg
    unpack = _TIMESPEC.unpack_from
    for _ in range(8192):
        try:
            data, ancdata, _flags, _addr = recv(64, _CMSG)
        except BlockingIOError:
            return
        stamp = time.time()
        if ancdata:
            sec, nsec = unpack(ancdata[0][2])
            stamp = sec + nsec * 1e-9
        dest = _destination(data)
        times = out.get(dest)
        if times is None:
            out[dest] = [stamp]
        else:
            times.append(stamp)


def capture(seconds: float, ready: Iterable[str] = ()) -> Capture:
    """Record echo requests on `lo` for `seconds`; prints `ready` lines once armed."""
    sock = open_sniffer()
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN)
    for line in ready:
        print(line, flush=True)
    times: dict[bytes, list[float]] = {}
    start = time.time()
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        if poller.poll(min(left, 0.05) * 1000):
            _drain(sock, times)
    _drain(sock, times)
    end = time.time()
    stats = sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8)
    _packets, drops = struct.unpack("II", stats)
    sock.close()
    named = {str(ipaddress.ip_address(k)): v for k, v in times.items()}
    return Capture(start, end, drops, named)


@dataclass(frozen=True, slots=True)
class Capture:
    """Send times (Unix seconds, kernel clock) per destination, between `start` and `end`."""

    start: float
    end: float
    drops: int
    times: Mapping[str, Sequence[float]]


@dataclass(frozen=True, slots=True)
class WireStats:
    """What the wire says about one window. Lags and gaps are seconds."""

    destinations: int
    sent: int
    missed: int  # intervals in which a destination got no probe
    late: int  # probes sent, but later than the tolerance after their phase
    on_schedule: float  # (sent - late) / (sent + missed), 0-1
    lag_p50: float
    lag_p99: float
    lag_max: float
    max_gap: float
    drops: int  # packets the capture itself lost (should be 0)

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def _lags(times: Sequence[float], interval: float) -> list[float]:
    ref = times[0]
    offsets = [(t - ref) - round((t - ref) / interval) * interval for t in times]
    best = min(offsets)
    return [o - best for o in offsets]


def _missed(times: Sequence[float], interval: float, start: float, end: float) -> int:
    """Sends due at the destination's own phase but not seen. Only slots a quarter interval
    inside the window count, so that jitter at its edges is not taken for a miss."""
    first = times[0]
    phase = first + statistics.median(
        (t - first + interval / 2) % interval - interval / 2 for t in times)
    low, high = start + interval / 4, end - interval / 4
    due = math.floor((high - phase) / interval) - math.ceil((low - phase) / interval) + 1
    seen = {round((t - phase) / interval) for t in times}
    seen_inside = sum(1 for k in seen if low <= phase + k * interval <= high)
    return max(0, due - seen_inside)


def analyse(cap: Capture, interval: float, destinations: Iterable[str] | None = None,
            tolerance: float | None = None) -> WireStats:
    """Stats over `destinations` (default: every one seen), each expected every `interval`."""
    tol = interval / 20 if tolerance is None else tolerance
    wanted = list(cap.times) if destinations is None else list(destinations)
    lags: list[float] = []
    missed = gap = 0.0
    for dest in wanted:
        times = sorted(cap.times.get(dest, ()))
        if not times:
            missed += max(1, round((cap.end - cap.start) / interval))
            continue
        lags.extend(_lags(times, interval))
        missed += _missed(times, interval, cap.start, cap.end)
        gap = max(gap, *(b - a for a, b in itertools.pairwise(times)), 0.0)
    return _stats(wanted, lags, missed=int(missed), gap=gap, tol=tol, drops=cap.drops)


def analyse_windows(cap: Capture, interval: float, destinations: Iterable[str],
                    windows: Sequence[tuple[float, float]]) -> WireStats:
    """Like `analyse`, over the parts of the capture inside `windows` (Unix start and end
    times) only, each destination's lags taken window by window and then pooled: several
    short windows, alternating with others, average out the machine's slow drifts."""
    wanted = list(destinations)
    lags: list[float] = []
    missed = 0
    gap = 0.0
    for dest in wanted:
        times = sorted(cap.times.get(dest, ()))
        for start, end in windows:
            inside = [t for t in times if start <= t < end]
            if not inside:
                missed += max(1, round((end - start) / interval))
                continue
            lags.extend(_lags(inside, interval))
            missed += _missed(inside, interval, start, end)
            gap = max(gap, *(b - a for a, b in itertools.pairwise(inside)), 0.0)
    return _stats(wanted, lags, missed=missed, gap=gap, tol=interval / 20, drops=cap.drops)


def _stats(wanted: Sequence[str], lags: list[float], *, missed: int, gap: float, tol: float,
           drops: int) -> WireStats:
    lags.sort()
    sent = len(lags)
    late = sum(1 for lag in lags if lag > tol)
    on_schedule = (sent - late) / (sent + missed) if sent + missed else 0.0
    return WireStats(len(wanted), sent, missed, late, on_schedule, _pct(lags, 0.5),
                     _pct(lags, 0.99), lags[-1] if lags else 0.0, gap, drops)


def _pct(sorted_values: Sequence[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def load_capture(path: Path) -> Capture:
    data = json.loads(path.read_text())
    return Capture(data["start"], data["end"], data["drops"], data["times"])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.wire", description=__doc__)
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    cap = capture(args.seconds, ready=("ready",))
    args.out.write_text(json.dumps({"start": cap.start, "end": cap.end, "drops": cap.drops,
                                    "times": cap.times}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
