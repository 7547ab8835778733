"""A quick run of the benchmark (`make bench`), small and short, so that it keeps working.
Nothing here judges a number: benchmarks are not tests."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
QUICK = ["--targets", "40", "--interval", "0.5", "--warmup", "1", "--duration", "2",
         "--busy", "1", "--tcp-targets", "20", "--tcp-duration", "3"]


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None,
                    reason="the bench needs root and unshare (its own network namespace)")
class TestBenchSmoke:
    def test_quick_run(self, tmp_path: Path) -> None:
        """hostwatch (ICMP and TCP) and, when installed, fping: every phase produces a row
        with probes sent and CPU measured, and the goals table is printed."""
        out = tmp_path / "bench.json"
        phases = "hostwatch,tcp" + (",fping" if shutil.which("fping") else "")
        done = subprocess.run(
            [sys.executable, "-m", "bench", *QUICK, "--phases", phases, "--workdir",
             str(tmp_path / "work"), "--json", str(out)],
            cwd=ROOT, capture_output=True, text=True, timeout=240, check=False)
        assert 0 == done.returncode, done.stdout + done.stderr
        assert "| target | goal | measured | met |" in done.stdout
        report = json.loads(out.read_text())
        tools = {t["tool"]: t for t in report["tools"]}
        assert {"hostwatch", "hostwatch tcp"} <= set(tools)
        for tool in tools.values():
            assert tool["cpu_us_per_probe"] is not None, tool
        assert tools["hostwatch"]["wire"]["sent"] > 0
        assert {g["what"] for g in report["goals"]} >= {
            "startup to ready", "CPU per ICMP probe", "/metrics answer", "peak RSS",
            "reload of 10 % of the targets", "CPU per TCP probe"}
