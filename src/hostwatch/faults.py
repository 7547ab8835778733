"""Test-only fault injection, off unless HOSTWATCH_TEST_FAULT is set in the environment.

The tests that show a fatal error ends the process (so systemd restarts it) need a real fatal
error in the real probe path. `HOSTWATCH_TEST_FAULT=memory-error-after=N` raises MemoryError
from the N-th probe result callback. Nothing else reads this variable; never set it in
production.
"""

from __future__ import annotations

import os

__all__ = ["FaultInjector"]

_PREFIX = "memory-error-after="


class FaultInjector:
    """Counts probe results and raises MemoryError at the configured one."""

    __slots__ = ("_left",)

    def __init__(self, spec: str | None = None) -> None:
        text = os.environ.get("HOSTWATCH_TEST_FAULT", "") if spec is None else spec
        count = text.removeprefix(_PREFIX)
        self._left = int(count) if text.startswith(_PREFIX) and count.isdigit() else None

    @property
    def armed(self) -> bool:
        return self._left is not None

    def on_result(self) -> None:
        if self._left is None:
            return
        self._left -= 1
        if self._left <= 0:
            self._left = None
            raise MemoryError("injected by HOSTWATCH_TEST_FAULT (test only)")
