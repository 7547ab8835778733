"""Debian's prometheus and prometheus-alertmanager on loopback, for the tests of deploy/.

- `Prometheus`, `Alertmanager`: the real binaries, each in a temporary directory of its own,
  listening on 127.0.0.1 at a free port (Alertmanager's cluster listener is switched off); the
  `with` block stops them.
- `Webhook`: an http.server in a thread of the test, the only receiver Alertmanager sends to.
- `TcpListener`: a TCP port on 127.0.0.1 that accepts until closed (a host to take down).
- `scrape_config`, `fast_rules`, `alertmanager_config`: the files shipped in deploy/, rewritten
  in a temporary copy only where a test must (addresses, intervals, `for:` durations); each
  function says what it changes.

Every address here is 127.0.0.1; nothing is sent anywhere else.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest
import yaml

from daemon_proc import free_port
from servers import ThreadedAcceptor

__all__ = [
    "DEPLOY",
    "Alertmanager",
    "Prometheus",
    "PrometheusError",
    "TcpListener",
    "Webhook",
    "alertmanager_config",
    "fast_rules",
    "load_yaml",
    "require_binaries",
    "scrape_config",
    "tcp_listener",
    "wait_until",
]

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
PROMETHEUS_BIN = "prometheus"
ALERTMANAGER_BIN = "prometheus-alertmanager"  # Debian's name for alertmanager

JsonDict = dict[str, Any]


def require_binaries(*names: str) -> None:
    """Skip without the binaries (`make deps-test` installs prometheus and
    prometheus-alertmanager); under CI (CI=true) fail instead, as tests/lab does."""
    missing = [n for n in names if shutil.which(n) is None]
    if not missing:
        return
    reason = f"missing {', '.join(missing)} (`make deps-test` installs them)"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(reason)
    pytest.skip(reason)


def wait_until(check: Callable[[], Any], *, timeout: float = 60.0, what: str,
               detail: Callable[[], str] = lambda: "") -> Any:
    """Call `check` until it returns something truthy and return that; on timeout raise an
    AssertionError naming `what`, with `detail()` appended. A deadline, not a measurement."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}\n{detail()}")
        time.sleep(0.25)


def _http(url: str, data: bytes | None = None, timeout: float = 5.0) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=data)  # noqa: S310 - http://127.0.0.1 only
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            return int(response.status), response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return 0, b""


class PrometheusError(AssertionError):
    """The Prometheus API answered an error (a bad expression, say)."""


class _Service:
    """One binary in `workdir`, output in `<name>.log`; stopped by `stop` or the with block."""

    name = "service"

    def __init__(self, workdir: Path, argv: Sequence[str], port: int) -> None:
        self.workdir = workdir
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = workdir / f"{self.name}.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(list(argv), cwd=workdir, stdin=subprocess.DEVNULL,
                                     stdout=self._log, stderr=subprocess.STDOUT)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def log(self, tail: int = 40) -> str:
        lines = self.log_path.read_text(errors="replace").splitlines()
        return f"--- {self.name} log (last {tail} lines) ---\n" + "\n".join(lines[-tail:])

    def _wait_ready(self, timeout: float = 60.0) -> None:
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited {self.proc.returncode}\n{self.log()}")
            return _http(self.url + "/-/ready")[0] == 200
        wait_until(ready, timeout=timeout, what=f"{self.name} ready", detail=self.log)

    def get_json(self, path: str, **params: str | Sequence[str]) -> Any:
        query = urllib.parse.urlencode(params, doseq=True)
        status, body = _http(f"{self.url}{path}" + (f"?{query}" if query else ""))
        if status == 0:
            raise AssertionError(f"{self.name} does not answer {path}\n{self.log()}")
        return json.loads(body)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()

    def __enter__(self) -> _Service:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


class Prometheus(_Service):
    """`prometheus` with `config` (YAML text) written to workdir/prometheus.yml; `extra` flags
    are appended (say `--web.enable-remote-write-receiver`)."""

    name = "prometheus"

    def __init__(self, workdir: Path, config: str, extra: Sequence[str] = ()) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = workdir / "prometheus.yml"
        self.config_path.write_text(config)
        port = free_port()
        super().__init__(workdir, [
            PROMETHEUS_BIN, f"--config.file={self.config_path}",
            f"--storage.tsdb.path={workdir / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}", "--log.level=info", *extra], port)

    def __enter__(self) -> Prometheus:
        return self

    def query(self, expr: str) -> list[JsonDict]:
        """An instant query; its result vector. PrometheusError if the API refuses it."""
        answer = self.get_json("/api/v1/query", query=expr)
        if answer.get("status") != "success":
            raise PrometheusError(f"{expr!r}: {answer.get('errorType')}: {answer.get('error')}")
        if answer["data"]["resultType"] == "scalar":
            return [{"metric": {}, "value": answer["data"]["result"]}]
        result: list[JsonDict] = answer["data"]["result"]
        return result

    def wait_query(self, expr: str, check: Callable[[list[JsonDict]], bool] = bool, *,
                   timeout: float = 60.0) -> list[JsonDict]:
        """Query until `check(result)` holds (by default: not empty); return that result."""
        last: list[list[JsonDict]] = [[]]

        def attempt() -> bool:
            last[0] = self.query(expr)
            return check(last[0])
        wait_until(attempt, timeout=timeout, what=f"query {expr!r}",
                   detail=lambda: f"last result: {last[0]}\n{self.log()}")
        return last[0]

    def active_targets(self) -> list[JsonDict]:
        targets: list[JsonDict] = self.get_json("/api/v1/targets")["data"]["activeTargets"]
        return targets

    def rule_groups(self) -> list[JsonDict]:
        groups: list[JsonDict] = self.get_json("/api/v1/rules")["data"]["groups"]
        return groups


class Alertmanager(_Service):
    """`prometheus-alertmanager` with `config` written to workdir/alertmanager.yml, its gossip
    listener off (`--cluster.listen-address=`)."""

    name = "alertmanager"

    def __init__(self, workdir: Path, config: str) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = workdir / "alertmanager.yml"
        self.config_path.write_text(config)
        port = free_port()
        super().__init__(workdir, [
            ALERTMANAGER_BIN, f"--config.file={self.config_path}",
            f"--storage.path={workdir / 'data'}", f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=", "--log.level=info"], port)

    def __enter__(self) -> Alertmanager:
        return self

    def alerts(self) -> list[JsonDict]:
        """Every alert Alertmanager holds, with its status (active, suppressed: inhibitedBy)."""
        alerts: list[JsonDict] = self.get_json("/api/v2/alerts")
        return alerts


class Webhook:
    """A webhook receiver on 127.0.0.1: every POSTed notification, with the path it came to."""

    def __init__(self) -> None:
        self.notifications: list[tuple[str, JsonDict]] = []
        self._lock = threading.Lock()
        received = self.notifications
        lock = self._lock

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length) or b"{}")
                with lock:
                    received.append((self.path, body))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="webhook",
                                        daemon=True)
        self._thread.start()

    def alerts(self) -> list[tuple[str, JsonDict]]:
        """(path, alert) for every alert of every notification so far, oldest first."""
        with self._lock:
            return [(path, alert) for path, body in self.notifications
                    for alert in body.get("alerts", [])]

    def wait_alert(self, status: str, *, timeout: float = 60.0,
                   **labels: str) -> tuple[str, JsonDict]:
        """The first notified alert with `status` (firing, resolved) and these labels."""
        def find() -> tuple[str, JsonDict] | None:
            for path, alert in self.alerts():
                if alert.get("status") == status and labels.items() <= alert["labels"].items():
                    return path, alert
            return None
        found: tuple[str, JsonDict] = wait_until(
            find, timeout=timeout, what=f"a {status} notification with {labels}",
            detail=lambda: f"notified so far: {self.alerts()}")
        return found

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)

    def __enter__(self) -> Webhook:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class TcpListener(ThreadedAcceptor):
    """Accepts (and closes) connections on 127.0.0.1:`port` (0: any free port) in a thread
    until `close`; then connects there are refused. A host to take down and bring back."""

    def __init__(self, port: int = 0) -> None:
        super().__init__("127.0.0.1", port, "tcp-listener")


@contextlib.contextmanager
def tcp_listener(port: int = 0) -> Iterator[TcpListener]:
    listener = TcpListener(port)
    try:
        yield listener
    finally:
        listener.close()


# --- the shipped files, rewritten for a test ---------------------------------------------------


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def scrape_config(hostwatch_port: int, *, source: Path | None = None,
                  rule_files: Sequence[Path] = (), alertmanager_port: int | None = None,
                  interval: str = "1s", replace: Callable[[JsonDict], None] | None = None
                  ) -> str:
    """deploy/prometheus/prometheus.yml (or `source`), rewritten in memory only where a test
    must: the global scrape and evaluation intervals (to `interval`, and every job's own
    scrape_interval), the hostwatch job's static target (127.0.0.1:`hostwatch_port`), the
    rule files (absolute paths, or none), the Alertmanager target (or none); `replace` may
    change more (the TLS test points the file paths at its certificates)."""
    config: JsonDict = load_yaml(source or DEPLOY / "prometheus" / "prometheus.yml")
    config.setdefault("global", {}).update(scrape_interval=interval, evaluation_interval=interval)
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    for job in jobs.values():
        if "scrape_interval" in job:
            job["scrape_interval"] = interval
        if "scrape_timeout" in job:
            job["scrape_timeout"] = interval
    static = jobs["hostwatch"]["static_configs"]
    assert 1 == len(static), "the shipped hostwatch job has one static_configs entry"
    static[0]["targets"] = [f"127.0.0.1:{hostwatch_port}"]
    config["rule_files"] = [str(p) for p in rule_files]
    if alertmanager_port is None:
        config.pop("alerting", None)
    else:
        managers = config["alerting"]["alertmanagers"]
        managers[0]["static_configs"] = [{"targets": [f"127.0.0.1:{alertmanager_port}"]}]
    if replace is not None:
        replace(config)
    return yaml.safe_dump(config, sort_keys=False)


def fast_rules(dest: Path) -> Path:
    """A copy of deploy/prometheus/rules/hostwatch.rules.yml at `dest` with every `for:` set to
    2s: an alert fires two 1s evaluations after its condition holds. Not 0s: as with the
    shipped minutes, the failure counter of a new reason has two samples by then, so the
    `increase()` in HostwatchTargetDown's description can name it. Expressions, labels and
    annotations are unchanged."""
    rules: JsonDict = load_yaml(DEPLOY / "prometheus" / "rules" / "hostwatch.rules.yml")
    for group in rules["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = "2s"
    dest.write_text(yaml.safe_dump(rules, sort_keys=False))
    return dest


def alertmanager_config(webhook_url: str) -> str:
    """deploy/alertmanager/alertmanager.yml rewritten in memory: every webhook URL points at
    `webhook_url` (its path kept, so the test sees which receiver was chosen), and
    group_wait / group_interval are 1s (in the root route and every route that sets them).
    Routes, receivers and inhibit rules are unchanged."""
    config: JsonDict = load_yaml(DEPLOY / "alertmanager" / "alertmanager.yml")
    routes = [config["route"]]
    while routes:
        route = routes.pop()
        for key in ("group_wait", "group_interval"):
            if key in route or route is config["route"]:
                route[key] = "1s"
        routes.extend(route.get("routes", []))
    for receiver in config["receivers"]:
        for hook in receiver.get("webhook_configs", []):
            path = urllib.parse.urlsplit(hook["url"]).path
            hook["url"] = webhook_url + path
    return yaml.safe_dump(config, sort_keys=False)
