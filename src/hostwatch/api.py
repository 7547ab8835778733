"""The JSON view of the targets (`GET /api/v1/targets`): what `hostwatch status` reads.

Like the metrics, a view of the live state; the format is documented in docs/api.md and
versioned by its path.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from typing import Any

from hostwatch.state import WindowStats
from hostwatch.watch import Watch

__all__ = ["targets_document", "watch_document"]


def _window(stats: WindowStats) -> dict[str, Any]:
    return {"results": stats.size, "lost": stats.lost, "loss_ratio": stats.loss_ratio,
            "rtt_seconds": {"min": stats.rtt_min, "median": stats.rtt_median,
                            "max": stats.rtt_max, "mean": stats.rtt_mean,
                            "stddev": stats.rtt_stddev}}


def watch_document(watch: Watch, now: float) -> dict[str, Any]:
    """One (target, probe) as a JSON-ready dict."""
    st = watch.state
    last = st.last_result
    verdict = st.verdict
    window = watch.active_maintenance(now)
    return {
        "target": watch.target.name,
        "host": watch.target.host,
        "ip": st.last_ip,
        "probe": watch.spec.kind.value,
        "port": watch.spec.port,
        "labels": dict(watch.target.labels),
        "ip_protocol": watch.protocol.value,
        "state": verdict.health.value,
        "state_reason": verdict.reason or None,
        "state_detail": verdict.detail or None,
        "underlying_state": st.tracker.underlying.health.value,
        "flap_changes": st.tracker.recent_changes(now),
        "maintenance": window.name if window else None,
        "reason": last.reason.value if last else None,
        "detail": last.detail if last else None,
        "last_rtt_seconds": last.rtt if last else None,
        "last_transition_timestamp": st.last_transition_at,
        "transitions": st.transitions,
        "sent": st.sent,
        "received": st.received,
        "interval_seconds": watch.target.interval,
        "window": _window(st.window_stats()),
    }


def targets_document(watches: Iterable[Watch]) -> bytes:
    """`{"status": "success", "data": [...]}`, like the Prometheus HTTP API's envelope."""
    now = time.time()
    data = [watch_document(w, now) for w in watches]
    return json.dumps({"status": "success", "data": data}, separators=(",", ":")).encode()
