"""Argument parsing shared by the commands: usage-error exit codes, durations, help layout."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import NoReturn

from hostwatch.config import parse_duration

__all__ = ["CommandParser", "bounded_int", "seconds"]


class CommandParser(argparse.ArgumentParser):
    """argparse whose usage errors exit with `usage_exit` (3 = UNKNOWN for monitoring commands).

    Help keeps the epilog's layout, so examples stay one per line.
    """

    def __init__(self, *, prog: str, description: str, epilog: str, usage_exit: int = 2) -> None:
        super().__init__(prog=prog, description=description, epilog=epilog,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
        self.usage_exit = usage_exit

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(self.usage_exit, f"{self.prog}: error: {message}\n")


def seconds(low: float, high: float) -> Callable[[str], float]:
    """An argparse type: a number of seconds (`0.5`) or a duration (`500ms`, `2s`, `1m`)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            try:
                value = parse_duration(text)
            except ValueError as err:
                raise argparse.ArgumentTypeError(str(err)) from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(
                f"{text!r} is out of range; use {_show(low)} to {_show(high)}")
        return value

    return parse


def bounded_int(low: int, high: int) -> Callable[[str], int]:
    """An argparse type: a whole number from `low` to `high`."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is out of range; use {low} to {high}")
        return value

    return parse


def _show(value: float) -> str:
    return f"{value * 1000:g}ms" if value < 1 else f"{value:g}s"
