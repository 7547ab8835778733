"""`hostwatch events`: the history of state transitions, read from the journal.

Transitions are the entries with MESSAGE_ID 1ba1052a4ec54e008cd98df0ab82494f written by the
daemon (src/hostwatch/events.py). Exit status: 0 done (also when nothing matched, and after
--follow is stopped by SIGINT or SIGTERM), 1 the journal cannot be opened, 2 bad arguments.
"""

from __future__ import annotations

import argparse
import grp
import json
import os
import sys
from collections.abc import Callable, Sequence
from datetime import datetime

from hostwatch.commands.args import CommandParser, bounded_int
from hostwatch.commands.journal_read import Event, Query, follow, open_reader, read
from hostwatch.commands.output import format_ms, is_terminal, reason_text
from hostwatch.commands.timespec import FORMS, parse_time
from hostwatch.events import EventKind
from hostwatch.model import ProbeKind
from hostwatch.state import Health

__all__ = ["build_parser", "format_json", "format_text", "main"]

FOLLOW_LINES = 10
TIME_OPTIONS = ("-S", "--since", "-U", "--until")

EPILOG = f"""\
times (--since, --until): {FORMS}.
Filters of one kind are ORed (--target a --target b), different kinds ANDed. The entries are
those with MESSAGE_ID={EventKind.TRANSITION.value}, as `journalctl MESSAGE_ID=...` shows them.

exit status: 0 done (also when nothing matched, and when --follow is stopped with Ctrl-C or
SIGTERM), 1 the journal cannot be opened, 2 bad arguments.

examples:
  hostwatch events                                   # every state change in the journal
  hostwatch events --since -1h                       # the last hour
  hostwatch events --since today --target db1 --target web
  hostwatch events --state down --since yesterday --until today
  hostwatch events -n 20                             # the last 20
  hostwatch events --follow                          # the last 10, then each new one
  hostwatch events --format json --since -1d | jq -r .target | sort | uniq -c
  hostwatch events --directory /var/log/journal      # journal files of another system
"""


def build_parser() -> CommandParser:
    parser = CommandParser(
        prog="hostwatch events", epilog=EPILOG,
        description="Print the state changes (UP, DOWN) of hostwatch's targets from the "
        "journal, oldest first; with --follow, keep printing new ones.")
    parser.add_argument("-S", "--since", metavar="TIME", help="from this time on")
    parser.add_argument("-U", "--until", metavar="TIME", help="up to this time")
    parser.add_argument("--target", dest="targets", action="append", default=[],
                        metavar="NAME", help="only this target (repeatable)")
    parser.add_argument("--probe", dest="probes", action="append", default=[],
                        choices=[k.value for k in ProbeKind], help="only this probe "
                        "(repeatable)")
    parser.add_argument("--state", dest="states", action="append", default=[],
                        type=str.lower, choices=[h.value for h in Health],
                        help="only changes to this state (repeatable)")
    parser.add_argument("-n", "--lines", type=bounded_int(0, 10**9), metavar="N",
                        help="only the last N (with --follow: 10 unless --since is given)")
    parser.add_argument("-f", "--follow", action="store_true",
                        help="keep printing new changes until Ctrl-C or SIGTERM")
    parser.add_argument("-D", "--directory", metavar="DIR",
                        help="read the journal files in DIR instead of the system journal")
    parser.add_argument("--format", choices=["text", "json"], default="text",
                        help="a line per change, or a JSON object per line (default "
                        "%(default)s)")
    parser.add_argument("--utc", action="store_true", help="times in UTC, not local time")
    return parser


def format_text(event: Event, utc: bool = False) -> str:
    """`TIME TARGET PROBE PREVIOUS -> STATE: REASON (DETAIL) ip=IP rtt=MSms`."""
    when = event.time if utc else event.time.astimezone()
    line = (f"{when.isoformat(timespec='seconds')} {event.target} {event.probe} "
            f"{event.previous_state} -> {event.state}: {reason_text(event.reason, event.detail)}")
    if event.ip:
        line += f" ip={event.ip}"
    if event.rtt_seconds is not None:
        line += f" rtt={format_ms(event.rtt_seconds)}ms"
    if event.maintenance:
        line += f" [maintenance {event.maintenance}]"
    return line


def format_json(event: Event, utc: bool = False) -> str:
    """One JSON object; states lowercase as in the HTTP API, times in Unix seconds."""
    when = event.time if utc else event.time.astimezone()
    return json.dumps({
        "time": when.isoformat(timespec="microseconds"), "timestamp": event.usec / 1e6,
        "target": event.target, "probe": event.probe, "ip": event.ip or None,
        "state": event.state.lower(), "previous_state": event.previous_state.lower(),
        "reason": event.reason, "detail": event.detail, "rtt_seconds": event.rtt_seconds,
        "maintenance": event.maintenance or None})


def _usec(parser: CommandParser, option: str, text: str | None, now: datetime) -> int | None:
    if text is None:
        return None
    try:
        return int(parse_time(text, now).timestamp() * 1_000_000)
    except ValueError as err:
        parser.error(f"{option}: {err}")


def _access_hint() -> str | None:
    """journalctl's hint when this user cannot read the system journal."""
    if os.geteuid() == 0:
        return None
    gids = set(os.getgroups()) | {os.getegid()}
    for name in ("systemd-journal", "adm"):
        try:
            if grp.getgrnam(name).gr_gid in gids:
                return None
        except KeyError:
            continue
    return ("hint: you may not see the daemon's entries: users in the groups 'adm' or "
            "'systemd-journal' can read the system journal")


def _printer(args: argparse.Namespace) -> Callable[[Event], None]:
    render = format_json if args.format == "json" else format_text

    def emit(event: Event) -> None:
        sys.stdout.write(render(event, args.utc) + "\n")
        if args.follow:
            sys.stdout.flush()

    return emit


def _attach_times(argv: Sequence[str]) -> list[str]:
    """`--since -1h` as `--since=-1h`, so that argparse does not take `-1h` for an option."""
    out: list[str] = []
    it = iter(argv)
    for arg in it:
        value = next(it, None) if arg in TIME_OPTIONS else None
        if value is None:
            out.append(arg)
        else:
            out.append(f"{arg}={value}" if arg.startswith("--") else f"{arg}{value}")
    return out


def main(argv: Sequence[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(_attach_times(argv))
    now = datetime.now().astimezone()
    since = _usec(parser, "--since", args.since, now)
    until = _usec(parser, "--until", args.until, now)
    if args.follow and until is not None:
        parser.error("--until cannot be used with --follow")
    if since is not None and until is not None and until < since:
        parser.error("--until is before --since")
    lines = args.lines
    if args.follow and lines is None and since is None:
        lines = FOLLOW_LINES
    query = Query(args.directory, args.targets, args.probes, [s.upper() for s in args.states])
    try:
        reader = open_reader(query)
    except OSError as err:
        where = args.directory or "the system journal"
        print(f"{parser.prog}: cannot open {where}: {err.strerror or err}", file=sys.stderr)
        return 1
    if args.directory is None and (hint := _access_hint()):
        print(hint, file=sys.stderr)
    emit = _printer(args)
    with reader:
        events = read(reader, since, None if args.follow else until, lines)
        for event in events:
            emit(event)
        if not events and not args.follow and is_terminal(sys.stdout):
            print("-- no state changes --", file=sys.stderr)
        if args.follow:
            sys.stdout.flush()
            follow(reader, emit)
    return 0
