"""`hostwatch check HOST...`: probe now, print the result, exit like a Nagios plugin.

Exit status: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN. A host that does not answer, or whose
name does not resolve, is CRITICAL (as in check_ping); bad arguments and a missing ICMP
permission are UNKNOWN.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

from hostwatch.commands.args import CommandParser, bounded_int, seconds
from hostwatch.commands.check_probe import Outcome, Plan, Settings, run_plans
from hostwatch.commands.check_report import (
    judge,
    render_json,
    render_nagios,
    render_text,
    run_status,
)
from hostwatch.commands.hosts import normalise_host
from hostwatch.commands.nagios import Status, unknown
from hostwatch.commands.output import Progress
from hostwatch.commands.thresholds import Threshold, check_order, parse_threshold
from hostwatch.model import DEFAULTS, IcmpMode, IpProtocol, ProbeKind
from hostwatch.probes.icmp import IcmpPermissionError

__all__ = ["build_parser", "main"]

EPILOG = """\
thresholds (-w, -c) are RTT,LOSS% as in check_ping: the average round-trip time in
milliseconds (100, 100ms or 0.1s) and the share of unanswered probes (20%); either part may be
left out (-w 100, -w 20%). A check reaching a limit (>=) is WARNING or CRITICAL. Without -c,
CRITICAL means no answer at all; without -w there is no WARNING.

exit status: 0 OK, 1 WARNING, 2 CRITICAL (no answer, a name that does not resolve, or a
critical limit reached), 3 UNKNOWN (bad arguments, no permission to open an ICMP socket).

examples:
  hostwatch check 127.0.0.1 ::1                    # one ping each; exit 0 if both answer
  hostwatch check --count 5 -w 100,20% -c 500,60% localhost
  hostwatch check --tcp 22 --tcp 443 localhost     # TCP connects instead of ping
  hostwatch check --icmp --tcp 22 localhost        # ping and a TCP connect
  hostwatch check --format nagios -H 127.0.0.1 -w 100,20% -c 500,60%
  hostwatch check --format json --count 3 ::1
  hostwatch check 127.0.0.1 >/dev/null || logger "127.0.0.1 does not answer"   # in cron
"""


def build_parser() -> CommandParser:
    parser = CommandParser(
        prog="hostwatch check", usage_exit=int(Status.UNKNOWN), epilog=EPILOG,
        description="Probe hosts now with hostwatch's ICMP and TCP engines, print a table "
        "(or JSON, or Nagios plugin output) and exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN.")
    parser.add_argument("hosts", nargs="*", metavar="HOST",
                        help="IP address or DNS name to probe")
    parser.add_argument("-H", "--host", dest="more_hosts", action="append", default=[],
                        metavar="HOST", help="a host to probe, as in Nagios plugins (repeatable)")
    parser.add_argument("--tcp", dest="ports", action="append", default=[], metavar="PORT",
                        type=bounded_int(1, 65535),
                        help="TCP connect to PORT instead of an ICMP echo (repeatable)")
    parser.add_argument("--icmp", action="store_true",
                        help="ICMP echo as well, when --tcp is given")
    parser.add_argument("-n", "--count", type=bounded_int(1, 10000), default=1,
                        help="probes per host and probe (default %(default)s)")
    parser.add_argument("-i", "--interval", type=seconds(0.01, 3600), default=0.2,
                        help="time between the probes of one host: seconds or a duration "
                        "such as 500ms (default 200ms)")
    parser.add_argument("-t", "--timeout", type=seconds(0.01, 60), default=1.0,
                        help="a probe unanswered for this long is lost (default 1s)")
    family = parser.add_mutually_exclusive_group()
    family.add_argument("-4", dest="protocol", action="store_const", const=IpProtocol.IP4,
                        default=IpProtocol.AUTO, help="resolve names to IPv4 addresses only")
    family.add_argument("-6", dest="protocol", action="store_const", const=IpProtocol.IP6,
                        help="resolve names to IPv6 addresses only")
    parser.add_argument("-w", "--warning", type=_threshold, default=Threshold(),
                        metavar="RTT,LOSS%", help="warning limits, e.g. 100,20%%")
    parser.add_argument("-c", "--critical", type=_threshold, default=Threshold(),
                        metavar="RTT,LOSS%", help="critical limits, e.g. 500,60%%")
    parser.add_argument("-f", "--format", choices=["text", "json", "nagios"], default="text",
                        help="output: a table, a JSON document or Nagios plugin output "
                        "(default %(default)s)")
    parser.add_argument("--icmp-mode", choices=[m.value for m in IcmpMode],
                        default=IcmpMode.AUTO.value,
                        help="raw needs CAP_NET_RAW, dgram net.ipv4.ping_group_range; auto "
                        "tries raw, then dgram (default %(default)s)")
    return parser


def _threshold(text: str) -> Threshold:
    try:
        return parse_threshold(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def plans_from(parser: CommandParser, args: argparse.Namespace) -> list[Plan]:
    """(host, probe) pairs in the order given; duplicates removed; usage errors exit 3."""
    given = [*args.hosts, *args.more_hosts]
    if not given:
        parser.error("give at least one HOST (an IP address or a DNS name)")
    hosts = []
    for text in given:
        try:
            hosts.append(normalise_host(text))
        except ValueError as err:
            parser.error(str(err))
    probes: list[tuple[ProbeKind, int | None]] = []
    if args.icmp or not args.ports:
        probes.append((ProbeKind.ICMP, None))
    probes += [(ProbeKind.TCP, port) for port in dict.fromkeys(args.ports)]
    return [Plan(host, kind, port) for host in dict.fromkeys(hosts) for kind, port in probes]


def _probe(plans: list[Plan], settings: Settings) -> list[Outcome]:
    hosts = len({p.host for p in plans})
    label = f"hostwatch check: probing {hosts} host{'s' if hosts > 1 else ''}"
    progress = Progress(sys.stderr, label, len(plans) * settings.count)
    progress.advance(0)
    try:
        return asyncio.run(run_plans(plans, settings, progress.advance))
    finally:
        progress.close()


def main(argv: Sequence[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    plans = plans_from(parser, args)
    try:
        check_order(args.warning, args.critical)
    except ValueError as err:
        parser.error(str(err))
    settings = Settings(count=args.count, interval=args.interval, timeout=args.timeout,
                        protocol=args.protocol, icmp_mode=IcmpMode(args.icmp_mode),
                        payload_size=DEFAULTS.icmp_payload_size)
    try:
        outcomes = _probe(plans, settings)
    except IcmpPermissionError as err:
        return unknown(parser.prog, str(err), nagios=args.format == "nagios")
    judged = judge(outcomes, args.warning, args.critical)
    if args.format == "json":
        sys.stdout.write(render_json(judged))
    elif args.format == "nagios":
        sys.stdout.write(render_nagios(judged, args.warning, args.critical))
    else:
        sys.stdout.write(render_text(judged))
    return int(run_status(judged))
