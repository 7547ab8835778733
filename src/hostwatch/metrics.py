"""Every metric name and help text, and the Collector that reads them off the live state.

Nothing is stored in prometheus-client metric objects: at scrape time `HostwatchCollector`
walks the watches and the daemon's counters and yields metric families, so state is the truth
and metrics are a view. No `_created` series are produced.

The collector is the definition of every family (names, help, types, samples); /metrics itself
is written by hostwatch.exposition, which must write the same bytes (a test compares them). The
daemon-wide families are made from `DaemonNumbers`, a plain copy of the daemon's counters that
can be sent to the renderer process; so this module imports nothing of the daemon's machinery
at run time (the renderer process imports it).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from hostwatch.health import Health
from hostwatch.model import IpProtocol
from hostwatch.numbers import DaemonNumbers, DaemonView, ReloadStatus
from hostwatch.probes.base import ProbeResult

if TYPE_CHECKING:
    from hostwatch.watch import Watch

__all__ = ["DaemonNumbers", "DaemonView", "HostwatchCollector", "ReloadStatus",
           "daemon_families", "new_registry", "process_text"]

P = "hostwatch_"


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(float(bound))


def _watch_labels(watch: Watch) -> dict[str, str]:
    labels = {"target": watch.target.name, "ip": watch.state.last_ip,
              "probe": watch.spec.kind.value}
    if watch.target.ip_protocol is IpProtocol.DUAL:
        labels["ip_protocol"] = watch.protocol.value  # tells the two families' series apart
    labels.update(watch.target.labels)
    return labels


class _ProbeDetails:
    """Families from the last result of tcp probes with TLS or steps (docs/probes.md): phase
    timings, TLS version, certificate expiry and leaf certificate, as blackbox_exporter's
    probe_ssl_earliest_cert_expiry, probe_tls_version_info and probe_ssl_last_chain_info."""

    def __init__(self) -> None:
        m = Metric
        self.phase = m(P + "probe_phase_seconds",
                       "Duration of each phase of the last probe (resolve, connect, tls, "
                       "first_byte).", "gauge")
        self.tls_version = m(P + "probe_tls_version_info",
                             "TLS version of the last handshake; the value is always 1.",
                             "gauge")
        self.expiry = m(P + "probe_ssl_earliest_cert_expiry_timestamp_seconds",
                        "Unix time the peer's certificate expires (the leaf's notAfter), "
                        "at the last handshake.", "gauge")
        self.chain = m(P + "probe_ssl_last_chain_info",
                       "The peer's leaf certificate at the last handshake; always 1.", "gauge")

    def add(self, labels: dict[str, str], last: ProbeResult | None) -> None:
        if last is None:
            return
        for phase, seconds in last.phases:
            self.phase.add_sample(P + "probe_phase_seconds", {**labels, "phase": phase}, seconds)
        tls = last.tls
        if tls is None:
            return
        self.tls_version.add_sample(P + "probe_tls_version_info",
                                    {**labels, "version": tls.version}, 1.0)
        if tls.not_after is not None:
            self.expiry.add_sample(P + "probe_ssl_earliest_cert_expiry_timestamp_seconds",
                                   labels, tls.not_after)
        self.chain.add_sample(P + "probe_ssl_last_chain_info", {
            **labels, "subject": tls.subject, "issuer": tls.issuer,
            "serial_number": tls.serial, "fingerprint_sha256": tls.fingerprint_sha256}, 1.0)

    def all(self) -> list[Metric]:
        return [self.phase, self.tls_version, self.expiry, self.chain]


class _Families:
    """The per-target metric families of one scrape, filled watch by watch."""

    def __init__(self, now: float) -> None:
        self.now = now
        m = Metric
        self.success = m(P + "probe_success", "1 if the last probe succeeded, else 0.", "gauge")
        self.state = m(P + "probe_state",
                       "Current state of the probe: 1 for the state in the label.", "gauge")
        self.rtt = m(P + "probe_rtt_seconds",
                     "Round-trip time of successful probes (targets with rtt_histogram).",
                     "histogram")
        self.last_rtt = m(P + "probe_last_rtt_seconds",
                          "Round-trip time of the last successful probe.", "gauge")
        self.sent = m(P + "probe_sent", "Probes sent.", "counter")
        self.received = m(P + "probe_received", "Probes answered (success).", "counter")
        self.failures = m(P + "probe_failures", "Failed probes by reason.", "counter")
        self.transitions = m(P + "probe_transitions", "State transitions.", "counter")
        self.last_change = m(P + "probe_last_transition_timestamp_seconds",
                             "Unix time of the last state transition.", "gauge")
        self.loss = m(P + "probe_loss_ratio",
                      "Share of failed probes over the window (0-1).", "gauge")
        self.window = m(P + "probe_window_rtt_seconds",
                        "RTT statistic over the successful probes of the window.", "gauge")
        self.window_size = m(P + "probe_window_results",
                             "Results currently held in the window.", "gauge")
        self.maintenance = m(P + "probe_maintenance",
                             "1 while a planned maintenance window covers the target.", "gauge")
        self.flap_changes = m(P + "probe_flap_changes",
                              "Underlying state changes within the flap window "
                              "(FLAPPING at flap_start).", "gauge")
        self.details = _ProbeDetails()

    def add(self, watch: Watch) -> None:
        labels = _watch_labels(watch)
        st = watch.state
        last = st.last_result
        if last is not None:
            self.success.add_sample(P + "probe_success", labels, 1.0 if last.ok else 0.0)
            if last.ok and last.rtt is not None:
                self.last_rtt.add_sample(P + "probe_last_rtt_seconds", labels, last.rtt)
        self.details.add(labels, last)
        for health in Health:
            self.state.add_sample(P + "probe_state", {**labels, "state": health.value},
                                  1.0 if st.health is health else 0.0)
        self._histogram(labels, watch)
        self.sent.add_sample(P + "probe_sent_total", labels, float(st.sent))
        self.received.add_sample(P + "probe_received_total", labels, float(st.received))
        for reason, count in sorted(st.failures.items()):
            self.failures.add_sample(P + "probe_failures_total",
                                     {**labels, "reason": reason.value}, float(count))
        self.transitions.add_sample(P + "probe_transitions_total", labels,
                                    float(st.transitions))
        if st.last_transition_at is not None:
            self.last_change.add_sample(P + "probe_last_transition_timestamp_seconds", labels,
                                        st.last_transition_at)
        self._window(labels, watch)
        window = watch.active_maintenance(self.now)
        if window is not None:
            self.maintenance.add_sample(P + "probe_maintenance",
                                        {**labels, "window": window.name}, 1.0)
        self.flap_changes.add_sample(P + "probe_flap_changes", labels,
                                     float(st.tracker.recent_changes(self.now)))

    def _histogram(self, labels: dict[str, str], watch: Watch) -> None:
        if not watch.buckets:
            return  # rtt_histogram: false
        st = watch.state
        cumulative = 0
        bounds = (*watch.buckets, float("inf"))
        for bound, count in zip(bounds, st.bucket_counts, strict=True):
            cumulative += count
            self.rtt.add_sample(P + "probe_rtt_seconds_bucket", {**labels, "le": _le(bound)},
                                float(cumulative))
        self.rtt.add_sample(P + "probe_rtt_seconds_count", labels, float(cumulative))
        self.rtt.add_sample(P + "probe_rtt_seconds_sum", labels, st.rtt_sum)

    def _window(self, labels: dict[str, str], watch: Watch) -> None:
        stats = watch.state.window_stats()
        self.window_size.add_sample(P + "probe_window_results", labels, float(stats.size))
        if stats.size:
            self.loss.add_sample(P + "probe_loss_ratio", labels, stats.loss_ratio)
        values = (("min", stats.rtt_min), ("median", stats.rtt_median), ("max", stats.rtt_max),
                  ("mean", stats.rtt_mean), ("stddev", stats.rtt_stddev))
        for stat, value in values:
            if value is not None:
                self.window.add_sample(P + "probe_window_rtt_seconds",
                                       {**labels, "stat": stat}, value)

    def all(self) -> list[Metric]:
        return [self.success, self.state, self.rtt, self.last_rtt, self.sent, self.received,
                self.failures, self.transitions, self.last_change, self.loss, self.window,
                self.window_size, self.maintenance, self.flap_changes, *self.details.all()]


class HostwatchCollector(Collector):
    """Yields every hostwatch_* family from a DaemonView at scrape time."""

    def __init__(self, view: DaemonView) -> None:
        self._view = view

    @property
    def view(self) -> DaemonView:
        return self._view

    def collect(self) -> Iterator[Metric]:
        families = _Families(time.time())
        counts: dict[tuple[str, str], int] = {}
        for watch in self._view.watches():
            families.add(watch)
            key = (watch.spec.kind.value, watch.state.health.value)
            counts[key] = counts.get(key, 0) + 1
        yield from families.all()
        yield from daemon_families(self._view.numbers(), counts)


def daemon_families(v: DaemonNumbers, counts: dict[tuple[str, str], int]) -> Iterator[Metric]:
    """The daemon-wide families; `counts` is watches by (probe kind, state value)."""
    yield _single(P + "build_info", "Build information; the value is always 1.", "gauge",
                  {"version": v.version, "python_version": v.python_version}, 1)
    targets = Metric(P + "targets", "Watches (target and probe pairs) by probe and state.",
                     "gauge")
    # Every state of every probe kind in use, zeros included: `== 0` and `> 0` both work
    # in queries, and a series does not vanish when its last watch leaves the state.
    for probe in sorted({probe for probe, _state in counts}):
        for state in Health:
            targets.add_sample(P + "targets", {"probe": probe, "state": state.value},
                               float(counts.get((probe, state.value), 0)))
    yield targets
    yield from _scheduler(v)
    in_flight = Metric(P + "probes_in_flight", "Probes started and not yet finished.", "gauge")
    for probe, count in v.in_flight:
        in_flight.add_sample(P + "probes_in_flight", {"probe": probe}, float(count))
    yield in_flight
    yield from _journal_and_config(v)


def _scheduler(v: DaemonNumbers) -> Iterator[Metric]:
    lag = Metric(P + "scheduler_lag_seconds",
                 "Delay between a slot job's scheduled time and its start.", "histogram")
    cumulative = 0
    for bound, count in zip((*v.lag_buckets, float("inf")), v.lag_counts, strict=True):
        cumulative += count
        lag.add_sample(P + "scheduler_lag_seconds_bucket", {"le": _le(bound)},
                       float(cumulative))
    lag.add_sample(P + "scheduler_lag_seconds_count", {}, float(cumulative))
    lag.add_sample(P + "scheduler_lag_seconds_sum", {}, v.lag_sum)
    yield lag
    yield _single(P + "scheduler_runs", "Slot job runs.", "counter", {}, v.runs,
                  suffix="_total")
    skipped = Metric(P + "scheduler_skipped", "Runs or probes skipped, by reason.", "counter")
    for reason, count in v.skipped:
        skipped.add_sample(P + "scheduler_skipped_total", {"reason": reason}, float(count))
    yield skipped
    yield _single(P + "scheduler_slots", "Slot jobs scheduled.", "gauge", {}, v.slots)


def _journal_and_config(v: DaemonNumbers) -> Iterator[Metric]:
    yield _single(P + "log_messages", "Log and event entries written.", "counter", {},
                  v.log_written, suffix="_total")
    yield _single(P + "log_messages_dropped",
                  "Log and event entries dropped because the journal was slow or gone.",
                  "counter", {}, v.log_dropped, suffix="_total")
    yield _single(P + "config_last_reload_successful",
                  "1 if the last configuration load succeeded.", "gauge", {},
                  1 if v.reload_successful else 0)
    yield _single(P + "config_last_reload_success_timestamp_seconds",
                  "Unix time of the last successful configuration load.", "gauge", {},
                  v.reload_timestamp)
    sockets = Metric(P + "icmp_socket_info",
                     "The ICMP socket of each address family: raw, dgram, or unavailable.",
                     "gauge")
    for family, mode in v.icmp_sockets:
        kind = mode if mode in ("raw", "dgram") else "unavailable"
        sockets.add_sample(P + "icmp_socket_info", {"family": family, "mode": kind}, 1.0)
    yield sockets


def _single(name: str, doc: str, kind: str, labels: dict[str, str], value: float, *,
            suffix: str = "") -> Metric:
    metric = Metric(name, doc, kind)
    metric.add_sample(name + suffix, labels, float(value))
    return metric


def process_text(pid: int) -> bytes:
    """process_* of process `pid`, as prometheus-client writes them."""
    from prometheus_client.exposition import generate_latest  # noqa: PLC0415

    registry = CollectorRegistry(auto_describe=False)
    ProcessCollector(registry=registry, pid=lambda: pid)
    return generate_latest(registry)


def new_registry(view: DaemonView) -> CollectorRegistry:
    """A fresh registry with the hostwatch collector and process metrics (process_*).

    process_* reads /proc/<this pid>, not /proc/self: /metrics is rendered in another process
    (hostwatch.exposition), whose own CPU time, memory and start time are not the daemon's."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(HostwatchCollector(view))
    daemon = os.getpid()
    ProcessCollector(registry=registry, pid=lambda: daemon)
    return registry
