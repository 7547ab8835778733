"""`hostwatch status`: the targets of a running daemon, read from its `GET /api/v1/targets`.

Exit status, as a Nagios plugin: 0 every probe UP; 1 some in another state (UNKNOWN, DEGRADED,
FLAPPING) and none DOWN; 2 at least one DOWN; 3 the daemon could not be asked (not running,
wrong URL, not hostwatch) or bad arguments. Probes in an active maintenance window are shown
but do not count.
"""

from __future__ import annotations

import json
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from hostwatch.commands.args import CommandParser, seconds
from hostwatch.commands.nagios import PerfItem, Status, status_output, unknown
from hostwatch.commands.output import (
    format_ago,
    format_ms,
    format_percent,
    reason_text,
    table,
)
from hostwatch.state import Health

__all__ = ["DEFAULT_URL", "Row", "build_parser", "fetch", "main", "parse_document"]

DEFAULT_URL = "http://127.0.0.1:10115"
# States in the order they are counted: the daemon's usual ones, then any it adds later.
_ORDER = ("up", "degraded", "flapping", "unknown", "down")
STATES = (*_ORDER, *(h.value for h in Health if h.value not in _ORDER))
API_PATH = "/api/v1/targets"
MAX_BODY = 64 * 1024 * 1024

EPILOG = f"""\
exit status: 0 every probe UP; 1 some in another state (UNKNOWN: not decided yet, DEGRADED,
FLAPPING) and none DOWN; 2 at least one DOWN; 3 the daemon cannot be asked (not running, wrong
--url, not hostwatch) or bad arguments. Probes in a maintenance window do not count.

examples:
  hostwatch status                                  # the daemon at {DEFAULT_URL}
  hostwatch status --url http://[::1]:10115
  hostwatch status --target web --target db1        # only these targets
  hostwatch status --format json | jq '.targets[] | select(.state == "down")'
  hostwatch status --format nagios                  # as a Nagios or Icinga check
  hostwatch status >/dev/null || echo "something is down"
"""


class FetchError(Exception):
    """The daemon could not be asked, or did not answer as hostwatch does."""


@dataclass(frozen=True, slots=True)
class Row:
    """One (target, probe) of the daemon's answer, with the fields the commands show."""

    target: str
    probe: str
    ip: str | None
    state: str
    reason: str | None  # why the state holds (`state_reason`), else the last result's reason
    detail: str
    maintenance: str | None
    last_rtt: float | None
    loss_ratio: float | None
    last_change: float | None
    raw: Mapping[str, Any]


def build_parser() -> CommandParser:
    parser = CommandParser(
        prog="hostwatch status", usage_exit=int(Status.UNKNOWN), epilog=EPILOG,
        description="Ask a running hostwatch daemon for its targets and print their state, "
        "last RTT, loss over the window and last state change.")
    parser.add_argument("--url", default=DEFAULT_URL,
                        help="the daemon's address: http://HOST:PORT, as in "
                        "--web.listen-address (default %(default)s)")
    parser.add_argument("--target", dest="targets", action="append", default=[],
                        metavar="NAME", help="show only this target (repeatable)")
    parser.add_argument("-t", "--timeout", type=seconds(0.01, 300), default=5.0,
                        help="how long to wait for the daemon (default 5s)")
    parser.add_argument("-f", "--format", choices=["text", "json", "nagios"], default="text",
                        help="output: a table, a JSON document or Nagios plugin output "
                        "(default %(default)s)")
    return parser


def api_url(url: str) -> str:
    """The targets URL from a base URL (`127.0.0.1:10115` gets `http://`); ValueError if it
    is not http(s)."""
    if "://" not in url:
        url = "http://" + url
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"{url!r} is not an http:// or https:// URL")
    path = parts.path.rstrip("/")
    if not path.endswith(API_PATH):
        path += API_PATH
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def fetch(url: str, timeout: float) -> Any:
    """GET the URL (proxies from the environment are not used) and decode its JSON."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout) as response:
            body = response.read(MAX_BODY + 1)
    except urllib.error.HTTPError as err:
        raise FetchError(f"{url} answered {err.code} {err.reason}; is this hostwatch?") from None
    except urllib.error.URLError as err:
        raise FetchError(f"cannot reach the daemon at {url}: {err.reason}") from None
    except (OSError, ValueError) as err:
        raise FetchError(f"cannot reach the daemon at {url}: {err}") from None
    if len(body) > MAX_BODY:
        raise FetchError(f"{url}: the answer is larger than {MAX_BODY} bytes")
    try:
        return json.loads(body)
    except ValueError:
        raise FetchError(f"{url} did not answer JSON; is this hostwatch?") from None


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def parse_document(document: Any) -> list[Row]:
    """The rows of an `/api/v1/targets` answer; FetchError if it is not one."""
    if not isinstance(document, dict) or document.get("status") != "success" or \
            not isinstance(document.get("data"), list):
        raise FetchError("the answer is not a hostwatch targets document")
    rows = []
    for item in document["data"]:
        if not isinstance(item, dict) or not isinstance(item.get("target"), str):
            raise FetchError("the answer is not a hostwatch targets document")
        probe = _text(item.get("probe")) or "?"
        port = item.get("port")
        why = "state_reason" if isinstance(item.get("state_reason"), str) else "reason"
        window = item.get("window")
        window = window if isinstance(window, dict) else {}
        rows.append(Row(
            target=item["target"], probe=f"{probe}/{port}" if isinstance(port, int) else probe,
            ip=_text(item.get("ip")) or None, state=_text(item.get("state")) or "unknown",
            reason=_text(item.get(why)), detail=_text(item.get(why.replace("reason",
                                                                            "detail"))) or "",
            maintenance=_text(item.get("maintenance")),
            last_rtt=_number(item.get("last_rtt_seconds")),
            loss_ratio=_number(window.get("loss_ratio")),
            last_change=_number(item.get("last_transition_timestamp")), raw=item))
    return rows


def overall(rows: Sequence[Row]) -> Status:
    """CRITICAL if any probe is DOWN, WARNING if any is in another state than UP (UNKNOWN,
    DEGRADED, FLAPPING, ...), else OK. Probes in a maintenance window do not count."""
    states = {row.state for row in rows if row.maintenance is None}
    if "down" in states:
        return Status.CRITICAL
    if states - {"up"}:
        return Status.WARNING
    return Status.OK


def _counts(rows: Sequence[Row]) -> dict[str, int]:
    """Probes per state: every state the daemon knows, then any other one seen."""
    states = [*STATES, *sorted({r.state for r in rows} - set(STATES))]
    return {state: sum(1 for r in rows if r.state == state) for state in states}


def _since(timestamp: float | None, now: float) -> str:
    if timestamp is None:
        return "-"
    when = datetime.fromtimestamp(timestamp).astimezone().strftime("%Y-%m-%d %H:%M:%S")
    return f"{when} ({format_ago(now - timestamp)})"


def _reason(row: Row) -> str:
    text = "-" if row.reason is None else reason_text(row.reason, row.detail)
    return text if row.maintenance is None else f"{text} [maintenance {row.maintenance}]"


def render_text(rows: Sequence[Row], now: float) -> str:
    """The targets table and a count of the states."""
    header = ["TARGET", "PROBE", "IP", "STATE", "RTT ms", "LOSS", "LAST CHANGE", "REASON"]
    body = [[r.target, r.probe, r.ip or "-", r.state.upper(), format_ms(r.last_rtt),
             format_percent(r.loss_ratio), _since(r.last_change, now), _reason(r)]
            for r in rows]
    counts = "".join(f", {n} {state}" for state, n in _counts(rows).items() if n)
    if maintenance := sum(1 for r in rows if r.maintenance is not None):
        counts += f"; {maintenance} in maintenance (not counted in the exit status)"
    return table(header, body, right=(4, 5)) + f"{len(rows)} probes{counts}\n"


def render_json(rows: Sequence[Row], url: str) -> str:
    status = overall(rows)
    document = {"status": status.name, "exit_code": int(status), "url": url,
                "counts": _counts(rows), "targets": [dict(r.raw) for r in rows]}
    return json.dumps(document, indent=2) + "\n"


def render_nagios(rows: Sequence[Row]) -> str:
    status = overall(rows)
    counts = _counts(rows)
    summary = f"{len(rows)} probes" + "".join(f", {n} {state}" for state, n in counts.items()
                                              if n)
    problems = [f"{r.target} {r.probe} {r.state.upper()} ({_reason(r)})"
                for r in rows if r.state != "up" and r.maintenance is None]
    if problems:
        summary += "; " + "; ".join(problems)
    perf = [PerfItem(state, n, "", minimum=0, maximum=len(rows)) for state, n in counts.items()]
    return status_output(status, summary, perf)


def main(argv: Sequence[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        url = api_url(args.url)
    except ValueError as err:
        parser.error(f"--url: {err}")
    try:
        rows = parse_document(fetch(url, args.timeout))
    except FetchError as err:
        return unknown(parser.prog, str(err), nagios=args.format == "nagios")
    if args.targets:
        missing = sorted(set(args.targets) - {r.target for r in rows})
        if missing:
            message = f"no target named {', '.join(map(repr, missing))} at {url}"
            return unknown(parser.prog, message, nagios=args.format == "nagios")
        rows = [r for r in rows if r.target in set(args.targets)]
    if args.format == "json":
        sys.stdout.write(render_json(rows, url))
    elif args.format == "nagios":
        sys.stdout.write(render_nagios(rows))
    else:
        sys.stdout.write(render_text(rows, time.time()))
    return int(overall(rows))
