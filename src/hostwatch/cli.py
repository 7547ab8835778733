"""Command line: `hostwatch [flags]` runs the daemon; subcommands answer people.

`hostwatch check-config FILE` validates a configuration; `check`, `status` and `events` live in
`hostwatch.commands` (docs/cli.md). Daemon flags follow the Prometheus exporter style
(`--config.file`, `--web.listen-address`, `--log.level`). Exit codes of the daemon: 0 ok, 1 bad
config or startup failure, 2 usage error, 70 fatal; each subcommand documents its own.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable, Sequence

from hostwatch import __version__
from hostwatch.config import ConfigError, load_config
from hostwatch.model import DEFAULTS

__all__ = ["main"]

EXAMPLES = """commands (each has --help):
  hostwatch check-config FILE   validate a configuration file and exit
  hostwatch check HOST...       probe hosts now; exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN
  hostwatch status              the targets of a running daemon, from its JSON API
  hostwatch events              the history of state changes, from the journal

examples:
  hostwatch                                  # /etc/hostwatch/hostwatch.yml, or the embedded
                                             # default (loopback) when that file is absent
  hostwatch --config.file ./hostwatch.yml --web.listen-address 127.0.0.1:10115
  hostwatch check-config /etc/hostwatch/hostwatch.yml
  hostwatch check --count 3 127.0.0.1 ::1
  hostwatch status --url http://127.0.0.1:10115
  hostwatch events --since -1h --follow
"""


def _daemon_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hostwatch", description="Watch hosts with ICMP and TCP probes; serve Prometheus "
        "metrics and log state changes to the journal.", epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config.file", dest="config_file", default=None,
                        help=f"configuration file (default {DEFAULTS.config_file}; if absent "
                        "and not given, an embedded default watches loopback)")
    parser.add_argument("--web.listen-address", dest="listen", default=DEFAULTS.listen_address,
                        help="address for /metrics, e.g. :10115, 127.0.0.1:10115, [::1]:10115 "
                        "(default %(default)s)")
    parser.add_argument("--web.config.file", dest="web_config_file", default=None,
                        help="TLS and basic auth for the endpoint, in the exporter-toolkit "
                        "format (docs/api.md); read at startup")
    parser.add_argument("--log.level", dest="log_level", default="info",
                        choices=["debug", "info", "warning", "error"],
                        help="least severe log level written (default %(default)s)")
    parser.add_argument("--log.target", dest="log_target", default="auto",
                        choices=["auto", "journal", "stderr"],
                        help="auto: the journal when systemd connected stderr to it, else "
                        "readable lines on stderr (default %(default)s)")
    parser.add_argument("--version", action="version", version=f"hostwatch {__version__}")
    return parser


def check_config(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="hostwatch check-config", description="Validate a configuration file and exit: "
        "0 if valid, 1 if not (each problem printed with file:line:column).",
        epilog="example:\n  hostwatch check-config /etc/hostwatch/hostwatch.yml",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("file", help="the YAML configuration file")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.file)
    except ConfigError as err:
        print(f"{args.file}: INVALID\n{err}", file=sys.stderr)
        return 1
    probes = sum(len(t.probes) for t in config.targets)
    print(f"{args.file}: SUCCESS: {len(config.targets)} targets, {probes} probes")
    return 0


def _command(name: str) -> Callable[[Sequence[str]], int] | None:
    """The `main` of a subcommand, imported only when it runs (the daemon stays lean)."""
    if name == "check-config":
        return check_config
    if name in ("check", "status", "events"):
        module = importlib.import_module(f"hostwatch.commands.{name}")
        command: Callable[[Sequence[str]], int] = module.main
        return command
    return None


def _run_command(command: Callable[[Sequence[str]], int], argv: Sequence[str]) -> int:
    """Run a subcommand; Ctrl-C exits 130 and a closed pipe (`| head`) 141, without traceback."""
    try:
        code = command(argv)
        sys.stdout.flush()
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # Python would complain again when it flushes stdout at exit: point it at /dev/null.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    return code


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    command = _command(args_list[0]) if args_list else None
    if command is not None:
        return _run_command(command, args_list[1:])
    args = _daemon_parser().parse_args(args_list)
    from hostwatch.daemon import Options, main_sync  # noqa: PLC0415 - keep check-config light
    from hostwatch.web import parse_listen_address  # noqa: PLC0415

    try:
        listen = parse_listen_address(args.listen)
    except ValueError as err:
        print(f"hostwatch: --web.listen-address: {err}", file=sys.stderr)
        return 2
    options = Options(args.config_file, listen, args.log_level, args.log_target,
                      args.web_config_file)
    return main_sync(options)
