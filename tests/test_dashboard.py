"""deploy/grafana/hostwatch.json against the real thing: it is an importable dashboard, every
metric name it and the shipped rules use exists in a real scrape of the daemon, and every
query it makes evaluates in Debian's prometheus scraping that daemon, with data.

There is no Grafana here: the JSON is checked structurally, and its PromQL runs in Prometheus
with Grafana's variables replaced by what "All" means (`.*`) and `$__rate_interval` by `1m`.
The daemon watches 127.0.0.1 only: ICMP and TCP to itself, a closed port, and a TLS server of
the test; a maintenance window covers one target so every panel has something to show.
"""

from __future__ import annotations

import datetime
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from daemon_proc import DaemonProcess, Scrape, free_port, running
from promstack import DEPLOY, Prometheus, load_yaml, require_binaries, scrape_config
from servers import BlockingTlsServer, CertAuthority

DASHBOARD = DEPLOY / "grafana" / "hostwatch.json"
RULES = DEPLOY / "prometheus" / "rules" / "hostwatch.rules.yml"
DS = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
VARIABLES = {"$__rate_interval": "1m", "$job": ".*", "$instance": ".*", "$target": ".*",
             "$probe": ".*"}
LABEL_VALUES = re.compile(r"^label_values\((.+),\s*(\w+)\)$")
TOKEN = re.compile(r"[A-Za-z0-9_:]+")


def _dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def _panels() -> list[dict[str, Any]]:
    return [p for p in _dashboard()["panels"] if p["type"] != "row"]


def _panel_exprs() -> list[tuple[str, str]]:
    """(panel title, expr) of every query of every panel."""
    return [(p["title"], t["expr"]) for p in _panels() for t in p["targets"]]


def _template_queries() -> list[str]:
    return [v["query"]["query"] for v in _dashboard()["templating"]["list"]
            if v["type"] == "query"]


def _annotation_exprs() -> list[str]:
    return [a["expr"] for a in _dashboard()["annotations"]["list"] if "expr" in a]


def _rule_texts() -> list[str]:
    """Every expression of the shipped rules, and every annotation (whose templates query)."""
    texts = []
    for group in load_yaml(RULES)["groups"]:
        for rule in group["rules"]:
            texts.append(rule["expr"])
            texts.extend(rule.get("annotations", {}).values())
    return texts


def _recorded() -> set[str]:
    return {rule["record"] for group in load_yaml(RULES)["groups"] for rule in group["rules"]
            if "record" in rule}


def metric_names(text: str) -> set[str]:
    """The metric names `text` (PromQL or a template) uses: hostwatch_* and process_*, and
    recorded names (level:metric:operation) built on them."""
    return {t for t in TOKEN.findall(text)
            if t.startswith(("hostwatch_", "process_")) or (":" in t and "hostwatch_" in t)}


def families(scrape: Scrape) -> set[str]:
    """Every name a query may use for the scrape's families: the `# TYPE` names (present even
    before a family has samples), histograms with their _bucket, _sum and _count."""
    names = set()
    for line in scrape.text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            names.add(name)
            if kind == "histogram":
                names.update(name + suffix for suffix in ("_bucket", "_sum", "_count"))
    return names


def substitute(expr: str) -> str:
    for variable, value in VARIABLES.items():
        expr = expr.replace(variable, value)
    assert "$" not in expr, f"a variable the test does not know: {expr}"
    return expr


@dataclass
class Live:
    daemon: DaemonProcess
    scrape: Scrape
    prometheus: Prometheus


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    """The daemon with ICMP and TCP to itself, a refused port, a TLS server and an active
    maintenance window; Prometheus with the shipped scrape config (target and intervals
    rewritten) and the shipped rules, unchanged."""
    require_binaries("prometheus")
    tmp = tmp_path_factory.mktemp("dashboard")
    ca = CertAuthority(tmp / "ca")
    issued = ca.issue("server")
    now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    window = (now - datetime.timedelta(hours=1), now + datetime.timedelta(hours=1))
    with BlockingTlsServer(ca.server_context(issued)) as tls:
        metrics_port, closed_port = free_port(), free_port()
        config = f"""\
defaults: {{interval: 200ms, timeout: 200ms, failure_threshold: 2, success_threshold: 1,
           rtt_histogram: true}}
maintenance:
  - {{name: test-window, start: {window[0].isoformat()}, end: {window[1].isoformat()},
     targets: [loopback]}}
targets:
  - name: loopback
    host: 127.0.0.1
    probes: {{icmp: , tcp: {{port: {metrics_port}}}}}
    labels: {{role: gateway}}
  - name: refused
    host: 127.0.0.1
    probes: {{tcp: {{port: {closed_port}}}}}
  - name: tls
    host: 127.0.0.1
    interval: 500ms
    timeout: 500ms
    probes: {{tcp: {{port: {tls.port}, tls: {{server_name: localhost, ca_file: {ca.ca_file}}}}}}}
"""
        with running(tmp, config, port=metrics_port) as daemon:
            scrape = daemon.wait_for(
                lambda s: bool(s.find("hostwatch_probe_ssl_earliest_cert_expiry_timestamp_"
                                      "seconds", target="tls"))
                and s.state("refused", "tcp") == "down"
                and bool(s.find("hostwatch_probe_maintenance", target="loopback")),
                what="TLS details, a DOWN target and a maintenance window")
            config_text = scrape_config(daemon.port, rule_files=[RULES])
            with Prometheus(tmp / "prom", config_text) as prometheus:
                yield Live(daemon, scrape, prometheus)


class TestDashboardJson:
    def test_importable_shape(self) -> None:
        """A Grafana 10/11 dashboard: schemaVersion 39, a uid, a Prometheus datasource
        variable DS_PROMETHEUS used by every panel and query, and job/instance/target/probe
        variables of multi-value with All."""
        dashboard = _dashboard()
        assert 39 == dashboard["schemaVersion"]
        assert "hostwatch" == dashboard["uid"]
        variables = {v["name"]: v for v in dashboard["templating"]["list"]}
        assert {"type": "datasource", "query": "prometheus"}.items() <= \
            variables["DS_PROMETHEUS"].items()
        for name in ("job", "instance", "target", "probe"):
            assert variables[name]["multi"], name
            assert variables[name]["includeAll"], name
            assert DS == variables[name]["datasource"]
        for panel in _panels():
            assert DS == panel["datasource"], panel["title"]
            assert all(DS == t["datasource"] for t in panel["targets"]), panel["title"]
            assert panel["targets"], panel["title"]
            assert panel.get("description"), panel["title"]

    def test_layout(self) -> None:
        """Panel ids and titles are unique, panels fit the 24-column grid and never overlap."""
        panels = _dashboard()["panels"]
        assert len(panels) == len({p["id"] for p in panels})
        assert len(panels) == len({p["title"] for p in panels})
        taken: set[tuple[int, int]] = set()
        for panel in panels:
            g = panel["gridPos"]
            assert 0 <= g["x"], panel["title"]
            assert g["x"] + g["w"] <= 24, panel["title"]
            cells = {(x, y) for x in range(g["x"], g["x"] + g["w"])
                     for y in range(g["y"], g["y"] + g["h"])}
            assert set() == taken & cells, panel["title"]
            taken |= cells

    def test_the_issue_panels_are_there(self) -> None:
        """Overview with up/down counts and worst loss and latency; per-host RTT heatmap,
        percentiles and loss (issue 5)."""
        titles = {p["title"]: p["type"] for p in _panels()}
        assert {"Up": "stat", "Down": "stat", "Worst loss (window)": "stat",
                "Worst p90 RTT (5m)": "stat", "RTT heatmap": "heatmap",
                "RTT percentiles": "timeseries", "Loss": "timeseries",
                "State by probe": "state-timeline"}.items() <= titles.items()


class TestAgainstARealScrape:
    def test_dashboard_metric_names_exist(self, live: Live) -> None:
        """Every metric name in the dashboard's queries, variables and annotations is a family
        of the real scrape."""
        texts = [e for _, e in _panel_exprs()] + _template_queries() + _annotation_exprs()
        used = set().union(*(metric_names(t) for t in texts))
        assert len(used) > 25
        assert set() == used - families(live.scrape)

    def test_rule_metric_names_exist(self, live: Live) -> None:
        """Every metric name in the shipped rules (expressions and the queries of their
        annotations) is a family of the real scrape, or recorded by a shipped rule."""
        used = set().union(*(metric_names(t) for t in _rule_texts()))
        recorded = {n for n in used if ":" in n}
        assert set() == recorded - _recorded()
        assert set() == used - recorded - families(live.scrape)

    def test_every_panel_query_has_data_in_prometheus(self, live: Live) -> None:
        """Each panel query evaluates without error in Prometheus, and each panel shows data."""
        prometheus = live.prometheus
        empty = []
        for panel in _panels():
            exprs = [substitute(t["expr"]) for t in panel["targets"]]
            for expr in exprs:
                prometheus.query(expr)  # PrometheusError on a bad expression
            try:
                prometheus.wait_query(" or ".join(f"({e})" for e in exprs)
                                      if len(exprs) > 1 else exprs[0], timeout=30)
            except AssertionError:
                empty.append(panel["title"])
        assert [] == empty

    def test_annotation_query_evaluates(self, live: Live) -> None:
        """The alert annotation's query is valid PromQL for Prometheus."""
        for expr in _annotation_exprs():
            live.prometheus.query(substitute(expr))

    def test_variables_find_values(self, live: Live) -> None:
        """Each label_values() variable finds values in Prometheus; `target` finds every
        configured target."""
        for query in _template_queries():
            match = LABEL_VALUES.match(query)
            assert match, query
            selector, label = match[1], match[2]
            found = live.prometheus.wait_query(f"group by ({label}) ({substitute(selector)})")
            if label == "target":
                assert {"loopback", "refused", "tls"} == {r["metric"]["target"] for r in found}


def test_metric_names_extraction() -> None:
    """The extractor finds plain, histogram and recorded names, not labels or strings."""
    text = ('histogram_quantile(0.9, sum without (ip) (rate(hostwatch_probe_rtt_seconds_bucket'
            '{job="hostwatch",reason=~"dns|timeout"}[5m]))) > '
            'target_probe:hostwatch_probe_rtt_seconds:p90_rate5m + process_open_fds')
    assert {"hostwatch_probe_rtt_seconds_bucket", "process_open_fds",
            "target_probe:hostwatch_probe_rtt_seconds:p90_rate5m"} == metric_names(text)


def test_families_include_histogram_series() -> None:
    """A histogram family counts with its _bucket, _sum and _count series."""
    scrape = Scrape("# HELP x_seconds h\n# TYPE x_seconds histogram\n"
                    "# HELP y_total c\n# TYPE y_total counter\n")
    assert {"x_seconds", "x_seconds_bucket", "x_seconds_sum", "x_seconds_count",
            "y_total"} == families(scrape)

