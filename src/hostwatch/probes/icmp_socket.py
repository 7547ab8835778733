"""Opening the shared ICMP sockets: raw where CAP_NET_RAW is held, else unprivileged datagram.

icmplib creates the sockets (and maps permission errors); this module adds what a socket shared
by thousands of targets needs: kernel receive timestamps, a large receive buffer, a BPF filter
so a raw socket only wakes us for our own replies and ICMP errors, and IP_RECVERR on datagram
sockets so unreachables are not lost.
"""

from __future__ import annotations

import ctypes
import errno
import socket
import struct
from dataclasses import dataclass

from icmplib.exceptions import ICMPSocketError, SocketPermissionError
from icmplib.sockets import ICMPSocket, ICMPv4Socket, ICMPv6Socket

from hostwatch.model import IcmpMode

__all__ = ["IcmpPermissionError", "OpenedSocket", "open_icmp_socket"]

SO_TIMESTAMPNS = 35  # SO_TIMESTAMPNS_OLD: struct timespec of native longs
SO_RCVBUFFORCE = 33
SO_ATTACH_FILTER = 26
IP_RECVERR = 11
IPV6_RECVERR = 25
ICMP6_FILTER = 1
RECEIVE_BUFFER = 8 * 1024 * 1024

GRANT_HINT = (
    "cannot open an ICMP socket: raw ICMP needs CAP_NET_RAW (run as root, or "
    "AmbientCapabilities=CAP_NET_RAW in the unit, or `setcap cap_net_raw+ep` on the "
    "interpreter) and datagram ICMP needs the process's group inside "
    "net.ipv4.ping_group_range (now {groups!r}; e.g. `sysctl -w "
    "net.ipv4.ping_group_range='0 2147483647'`)"
)


class IcmpPermissionError(Exception):
    """Neither a raw nor a datagram ICMP socket may be opened; the message says how to fix it."""


@dataclass(slots=True)
class OpenedSocket:
    """A configured ICMP socket; `holder` keeps icmplib's object (it closes on collection)."""

    sock: socket.socket
    family: int
    raw: bool
    identifier: int
    holder: ICMPSocket


def _ping_group_range() -> str:
    try:
        with open("/proc/sys/net/ipv4/ping_group_range", encoding="ascii") as f:
            return " ".join(f.read().split())
    except OSError:
        return "unknown"


def _bpf(filter_ops: list[tuple[int, int, int, int]]) -> bytes:
    """A `struct sock_fprog` pointing at the filter; the buffer lives until setsockopt copies it."""
    program = b"".join(struct.pack("HBBI", *op) for op in filter_ops)
    buffer = ctypes.create_string_buffer(program)
    _bpf.keep = buffer  # type: ignore[attr-defined]  # alive until the next call
    return struct.pack("HL", len(filter_ops), ctypes.addressof(buffer))


# Classic BPF opcodes used below.
_LD_B_ABS, _LD_H_ABS, _LD_B_IND, _LD_H_IND = 0x30, 0x28, 0x50, 0x48
_LDX_MSH, _JEQ, _RET = 0xB1, 0x15, 0x06


def _filter_v4(identifier: int) -> list[tuple[int, int, int, int]]:
    """Accept echo replies with our id, and every unreachable / time-exceeded; drop the rest."""
    return [
        (_LDX_MSH, 0, 0, 0),  # X = IPv4 header length
        (_LD_B_IND, 0, 0, 0),  # A = ICMP type
        (_JEQ, 0, 3, 0),  # echo reply? else go to error checks
        (_LD_H_IND, 0, 0, 4),  # A = identifier
        (_JEQ, 4, 5, identifier),  # ours: accept, else drop
        (_RET, 0, 0, 0),  # (unreachable, keeps the offsets simple)
        (_JEQ, 2, 0, 3),  # destination unreachable: accept
        (_JEQ, 1, 2, 11),  # time exceeded: accept, else drop
        (_RET, 0, 0, 0),
        (_RET, 0, 0, 0xFFFF),  # accept
        (_RET, 0, 0, 0),  # drop
    ]


def _filter_v6(identifier: int) -> list[tuple[int, int, int, int]]:
    """Same as IPv4; an ICMPv6 raw socket sees the ICMPv6 header at offset 0."""
    return [
        (_LD_B_ABS, 0, 0, 0),
        (_JEQ, 0, 2, 129),
        (_LD_H_ABS, 0, 0, 4),
        (_JEQ, 3, 4, identifier),
        (_JEQ, 2, 0, 1),
        (_JEQ, 1, 0, 3),
        (_RET, 0, 0, 0),
        (_RET, 0, 0, 0xFFFF),
        (_RET, 0, 0, 0),
    ]


def _raise_buffer(sock: socket.socket) -> None:
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RECEIVE_BUFFER)
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)


def _configure(opened: OpenedSocket) -> None:
    sock = opened.sock
    sock.setblocking(False)
    sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    _raise_buffer(sock)
    if opened.raw:
        ops = _filter_v4 if opened.family == socket.AF_INET else _filter_v6
        sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, _bpf(ops(opened.identifier)))
    elif opened.family == socket.AF_INET:
        sock.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)
    else:
        sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVERR, 1)


def _open(family: int, raw: bool, identifier: int) -> OpenedSocket:
    cls = ICMPv4Socket if family == socket.AF_INET else ICMPv6Socket
    holder = cls(privileged=raw)
    sock = holder.sock
    if not raw:
        # Binding the wildcard address only picks the identifier; it opens no port.
        wildcard = "0.0.0.0" if family == socket.AF_INET else "::"  # noqa: S104
        sock.bind((wildcard, 0))
        identifier = sock.getsockname()[1]  # the kernel uses the local "port" as identifier
    opened = OpenedSocket(sock, family, raw, identifier, holder)
    _configure(opened)
    return opened


def open_icmp_socket(family: int, mode: IcmpMode, identifier: int) -> OpenedSocket:
    """Open and configure the socket for `family` in `mode` (auto tries raw, then datagram).

    Raises IcmpPermissionError (with how to grant access) or OSError (e.g. EAFNOSUPPORT when
    the kernel has no IPv6).
    """
    tries = {IcmpMode.AUTO: (True, False), IcmpMode.RAW: (True,), IcmpMode.DGRAM: (False,)}[mode]
    for raw in tries:
        try:
            return _open(family, raw, identifier)
        except SocketPermissionError:
            continue
        except ICMPSocketError as err:
            raise OSError(errno.EAFNOSUPPORT, str(err)) from err
    hint = GRANT_HINT.format(groups=_ping_group_range())
    if mode is not IcmpMode.AUTO:
        hint = f"icmp.mode is {mode.value}: " + hint
    raise IcmpPermissionError(hint)
