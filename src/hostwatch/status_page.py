"""The status page at `/`: a server-rendered HTML table of every target, sortable by links.

No JavaScript and no external assets: one small page that reads well on a phone (the table
scrolls sideways inside its box, the important columns come first). Every value from the
config is escaped.
"""

from __future__ import annotations

import html
import time
from collections.abc import Callable, Iterable
from urllib.parse import parse_qs

from hostwatch.watch import Watch

__all__ = ["SORT_KEYS", "render_status_page"]

_STATE_ORDER = {"down": 0, "flapping": 1, "degraded": 2, "unknown": 3, "up": 4}
_COLOURS = {"down": "#c62828", "flapping": "#ad1457", "degraded": "#ef6c00",
            "unknown": "#616161", "up": "#2e7d32"}


def _rtt(w: Watch) -> float:
    last = w.state.last_result
    return last.rtt if last is not None and last.rtt is not None else float("inf")


SORT_KEYS: dict[str, Callable[[Watch], object]] = {
    "target": lambda w: (w.target.name, w.probe_name),
    "state": lambda w: (_STATE_ORDER[w.state.health.value], w.target.name),
    "rtt": _rtt,
    "loss": lambda w: w.state.window_stats().loss_ratio,
    "changed": lambda w: -(w.state.last_transition_at or 0.0),
}


def _ago(then: float | None, now: float) -> str:
    if then is None:
        return "never"
    seconds = max(0, int(now - then))
    for size, unit in ((86400, "d"), (3600, "h"), (60, "m")):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"


def _row(w: Watch, now: float) -> str:
    st = w.state
    verdict = st.verdict
    state = verdict.health.value
    last = st.last_result
    rtt = "—" if last is None or last.rtt is None else f"{last.rtt * 1000:.3f} ms"
    stats = st.window_stats()
    loss = f"{stats.loss_ratio:.1%}" if stats.size else "—"
    reason = verdict.reason if verdict.reason not in ("", "ok") else ""
    why = ": ".join(part for part in (reason, verdict.detail) if part)
    labels = ", ".join(f"{k}={v}" for k, v in w.target.labels)
    cells = [f"<b>{_e(w.target.name)}</b><br><small>{_e(st.last_ip or w.target.host)}</small>",
             _e(w.probe_name),
             f'<span class="s" style="background:{_COLOURS[state]}">{state.upper()}</span>'
             f"<br><small>{_e(why)}</small>",
             rtt, loss,
             f'<time title="{_e(_iso(st.last_transition_at))}">'
             f"{_ago(st.last_transition_at, now)}</time>",
             f"<small>{_e(labels)}</small>"]
    return "<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>"


def _iso(then: float | None) -> str:
    return "" if then is None else time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(then))


def _e(text: str) -> str:
    return html.escape(text, quote=True)


_HEADERS = (("target", "Target"), ("", "Probe"), ("state", "State"), ("rtt", "Last RTT"),
            ("loss", "Loss"), ("changed", "Last change"), ("", "Labels"))


def _header(sort: str, descending: bool) -> str:
    cells = []
    for key, title in _HEADERS:
        if not key:
            cells.append(f"<th>{title}</th>")
            continue
        flip = key == sort and not descending
        arrow = (" ▼" if descending else " ▲") if key == sort else ""
        href = f"?sort={key}{'&amp;order=desc' if flip else ''}"
        cells.append(f'<th><a href="{href}">{title}{arrow}</a></th>')
    return "<tr>" + "".join(cells) + "</tr>"


_STYLE = """
body{font-family:system-ui,sans-serif;margin:0;padding:12px;color:#212121;background:#fafafa}
h1{font-size:1.3em;margin:0 0 4px}p{margin:4px 0 12px;color:#555}
.wrap{overflow-x:auto;border:1px solid #ddd;border-radius:6px;background:#fff}
table{border-collapse:collapse;width:100%;font-size:.92em}
th,td{padding:8px 10px;text-align:left;border-bottom:1px solid #eee;vertical-align:top;
white-space:nowrap}
th a{color:inherit;text-decoration:none}th{background:#f0f0f0;position:sticky;top:0}
.s{color:#fff;border-radius:4px;padding:1px 6px;font-weight:600;font-size:.85em}
small{color:#666}nav a{margin-right:12px}
"""


def render_status_page(watches: Iterable[Watch], query: str) -> bytes:
    """The page for `?sort=<key>&order=desc`; unknown keys fall back to sorting by state."""
    params = parse_qs(query)
    sort = params.get("sort", ["state"])[0]
    sort = sort if sort in SORT_KEYS else "state"
    descending = params.get("order", [""])[0] == "desc"
    now = time.time()
    rows = sorted(watches, key=SORT_KEYS[sort], reverse=descending)  # type: ignore[arg-type]
    counts: dict[str, int] = {}
    for w in rows:
        counts[w.state.health.value] = counts.get(w.state.health.value, 0) + 1
    summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items(),
                                                       key=lambda kv: _STATE_ORDER[kv[0]]))
    body = "".join(_row(w, now) for w in rows)
    page = (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        "<meta name=viewport content='width=device-width,initial-scale=1'>"
        f"<title>hostwatch: {_e(summary or 'no targets')}</title><style>{_STYLE}</style></head>"
        f"<body><h1>hostwatch</h1><p>{len(rows)} probes: {_e(summary or 'none')}</p>"
        f"<div class=wrap><table><thead>{_header(sort, descending)}</thead>"
        f"<tbody>{body}</tbody></table></div>"
        "<p><nav><a href='/metrics'>/metrics</a><a href='/api/v1/targets'>JSON</a>"
        "<a href='/-/healthy'>health</a></nav></p></body></html>\n"
    )
    return page.encode()
