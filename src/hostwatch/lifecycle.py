"""systemd integration through systemd-python: sd_notify messages and the watchdog.

Outside systemd (no NOTIFY_SOCKET) every call is a no-op.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time

from systemd import daemon as sd_daemon

__all__ = ["Notifier"]


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
