"""Messages between the daemon and its /metrics renderer: pickles over a SOCK_SEQPACKET pair.

A message larger than one packet is sent in fragments (a 1-byte header: `+` more follow, `.`
the last); file descriptors travel with the last fragment (SCM_RIGHTS). Both ends are this
package's own processes on a private socketpair, so pickle is safe here.

daemon -> renderer: ("describe", [(row, RowStatic, RowDynamic), ...]), ("forget", [row, ...]),
("order", (row, ...)), ("render", RenderRequest) with the output's file descriptor.
renderer -> daemon: ("ready", pid), ("rendered", id): the snapshot may be overwritten, and
("done", id, error or None): the response is complete (or failed).
"""

from __future__ import annotations

import array
import pickle
import socket
from typing import Final, NamedTuple

from hostwatch.numbers import DaemonNumbers
from hostwatch.table import Layout

from .rows import RowDynamic

__all__ = ["FRAGMENT", "MAX_FDS", "Receiver", "RenderRequest", "fragments", "pair"]

FRAGMENT: Final = 60 * 1024  # bytes of pickle per packet (a SEQPACKET's limit is its sndbuf)
MAX_FDS: Final = 4
_MORE, _LAST = b"+", b"."


class RenderRequest(NamedTuple):
    """One scrape: the snapshot's layout, what changed of the rows' descriptions, the
    daemon-wide numbers, and how to write the body to the file descriptor sent along."""

    id: int
    layout: Layout
    dynamic: list[tuple[int, RowDynamic]]
    numbers: DaemonNumbers
    now: float
    gzipped: bool
    chunked: bool  # a client socket: HTTP chunks, `head` first; else the bare body (a pipe)
    head: bytes


def pair() -> tuple[socket.socket, socket.socket]:
    """The daemon's end and the renderer's end (inheritable)."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    theirs.set_inheritable(True)
    return ours, theirs


def fragments(message: object) -> list[bytes]:
    """The packets of one message."""
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    parts = [data[i:i + FRAGMENT] for i in range(0, len(data), FRAGMENT)] or [b""]
    return [_MORE + part for part in parts[:-1]] + [_LAST + parts[-1]]


class Receiver:
    """Reassembles messages from packets; `feed` returns a whole message or None."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    @staticmethod
    def receive(sock: socket.socket) -> tuple[bytes, list[int]]:
        """One packet and the file descriptors that came with it; b"" at the end."""
        data, ancillary, flags, _ = sock.recvmsg(FRAGMENT + 1,
                                                 socket.CMSG_SPACE(MAX_FDS * 4))
        fds: list[int] = []
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                received = array.array("i")
                received.frombytes(payload[:len(payload) - len(payload) % 4])
                fds.extend(received)
        if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
            for fd in fds:
                socket.close(fd)
            raise ValueError("a message packet was cut short")
        return data, fds

    def feed(self, packet: bytes) -> object | None:
        if not packet:
            raise EOFError
        self._parts.append(packet[1:])
        if packet[:1] == _MORE:
            return None
        data = b"".join(self._parts)
        self._parts = []
        message: object = pickle.loads(data)  # noqa: S301 - our own process, private socket
        return message
