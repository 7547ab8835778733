"""Real DNS servers for tests: Debian's dnsmasq, configured to answer every way a resolver fails.

`DnsServers` starts two dnsmasq processes in one network namespace (the caller's, or one of a
NetLab's through `wrap=lab.host_cmd`):

- the *front*, which tests query. It answers the names of `records` under `lab.` from an
  addn-hosts file (rewritten + SIGHUP by `set_records`); every other `*.lab` name is NXDOMAIN and
  a name that exists without the asked type (as `txt.lab`, which has only a TXT record) is an
  empty NOERROR answer (NODATA).
- the *upstream*, on loopback, to which the front forwards two zones:
  `broken.lab` — the upstream answers it unsigned, and the front validates DNSSEC with a made-up
  trust anchor for it, so every answer is BOGUS and the front says SERVFAIL;
  `refused.lab` — the upstream has no data for it and says REFUSED, which the front passes on.
- `silent.lab` is forwarded to `silent` (an address#port where nothing ever answers: a bound
  socket that is never read, or a port whose packets nftables drops). dnsmasq 2.90 then sends
  the client nothing at all, so the client times out. (Forwarding to a closed port does the
  same: dnsmasq ignores the ICMP port-unreachable.)

dnsmasq never forwards anywhere else: `--no-resolv`, no default server, `--no-hosts`, an empty
`--conf-file`. Every process started here is stopped by `close()`.

`ResolverProcess` runs hostwatch's Resolver in another process (e.g. inside a NetLab's prober
namespace) and talks JSON lines with it.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest

from .procs import LabError, kill_pid, run, stop_process

LOCAL_DOMAIN = "lab"
BROKEN_ZONE = "broken.lab"  # SERVFAIL (DNSSEC validation fails)
REFUSED_ZONE = "refused.lab"  # REFUSED from the upstream, passed on
SILENT_ZONE = "silent.lab"  # forwarded to nothing: no answer at all
TXT_ONLY = "txt.lab"  # exists with a TXT record only: NODATA for A and AAAA
# A made-up DS digest: nothing can match it, so whatever the upstream says is BOGUS.
_FAKE_DIGEST = "ab" * 32

Wrap = Callable[[Sequence[str]], list[str]]


def _identity(argv: Sequence[str]) -> list[str]:
    return list(argv)


def require_dnsmasq() -> None:
    """Skip the calling test without dnsmasq (or root); under CI (CI=true) fail instead."""
    reason = None
    if shutil.which("dnsmasq") is None:
        reason = "missing dnsmasq (`make deps-test` installs dnsmasq-base)"
    elif os.geteuid() != 0:
        reason = "needs root (dnsmasq keeps running as root to re-read the test's files)"
    if reason is None:
        return
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"DNS lab unavailable under CI: {reason}")
    pytest.skip(reason)


def free_port(host: str = "127.0.0.1") -> int:
    """A port free for both UDP and TCP on `host` right now (dnsmasq binds both)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind((host, 0))
            port = int(udp.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind((host, port))
                except OSError:
                    continue
                return port
    raise LabError("no free port for UDP and TCP")


def drop_udp_to_port(port: int, wrap: Wrap) -> None:
    """In the namespace `wrap` enters (never the machine's own): drop UDP packets arriving on
    `lo` for `port`, silently, so a server "there" never answers and no ICMP error comes back.
    The table lives as long as the namespace."""
    script = (
        "table inet hostwatch_dns_lab {\n  chain input {\n"
        "    type filter hook input priority 0; policy accept;\n"
        f'    iifname "lo" udp dport {int(port)} drop\n  }}\n}}\n'
    )
    if list(wrap(["nft"])) == ["nft"]:
        raise LabError("drop_udp_to_port only runs inside a test namespace (give `wrap`)")
    run(wrap(["nft", "-f", "-"]), input=script)


def hosts_text(records: Mapping[str, Sequence[str]]) -> str:
    """hosts(5) lines for name → addresses."""
    return "".join(f"{ip} {name}\n" for name, ips in records.items() for ip in ips)


class DnsServers:
    """The front and upstream dnsmasq (see the module docstring); a context manager."""

    def __init__(
        self,
        workdir: Path,
        records: Mapping[str, Sequence[str]],
        *,
        silent: str,
        address: str = "127.0.0.1",
        port: int | None = None,
        upstream_port: int | None = None,
        ttl: int = 1,
        wrap: Wrap = _identity,
    ) -> None:
        self.workdir = workdir
        self.address = address
        self.port = port if port is not None else free_port(address)
        self.upstream_port = upstream_port if upstream_port is not None else free_port()
        self.ttl = ttl
        self.silent = silent
        self._wrap = wrap
        self.hosts_path = workdir / "dnsmasq.hosts"
        self._procs: list[tuple[subprocess.Popen[bytes], Path]] = []
        workdir.mkdir(parents=True, exist_ok=True)
        self.hosts_path.write_text(hosts_text(records))
        try:
            self.upstream = self._start("upstream", "127.0.0.1", self.upstream_port, [
                f"--local=/{BROKEN_ZONE}/",
            ])
            up = f"127.0.0.1#{self.upstream_port}"
            self.front = self._start("front", address, self.port, [
                f"--addn-hosts={self.hosts_path}",
                f"--local=/{LOCAL_DOMAIN}/",
                f"--local-ttl={ttl}",
                f"--txt-record={TXT_ONLY},no address here",
                f"--server=/{BROKEN_ZONE}/{up}",
                f"--server=/{REFUSED_ZONE}/{up}",
                f"--server=/{SILENT_ZONE}/{silent}",
                "--dnssec",
                f"--trust-anchor={BROKEN_ZONE},12345,8,2,{_FAKE_DIGEST}",
                f"--trust-anchor=.,12345,8,2,{_FAKE_DIGEST}",
            ])
        except BaseException:
            self.close()
            raise

    @property
    def label(self) -> str:
        """How hostwatch names this server in details: address, or address#port if not 53."""
        return self.address if self.port == 53 else f"{self.address}#{self.port}"

    def _start(self, name: str, address: str, port: int,
               extra: Sequence[str]) -> subprocess.Popen[bytes]:
        log_path = self.workdir / f"dnsmasq-{name}.log"
        argv = [
            "dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv",
            "--no-hosts", "--no-poll", "--pid-file=", "--bind-interfaces",
            f"--listen-address={address}", f"--port={port}", "--log-queries",
            "--log-facility=-", "--no-negcache", "--user=root", "--group=root", *extra,
        ]  # fmt: skip
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(self._wrap(argv), stdin=subprocess.DEVNULL,
                                    stdout=log, stderr=log)
        self._procs.append((proc, log_path))
        self._wait_log(proc, log_path, "started, version", 1)
        return proc

    @staticmethod
    def _wait_log(proc: subprocess.Popen[bytes], log_path: Path, text: str, count: int,
                  timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            log = log_path.read_text(errors="replace")
            if log.count(text) >= count:
                return
            if proc.poll() is not None or time.monotonic() > deadline:
                raise LabError(f"dnsmasq did not log {text!r} ({count}x); its log:\n{log}")
            time.sleep(0.02)

    def front_log(self) -> str:
        """Everything the front dnsmasq logged (every query and how it was answered)."""
        return (self.workdir / "dnsmasq-front.log").read_text(errors="replace")

    def set_records(self, records: Mapping[str, Sequence[str]]) -> None:
        """Replace the names the front answers; returns once dnsmasq has read them."""
        marker = f"read {self.hosts_path}"
        before = self.front_log().count(marker)
        tmp = self.hosts_path.with_suffix(".tmp")
        tmp.write_text(hosts_text(records))
        tmp.replace(self.hosts_path)
        kill_pid(self.front.pid, signal.SIGHUP)
        self._wait_log(self.front, self.workdir / "dnsmasq-front.log", marker, before + 1)

    def close(self) -> None:
        """Stop both servers (safe to call twice)."""
        for proc, _log in self._procs:
            stop_process(proc)
        self._procs.clear()

    def __enter__(self) -> DnsServers:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


# --- hostwatch's Resolver in another process (another namespace) -----------------------------

# Reads one JSON command per line on stdin, answers {"reply": ...} on stdout; on_change calls
# come as {"event": "change", ...} lines at any time. Fixed code, data only on stdin.
_DRIVER_CODE = r"""
import asyncio, json, sys
from hostwatch.model import IpProtocol
from hostwatch.resolve import Resolver, lookup

def res(r):
    return {"ip": r.ip, "reason": r.reason and r.reason.value, "detail": r.detail,
            "source": r.source}

def out(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()

def changed(key, old, new):
    out({"event": "change", "host": key[0], "protocol": key[1].value, "old": res(old),
         "new": res(new)})

async def main():
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    resolver = None
    out({"ready": True})
    while line := await reader.readline():
        cmd = json.loads(line)
        op, args = cmd.pop("op"), cmd
        if op == "start":
            resolver = Resolver(args["refresh"], changed, servers=args["servers"],
                                port=args["port"], timeout=args["timeout"],
                                hosts_file=args["hosts_file"], resolv_conf=args["resolv_conf"])
            resolver.start()
            reply = None
        elif op == "update":
            await resolver.update([(h, IpProtocol(p)) for h, p in args["keys"]],
                                  timeout=args["timeout"])
            reply = None
        elif op == "get":
            reply = res(resolver.get(args["host"], IpProtocol(args["protocol"])))
        elif op == "lookup":
            reply = res(await lookup(args["host"], IpProtocol(args["protocol"]),
                                     servers=args["servers"], port=args["port"],
                                     timeout=args["timeout"], hosts_file=args["hosts_file"],
                                     resolv_conf=args["resolv_conf"]))
        else:
            raise SystemExit(f"unknown op {op}")
        out({"reply": reply})
    if resolver is not None:
        await resolver.close()

asyncio.run(main())
"""

Json = dict[str, Any]  # decoded JSON


class ResolverProcess:
    """hostwatch's resolver in a child process: `lookup`, or `start` + `update` + `get` and
    `next_event` for each on_change call. Protocols are given by their config names."""

    def __init__(self, wrap: Wrap = _identity, timeout: float = 30.0) -> None:
        self._proc = subprocess.Popen(
            wrap([sys.executable, "-c", _DRIVER_CODE]), stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self._timeout = timeout
        self._events: deque[Json] = deque()
        self._lines: queue.Queue[str] = queue.Queue()
        self._reader = threading.Thread(target=self._pump, daemon=True)
        self._reader.start()
        try:
            self._read(lambda m: m.get("ready") is True)
        except BaseException:
            self.close()
            raise

    def _pump(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            self._lines.put(line)
        self._lines.put("")  # end of output

    def _read(self, want: Callable[[Json], bool]) -> Json:
        while True:
            try:
                line = self._lines.get(timeout=self._timeout)
            except queue.Empty:
                line = ""
            if not line:
                stop_process(self._proc)
                err = self._proc.stderr.read() if self._proc.stderr else ""
                raise LabError(f"resolver process gave no answer in {self._timeout} s\n{err}")
            message: Json = json.loads(line)
            if want(message):
                return message
            self._events.append(message)

    def _call(self, op: str, **args: object) -> Any:
        assert self._proc.stdin is not None
        self._proc.stdin.write(json.dumps({"op": op, **args}) + "\n")
        self._proc.stdin.flush()
        return self._read(lambda m: "reply" in m)["reply"]

    def lookup(self, host: str, protocol: str, **args: object) -> Json:
        """resolve.lookup() once: args are servers, port, timeout, hosts_file, resolv_conf."""
        reply: Json = self._call("lookup", host=host, protocol=protocol, **args)
        return reply

    def start(self, refresh: float, **args: object) -> None:
        """Create the Resolver (args as for lookup) and start its timers."""
        self._call("start", refresh=refresh, **args)

    def update(self, keys: Sequence[tuple[str, str]], timeout: float = 5.0) -> None:
        """Resolver.update() with (host, protocol) keys."""
        self._call("update", keys=[list(k) for k in keys], timeout=timeout)

    def get(self, host: str, protocol: str) -> Json:
        """Resolver.get()."""
        reply: Json = self._call("get", host=host, protocol=protocol)
        return reply

    def next_event(self) -> Json:
        """The next on_change call (waits for it, at most the process timeout)."""
        if self._events:
            return self._events.popleft()
        return self._read(lambda m: m.get("event") == "change")

    def close(self) -> None:
        """Stop the process (closing its stdin first lets it close the resolver)."""
        if self._proc.stdin is not None:
            with contextlib.suppress(OSError):
                self._proc.stdin.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._proc.wait(5)
        stop_process(self._proc)

    def __enter__(self) -> ResolverProcess:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def resolution(ip: str | None = None, reason: str | None = None, detail: str = "",
               source: str = "") -> Json:
    """A Resolution as ResolverProcess returns it, for `assert expected == actual`."""
    return {"ip": ip, "reason": reason, "detail": detail, "source": source}


_QUERY_RE = re.compile(r"query\[(\w+)\] (\S+) from")


def queries(log: str) -> list[tuple[str, str]]:
    """(type, name) of every query in a dnsmasq log, in order."""
    return [(m.group(1), m.group(2)) for m in _QUERY_RE.finditer(log)]
