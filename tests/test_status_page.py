"""The status page at `/`: a server-rendered, sortable table, checked in headless Chromium."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from daemon_proc import free_port, local_get, running

CHROMIUM = shutil.which("chromium")



def _config(port: int, closed: int) -> str:
    return f"""
defaults: {{interval: 200ms, timeout: 150ms, failure_threshold: 2}}
targets:
  - {{name: gateway, host: 127.0.0.1, probes: {{icmp: }}, labels: {{role: "<b>router</b>"}}}}
  - {{name: web, host: 127.0.0.1, probes: {{tcp: {{port: {port}}}}}}}
  - {{name: database, host: 127.0.0.3, probes: {{tcp: {{port: {closed}}}}}}}
"""


def _chromium(*args: str, tmp: Path) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    argv = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
            "--no-first-run", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", f"--user-data-dir={tmp / 'chromium-profile'}", *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)


class TestStatusPage:
    def test_table_rows_states_and_escaping(self, tmp_path: Path, listener: int) -> None:
        """One row per probe with its state; DOWN sorts first by default; label values from
        the config are escaped."""
        with running(tmp_path, _config(listener, free_port())) as daemon:
            daemon.wait_for(lambda s: s.state("database", "tcp") == "down", what="down")
            status, page = local_get(daemon.url + "/")
            _, by_name = local_get(daemon.url + "/?sort=target")
        assert 200 == status
        assert 3 == page.count("<tr><td>")
        assert page.index("database") < page.index("gateway")  # down first
        assert by_name.index("database") < by_name.index("gateway") < by_name.index(">web<")
        assert "role=&lt;b&gt;router&lt;/b&gt;" in page
        assert "<b>router</b>" not in page
        assert "DOWN" in page
        assert "refused" in page

    @pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is installed by make test")
    def test_renders_in_chromium_on_a_phone_sized_screen(self, tmp_path: Path,
                                                          listener: int) -> None:
        """Headless Chromium loads the page at a phone's width: the DOM has the table and
        every target, and a screenshot is written (kept under the test's tmp dir)."""
        shot = tmp_path / "status-phone.png"
        with running(tmp_path, _config(listener, free_port())) as daemon:
            daemon.wait_for(lambda s: s.state("database", "tcp") == "down", what="down")
            dom = _chromium("--dump-dom", daemon.url + "/?sort=state", tmp=tmp_path)
            png = _chromium(f"--screenshot={shot}", "--window-size=390,844",
                            "--hide-scrollbars", daemon.url + "/", tmp=tmp_path)
        assert 0 == dom.returncode, dom.stderr[-2000:]
        assert 0 == png.returncode, png.stderr[-2000:]
        for name in ("gateway", "web", "database"):
            assert f"<b>{name}</b>" in dom.stdout
        assert b"\x89PNG" == shot.read_bytes()[:4]
        assert shot.stat().st_size > 5000
