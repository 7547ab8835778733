"""The shipped Prometheus rules and configs: promtool and amtool accept them, every rule has a
`promtool test rules` case, and every rule follows the conventions of docs/prometheus.md."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from promstack import DEPLOY, load_yaml, require_binaries

PROMETHEUS_DIR = DEPLOY / "prometheus"
RULES = PROMETHEUS_DIR / "rules" / "hostwatch.rules.yml"
RULE_TESTS = PROMETHEUS_DIR / "tests"
ALERTMANAGER = DEPLOY / "alertmanager" / "alertmanager.yml"
DOC = DEPLOY.parent / "docs" / "prometheus.md"


def _run(*argv: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False,
                          cwd=cwd)


def _rules() -> list[dict[str, Any]]:
    return [rule for group in load_yaml(RULES)["groups"] for rule in group["rules"]]


def _alerts() -> list[dict[str, Any]]:
    return [rule for rule in _rules() if "alert" in rule]


def _records() -> list[dict[str, Any]]:
    return [rule for rule in _rules() if "record" in rule]


def _unit_tests() -> list[dict[str, Any]]:
    return [test for path in sorted(RULE_TESTS.glob("*.yml"))
            for test in load_yaml(path)["tests"]]


class TestPromtool:
    def test_check_rules_is_clean(self) -> None:
        """`promtool check rules --lint=all --lint-fatal` accepts the rules file and prints
        nothing but its success line."""
        require_binaries("promtool")
        result = _run("promtool", "check", "rules", "--lint=all", "--lint-fatal", str(RULES))
        assert 0 == result.returncode, result.stdout + result.stderr
        assert f"SUCCESS: {len(_rules())} rules found" in result.stdout
        assert "" == result.stderr

    def test_rule_unit_tests_pass(self) -> None:
        """`promtool test rules` passes every unit test file in deploy/prometheus/tests."""
        require_binaries("promtool")
        files = sorted(p.name for p in RULE_TESTS.glob("*.yml"))
        assert files, "no rule unit tests"
        result = _run("promtool", "test", "rules", *files, cwd=RULE_TESTS)
        assert 0 == result.returncode, result.stdout + result.stderr
        assert "FAILED" not in result.stdout + result.stderr

    @pytest.mark.parametrize("config", ["prometheus.yml", "prometheus-tls.yml",
                                        "federation.yml"])
    def test_check_config(self, config: str) -> None:
        """`promtool check config` accepts each shipped Prometheus config (and the rules it
        loads)."""
        require_binaries("promtool")
        result = _run("promtool", "check", "config", config, cwd=PROMETHEUS_DIR)
        assert 0 == result.returncode, result.stdout + result.stderr


class TestCoverage:
    def test_every_alert_fires_in_a_unit_test(self) -> None:
        """Each alerting rule has a unit test case in which it fires (exp_alerts not empty)."""
        fired = {case["alertname"] for test in _unit_tests()
                 for case in test.get("alert_rule_test", []) if case.get("exp_alerts")}
        assert {rule["alert"] for rule in _alerts()} == fired

    def test_every_alert_stays_quiet_in_a_unit_test(self) -> None:
        """Each alerting rule also has a case where it must not fire (before its `for:`, in
        maintenance, or for the series it must ignore)."""
        quiet = {case["alertname"] for test in _unit_tests()
                 for case in test.get("alert_rule_test", []) if not case.get("exp_alerts")}
        assert {rule["alert"] for rule in _alerts()} == quiet

    def test_every_recording_rule_is_checked(self) -> None:
        """Each recording rule's output is compared to exact samples in a unit test."""
        checked = {case["expr"].strip() for test in _unit_tests()
                   for case in test.get("promql_expr_test", []) if case.get("exp_samples")}
        assert {rule["record"] for rule in _records()} == checked

    def test_the_issue_list_is_covered(self) -> None:
        """Issue 5's list: host down, partial loss, latency, flapping, unresolvable, config
        reload failed, scheduler falling behind, journal messages dropped."""
        names = {rule["alert"] for rule in _alerts()}
        assert {"HostwatchTargetDown", "HostwatchTargetPacketLoss",
                "HostwatchTargetLatencyHigh", "HostwatchTargetFlapping",
                "HostwatchTargetUnresolvable", "HostwatchConfigReloadFailed",
                "HostwatchSchedulerLagging", "HostwatchSchedulerMissedRuns",
                "HostwatchLogMessagesDropped"} <= names


class TestConventions:
    def test_alerts_have_severity_summary_and_description(self) -> None:
        """Every alert is `critical` or `warning` and has a summary and a description."""
        for rule in _alerts():
            assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
            assert {"summary", "description"} == set(rule["annotations"]), rule["alert"]

    def test_per_target_alerts_respect_maintenance(self) -> None:
        """Every alert on per-target series is silenced by hostwatch_probe_maintenance."""
        for rule in _alerts():
            expr = rule["expr"]
            if re.search(r"\b(hostwatch_probe_|target_probe:)", expr):
                assert "hostwatch_probe_maintenance == 1" in expr, rule["alert"]

    def test_shipped_for_durations_are_not_test_values(self) -> None:
        """Every alert but the event-like LogMessagesDropped waits at least a minute: the
        shipped rules are for production (tests shorten them only in temporary copies)."""
        seconds = {"s": 1, "m": 60, "h": 3600}
        for rule in _alerts():
            if rule["alert"] == "HostwatchLogMessagesDropped":
                assert "for" not in rule
                continue
            match = re.fullmatch(r"(\d+)([smh])", rule["for"])
            assert match, rule["for"]
            assert int(match[1]) * seconds[match[2]] >= 60, rule["alert"]

    def test_docs_name_every_rule(self) -> None:
        """docs/prometheus.md names every alert and recording rule."""
        text = DOC.read_text()
        missing = [name for name in [r.get("alert") or r["record"] for r in _rules()]
                   if f"`{name}`" not in text]
        assert [] == missing


class TestAlertmanagerConfig:
    def test_amtool_accepts_it(self) -> None:
        """`amtool check-config` accepts deploy/alertmanager/alertmanager.yml."""
        require_binaries("amtool")
        result = _run("amtool", "check-config", str(ALERTMANAGER))
        assert 0 == result.returncode, result.stdout + result.stderr

    @pytest.mark.parametrize(("severity", "receiver"), [("critical", "hostwatch-page"),
                                                        ("warning", "hostwatch-tickets")])
    def test_routing_by_severity(self, severity: str, receiver: str) -> None:
        """Critical alerts page; warnings go to tickets (`amtool config routes test`)."""
        require_binaries("amtool")
        result = _run("amtool", "config", "routes", "test", f"--config.file={ALERTMANAGER}",
                      f"severity={severity}", "alertname=HostwatchTargetDown")
        assert 0 == result.returncode, result.stdout + result.stderr
        assert receiver == result.stdout.strip()
