"""Shared fixtures. The lab itself lives in tests/lab/ (its self-tests: tests/test_lab.py)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab import require, requires_root
from lab.journald import PrivateJournald
from lab.netns import NetLab

__all__ = ["requires_root"]  # `from lab import requires_root` in tests; re-exported here too


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that use a lab fixture get its marker, so `-m "not netns"` deselects them."""
    for item in items:
        for fixture, marker in (("lab", pytest.mark.netns), ("journald", pytest.mark.journald)):
            if fixture in getattr(item, "fixturenames", ()):
                item.add_marker(marker)


@pytest.fixture
def lab() -> Iterator[NetLab]:
    """Prober and host network namespaces joined by a veth (198.18.0.1/2, 2001:2::1/2)."""
    require(netns=True)
    NetLab.cleanup_stale()
    with NetLab() as net:
        yield net


@pytest.fixture
def journald(tmp_path: Path) -> Iterator[PrivateJournald]:
    """A real systemd-journald in a private mount namespace; its journal is under tmp_path."""
    require(journald=True)
    PrivateJournald.cleanup_stale()
    with PrivateJournald(tmp_path / "journald") as jd:
        yield jd


@pytest.fixture
def listener() -> Iterator[int]:
    """A listening TCP port on 127.0.0.1 (connects succeed; nothing is ever accepted)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(64)
        yield s.getsockname()[1]
