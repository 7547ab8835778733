"""Test lab for hostwatch: network namespaces with faults (netns.py) and a private journald
(journald.py). Fixtures `lab` and `journald` live in tests/conftest.py."""

from __future__ import annotations

import os
import shutil

import pytest

from .journald import find_journald

requires_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="needs root (network and mount namespaces, nftables)"
)

NETNS_TOOLS = ("ip", "nft")
JOURNALD_TOOLS = ("unshare", "nsenter", "setpriv", "mount", "journalctl")


def missing_requirements(*, netns: bool = False, journald: bool = False) -> str | None:
    """Why the lab cannot run here, or None when it can."""
    if os.geteuid() != 0:
        return "needs root (network and mount namespaces, nftables)"
    tools = (NETNS_TOOLS if netns else ()) + (JOURNALD_TOOLS if journald else ())
    missing = [t for t in tools if shutil.which(t) is None]
    if journald and find_journald() is None:
        missing.append("systemd-journald")
    if missing:
        return f"missing {', '.join(missing)} (`make deps-test` installs them)"
    return None


def require(*, netns: bool = False, journald: bool = False) -> None:
    """Skip the calling test if the lab cannot run; under CI (CI=true) fail instead, since
    `make test` installs everything and a silent skip would hide the loss of these tests."""
    reason = missing_requirements(netns=netns, journald=journald)
    if reason is None:
        return
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"lab unavailable under CI: {reason}")
    pytest.skip(reason)
