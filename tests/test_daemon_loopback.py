"""The whole daemon as a process on loopback: states, counters, promtool, reload, CLI."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from daemon_proc import DaemonProcess, Scrape, free_port, local_get, running


def _config(listen_port: int, closed_port: int) -> str:
    return f"""
defaults:
  interval: 200ms
  timeout: 150ms
  failure_threshold: 2
  success_threshold: 2
  rtt_histogram: true
targets:
  - name: lo-1
    host: 127.0.0.1
    probes: {{icmp: }}
    labels: {{role: loopback}}
  - name: lo-2
    host: 127.0.0.2
    probes: {{icmp: }}
  - name: lo-far
    host: 127.9.8.7
    probes: {{icmp: }}
  - name: lo-v6
    host: "::1"
    probes: {{icmp: }}
  - name: web
    host: 127.0.0.1
    probes: {{tcp: {{port: {listen_port}}}}}
  - name: closed
    host: 127.0.0.1
    probes: {{tcp: {{port: {closed_port}}}}}
"""


def _all_settled(scrape: Scrape) -> bool:
    states = [lbl["state"] for lbl, v in scrape.find("hostwatch_probe_state") if v == 1]
    return len(states) == 6 and "unknown" not in states


class TestLoopbackDaemon:
    def test_states_counters_and_promtool(self, tmp_path: Path, listener: int) -> None:
        """Each loopback target is UP, the closed port DOWN (refused); counters grow."""
        closed = free_port()
        with running(tmp_path, _config(listener, closed)) as daemon:
            first = daemon.wait_for(_all_settled, what="all targets settled")
            time.sleep(1.0)
            second = daemon.scrape()
        up = ["lo-1", "lo-2", "lo-far", "lo-v6"]
        assert ["up"] * 4 == [first.state(t, "icmp") for t in up]
        assert ("up", "down") == (first.state("web", "tcp"), first.state("closed", "tcp"))
        assert 1.0 == first.value("hostwatch_probe_success", target="lo-v6", ip="::1")
        assert "loopback" == first.find("hostwatch_probe_success", target="lo-1")[0][0]["role"]
        refused = second.value("hostwatch_probe_failures_total", target="closed",
                               reason="refused")
        assert refused >= 2
        for target in up:
            before = first.value("hostwatch_probe_sent_total", target=target)
            after = second.value("hostwatch_probe_sent_total", target=target)
            assert after >= before + 3, (target, before, after)
            received = second.value("hostwatch_probe_received_total", target=target)
            assert received == second.value("hostwatch_probe_rtt_seconds_count", target=target)
        check = subprocess.run(["promtool", "check", "metrics"], input=second.text,
                               capture_output=True, text=True, check=False)
        assert (0, "") == (check.returncode, check.stdout + check.stderr)

    def test_daemon_wide_metrics(self, tmp_path: Path, listener: int) -> None:
        """Build info, target counts by state, scheduler runs and lag, in-flight, config."""
        with running(tmp_path, _config(listener, free_port())) as daemon:
            scrape = daemon.wait_for(_all_settled, what="all targets settled")
        assert 1.0 == scrape.value("hostwatch_build_info")
        assert 4.0 == scrape.value("hostwatch_targets", probe="icmp", state="up")
        for state in ("unknown", "degraded", "down", "flapping"):  # zeros are written too
            assert 0.0 == scrape.value("hostwatch_targets", probe="icmp", state=state)
        assert scrape.value("hostwatch_scheduler_runs_total") > 0
        assert scrape.value("hostwatch_scheduler_lag_seconds_count") > 0
        assert 1.0 == scrape.value("hostwatch_config_last_reload_successful")
        assert 0.0 == scrape.value("hostwatch_scheduler_skipped_total", reason="missed")
        assert scrape.find("hostwatch_probes_in_flight", probe="icmp")
        assert scrape.value("process_resident_memory_bytes") > 0
        assert not any(name.endswith("_created") for name, _ in scrape.samples)

    def test_reload_keeps_state_and_rejects_bad_config(self, tmp_path: Path,
                                                       listener: int) -> None:
        """SIGHUP with a bad file keeps the old config (metric 0); a good one swaps, and an
        unchanged target keeps its counters while a removed one's series disappear."""
        with running(tmp_path, _config(listener, free_port())) as daemon:
            daemon.wait_for(_all_settled, what="all targets settled")
            before = daemon.scrape()
            sent = before.value("hostwatch_probe_sent_total", target="lo-1")
            assert before.find("hostwatch_probe_rtt_seconds_bucket", target="lo-1")
            daemon.config_path.write_text("targets:\n  - name: x\n    hots: 127.0.0.1\n")
            daemon.signal(signal.SIGHUP)
            bad = daemon.wait_for(
                lambda s: s.value("hostwatch_config_last_reload_successful") == 0.0,
                what="failed reload")
            assert 6 == len([v for _, v in bad.find("hostwatch_probe_state") if v == 1])
            daemon.config_path.write_text(
                "defaults: {interval: 200ms, timeout: 150ms}\n"
                "targets:\n  - {name: lo-1, host: 127.0.0.1, probes: {icmp: }, "
                "labels: {role: loopback}}\n")
            daemon.signal(signal.SIGHUP)
            good = daemon.wait_for(
                lambda s: s.value("hostwatch_config_last_reload_successful") == 1.0,
                what="successful reload")
        # The new file leaves rtt_histogram out: the histogram goes, the counters stay.
        assert good.value("hostwatch_probe_sent_total", target="lo-1") >= sent
        assert [] == good.find("hostwatch_probe_rtt_seconds_bucket", target="lo-1")
        assert [] == good.find("hostwatch_probe_state", target="lo-2")
        assert "hots" in daemon.stderr()
        assert "did you mean" in daemon.stderr()

    def test_sigterm_exits_zero(self, tmp_path: Path, listener: int) -> None:
        """SIGTERM: exit code 0 before the 2 s grace (after it the harness sends SIGKILL)."""
        daemon = DaemonProcess(tmp_path, _config(listener, free_port()))
        daemon.wait_ready()
        assert 0 == daemon.stop(timeout=2.0)

    def test_http_endpoints(self, tmp_path: Path, listener: int) -> None:
        """/-/healthy, /-/ready, / and a 404; GET on /-/reload is refused with 405."""
        with running(tmp_path, _config(listener, free_port())) as daemon:
            assert 200 == local_get(daemon.url + "/-/healthy")[0]
            assert 200 == local_get(daemon.url + "/-/ready")[0]
            assert "/metrics" in local_get(daemon.url + "/")[1]
            assert 404 == local_get(daemon.url + "/nope")[0]
            assert 405 == local_get(daemon.url + "/-/reload")[0]


class TestStartupFailures:
    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "hostwatch", "--log.target", "stderr",
                               *args], capture_output=True, text=True, timeout=30, check=False)

    def test_bad_config_exits_1_with_location(self, tmp_path: Path) -> None:
        """A bad config file: exit 1, the problem with file:line:column on stderr."""
        path = tmp_path / "bad.yml"
        path.write_text("targets:\n  - name: a\n    host: 127.0.0.1\n    probes: {icmp: }\n"
                        "    interval: 0s\n")
        result = self._run("--config.file", str(path), "--web.listen-address",
                           f"127.0.0.1:{free_port()}")
        assert 1 == result.returncode
        assert re.search(rf"{re.escape(str(path))}:5:\d+: targets\[0\]\.interval", result.stderr)

    def test_port_in_use_is_one_clear_line(self, tmp_path: Path, listener: int) -> None:
        """Listening on a taken port: exit 1 and a message naming the flag to change."""
        result = self._run("--web.listen-address", f"127.0.0.1:{listener}")
        assert 1 == result.returncode
        assert "--web.listen-address" in result.stderr
        assert "Traceback" not in result.stderr

    def test_check_config(self, tmp_path: Path) -> None:
        """`hostwatch check-config` exits 0 on a good file and 1 on a bad one."""
        good = tmp_path / "good.yml"
        good.write_text("targets:\n  - {name: a, host: 127.0.0.1, probes: {icmp: }}\n")
        bad = tmp_path / "bad.yml"
        bad.write_text("targets:\n  - {name: a, host: 127.0.0.1, probes: {icmp: }, x: 1}\n")
        ok = subprocess.run([sys.executable, "-m", "hostwatch", "check-config", str(good)],
                            capture_output=True, text=True, check=False)
        ko = subprocess.run([sys.executable, "-m", "hostwatch", "check-config", str(bad)],
                            capture_output=True, text=True, check=False)
        assert (0, 1) == (ok.returncode, ko.returncode)
        assert "SUCCESS: 1 targets" in ok.stdout
        assert f"{bad}:2:" in ko.stderr

    def test_embedded_default_watches_loopback(self, tmp_path: Path) -> None:
        """Without a config file, the embedded default probes 127.0.0.1, ::1 and our port."""
        if os.path.exists("/etc/hostwatch/hostwatch.yml"):
            pytest.skip("a real /etc/hostwatch/hostwatch.yml exists on this machine")
        port = free_port()
        argv = [sys.executable, "-m", "hostwatch", "--web.listen-address", f"127.0.0.1:{port}",
                "--log.target", "stderr"]
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + 15
            scrape = None
            while time.monotonic() < deadline:
                status, body = local_get(f"http://127.0.0.1:{port}/metrics")
                if status == 200:
                    scrape = Scrape(body)
                    if len([v for _, v in scrape.find("hostwatch_probe_success") if v]) == 3:
                        break
                time.sleep(0.2)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(10)
        assert scrape is not None
        ips = {(d["target"], d["ip"], d["probe"]) for d, v in
               scrape.find("hostwatch_probe_success") if v == 1}
        assert {("loopback-v4", "127.0.0.1", "icmp"), ("loopback-v6", "::1", "icmp"),
                ("hostwatch-metrics", "127.0.0.1", "tcp")} == ips


class TestSlowClients:
    def test_idle_and_partial_clients_do_not_block_scrapes(self, tmp_path: Path,
                                                           listener: int) -> None:
        """Ten connections that send half a request and stall do not hold up /metrics."""
        with running(tmp_path, _config(listener, free_port())) as daemon:
            stalled = []
            for _ in range(10):
                s = socket.create_connection(("127.0.0.1", daemon.port))
                s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # no blank line: incomplete
                stalled.append(s)
            try:
                status, body = local_get(daemon.url + "/metrics")
            finally:
                for s in stalled:
                    s.close()
        assert 200 == status
        assert "hostwatch_build_info" in body


class TestTargetsApi:
    def test_json_matches_state(self, tmp_path: Path, listener: int) -> None:
        """/api/v1/targets lists every (target, probe) with the same state as the metrics."""
        with running(tmp_path, _config(listener, free_port())) as daemon:
            scrape = daemon.wait_for(_all_settled, what="all targets settled")
            status, body = local_get(daemon.url + "/api/v1/targets")
        document = json.loads(body)
        assert (200, "success") == (status, document["status"])
        by_key = {(d["target"], d["probe"]): d for d in document["data"]}
        assert 6 == len(by_key)
        for (target, probe), entry in by_key.items():
            assert scrape.state(target, probe) == entry["state"]
        closed = by_key[("closed", "tcp")]
        assert ("down", "refused", "127.0.0.1") == (closed["state"], closed["reason"],
                                                     closed["ip"])
        lo = by_key[("lo-1", "icmp")]
        assert {"role": "loopback"} == lo["labels"]
        assert lo["window"]["rtt_seconds"]["median"] > 0
