"""systemd integration through systemd-python: sd_notify messages, the watchdog, socket
activation (`listen_fds`), and the test-only event-loop stall that proves the watchdog works.

Outside systemd (no NOTIFY_SOCKET, no LISTEN_FDS) every call is a no-op.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import time

from systemd import daemon as sd_daemon

__all__ = ["TEST_STALL_ENV", "ActivationError", "Notifier", "activated_socket",
           "install_test_stall"]

# Test-only: with this set to 1, SIGUSR2 blocks the event loop (see install_test_stall).
TEST_STALL_ENV = "HOSTWATCH_TEST_STALL_ON_SIGNAL"
TEST_STALL_SECONDS = 3600.0


class ActivationError(OSError):
    """systemd passed sockets hostwatch cannot serve on."""


def activated_socket() -> socket.socket | None:
    """The listening socket systemd passed (socket activation), or None when started plainly.

    Exactly one listening stream socket is accepted (one `ListenStream=` in hostwatch.socket;
    `[::]:10115` with the default BindIPv6Only=both serves IPv4 too). systemd-python's
    `listen_fds` checks LISTEN_PID; the variables are then cleared, so no child inherits them.
    """
    fds: list[int] = sd_daemon.listen_fds()
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(name, None)  # sd_listen_fds unsets them in C only, not in os.environ
    if not fds:
        return None
    if len(fds) != 1 or not sd_daemon.is_socket(fds[0], socket.AF_UNSPEC, socket.SOCK_STREAM, 1):
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        raise ActivationError(f"systemd passed {len(fds)} file descriptors; hostwatch.socket "
                              "must have exactly one ListenStream= (a listening TCP socket)")
    sock = socket.socket(fileno=fds[0])
    sock.setblocking(False)
    return sock


def install_test_stall(loop: asyncio.AbstractEventLoop) -> bool:
    """TEST ONLY. When HOSTWATCH_TEST_STALL_ON_SIGNAL=1, SIGUSR2 makes the event loop block in
    time.sleep, as a hung callback would: WATCHDOG=1 stops and systemd's watchdog must kill and
    restart the process (tests/test_systemd.py). Never set it in production."""
    if os.environ.get(TEST_STALL_ENV) != "1":
        return False
    loop.add_signal_handler(signal.SIGUSR2, _stall)
    return True


def _stall() -> None:
    # Written straight to stderr (the journal stream): the journal writer needs the loop.
    sys.stderr.write(f"SIGUSR2 with {TEST_STALL_ENV}=1: blocking the event loop (test only)\n")
    sys.stderr.flush()
    time.sleep(TEST_STALL_SECONDS)


class Notifier:
    """Sends READY/STATUS/RELOADING/STOPPING, and WATCHDOG=1 from the event loop itself."""

    def __init__(self) -> None:
        self.enabled = bool(os.environ.get("NOTIFY_SOCKET"))
        self._watchdog: asyncio.Task[None] | None = None

    def _send(self, text: str) -> None:
        if self.enabled:
            sd_daemon.notify(text)

    def ready(self, status: str) -> None:
        self._send(f"READY=1\nSTATUS={status}")

    def status(self, status: str) -> None:
        self._send(f"STATUS={status}")

    def reloading(self) -> None:
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self._send(f"RELOADING=1\nMONOTONIC_USEC={usec}")

    def stopping(self) -> None:
        self._send("STOPPING=1")

    def start_watchdog(self) -> None:
        """Ping at half of WATCHDOG_USEC; a stalled loop stops pinging and systemd kills us."""
        usec = os.environ.get("WATCHDOG_USEC", "")
        if not self.enabled or not usec.isdigit() or int(usec) == 0:
            return
        pid = os.environ.get("WATCHDOG_PID", "")
        if pid.isdigit() and int(pid) != os.getpid():
            return
        self._watchdog = asyncio.get_running_loop().create_task(
            self._ping(int(usec) / 2e6), name="watchdog")

    async def _ping(self, period: float) -> None:
        while True:
            self._send("WATCHDOG=1")
            await asyncio.sleep(period)

    async def close(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watchdog
