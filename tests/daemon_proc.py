"""Runs the real daemon as a subprocess and scrapes it: the harness of the end-to-end tests."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

Getter = Callable[[str], tuple[int, str]]
Sample = tuple[str, frozenset[tuple[str, str]]]


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (in the namespace of this process)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def local_get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    """GET from this process's namespace; (status, body), status 0 if nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return 0, ""


class Scrape:
    """One parsed /metrics body; `value(name, **labels)` finds a sample by a label subset."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.samples: dict[Sample, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                key = (sample.name, frozenset(sample.labels.items()))
                self.samples[key] = sample.value

    def find(self, name: str, **labels: str) -> list[tuple[dict[str, str], float]]:
        wanted = set(labels.items())
        return [(dict(lbl), v) for (n, lbl), v in self.samples.items()
                if n == name and wanted <= lbl]

    def value(self, name: str, **labels: str) -> float:
        found = self.find(name, **labels)
        if len(found) != 1:
            raise AssertionError(f"{name}{labels}: {len(found)} samples match: {found}")
        return found[0][1]

    def state(self, target: str, probe: str) -> str:
        states = [lbl["state"] for lbl, v in self.find("hostwatch_probe_state", target=target,
                                                       probe=probe) if v == 1]
        if len(states) != 1:
            raise AssertionError(f"{target}/{probe}: no single state in {states}")
        return states[0]


class DaemonProcess:
    """`hostwatch` started with a config file; stopped (SIGTERM, then SIGKILL) on close."""

    def __init__(self, tmp: Path, config: str, *, prefix: Sequence[str] = (),
                 get: Getter = local_get, port: int | None = None,
                 log_target: str = "stderr", extra: Sequence[str] = ()) -> None:
        self.config_path = tmp / "hostwatch.yml"
        self.config_path.write_text(config)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._get = get
        self.stderr_path = tmp / "daemon.stderr"
        argv = [*prefix, sys.executable, "-m", "hostwatch", "--config.file",
                str(self.config_path), "--web.listen-address", f"127.0.0.1:{self.port}",
                "--log.target", log_target, "--log.level", "debug", *extra]
        self._stderr = self.stderr_path.open("wb")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self._stderr,
                                     stderr=self._stderr, env=env)

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited {self.proc.returncode}:\n{self.stderr()}")
            if self._get(self.url + "/-/ready")[0] == 200:
                return
            time.sleep(0.1)
        raise AssertionError(f"daemon not ready after {timeout}s:\n{self.stderr()}")

    def scrape(self) -> Scrape:
        status, body = self._get(self.url + "/metrics")
        if status != 200:
            raise AssertionError(f"/metrics answered {status}:\n{self.stderr()}")
        return Scrape(body)

    def wait_for(self, check: Callable[[Scrape], bool], timeout: float = 20.0,
                 what: str = "condition") -> Scrape:
        """Scrape until `check` holds; the assertion error shows the last scrape's states."""
        deadline = time.monotonic() + timeout
        scrape = self.scrape()
        while not check(scrape):
            if time.monotonic() > deadline:
                states = scrape.find("hostwatch_probe_state")
                current = sorted((d["target"], d["probe"], d["state"]) for d, v in states if v)
                shown = ", ".join(map(str, current[:20])) + (" …" if len(current) > 20 else "")
                raise AssertionError(f"timed out waiting for {what}; states: {shown}")
            time.sleep(0.2)
            scrape = self.scrape()
        return scrape

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def stop(self, timeout: float = 5.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._stderr.close()
        return self.proc.returncode


@contextlib.contextmanager
def running(tmp: Path, config: str, **kwargs: object) -> Iterator[DaemonProcess]:
    daemon = DaemonProcess(tmp, config, **kwargs)  # type: ignore[arg-type]
    try:
        daemon.wait_ready()
        yield daemon
    finally:
        daemon.stop()
