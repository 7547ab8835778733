"""Two network namespaces joined by a veth pair: a prober and a host, with nftables faults.

The prober namespace has only `lo` and its end of the veth: no link to the root namespace, no
default route, so nothing run inside it can reach the machine's real network. Addresses come from
the benchmarking ranges 198.18.0.0/15 and 2001:2::/48.
"""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

from .procs import LabError, kill_pid, pid_alive, run, stop_process

NETNS_DIR = Path("/run/netns")
PROBE_PREFIX = "hwp"
HOST_PREFIX = "hwh"
VETH = "veth0"
NFT_TABLE = "hostwatch_lab"
_NAME_RE = re.compile(rf"^(?:{PROBE_PREFIX}|{HOST_PREFIX}|hwinit)-(\d+)-(\d+)$")

# Programs run inside a namespace with the current interpreter: fixed code, data only in argv.

_PING_CODE = r"""
import ipaddress, os, select, socket, struct, sys, time
addr, timeout = sys.argv[1], float(sys.argv[2])
v6 = ipaddress.ip_address(addr).version == 6
if v6:
    s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
    req, rep = 128, 129
else:
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    req, rep = 8, 0
ident, payload = os.getpid() & 0xFFFF, b"hostwatch-lab-ping"
def csum(b):
    if len(b) % 2:
        b += b"\0"
    t = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    t = (t >> 16) + (t & 0xFFFF)
    t += t >> 16
    return ~t & 0xFFFF
c = 0 if v6 else csum(struct.pack("!BBHHH", req, 0, 0, ident, 1) + payload)
try:
    s.sendto(struct.pack("!BBHHH", req, 0, c, ident, 1) + payload, (addr, 0))
except OSError as e:
    print("send failed:", e)
    sys.exit(2)
want = ipaddress.ip_address(addr)
deadline = time.monotonic() + timeout
while (left := deadline - time.monotonic()) > 0:
    if not select.select([s], [], [], left)[0]:
        break
    data, src = s.recvfrom(4096)
    if not v6:
        data = data[(data[0] & 0x0F) * 4:]
    if len(data) < 8 or ipaddress.ip_address(src[0].split("%")[0]) != want:
        continue
    t, _, _, i, q = struct.unpack("!BBHHH", data[:8])
    if t == rep and i == ident and q == 1:
        sys.exit(0)
sys.exit(1)
"""

_SYSCTL_CODE = r"""
import sys
with open("/proc/sys/" + sys.argv[1], "w") as f:
    f.write(sys.argv[2])
"""

_TCP_CONNECT_CODE = r"""
import errno, ipaddress, socket, sys
ip, port, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
fam = socket.AF_INET6 if ipaddress.ip_address(ip).version == 6 else socket.AF_INET
s = socket.socket(fam, socket.SOCK_STREAM)
s.settimeout(timeout)
try:
    s.connect((ip, port))
    r = "open"
except TimeoutError:
    r = "timeout"
except ConnectionRefusedError:
    r = "refused"
except OSError as e:
    unreach = (errno.EHOSTUNREACH, errno.ENETUNREACH)
    r = "unreachable" if e.errno in unreach else "error:" + str(e)
print(r)
"""

_TCP_SERVER_CODE = r"""
import socket, sys
port = int(sys.argv[1])
s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.bind(("::", port))
s.listen(128)
print("ready", flush=True)
while True:
    c, _ = s.accept()
    c.close()
"""

_HTTP_GET_CODE = r"""
import json, ssl, sys, urllib.error, urllib.request
url, timeout, method = sys.argv[1], float(sys.argv[2]), sys.argv[3]
headers, insecure = json.loads(sys.argv[4]), sys.argv[5] == "1"
handlers = [urllib.request.ProxyHandler({})]
if insecure:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    handlers.append(urllib.request.HTTPSHandler(context=ctx))
opener = urllib.request.build_opener(*handlers)
req = urllib.request.Request(url, method=method, headers=headers)
try:
    with opener.open(req, timeout=timeout) as r:
        status, body = r.status, r.read()
except urllib.error.HTTPError as e:
    status, body = e.code, e.read()
except (urllib.error.URLError, OSError) as e:
    print("request failed:", getattr(e, "reason", e), file=sys.stderr)
    sys.exit(3)
sys.stdout.buffer.write(b"%d\n" % status + body)
"""


def ensure_netns_run_dir() -> None:
    """Make /run/netns the shared mount point that `ip netns add` makes (by letting it do so).

    A private mount namespace created as a *slave* of ours (see journald.py) then receives the
    namespace files that are added later, so `ip netns exec` works inside it too.
    """
    if os.path.ismount(NETNS_DIR) or shutil.which("ip") is None:
        return
    name = f"hwinit-{os.getpid()}-{next(NetLab._counter)}"
    run(["ip", "netns", "add", name])
    run(["ip", "netns", "delete", name])


class NetLab:
    """Prober and host network namespaces joined by one veth pair (see module docstring)."""

    _counter = itertools.count()

    def __init__(
        self,
        *,
        probe_ip4: str = "198.18.0.1",
        host_ip4: str = "198.18.0.2",
        probe_ip6: str = "2001:2::1",
        host_ip6: str = "2001:2::2",
    ) -> None:
        for ip in (probe_ip4, host_ip4):
            if ipaddress.IPv4Address(ip) not in ipaddress.IPv4Network("198.18.0.0/15"):
                raise ValueError(f"{ip}: lab IPv4 addresses must be in 198.18.0.0/15")
        for ip in (probe_ip6, host_ip6):
            if ipaddress.IPv6Address(ip) not in ipaddress.IPv6Network("2001:2::/48"):
                raise ValueError(f"{ip}: lab IPv6 addresses must be in 2001:2::/48")
        n = next(self._counter)
        self.probe_ns = f"{PROBE_PREFIX}-{os.getpid()}-{n}"
        self.host_ns = f"{HOST_PREFIX}-{os.getpid()}-{n}"
        self.veth = VETH
        self.probe_ip4, self.host_ip4 = probe_ip4, host_ip4
        self.probe_ip6, self.host_ip6 = probe_ip6, host_ip6
        self._drop = False
        self._loss = 0
        self._reject_ports: set[int] = set()
        self._procs: list[subprocess.Popen[str]] = []
        self._created: list[str] = []
        self._closed = False
        try:
            self._setup()
        except BaseException:
            with contextlib.suppress(Exception):
                self.close()
            raise

    def _setup(self) -> None:
        ensure_netns_run_dir()
        for ns in (self.probe_ns, self.host_ns):
            run(["ip", "netns", "add", ns])
            self._created.append(ns)
            run(["ip", "-n", ns, "link", "set", "lo", "up"])
        # Both ends are created directly inside the namespaces: nothing ever exists in the root one.
        # Distinct interface indexes matter: with equal ones (2 and 2 in two fresh namespaces) the
        # kernel treats the carrier change as non-urgent and IPv6 stays unusable for up to 1 s.
        run(["ip", "-n", self.probe_ns, "link", "add", VETH, "index", "10", "type", "veth",
             "peer", "name", VETH, "index", "20", "netns", self.host_ns])  # fmt: skip
        for ns, ip4, ip6 in (
            (self.probe_ns, self.probe_ip4, self.probe_ip6),
            (self.host_ns, self.host_ip4, self.host_ip6),
        ):
            run(["ip", "-n", ns, "addr", "add", f"{ip4}/24", "dev", VETH])
            run(["ip", "-n", ns, "-6", "addr", "add", f"{ip6}/64", "dev", VETH, "nodad"])
            run(["ip", "-n", ns, "link", "set", VETH, "up"])
        self._wait_link_up()

    def _wait_link_up(self, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        for ns in (self.probe_ns, self.host_ns):
            while True:
                (link,) = json.loads(run(["ip", "-n", ns, "-j", "link", "show", VETH]).stdout)
                if link.get("operstate") == "UP" and "NO-CARRIER" not in link.get("flags", []):
                    break
                if time.monotonic() > deadline:
                    raise LabError(f"{VETH} in {ns} did not come up: {link}")
                time.sleep(0.01)

    def sysctl(self, ns: str, key: str, value: str) -> None:
        """Set a per-namespace sysctl, e.g. `lab.sysctl(lab.probe_ns, "net.ipv4.ping_group_range",
        "0 2147483647")`. Written from inside: /proc/sys/net shows the opener's namespace."""
        if ns not in (self.probe_ns, self.host_ns):
            raise ValueError(f"{ns} is not one of this lab's namespaces")
        path = key.replace(".", "/")
        run(["ip", "netns", "exec", ns, sys.executable, "-c", _SYSCTL_CODE, path, value])

    # -- commands inside the namespaces ------------------------------------------------------

    def prober_cmd(self, argv: Sequence[str]) -> list[str]:
        """argv prefixed to run inside the prober namespace."""
        return ["ip", "netns", "exec", self.probe_ns, *argv]

    def host_cmd(self, argv: Sequence[str]) -> list[str]:
        """argv prefixed to run inside the host namespace."""
        return ["ip", "netns", "exec", self.host_ns, *argv]

    def prober_run(
        self, argv: Sequence[str], *, timeout: float = 30.0, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run argv in the prober namespace and capture its output."""
        return run(self.prober_cmd(argv), timeout=timeout, check=check)

    def host_run(
        self, argv: Sequence[str], *, timeout: float = 30.0, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run argv in the host namespace and capture its output."""
        return run(self.host_cmd(argv), timeout=timeout, check=check)

    def add_host_ip(self, ip: str) -> None:
        """Give the host one more address on the shared link (e.g. 198.18.0.10 or 2001:2::10)."""
        addr = ipaddress.ip_address(ip)
        if addr.version == 4:
            if addr not in ipaddress.IPv4Network(f"{self.host_ip4}/24", strict=False):
                raise ValueError(f"{ip} is not on the lab's IPv4 link {self.host_ip4}/24")
            run(["ip", "-n", self.host_ns, "addr", "add", f"{ip}/24", "dev", VETH])
        else:
            if addr not in ipaddress.IPv6Network(f"{self.host_ip6}/64", strict=False):
                raise ValueError(f"{ip} is not on the lab's IPv6 link {self.host_ip6}/64")
            run(["ip", "-n", self.host_ns, "-6", "addr", "add", f"{ip}/64", "dev", VETH, "nodad"])

    # -- faults on the host side -------------------------------------------------------------

    def set_drop(self, enabled: bool) -> None:
        """Host silently drops everything arriving on the veth (ICMP and TCP, v4 and v6).

        Neighbour discovery stays allowed (as ARP does for IPv4), so both families look
        "filtered" (timeouts) rather than "no such host" (unreachable). Idempotent.
        """
        self._drop = enabled
        self._apply_nft()

    def set_reject_tcp(self, port: int, enabled: bool) -> None:
        """Host answers TCP to `port` with RST ("connection refused"), even if something listens."""
        if not 0 < port < 65536:
            raise ValueError(f"bad TCP port {port}")
        if enabled:
            self._reject_ports.add(port)
        else:
            self._reject_ports.discard(port)
        self._apply_nft()

    def set_loss(self, percent: int) -> None:
        """Host drops this share (0-100) of incoming packets at random; 0 turns it off."""
        if not 0 <= percent <= 100:
            raise ValueError(f"loss must be 0..100 percent, not {percent}")
        self._loss = percent
        self._apply_nft()

    def _nft_rules(self) -> list[str]:
        rules: list[str] = []
        iif = f'iifname "{VETH}"'
        if self._drop:
            rules.append(f"{iif} drop")
        if self._reject_ports:
            ports = ", ".join(str(p) for p in sorted(self._reject_ports))
            rules.append(f"{iif} tcp dport {{ {ports} }} reject with tcp reset")
        if self._loss == 100:
            rules.append(f'{iif} drop comment "loss 100%"')
        elif self._loss:
            rules.append(f"{iif} numgen random mod 100 < {self._loss} drop")
        return rules

    def _apply_nft(self) -> None:
        # "add table + delete table" always succeeds, so the whole update is one atomic,
        # idempotent transaction whatever state the table was in.
        script = f"table inet {NFT_TABLE}\ndelete table inet {NFT_TABLE}\n"
        rules = self._nft_rules()
        if rules:
            nd = "nd-neighbor-solicit, nd-neighbor-advert, nd-router-solicit, nd-router-advert"
            body = "\n".join(f"    {r}" for r in [f"icmpv6 type {{ {nd} }} accept", *rules])
            script += (
                f"table inet {NFT_TABLE} {{\n  chain input {{\n"
                f"    type filter hook input priority 0; policy accept;\n{body}\n  }}\n}}\n"
            )
        run(self.host_cmd(["nft", "-f", "-"]), input=script)

    def nft_ruleset(self) -> str:
        """The host namespace's current nftables ruleset (for assertions and debugging)."""
        return self.host_run(["nft", "list", "ruleset"]).stdout

    # -- checks from the prober side ---------------------------------------------------------

    def ping(self, ip: str, timeout: float = 1.0) -> bool:
        """One ICMP echo from the prober namespace (raw socket, no ping binary needed)."""
        argv = [sys.executable, "-c", _PING_CODE, ip, str(timeout)]
        proc = self.prober_run(argv, timeout=timeout + 10, check=False)
        if proc.returncode not in (0, 1, 2):
            raise LabError(f"ping helper crashed: {proc.stderr.strip()}")
        return proc.returncode == 0

    def tcp_connect(self, ip: str, port: int, timeout: float = 1.0) -> str:
        """Connect from the prober: 'open', 'refused', 'timeout', 'unreachable' or 'error:...'."""
        argv = [sys.executable, "-c", _TCP_CONNECT_CODE, ip, str(port), str(timeout)]
        return self.prober_run(argv, timeout=timeout + 10).stdout.strip()

    def serve_tcp(self, port: int, timeout: float = 10.0) -> subprocess.Popen[str]:
        """Start a TCP listener (accept and close) on every host address; stopped by close()."""
        proc = subprocess.Popen(
            self.host_cmd([sys.executable, "-c", _TCP_SERVER_CODE, str(port)]),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._procs.append(proc)
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], timeout)
        line = proc.stdout.readline() if ready else ""
        if line.strip() != "ready":
            stop_process(proc)
            err = proc.stderr.read() if proc.stderr else ""
            raise LabError(f"TCP listener on port {port} did not start: {line!r} {err}")
        return proc

    def http_get(
        self,
        url: str,
        timeout: float = 5.0,
        *,
        method: str = "GET",
        headers: Mapping[str, str] | None = None,
        insecure_tls: bool = False,
    ) -> tuple[int, str]:
        """Fetch `url` from inside the prober namespace: (HTTP status, body as text).

        HTTP error statuses are returned, not raised; a failed connection raises ConnectionError.
        Proxies from the environment are ignored.
        """
        argv = [
            sys.executable, "-c", _HTTP_GET_CODE, url, str(timeout), method,
            json.dumps(dict(headers or {})), "1" if insecure_tls else "0",
        ]  # fmt: skip
        proc = self.prober_run(argv, timeout=timeout + 10, check=False)
        if proc.returncode == 3:
            raise ConnectionError(f"{method} {url} from {self.probe_ns}: {proc.stderr.strip()}")
        if proc.returncode != 0:
            raise LabError(f"http helper failed ({proc.returncode}): {proc.stderr.strip()}")
        status, _, body = proc.stdout.partition("\n")
        return int(status), body

    # -- lifetime ----------------------------------------------------------------------------

    def close(self) -> None:
        """Stop every process inside both namespaces and delete them. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        errors: list[str] = []
        for proc in self._procs:
            stop_process(proc)
        for ns in self._created:
            try:
                _kill_netns_pids(ns)
                run(["ip", "netns", "delete", ns])
            except LabError as exc:
                errors.append(str(exc))
        if errors:
            raise LabError("NetLab clean-up failed:\n" + "\n".join(errors))

    def __enter__(self) -> NetLab:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @classmethod
    def cleanup_stale(cls) -> list[str]:
        """Delete lab namespaces whose creating process is gone; returns their names."""
        removed: list[str] = []
        if not NETNS_DIR.is_dir():
            return removed
        for entry in sorted(NETNS_DIR.iterdir()):
            m = _NAME_RE.match(entry.name)
            if m is None or pid_alive(int(m.group(1))):
                continue
            _kill_netns_pids(entry.name)
            run(["ip", "netns", "delete", entry.name], check=False)
            removed.append(entry.name)
        return removed


def _kill_netns_pids(ns: str) -> None:
    """SIGKILL every process in one of *our* namespaces (started by the lab or its tests)."""
    pids = [int(p) for p in run(["ip", "netns", "pids", ns], check=False).stdout.split()]
    for pid in pids:
        kill_pid(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5.0
    while any(pid_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.02)
