"""Debian's prometheus scrapes the real daemon with the scrape config shipped in deploy/, the
shipped rules run on what it scraped, and Debian's prometheus-alertmanager delivers an alert
for a host taken down to a webhook on loopback.

Everything listens on 127.0.0.1: the daemon probes 127.0.0.1 only (and asks 127.0.0.1 for
DNS, where nothing answers), Prometheus scrapes 127.0.0.1, Alertmanager posts to the test's
own webhook. Each test file's stack is stopped at its end.
"""

from __future__ import annotations

import base64
import ssl
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bcrypt
import pytest

from daemon_proc import DaemonProcess, free_port, running
from promstack import (
    DEPLOY,
    Alertmanager,
    Prometheus,
    TcpListener,
    Webhook,
    alertmanager_config,
    fast_rules,
    load_yaml,
    require_binaries,
    scrape_config,
    wait_until,
)
from tls_certs import make_certs

# 200 ms probes, DOWN after 2 failures and UP after 1 success: the state changes within a
# second of the fault, so the tests wait on Prometheus, not on the daemon's hysteresis.
CONFIG = """\
defaults: {{interval: 200ms, timeout: 200ms, failure_threshold: 2, success_threshold: 1,
           rtt_histogram: true}}
dns_servers: [127.0.0.1]
targets:
  - name: loopback
    host: 127.0.0.1
    probes: {{icmp: , tcp: {{port: {metrics_port}}}}}
    labels: {{role: gateway, site: lab}}
  - name: victim
    host: 127.0.0.1
    probes: {{tcp: {{port: {victim_port}}}}}
    labels: {{role: web}}
  - name: nowhere
    host: nowhere.invalid
    probes: {{tcp: {{port: 9}}}}
"""


@dataclass
class Stack:
    daemon: DaemonProcess
    victim: TcpListener
    prometheus: Prometheus
    alertmanager: Alertmanager
    webhook: Webhook


def _state(prometheus: Prometheus, target: str, state: str) -> list[dict[str, Any]]:
    return prometheus.query(f'hostwatch_probe_state{{target="{target}",state="{state}"}} == 1')


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The daemon, a TCP listener it probes ("victim"), Alertmanager with the shipped config
    and a webhook, and Prometheus with the shipped scrape config and a `for: 2s` copy of the
    shipped rules (promstack.scrape_config and fast_rules say exactly what is rewritten)."""
    require_binaries("prometheus", "prometheus-alertmanager")
    tmp = tmp_path_factory.mktemp("promstack")
    victim = TcpListener()
    stack: Stack | None = None
    try:
        metrics_port = free_port()
        config = CONFIG.format(metrics_port=metrics_port, victim_port=victim.port)
        with running(tmp, config, port=metrics_port) as daemon, Webhook() as webhook, \
                Alertmanager(tmp / "am", alertmanager_config(webhook.url)) as am:
            rules = fast_rules(tmp / "hostwatch.rules.yml")
            prom_config = scrape_config(daemon.port, rule_files=[rules],
                                        alertmanager_port=am.port)
            with Prometheus(tmp / "prom", prom_config) as prometheus:
                stack = Stack(daemon, victim, prometheus, am, webhook)
                yield stack
    finally:
        victim.close()
        if stack is not None:
            stack.victim.close()  # a test may have replaced it


class TestScrape:
    def test_target_is_up(self, stack: Stack) -> None:
        """Prometheus's target list has the hostwatch job's one target, healthy, and
        `up{job="hostwatch"}` is 1."""
        prometheus = stack.prometheus
        prometheus.wait_query('up{job="hostwatch"} == 1')
        targets = prometheus.active_targets()
        assert [("hostwatch", f"127.0.0.1:{stack.daemon.port}", "up")] == [
            (t["labels"]["job"], t["labels"]["instance"], t["health"]) for t in targets]

    def test_per_target_series_carry_the_expected_labels(self, stack: Stack) -> None:
        """hostwatch_probe_state of a target has its five states with the target, ip, probe
        and user labels plus Prometheus's job and instance; the icmp probe is UP."""
        prometheus = stack.prometheus
        up = prometheus.wait_query(
            'hostwatch_probe_state{target="loopback",probe="icmp",state="up"} == 1')
        series = prometheus.query('hostwatch_probe_state{target="loopback",probe="icmp"}')
        instance = f"127.0.0.1:{stack.daemon.port}"
        common = {"__name__": "hostwatch_probe_state", "job": "hostwatch", "instance": instance,
                  "target": "loopback", "ip": "127.0.0.1", "probe": "icmp",
                  "role": "gateway", "site": "lab"}
        assert {"unknown", "up", "degraded", "down", "flapping"} == {
            s["metric"]["state"] for s in series}
        assert [common] * 5 == [{k: v for k, v in s["metric"].items() if k != "state"}
                                for s in series]
        assert [{**common, "state": "up"}] == [s["metric"] for s in up]

    def test_histogram_and_daemon_series(self, stack: Stack) -> None:
        """The RTT histogram arrives with its buckets, and the daemon-wide series with
        theirs: build info, targets by state, the ICMP socket in use."""
        prometheus = stack.prometheus
        buckets = prometheus.wait_query(
            'hostwatch_probe_rtt_seconds_bucket{target="loopback",probe="tcp"}')
        assert "+Inf" in {b["metric"]["le"] for b in buckets}
        assert len(buckets) >= 2
        assert prometheus.wait_query('hostwatch_build_info{job="hostwatch"} == 1')
        assert prometheus.wait_query('hostwatch_targets{probe="icmp",state="up"} == 1')
        sockets = prometheus.wait_query('hostwatch_icmp_socket_info{family="ipv4"} == 1')
        assert sockets[0]["metric"]["mode"] in ("raw", "dgram")

    def test_shipped_rules_evaluate_cleanly_on_real_data(self, stack: Stack) -> None:
        """Every shipped rule is loaded and evaluates without error on the real series, and
        the recording rules produce the RTT percentile and fleet count of the targets."""
        prometheus = stack.prometheus
        p90 = prometheus.wait_query(
            'target_probe:hostwatch_probe_rtt_seconds:p90_rate5m{target="loopback",'
            'probe="icmp"}', lambda r: bool(r) and float(r[0]["value"][1]) > 0)
        assert "ip" not in p90[0]["metric"]  # merged over addresses
        assert "gateway" == p90[0]["metric"]["role"]
        prometheus.wait_query('probe_state:hostwatch_targets:sum{probe="tcp"}')

        def evaluated() -> list[tuple[str, str, str]] | None:
            groups = prometheus.rule_groups()
            rules = [(r["name"], r["health"], r.get("lastError", ""))
                     for g in groups for r in g["rules"]]
            return rules if rules and all(h != "unknown" for _, h, _ in rules) else None
        rules = wait_until(evaluated, what="every rule evaluated")
        assert [] == [r for r in rules if r[1] != "ok"]
        shipped = load_yaml(DEPLOY / "prometheus" / "rules" / "hostwatch.rules.yml")
        assert sum(len(g["rules"]) for g in shipped["groups"]) == len(rules)


class TestHostTakenDown:
    def test_down_in_prometheus_and_alert_delivered(self, stack: Stack) -> None:
        """The victim's listener closes: Prometheus shows it DOWN, HostwatchTargetDown reaches
        the webhook through the shipped route for critical alerts, naming the failure reason;
        the listener comes back: the resolved notification follows."""
        prometheus, webhook = stack.prometheus, stack.webhook
        prometheus.wait_query('hostwatch_probe_state{target="victim",state="up"} == 1')
        port = stack.victim.port
        stack.victim.close()

        down = prometheus.wait_query(
            'hostwatch_probe_state{target="victim",probe="tcp",state="down"} == 1')
        assert 1 == len(down)
        assert "web" == down[0]["metric"]["role"]
        assert [] == _state(prometheus, "victim", "up")
        assert prometheus.wait_query(
            'increase(hostwatch_probe_failures_total{target="victim",reason="refused"}[1m])'
            ' > 0')

        path, alert = webhook.wait_alert("firing", alertname="HostwatchTargetDown",
                                         target="victim")
        assert "/hostwatch/page" == path  # severity critical: the paging receiver
        assert {"severity": "critical", "job": "hostwatch", "probe": "tcp", "role": "web",
                "ip": "127.0.0.1", "state": "down"}.items() <= alert["labels"].items()
        assert "victim (tcp) is DOWN" == alert["annotations"]["summary"]
        assert "last failures: refused" in alert["annotations"]["description"]

        stack.victim = TcpListener(port)  # the same port: the host is back
        prometheus.wait_query('hostwatch_probe_state{target="victim",state="up"} == 1')
        webhook.wait_alert("resolved", alertname="HostwatchTargetDown", target="victim")

    def test_unresolvable_is_inhibited_by_down(self, stack: Stack) -> None:
        """A name that does not resolve goes DOWN; HostwatchTargetUnresolvable fires for it as
        well, and the shipped inhibit rule holds it back in Alertmanager."""
        prometheus, am = stack.prometheus, stack.alertmanager
        prometheus.wait_query('hostwatch_probe_state{target="nowhere",state="down"} == 1')
        prometheus.wait_query('ALERTS{alertname="HostwatchTargetUnresolvable",'
                              'target="nowhere",alertstate="firing"}')

        def suppressed() -> dict[str, Any] | None:
            for alert in am.alerts():
                labels = alert["labels"]
                if labels.get("alertname") == "HostwatchTargetUnresolvable" and \
                        labels.get("target") == "nowhere" and alert["status"]["inhibitedBy"]:
                    return alert
            return None
        alert = wait_until(suppressed, what="Unresolvable inhibited in Alertmanager",
                           detail=lambda: str(am.alerts()))
        assert "suppressed" == alert["status"]["state"]
        notified = {a["labels"]["alertname"] for _, a in stack.webhook.alerts()
                    if a["labels"].get("target") == "nowhere"}
        assert "HostwatchTargetUnresolvable" not in notified


class TestTls:
    def test_shipped_tls_scrape_config(self, tmp_path: Path) -> None:
        """deploy/prometheus/prometheus-tls.yml scrapes a daemon started with
        --web.config.file (TLS and basic auth): `up` is 1 and per-target series arrive. Only
        the target address, the intervals, the CA file and the password file are rewritten."""
        require_binaries("prometheus")
        certs = make_certs(tmp_path / "certs")
        password = "tls-test-password"  # noqa: S105 - a test password
        web = tmp_path / "web.yml"
        hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()
        web.write_text(f"tls_server_config:\n  cert_file: {certs.server_cert}\n"
                       f"  key_file: {certs.server_key}\n"
                       f"basic_auth_users:\n  prometheus: {hashed}\n")
        password_file = tmp_path / "password"
        password_file.write_text(password + "\n")
        context = ssl.create_default_context(cafile=str(certs.ca))
        auth = "Basic " + base64.b64encode(f"prometheus:{password}".encode()).decode()

        def get(url: str) -> tuple[int, str]:
            request = urllib.request.Request(url.replace("http://", "https://"))  # noqa: S310
            request.add_header("Authorization", auth)
            try:
                with urllib.request.urlopen(request, context=context, timeout=5) as r:  # noqa: S310
                    return int(r.status), r.read().decode()
            except OSError:
                return 0, ""

        def point_at_test_files(config: dict[str, Any]) -> None:
            job = config["scrape_configs"][0]
            job["tls_config"]["ca_file"] = str(certs.ca)
            job["basic_auth"]["password_file"] = str(password_file)

        config = "targets:\n  - {name: lo, host: 127.0.0.1, probes: {icmp: }}\n"
        with running(tmp_path, config, get=get, extra=["--web.config.file", str(web)]) as d:
            prom_config = scrape_config(d.port, source=DEPLOY / "prometheus/prometheus-tls.yml",
                                        replace=point_at_test_files)
            with Prometheus(tmp_path / "prom", prom_config) as prometheus:
                prometheus.wait_query('up{job="hostwatch"} == 1')
                assert prometheus.wait_query('hostwatch_probe_state{target="lo",state="up"} == 1')
