"""Every fault a state, in a lab of network namespaces with nftables (issue: fast, honest
detection). The daemon runs in the lab's prober namespace; faults are made on the host side."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from daemon_proc import DaemonProcess, Scrape, running
from lab.netns import NetLab

WEB_PORT = 8080
ECHO_DELAY = Path(__file__).parent / "lab" / "echo_delay.py"


def _getter(lab: NetLab):  # type: ignore[no-untyped-def]
    def get(url: str) -> tuple[int, str]:
        try:
            return lab.http_get(url)
        except ConnectionError:
            return 0, ""
    return get


def _states(scrape: Scrape) -> dict[str, str]:
    return {f"{d['target']}/{d['probe']}": d["state"]
            for d, v in scrape.find("hostwatch_probe_state") if v == 1}


def _reject_icmp(lab: NetLab, enabled: bool) -> None:
    """Host answers ICMP echo and TCP with an ICMP admin-prohibited unreachable."""
    script = "table inet hw_test_reject\ndelete table inet hw_test_reject\n"
    if enabled:
        script += ("table inet hw_test_reject {\n  chain input {\n"
                   "    type filter hook input priority -10; policy accept;\n"
                   "    ip protocol icmp icmp type echo-request reject with icmp type "
                   "admin-prohibited\n"
                   "    tcp dport 8081 reject with icmpx type admin-prohibited\n  }\n}\n")
    subprocess.run(lab.host_cmd(["nft", "-f", "-"]), input=script, text=True, check=True)


class TestDetection:
    def test_down_within_bound(self, lab: NetLab, tmp_path: Path) -> None:
        """100% drop: DOWN within interval x failure_threshold + timeout + 0.5 s (defaults for
        the thresholds), measured from the moment the drop rule is in place to the
        transition time the daemon records."""
        interval, timeout, threshold = 0.25, 0.2, 12  # failure_threshold: the default
        config = (f"defaults: {{interval: 250ms, timeout: 200ms}}\ntargets:\n"
                  f"  - {{name: host, host: {lab.host_ip4}, probes: {{icmp: }}}}\n")
        with running(tmp_path, config, prefix=lab.prober_cmd([]), get=_getter(lab)) as daemon:
            daemon.wait_for(lambda s: _states(s).get("host/icmp") == "up", what="up")
            lab.set_drop(True)
            dropped_at = time.time()
            scrape = daemon.wait_for(lambda s: _states(s).get("host/icmp") == "down",
                                     what="down")
        detected = scrape.value("hostwatch_probe_last_transition_timestamp_seconds",
                                target="host") - dropped_at
        bound = interval * threshold + timeout + 0.5
        print(f"DOWN detected {detected:.3f} s after the drop (bound {bound:.2f} s)")
        assert detected <= bound

    def test_thirty_percent_loss(self, lab: NetLab, tmp_path: Path) -> None:
        """30% random loss over 5,000+ probes: never DOWN with the default thresholds, every
        target DEGRADED, and the measured loss within 3 points of 30%."""
        lines = ["defaults: {interval: 100ms, timeout: 100ms}", "targets:"]
        lines += [f"  - {{name: h{i:02d}, host: {lab.host_ip4}, probes: {{icmp: }}}}"
                  for i in range(20)]
        with running(tmp_path, "\n".join(lines) + "\n", prefix=lab.prober_cmd([]),
                     get=_getter(lab)) as daemon:
            daemon.wait_for(lambda s: set(_states(s).values()) == {"up"}, what="all up")
            start = daemon.scrape()
            lab.set_loss(30)
            end = daemon.wait_for(
                lambda s: _sum(s, "hostwatch_probe_sent_total") - _sum(
                    start, "hostwatch_probe_sent_total") >= 5200, timeout=60, what="5,200 probes")
            lab.set_loss(0)
        sent = _sum(end, "hostwatch_probe_sent_total") - _sum(start, "hostwatch_probe_sent_total")
        lost = _sum(end, "hostwatch_probe_failures_total") - _sum(
            start, "hostwatch_probe_failures_total")
        print(f"loss measured {lost / sent:.3%} over {sent:.0f} probes")
        assert abs(lost / sent - 0.30) <= 0.03
        assert 0 == _sum(end, "hostwatch_probe_state", state="down")
        assert {"degraded"} == set(_states(end).values())

    def test_toggling_host_flaps_then_settles(self, lab: NetLab, tmp_path: Path) -> None:
        """A host toggling every 5 s becomes FLAPPING; once stable it leaves FLAPPING."""
        config = (f"defaults: {{interval: 250ms, timeout: 200ms, failure_threshold: 3,\n"
                  f"  success_threshold: 2, flap_window: 15s, flap_start: 3, flap_stop: 0}}\n"
                  f"targets:\n  - {{name: host, host: {lab.host_ip4}, probes: {{icmp: }}}}\n")
        with running(tmp_path, config, prefix=lab.prober_cmd([]), get=_getter(lab)) as daemon:
            daemon.wait_for(lambda s: _states(s).get("host/icmp") == "up", what="up")
            flapped = False
            for cycle in range(8):  # bounded: at most 40 s of toggling
                lab.set_drop(cycle % 2 == 0)
                time.sleep(5)
                if _states(daemon.scrape()).get("host/icmp") == "flapping":
                    flapped = True
                    break
            lab.set_drop(False)
            assert flapped, "never FLAPPING while toggling every 5 s"
            daemon.wait_for(lambda s: _states(s).get("host/icmp") == "up", timeout=40,
                            what="UP after settling")


class TestLatency:
    def test_delayed_replies_make_degraded_latency(self, lab: NetLab, tmp_path: Path) -> None:
        """Echo replies delayed 30 ms by a user-space responder (tests/lab/echo_delay.py, the
        kernel's own replies off): the RTT follows the delay, the target is DEGRADED with
        reason `latency` (mean over `degraded_rtt: 10ms`), never DOWN, and UP again once the
        kernel answers at once."""
        delay = 0.030
        config = ("defaults: {interval: 100ms, timeout: 90ms, degraded_rtt: 10ms}\n"
                  f"targets:\n  - {{name: slow, host: {lab.host_ip4}, probes: {{icmp: }}}}\n")
        with running(tmp_path, config, prefix=lab.prober_cmd([]), get=_getter(lab)) as daemon:
            daemon.wait_for(lambda s: _states(s).get("slow/icmp") == "up", what="up")
            lab.sysctl(lab.host_ns, "net.ipv4.icmp_echo_ignore_all", "1")
            responder = subprocess.Popen(
                lab.host_cmd([sys.executable, str(ECHO_DELAY), str(delay)]),
                stdout=subprocess.PIPE, text=True)
            try:
                assert responder.stdout is not None
                assert "ready" == responder.stdout.readline().strip()
                slow = daemon.wait_for(lambda s: _states(s).get("slow/icmp") == "degraded",
                                       timeout=30, what="DEGRADED by latency")
                targets = json.loads(lab.http_get(
                    f"{daemon.url}/api/v1/targets")[1])
            finally:
                responder.kill()
                responder.wait()
                lab.sysctl(lab.host_ns, "net.ipv4.icmp_echo_ignore_all", "0")
            daemon.wait_for(lambda s: _states(s).get("slow/icmp") == "up", timeout=30,
                            what="UP again without the delay")
        (entry,) = targets["data"]
        assert "latency" == entry["state_reason"], entry
        last_rtt = slow.value("hostwatch_probe_last_rtt_seconds", target="slow")
        assert delay <= last_rtt < delay + 0.05  # the injected delay, plus the way there
        # UNKNOWN -> UP -> DEGRADED and nothing between: no DOWN on the way
        assert 2 == slow.value("hostwatch_probe_transitions_total", target="slow")


class TestReasons:
    def test_refused_timeout_and_icmp_unreachable(self, lab: NetLab, tmp_path: Path) -> None:
        """Closed port (RST) is `refused`; a dropped host is `timeout`; an ICMP
        admin-prohibited reject is `unreachable` with its type and code, so it arrived before
        the timeout (a late answer would have been counted as a timeout)."""
        lab.serve_tcp(8081)
        config = (f"defaults: {{interval: 250ms, timeout: 200ms, failure_threshold: 2}}\n"
                  f"targets:\n"
                  f"  - {{name: closed, host: {lab.host_ip4}, probes: {{tcp: {{port: 9}}}}}}\n"
                  f"  - {{name: web, host: {lab.host_ip4}, probes: {{tcp: {{port: 8081}}}}}}\n"
                  f"  - {{name: ping, host: {lab.host_ip4}, probes: {{icmp: }}}}\n")
        with running(tmp_path, config, prefix=lab.prober_cmd([]), get=_getter(lab)) as daemon:
            daemon.wait_for(lambda s: _states(s) == {"closed/tcp": "down", "web/tcp": "up",
                                                     "ping/icmp": "up"}, what="refused")
            _reject_icmp(lab, True)
            rejected = daemon.wait_for(lambda s: _states(s).get("ping/icmp") == "down"
                                       and _states(s).get("web/tcp") == "down", what="rejects")
            _reject_icmp(lab, False)
            status, body = _getter(lab)(daemon.url + "/api/v1/targets")
        assert 200 == status
        assert rejected.value("hostwatch_probe_failures_total", target="closed",
                              reason="refused") >= 2
        assert [] == rejected.find("hostwatch_probe_failures_total", target="ping",
                                   reason="timeout")
        assert rejected.value("hostwatch_probe_failures_total", target="ping",
                              reason="unreachable") >= 2
        assert rejected.value("hostwatch_probe_failures_total", target="web",
                              reason="unreachable") >= 2
        assert "destination-unreachable (icmp type 3 code 13)" in body

    def test_filtered_port_is_timeout(self, lab: NetLab, tmp_path: Path) -> None:
        """A port behind a drop rule is a `timeout`, not `refused`."""
        lab.serve_tcp(WEB_PORT)
        config = (f"defaults: {{interval: 250ms, timeout: 200ms, failure_threshold: 2}}\n"
                  f"targets:\n  - {{name: web, host: {lab.host_ip4}, "
                  f"probes: {{tcp: {{port: {WEB_PORT}}}}}}}\n")
        with running(tmp_path, config, prefix=lab.prober_cmd([]), get=_getter(lab)) as daemon:
            daemon.wait_for(lambda s: _states(s).get("web/tcp") == "up", what="up")
            lab.set_drop(True)
            down = daemon.wait_for(lambda s: _states(s).get("web/tcp") == "down", what="down")
        assert down.value("hostwatch_probe_failures_total", target="web", reason="timeout") >= 2
        assert [] == down.find("hostwatch_probe_failures_total", target="web", reason="refused")


class TestDualStack:
    def test_ipv6_broken_ipv4_fine(self, lab: NetLab, tmp_path: Path) -> None:
        """`ip_protocol: dual` probes each family of a name with its own state: dropping only
        IPv6 echo requests makes the ip6 watch DOWN while the ip4 one stays UP."""
        etc = Path("/etc/netns") / lab.probe_ns  # `ip netns exec` mounts these over /etc
        etc.mkdir(parents=True)
        try:
            (etc / "hosts").write_text(f"{lab.host_ip4} dual.lab\n{lab.host_ip6} dual.lab\n")
            config = ("defaults: {interval: 250ms, timeout: 200ms, failure_threshold: 2}\n"
                      "targets:\n  - {name: dual, host: dual.lab, ip_protocol: dual, "
                      "probes: {icmp: }}\n")
            with running(tmp_path, config, prefix=lab.prober_cmd([]),
                         get=_getter(lab)) as daemon:
                both = daemon.wait_for(lambda s: len(_family_states(s)) == 2
                                       and set(_family_states(s).values()) == {"up"},
                                       what="both families up")
                _drop_ipv6_echo(lab, True)
                split = daemon.wait_for(lambda s: _family_states(s) == {
                    "ip4": "up", "ip6": "down"}, what="IPv6 down, IPv4 up")
                _drop_ipv6_echo(lab, False)
        finally:
            for child in etc.iterdir():
                child.unlink()
            etc.rmdir()
        ips = {d["ip_protocol"]: d["ip"] for d, _ in both.find("hostwatch_probe_success")}
        assert {"ip4": lab.host_ip4, "ip6": lab.host_ip6} == ips
        assert split.value("hostwatch_probe_failures_total", ip_protocol="ip6",
                           reason="timeout") >= 2


def _family_states(scrape: Scrape) -> dict[str, str]:
    return {d["ip_protocol"]: d["state"] for d, v in
            scrape.find("hostwatch_probe_state", target="dual") if v == 1}


def _drop_ipv6_echo(lab: NetLab, enabled: bool) -> None:
    script = "table inet hw_test_v6\ndelete table inet hw_test_v6\n"
    if enabled:
        script += ("table inet hw_test_v6 {\n  chain input {\n"
                   "    type filter hook input priority -10; policy accept;\n"
                   "    icmpv6 type echo-request drop\n  }\n}\n")
    subprocess.run(lab.host_cmd(["nft", "-f", "-"]), input=script, text=True, check=True)


class TestFatal:
    def test_memory_error_in_probe_path_exits_nonzero(self, tmp_path: Path) -> None:
        """A MemoryError raised in the probe result path (test-only injection) ends the
        process with exit code 70 and a CRIT entry, instead of being swallowed."""
        config = ("defaults: {interval: 100ms, timeout: 100ms}\n"
                  "targets:\n  - {name: lo, host: 127.0.0.1, probes: {icmp: }}\n")
        env_before = os.environ.get("HOSTWATCH_TEST_FAULT")
        os.environ["HOSTWATCH_TEST_FAULT"] = "memory-error-after=5"
        try:
            daemon = DaemonProcess(tmp_path, config)
        finally:
            if env_before is None:
                del os.environ["HOSTWATCH_TEST_FAULT"]
            else:
                os.environ["HOSTWATCH_TEST_FAULT"] = env_before
        try:
            code = daemon.proc.wait(20)
        finally:
            daemon.stop()
        assert 70 == code
        assert "CRIT fatal error, exiting: MemoryError" in daemon.stderr()


def _sum(scrape: Scrape, name: str, **labels: str) -> float:
    return sum(v for _, v in scrape.find(name, **labels))

