"""The commands' documentation stays true: manual pages render cleanly and name every option
and configuration key, --help has examples, the man page's example config is valid, bash
completion offers what the parsers accept, and no example points at a non-loopback address."""

from __future__ import annotations

import argparse
import ipaddress
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hostwatch import cli
from hostwatch.commands import check, events, status
from hostwatch.config import parse_config

ROOT = Path(__file__).resolve().parent.parent
MAN8 = ROOT / "packaging" / "man" / "hostwatch.8"
MAN5 = ROOT / "packaging" / "man" / "hostwatch.yml.5"
COMPLETION = ROOT / "packaging" / "completion" / "hostwatch"
CLI_MD = ROOT / "docs" / "cli.md"
CONFIGURATION_MD = ROOT / "docs" / "configuration.md"
COMMANDS = ["check-config", "check", "status", "events"]

PARSERS: dict[str, argparse.ArgumentParser] = {
    "daemon": cli._daemon_parser(),
    "check": check.build_parser(),
    "status": status.build_parser(),
    "events": events.build_parser(),
}


def man_text(path: Path) -> str:
    """The roff source with the escapes of plain characters undone (`\\-` is `-`)."""
    return path.read_text().replace("\\-", "-").replace("\\(dq", '"').replace("\\(en", "-")


def options(parser: argparse.ArgumentParser) -> list[str]:
    """Every option string of a parser except -h/--help."""
    return [o for action in parser._actions for o in action.option_strings
            if o not in ("-h", "--help")]


def help_text(command: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "hostwatch", *([command] if command else []), "--help"]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


class TestManPages:
    @pytest.mark.parametrize("page", [MAN8, MAN5], ids=lambda p: p.name)
    def test_render_without_warnings(self, page: Path) -> None:
        """groff with all warnings on is silent, and lexgrog finds the NAME line that mandb
        indexes for apropos and whatis."""
        if shutil.which("groff") is None or shutil.which("lexgrog") is None:
            pytest.skip("groff and man-db are not installed")
        rendered = subprocess.run(["groff", "-man", "-ww", "-z", str(page)],
                                  capture_output=True, text=True, timeout=60, check=False)
        assert (0, "") == (rendered.returncode, rendered.stderr)
        name = subprocess.run(["lexgrog", str(page)], capture_output=True, text=True,
                              timeout=60, check=False)
        assert 0 == name.returncode
        assert f'"{page.stem.rsplit(".", 1)[0] if page.suffix == ".8" else "hostwatch.yml"} - ' \
            in name.stdout

    @pytest.mark.parametrize("command", PARSERS)
    def test_every_option_is_documented(self, command: str) -> None:
        """Each option of each command appears in hostwatch(8) and in docs/cli.md (daemon
        flags: in the man page)."""
        page = man_text(MAN8)
        guide = CLI_MD.read_text()
        missing = [o for o in options(PARSERS[command]) if o not in page]
        if command != "daemon":
            missing += [f"{o} (docs/cli.md)" for o in options(PARSERS[command])
                        if f"`{o}" not in guide and f" {o}" not in guide]
        assert [] == missing

    def test_every_configuration_key_is_documented(self) -> None:
        """Each key in the tables of docs/configuration.md appears in hostwatch.yml(5)."""
        keys: set[str] = set()
        for line in CONFIGURATION_MD.read_text().splitlines():
            if line.startswith("| `"):
                keys.update(re.findall(r"`([a-z_]+)`", line.split("|")[1]))
        assert {"targets", "interval", "flap_stop", "mode", "tcp", "shard"} <= keys
        page = man_text(MAN5)
        assert [] == sorted(k for k in keys if not re.search(rf"\b{k}\b", page))

    def test_example_configuration_is_valid(self) -> None:
        """The EXAMPLE of hostwatch.yml(5) passes the real loader."""
        page = man_text(MAN5)
        example = page.split(".SH EXAMPLE\n.EX\n", 1)[1].split(".EE", 1)[0]
        config = parse_config(example, "hostwatch.yml.5")
        assert ["loopback-v4", "ssh", "localhost"] == [t.name for t in config.targets]


class TestHelp:
    @pytest.mark.parametrize("command", ["", *COMMANDS])
    def test_help_has_examples(self, command: str) -> None:
        """`--help` of the daemon and of every command exits 0 and shows examples."""
        proc = help_text(command)
        assert 0 == proc.returncode, proc.stderr
        assert re.search(r"^examples?:$", proc.stdout, re.MULTILINE), proc.stdout

    def test_daemon_help_lists_the_commands(self) -> None:
        """`hostwatch --help` names every command."""
        out = help_text("").stdout
        assert [] == [c for c in COMMANDS if f"hostwatch {c} " not in out]


_V4 = re.compile(r"(?<![\w.])\d{1,3}(?:\.\d{1,3}){3}(?![\w.])")
_V6 = re.compile(r"(?<![\w:])[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}(?![\w:])")


class TestOnlyLoopbackInExamples:
    def test_addresses(self) -> None:
        """Every IP address in --help, the man pages, docs/cli.md and the completion is a
        loopback address (or the unspecified one): examples never probe anything else."""
        texts = [help_text(c).stdout for c in ["", *COMMANDS]]
        texts += [man_text(MAN8), man_text(MAN5), CLI_MD.read_text(), COMPLETION.read_text()]
        found: set[str] = set()
        for text in texts:
            found.update(_V4.findall(text))
            for candidate in _V6.findall(text):
                try:
                    found.add(str(ipaddress.IPv6Address(candidate)))
                except ValueError:
                    continue
        assert "127.0.0.1" in found
        assert "::1" in found
        assert [] == sorted(a for a in found if not (ipaddress.ip_address(a).is_loopback
                                                     or ipaddress.ip_address(a).is_unspecified))


def complete(*words: str) -> list[str]:
    """What the bash completion offers for the command line `words` (the last one is being
    typed), without the bash-completion package."""
    script = ('source "$1"; shift; COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1)); _hostwatch; '
              'printf "%s\\n" "${COMPREPLY[@]}"')
    proc = subprocess.run(["bash", "--norc", "--noprofile", "-c", script, "complete",
                           str(COMPLETION), *words], capture_output=True, text=True,
                          timeout=60, check=False)
    assert (0, "") == (proc.returncode, proc.stderr)
    return [line for line in proc.stdout.splitlines() if line]


class TestBashCompletion:
    def test_commands_and_values(self) -> None:
        """Commands, option names and the fixed values of options are offered."""
        assert ["check-config", "check"] == complete("hostwatch", "ch")
        assert ["--format"] == complete("hostwatch", "check", "--f")
        assert ["text", "json", "nagios"] == complete("hostwatch", "check", "--format", "")
        assert ["degraded", "down"] == complete("hostwatch", "events", "--state", "d")
        assert ["warning"] == complete("hostwatch", "--log.level", "w")

    @pytest.mark.parametrize("command", PARSERS)
    def test_offers_every_long_option(self, command: str) -> None:
        """Every long option of a command's parser is offered after `--`."""
        words = ["hostwatch", "--"] if command == "daemon" else ["hostwatch", command, "--"]
        offered = set(complete(*words))
        expected = {o for o in options(PARSERS[command]) if o.startswith("--")}
        assert set() == expected - offered
