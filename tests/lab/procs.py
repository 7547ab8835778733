"""Small process helpers for the test lab: run argv lists (never a shell), stop what we started."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Mapping, Sequence


class LabError(RuntimeError):
    """A lab set-up or tear-down step failed; the message carries the command and its output."""


# Variables that would make a child talk to a real service manager (ours or the machine's).
SERVICE_MANAGER_ENV = (
    "NOTIFY_SOCKET",
    "WATCHDOG_PID",
    "WATCHDOG_USEC",
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
    "INVOCATION_ID",
    "JOURNAL_STREAM",
)


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The current environment without service-manager variables, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if k not in SERVICE_MANAGER_ENV}
    if extra:
        env.update(extra)
    return env


def run(
    argv: Sequence[str],
    *,
    timeout: float = 30.0,
    check: bool = True,
    input: str | None = None,  # noqa: A002 - mirrors subprocess.run
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run argv (no shell) and capture text output; with `check`, raise LabError on failure.

    `env` replaces the environment (see clean_env)."""
    argv = list(argv)
    try:
        proc = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input,
            check=False,
            stdin=None if input is not None else subprocess.DEVNULL,
            env=None if env is None else dict(env),
        )
    except subprocess.TimeoutExpired as exc:
        raise LabError(f"timed out after {timeout}s: {argv}") from exc
    if check and proc.returncode != 0:
        raise LabError(
            f"command failed with exit {proc.returncode}: {argv}\n"
            f"stdout: {proc.stdout.strip()}\nstderr: {proc.stderr.strip()}"
        )
    return proc


def pid_alive(pid: int) -> bool:
    """True if a process with this pid exists (zombies count as gone)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            stat = f.read()
    except OSError:
        return False
    # state is the first field after the parenthesised command name
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


def process_state(pid: int) -> str:
    """The one-letter state of a process from /proc (R, S, T, Z, ...), or '' if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            return f.read().rpartition(")")[2].split()[0]
    except OSError:
        return ""


def kill_pid(pid: int, sig: int = signal.SIGKILL) -> None:
    """Send a signal to one process by id, ignoring a process that is already gone."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def stop_process(
    proc: subprocess.Popen[bytes] | subprocess.Popen[str], timeout: float = 5.0
) -> None:
    """SIGCONT + SIGTERM, wait up to `timeout`, then SIGKILL; always reaps the process."""
    if proc.poll() is None:
        kill_pid(proc.pid, signal.SIGCONT)
        kill_pid(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            kill_pid(proc.pid, signal.SIGKILL)
            proc.wait(timeout)
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()
