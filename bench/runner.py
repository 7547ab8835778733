"""Child processes of the bench: started with a log file, always stopped by their own pid."""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from bench.wire import Capture, load_capture

__all__ = ["Child", "free_port", "sniff", "wait_until"]


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until(check: Callable[[], bool], timeout: float, what: str,
               step: float = 0.02) -> float:
    """Poll `check` until true; the seconds it took. TimeoutError after `timeout`."""
    started = time.perf_counter()
    while not check():
        if time.perf_counter() - started > timeout:
            raise TimeoutError(f"{what}: not after {timeout:g} s")
        time.sleep(step)
    return time.perf_counter() - started


class Child:
    """A process whose stdout and stderr go to `log`; `stop` ends it (TERM, then KILL)."""

    def __init__(self, argv: Sequence[str], log: Path, *, stdout_pipe: bool = False) -> None:
        self.argv = list(argv)
        self.log = log
        self._log_file = log.open("wb")
        stdout = subprocess.PIPE if stdout_pipe else self._log_file
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=stdout,
                                     stderr=self._log_file)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def check_alive(self) -> None:
        if not self.alive():
            tail = self.log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{self.argv[0]} exited {self.proc.returncode}:\n{tail}")

    def signal(self, signum: int) -> None:
        if self.alive():
            self.proc.send_signal(signum)

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM, then SIGKILL after `timeout` seconds; the exit status."""
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)
        self._log_file.close()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return self.proc.returncode


@contextlib.contextmanager
def started(argv: Sequence[str], log: Path) -> Iterator[Child]:
    child = Child(argv, log)
    try:
        yield child
    finally:
        child.stop()


class Sniffer:
    """`python -m bench.wire` for `seconds`; `result()` waits for it and loads the capture."""

    def __init__(self, seconds: float, workdir: Path, name: str) -> None:
        self.out = workdir / f"wire-{name}.json"
        self._child = Child([sys.executable, "-m", "bench.wire", "--seconds", f"{seconds}",
                             "--out", str(self.out)], workdir / f"wire-{name}.log",
                            stdout_pipe=True)
        self._seconds = seconds
        stdout = self._child.proc.stdout
        if stdout is None or stdout.readline().strip() != b"ready":
            self._child.stop()
            raise RuntimeError(f"the sniffer did not start: {self._child.log.read_text()}")

    def result(self) -> Capture:
        self._child.proc.wait(self._seconds + 30)
        self._child.stop()
        capture = load_capture(self.out)
        self.out.unlink()
        return capture


def sniff(seconds: float, workdir: Path, name: str) -> Sniffer:
    """Start capturing echo requests on `lo` now, for `seconds`."""
    return Sniffer(seconds, workdir, name)


def dump(path: Path, data: object) -> None:
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
