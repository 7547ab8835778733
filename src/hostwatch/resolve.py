"""Name → address by family, refreshed on a timer that honours the records' TTLs.

A name is looked up in the hosts file first (/etc/hosts, re-read when it changes), then in DNS
through dnspython's asyncio resolver: the configured servers in order, or /etc/resolv.conf's
(with its search list). A failure is a state, never an exception: a `Resolution` without an
address and with a precise reason (NXDOMAIN, SERVFAIL or REFUSED, timeout, no address of the
family, anything else), so an unresolvable name fails its own probes and nothing else. Literal
addresses never touch the resolver. The rules, and why, are in docs/dns.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import ipaddress
import logging
import math
import os
import socket
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from hostwatch.model import IpProtocol
from hostwatch.probes.base import Reason

if TYPE_CHECKING:
    import dns.asyncresolver
    import dns.name

__all__ = [
    "HOSTS_FILE",
    "MIN_INTERVAL",
    "PENDING",
    "QUERY_TIMEOUT",
    "RESOLV_CONF",
    "HostsFile",
    "Key",
    "Resolution",
    "Resolver",
    "literal",
    "lookup",
    "parse_hosts",
    "refresh_delay",
]

log = logging.getLogger(__name__)

HOSTS_FILE = "/etc/hosts"
RESOLV_CONF = "/etc/resolv.conf"
QUERY_TIMEOUT = 2.0
"""Seconds one server gets to answer one question (it is asked again half-way through)."""
MIN_INTERVAL = 1.0
"""Floor of every refresh: a TTL of 0 or 1 s, and the first retry after a failure."""
MAX_CONCURRENT = 64
"""Lookups in flight at once; more wait their turn (one lasts at most servers * timeout)."""


@dataclass(frozen=True, slots=True)
class Resolution:
    """The address to probe, or why there is none (`reason`, and `detail` for people).

    `source` says where the answer came from: the hosts file's path or a server ("198.18.0.2",
    "127.0.0.1#5353"); empty for literals and for failures no single server is to blame for.
    """

    ip: str | None
    reason: Reason | None = None
    detail: str = ""
    source: str = ""


PENDING = Resolution(None, Reason.DNS, "not resolved yet")
Key = tuple[str, IpProtocol]


def literal(host: str, protocol: IpProtocol) -> Resolution | None:
    """The resolution of an IP literal (None if `host` is a name)."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    wanted = {IpProtocol.IP4: 4, IpProtocol.IP6: 6}.get(protocol)
    if wanted is not None and address.version != wanted:
        return Resolution(None, Reason.NO_ADDRESS, f"{host} is not an IPv{wanted} address")
    text = str(address)
    return Resolution(host if text == host else text)  # the config's string, not a copy


def refresh_delay(refresh: float, ttl: float | None, failures: int,
                  floor: float = MIN_INTERVAL) -> float:
    """Seconds until a name is looked up again.

    After an answer: its TTL, but at least `floor` and at most `refresh` (no TTL: `refresh`).
    After `failures` consecutive failures: `floor`, doubling per failure, at most `refresh`.
    """
    if failures > 0:
        return min(refresh, floor * 2.0 ** min(failures - 1, 32))
    if ttl is None:
        return refresh
    return min(refresh, max(ttl, floor))


# --- the hosts file ---------------------------------------------------------------------------


def _hosts_key(name: str) -> str:
    return name.rstrip(".").lower()


def parse_hosts(text: str) -> dict[str, tuple[str, ...]]:
    """Name (lower case, no trailing dot) → addresses in file order, from hosts(5) text.

    Lines that do not start with an IP address are ignored, as the C library does; a zone index
    (`fe80::1%eth0`) is dropped.
    """
    names: dict[str, list[str]] = {}
    for line in text.splitlines():
        fields = line.split("#", 1)[0].split()
        if len(fields) < 2:
            continue
        try:
            address = str(ipaddress.ip_address(fields[0].split("%", 1)[0]))
        except ValueError:
            continue
        for name in fields[1:]:
            found = names.setdefault(_hosts_key(name), [])
            if address not in found:
                found.append(address)
    return {name: tuple(addresses) for name, addresses in names.items()}


class HostsFile:
    """A hosts(5) file, read again whenever its mtime, size or inode changes; missing = empty."""

    def __init__(self, path: str = HOSTS_FILE) -> None:
        self.path = path
        self._stamp: tuple[int, int, int] | None = None
        self._names: dict[str, tuple[str, ...]] = {}

    def addresses(self, name: str) -> tuple[str, ...]:
        """Every address the file gives `name` (case and a trailing dot do not matter)."""
        self._reload()
        return self._names.get(_hosts_key(name), ())

    def _reload(self) -> None:
        try:
            st = os.stat(self.path)
            stamp: tuple[int, int, int] | None = (st.st_mtime_ns, st.st_size, st.st_ino)
        except OSError:
            stamp = None
        if stamp == self._stamp:
            return
        self._stamp = stamp
        try:
            with open(self.path, encoding="utf-8", errors="replace") as f:
                self._names = parse_hosts(f.read())
        except OSError:
            self._names = {}


# --- DNS --------------------------------------------------------------------------------------

# dnspython (~2 MB) is imported at the first lookup of a name: a daemon that watches only
# address literals never needs it.
_RDTYPES = {IpProtocol.IP4: ("A",), IpProtocol.IP6: ("AAAA",), IpProtocol.AUTO: ("AAAA", "A")}


@dataclass(frozen=True, slots=True)
class _Answer:
    """What the servers said about one (name, record type)."""

    addresses: tuple[str, ...] = ()
    ttl: float | None = None
    server: str = ""
    failure: Resolution | None = None


@dataclass(frozen=True, slots=True)
class _ServerError:
    kind: str  # "rcode" (SERVFAIL, REFUSED, …), "timeout" or "error"
    text: str


def _server_label(address: str, port: int) -> str:
    return address if port == 53 else f"{address}#{port}"


def _new_resolver(server: str, port: int, timeout: float) -> dns.asyncresolver.Resolver:
    import dns.asyncresolver  # noqa: PLC0415  # see _RDTYPES

    resolver = dns.asyncresolver.Resolver(configure=False)
    resolver.nameservers = [server]
    resolver.port = port
    resolver.timeout = timeout / 2  # one retransmission if the first datagram is lost
    resolver.lifetime = timeout
    resolver.cache = None
    return resolver


class _Dns:
    """The DNS half of a lookup: one dnspython resolver per server, asked in order."""

    def __init__(self, servers: Sequence[str], port: int, timeout: float,
                 resolv_conf: str) -> None:
        self.timeout = timeout
        self.resolv_conf = resolv_conf
        self.servers: tuple[str, ...] = ()
        self.port = port
        self._chain: list[tuple[str, dns.asyncresolver.Resolver]] = []
        self._search = False
        self._problem = ""
        self._conf_read = False
        self._conf_stamp: tuple[int, int, int] | None = None
        self.set_servers(servers, port)

    def set_servers(self, servers: Sequence[str], port: int = 53) -> None:
        addresses = tuple(str(ipaddress.ip_address(s)) for s in servers)
        if not 0 < port < 65536:
            raise ValueError(f"DNS port {port} is not in 1..65535")
        self.servers, self.port = addresses, port
        self._chain = [(_server_label(a, port), _new_resolver(a, port, self.timeout))
                       for a in addresses]
        self._search = False
        self._problem = ""
        self._conf_read = False

    def _system(self) -> None:
        """(Re)read resolv.conf when it changed; only used when no servers are configured."""
        try:
            st = os.stat(self.resolv_conf)
            stamp: tuple[int, int, int] | None = (st.st_mtime_ns, st.st_size, st.st_ino)
        except OSError:
            stamp = None
        if self._conf_read and stamp == self._conf_stamp:
            return
        self._conf_read, self._conf_stamp = True, stamp
        self._chain, self._search = [], True
        import dns.exception  # noqa: PLC0415  # see _RDTYPES
        import dns.resolver  # noqa: PLC0415

        try:
            base = dns.resolver.Resolver(filename=self.resolv_conf, configure=True)
        except (dns.exception.DNSException, OSError, ValueError) as err:
            text = str(err) if self.resolv_conf in str(err) else f"{self.resolv_conf}: {err}"
            self._problem = f"no DNS server configured: {text}"
            return
        self._problem = ""
        for server in base.nameservers:
            address = str(server)
            resolver = _new_resolver(address, base.port, self.timeout)
            resolver.search = list(base.search)
            resolver.domain = base.domain
            resolver.ndots = base.ndots
            self._chain.append((_server_label(address, base.port), resolver))

    async def query(self, name: str, rdtype: str) -> _Answer:
        """Ask each server in turn until one gives a final answer (addresses, none, NXDOMAIN)
        for records of type `rdtype` (A or AAAA)."""
        import dns.exception  # noqa: PLC0415  # see _RDTYPES
        import dns.name  # noqa: PLC0415

        if not self.servers:
            self._system()
        if not self._chain:
            return _Answer(failure=Resolution(None, Reason.DNS, f"{name}: {self._problem}"))
        try:
            qname = dns.name.from_text(name, None if self._search else dns.name.root)
        except dns.exception.DNSException as err:
            return _Answer(failure=Resolution(None, Reason.DNS,
                                              f"{name}: not a valid DNS name ({err})"))
        errors: list[_ServerError] = []
        for label, resolver in list(self._chain):
            answer = await self._ask(name, qname, rdtype, label, resolver)
            if isinstance(answer, _Answer):
                return answer
            errors.append(answer)
        return _Answer(failure=_combine(name, errors))

    async def _ask(self, name: str, qname: dns.name.Name, rdtype: str,
                   label: str, resolver: dns.asyncresolver.Resolver) -> _Answer | _ServerError:
        import dns.exception  # noqa: PLC0415  # see _RDTYPES
        import dns.resolver  # noqa: PLC0415

        try:
            answer = await resolver.resolve(qname, rdtype, search=self._search,
                                            raise_on_no_answer=False)
        except dns.resolver.NXDOMAIN as err:
            qnames: list[dns.name.Name] = err.kwargs.get("qnames") or [qname]
            tried = [q.to_text(omit_final_dot=True) for q in qnames]
            also = f" (tried {', '.join(tried)})" if len(tried) > 1 else ""
            return _Answer(server=label, failure=Resolution(
                None, Reason.DNS_NXDOMAIN, f"{name}: NXDOMAIN from {label}{also}", label))
        except dns.resolver.LifetimeTimeout:
            return _ServerError("timeout", f"no answer from {label} within {self.timeout:g} s")
        except dns.resolver.NoNameservers as err:
            return _server_error(label, err.kwargs.get("errors") or [])
        except dns.exception.DNSException as err:
            return _ServerError("error", f"{label}: {err}")
        if answer.rrset is None:
            return _Answer(server=label, failure=Resolution(
                None, Reason.NO_ADDRESS, f"{name}: no {rdtype} record (empty answer from {label})",
                label))
        addresses = tuple(str(ipaddress.ip_address(rdata.to_text())) for rdata in answer.rrset)
        return _Answer(addresses, float(answer.chaining_result.minimum_ttl), label)


def _server_error(label: str, errors: Sequence[tuple[object, ...]]) -> _ServerError:
    """The last thing a server did wrong, from dnspython's (server, tcp, port, error, …) list."""
    if not errors:
        return _ServerError("error", f"{label}: no usable answer")
    error = errors[-1][3]
    if isinstance(error, str):  # dnspython gives an unwanted rcode as its text
        return _ServerError("rcode", f"{error} from {label}")
    import dns.exception  # noqa: PLC0415  # see _RDTYPES

    if isinstance(error, dns.exception.Timeout):
        return _ServerError("timeout", f"no answer from {label}")
    if isinstance(error, ConnectionRefusedError):
        return _ServerError("error", f"{label}: connection refused (no DNS server there)")
    return _ServerError("error", f"{label}: {error or type(error).__name__}")


def _combine(name: str, errors: Sequence[_ServerError]) -> Resolution:
    """Every server failed: SERVFAIL if one said so (or REFUSED), timeout if all were silent."""
    detail = f"{name}: {'; '.join(e.text for e in errors)}"
    kinds = {e.kind for e in errors}
    if kinds == {"timeout"}:
        return Resolution(None, Reason.DNS_TIMEOUT, detail)
    if "rcode" in kinds:
        return Resolution(None, Reason.DNS_SERVFAIL, detail)
    return Resolution(None, Reason.DNS, detail)


def _routable(ip: str) -> bool:
    """True if the kernel has a route to `ip` (a UDP connect() sends nothing)."""
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.connect((ip, 9))
    except OSError:
        return False
    return True


def _prefer(addresses: Sequence[str]) -> str:
    """AUTO's choice: the first IPv6 address the host has a route to, else the first IPv4."""
    v6 = [a for a in addresses if ":" in a]
    v4 = [a for a in addresses if ":" not in a]
    if v6 and (not v4 or _routable(v6[0])):
        return v6[0]
    return v4[0]


_FAILURE_RANK = {Reason.DNS_NXDOMAIN: 0, Reason.DNS_SERVFAIL: 1, Reason.DNS_TIMEOUT: 2,
                 Reason.DNS: 3, Reason.NO_ADDRESS: 4}


class _Lookup:
    """One lookup of (name, family): hosts file, then DNS. Returns the resolution and a TTL."""

    def __init__(self, hosts: HostsFile, dns_: _Dns) -> None:
        self.hosts = hosts
        self.dns = dns_

    async def resolve(self, host: str, protocol: IpProtocol) -> tuple[Resolution, float | None]:
        fixed = literal(host, protocol)
        if fixed is not None:
            return fixed, None
        from_file = self._from_hosts(host, protocol)
        if from_file is not None:
            return from_file, None
        rdtypes = _RDTYPES[protocol]
        answers = await asyncio.gather(*(self.dns.query(host, t) for t in rdtypes))
        found = [(a, t) for a, t in zip(answers, rdtypes, strict=True) if a.addresses]
        if found:
            ip = _prefer([ip for a, _ in found for ip in a.addresses])
            server = next(a.server for a, t in found if ip in a.addresses)
            ttls = [a.ttl for a, _ in found if a.ttl is not None]
            return Resolution(ip, source=server), min(ttls, default=None)
        failures = [a.failure for a in answers if a.failure is not None]
        if len(failures) > 1 and all(f.reason is Reason.NO_ADDRESS for f in failures):
            servers = list(dict.fromkeys(a.server for a in answers))
            source = servers[0] if len(servers) == 1 else ""
            detail = f"{host}: no AAAA or A record (empty answers from {', '.join(servers)})"
            return Resolution(None, Reason.NO_ADDRESS, detail, source), None
        failures.sort(key=lambda f: _FAILURE_RANK.get(f.reason or Reason.DNS, 3))
        return failures[0], None

    def _from_hosts(self, host: str, protocol: IpProtocol) -> Resolution | None:
        addresses = self.hosts.addresses(host)
        if protocol is not IpProtocol.AUTO:
            version = 4 if protocol is IpProtocol.IP4 else 6
            addresses = tuple(a for a in addresses if (":" in a) == (version == 6))
        if not addresses:
            return None
        return Resolution(_prefer(addresses), source=self.hosts.path)


async def lookup(host: str, protocol: IpProtocol, *, servers: Sequence[str] = (),
                 port: int = 53, timeout: float = QUERY_TIMEOUT, hosts_file: str = HOSTS_FILE,
                 resolv_conf: str = RESOLV_CONF) -> Resolution:
    """Resolve `host` once (hosts file, then DNS); failures become a Resolution with a reason.

    `servers` empty means those of `resolv_conf`, with its search list.
    """
    one = _Lookup(HostsFile(hosts_file), _Dns(servers, port, timeout, resolv_conf))
    resolution, _ttl = await one.resolve(host, protocol)
    return resolution


# --- the resolver the daemon keeps ------------------------------------------------------------


@dataclass(slots=True)
class _Entry:
    resolution: Resolution = PENDING
    due: float = 0.0
    failures: int = 0
    task: asyncio.Task[None] | None = field(default=None, repr=False)


class Resolver:
    """Keeps the current resolution of every (name, ip_protocol) in use, each on its own timer.

    Each name is looked up again after `refresh_delay(refresh, ttl, failures)`; lookups run as
    separate tasks (at most `max_concurrent` at once), so a slow name never delays another.
    `on_change(key, old, new)` is called when the address of a name changes, including when it
    starts or stops resolving (`ip` None on one side); never for the first resolution.
    """

    def __init__(self, refresh: float,
                 on_change: Callable[[Key, Resolution, Resolution], None] | None = None, *,
                 servers: Sequence[str] = (), port: int = 53, timeout: float = QUERY_TIMEOUT,
                 hosts_file: str = HOSTS_FILE, resolv_conf: str = RESOLV_CONF,
                 max_concurrent: int = MAX_CONCURRENT, min_interval: float = MIN_INTERVAL
                 ) -> None:
        self._refresh = refresh
        self._on_change = on_change
        self._lookup = _Lookup(HostsFile(hosts_file),
                               _Dns(servers, port, timeout, resolv_conf))
        self._floor = min_interval
        self._limit = asyncio.Semaphore(max_concurrent)
        self._entries: dict[Key, _Entry] = {}
        self._heap: list[tuple[float, Key]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # --- configuration ------------------------------------------------------------------------
    @property
    def servers(self) -> tuple[str, ...]:
        """The configured servers; empty when those of resolv.conf are used."""
        return self._lookup.dns.servers

    def set_refresh(self, seconds: float) -> None:
        """Look names up at least every `seconds`; pending refreshes later than that move in."""
        self._refresh = seconds
        latest = time.monotonic() + seconds
        for key, entry in self._entries.items():
            if entry.task is None and entry.due > latest:
                self._schedule(key, entry, latest)
        self._wake.set()

    def set_servers(self, servers: Sequence[str], port: int = 53) -> None:
        """Use these servers (IP literals; empty: resolv.conf's). A change re-resolves every name
        at once; the same servers again change nothing. Raises ValueError for a non-address."""
        if tuple(str(ipaddress.ip_address(s)) for s in servers) == self.servers \
                and port == self._lookup.dns.port:
            return
        self._lookup.dns.set_servers(servers, port)
        now = time.monotonic()
        for key, entry in self._entries.items():
            if entry.task is None:
                entry.failures = 0
                self._schedule(key, entry, now)
        self._wake.set()

    # --- reading ------------------------------------------------------------------------------
    def get(self, host: str, protocol: IpProtocol) -> Resolution:
        """The current resolution (literals directly; PENDING before a name's first lookup)."""
        fixed = literal(host, protocol)
        if fixed is not None:
            return fixed
        entry = self._entries.get((host, protocol))
        return PENDING if entry is None else entry.resolution

    def keys(self) -> frozenset[Key]:
        """The names being tracked (literals are never tracked)."""
        return frozenset(self._entries)

    # --- tracking -----------------------------------------------------------------------------
    async def update(self, keys: Iterable[Key], timeout: float = 5.0) -> None:
        """Track exactly `keys` (names only) and resolve the new ones now, waiting at most
        `timeout` for them; lookups still running then go on and land later."""
        wanted = {k for k in keys if literal(*k) is None}
        for gone in self._entries.keys() - wanted:
            entry = self._entries.pop(gone)
            if entry.task is not None:
                entry.task.cancel()
        started: list[asyncio.Task[None]] = []
        for key in wanted - self._entries.keys():
            entry = self._entries[key] = _Entry()
            started.append(self._launch(key, entry))
        self._compact()
        if started:
            await asyncio.wait(started, timeout=timeout)

    def start(self) -> None:
        """Start refreshing on the timers (call from the event loop)."""
        if self._task is None:
            loop = asyncio.get_running_loop()
            self._task = loop.create_task(self._run(), name="resolver")
            self._task.add_done_callback(self._task_done)

    async def close(self) -> None:
        """Stop the timers and every lookup in flight."""
        tasks = [e.task for e in self._entries.values() if e.task is not None]
        if self._task is not None:
            tasks.append(self._task)
            self._task = None
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # --- inside -------------------------------------------------------------------------------
    def _schedule(self, key: Key, entry: _Entry, due: float) -> None:
        entry.due = due
        heapq.heappush(self._heap, (due, key))

    def _compact(self) -> None:
        """Drop heap items of removed or rescheduled names, so memory follows the names in use."""
        if len(self._heap) > 2 * len(self._entries) + 64:
            self._heap = [(e.due, k) for k, e in self._entries.items() if e.task is None]
            heapq.heapify(self._heap)

    def _launch(self, key: Key, entry: _Entry) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(self._refresh_one(key, entry),
                                                      name=f"resolve {key[0]} {key[1].value}")
        task.add_done_callback(self._task_done)
        entry.task = task
        return task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        """A bug in a lookup or in on_change is fatal, as anywhere in the daemon (not lost)."""
        if task.cancelled() or task.exception() is None:
            return
        task.get_loop().call_exception_handler({
            "message": f"resolver task {task.get_name()} failed",
            "exception": task.exception(), "task": task})

    async def _refresh_one(self, key: Key, entry: _Entry) -> None:
        try:
            async with self._limit:
                resolution, ttl = await self._lookup.resolve(*key)
        finally:
            entry.task = None
        if self._entries.get(key) is not entry:
            return  # removed by update() meanwhile
        old = entry.resolution
        entry.resolution = resolution
        entry.failures = 0 if resolution.ip is not None else entry.failures + 1
        delay = refresh_delay(self._refresh, ttl, entry.failures, self._floor)
        self._schedule(key, entry, time.monotonic() + delay)
        self._wake.set()
        if resolution.ip is None:
            log.debug("%s (%s): %s; again in %.3g s", key[0], key[1].value,
                      resolution.detail, delay)
        if old is not PENDING and old.ip != resolution.ip and self._on_change is not None:
            self._on_change(key, old, resolution)

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            now = time.monotonic()
            while self._heap and self._heap[0][0] <= now:
                due, key = heapq.heappop(self._heap)
                entry = self._entries.get(key)
                if entry is not None and entry.task is None and entry.due == due:
                    self._launch(key, entry)
            self._compact()
            delay = self._heap[0][0] - now if self._heap else math.inf
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(None if math.isinf(delay) else delay):
                    await self._wake.wait()
