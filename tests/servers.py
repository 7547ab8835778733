"""Real servers on loopback for the probe tests; whoever starts one stops it.

- `CertAuthority`: a test CA made with `cryptography`, issuing server and client certificates
  (for 127.0.0.1, ::1 and `localhost` by default) with any validity, as PEM files.
- `ServerLoop`: an asyncio loop in a thread serving TCP (plain or TLS) with a handler, a UDP
  echo, a UDP port that never answers; `close()` stops every server it started. A thread of its
  own, so the same servers answer a prober in the test's loop and a daemon in a subprocess.
- `closed_udp_port`: a port nothing listens on (the kernel answers ICMP port unreachable).
- `Dnsmasq`: Debian's dnsmasq on a loopback port answering NOERROR (`ok.lab` and the names of
  `records`), NXDOMAIN (every other name under `lab.`) and SERVFAIL (anything under
  `fail.lab.`: forwarded to a second dnsmasq whose unsigned answers fail DNSSEC validation
  against a made-up trust anchor). It never reads resolv.conf and never forwards anywhere but
  that second dnsmasq on loopback.

Every address here is 127.0.0.1 or ::1; nothing is sent anywhere else.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import os
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from concurrent.futures import Future
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar, cast

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from hostwatch.config import parse_config
from hostwatch.model import ProbeSpec
from hostwatch.probes.base import Prober, ProbeResult
from lab.procs import stop_process

__all__ = [
    "BlockingTlsServer",
    "CertAuthority",
    "Dnsmasq",
    "Handler",
    "Issued",
    "ServerLoop",
    "ThreadedAcceptor",
    "close_at_once",
    "closed_udp_port",
    "pong",
    "probe_once",
    "require_dnsmasq",
    "say",
    "silent",
    "spec_of",
    "utc_now",
]

_T = TypeVar("_T")
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def utc_now() -> datetime.datetime:
    """Now, in UTC, to whole seconds (certificates keep whole seconds)."""
    return datetime.datetime.now(datetime.UTC).replace(microsecond=0)


# --- certificates -----------------------------------------------------------------------------


class Issued:
    """A certificate and its key as PEM files, and the certificate itself."""

    def __init__(self, cert: x509.Certificate, cert_file: Path, key_file: Path) -> None:
        self.cert = cert
        self.cert_file = cert_file
        self.key_file = key_file

    @property
    def not_after(self) -> float:
        return self.cert.not_valid_after_utc.timestamp()


class CertAuthority:
    """A CA key and self-signed certificate under `directory`; `ca_file` is its PEM."""

    def __init__(self, directory: Path, name: str = "hostwatch test CA") -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self._key = ec.generate_private_key(ec.SECP256R1())
        self.name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name),
                               x509.NameAttribute(NameOID.ORGANIZATION_NAME, "hostwatch tests")])
        now = utc_now()
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(self.name).issuer_name(self.name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=30))
            .not_valid_after(now + datetime.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self._key.public_key()),
                           critical=False)
            .sign(self._key, hashes.SHA256())
        )
        self.ca_file = directory / "ca.pem"
        self.ca_file.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, stem: str, *, common_name: str = "localhost",
              not_before: datetime.datetime | None = None,
              not_after: datetime.datetime | None = None,
              dns_names: Sequence[str] = ("localhost",),
              ips: Sequence[str] = ("127.0.0.1", "::1"), client: bool = False) -> Issued:
        """A certificate signed by this CA, written to `<stem>.pem` and `<stem>.key`."""
        now = utc_now()
        key = ec.generate_private_key(ec.SECP256R1())
        names: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
        names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
        usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([
                x509.NameAttribute(NameOID.COMMON_NAME, common_name),
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "hostwatch tests")]))
            .issuer_name(self.name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before or now - datetime.timedelta(days=1))
            .not_valid_after(not_after or now + datetime.timedelta(days=90))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                self._key.public_key()), critical=False)
        )
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert = builder.sign(self._key, hashes.SHA256())
        cert_file, key_file = self.directory / f"{stem}.pem", self.directory / f"{stem}.key"
        cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                               serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        return Issued(cert, cert_file, key_file)

    def server_context(self, issued: Issued, *, require_client_cert: bool = False
                       ) -> ssl.SSLContext:
        """A server-side context presenting `issued`; optionally requiring a client
        certificate from this CA."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(issued.cert_file, issued.key_file)
        if require_client_cert:
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(self.ca_file)
        return context


# --- TCP and UDP servers in a thread ----------------------------------------------------------


async def pong(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A banner `+OK hostwatch test\\r\\n`, then `+PONG\\r\\n` for every `PING` line."""
    writer.write(b"+OK hostwatch test\r\n")
    await writer.drain()
    while line := await reader.readline():
        if line.strip() == b"PING":
            writer.write(b"+PONG\r\n")
            await writer.drain()


async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Accepts and never says anything (the load balancer of the 502s)."""
    while await reader.read(65536):
        pass


async def close_at_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Accepts and closes the connection without a word."""
    writer.close()


def say(data: bytes) -> Handler:
    """A handler that sends `data`, then closes the connection."""
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(data)
        await writer.drain()
        writer.close()

    return handler


class _Echo(asyncio.DatagramProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # 3.11's selector datagram transport does not derive from asyncio.DatagramTransport
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self.transport.sendto(data, addr)


def _quiet(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """Test servers see failed handshakes and resets on purpose: not worth a traceback."""


class ServerLoop:
    """An event loop in a thread running test servers; a context manager that stops them."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.loop.set_exception_handler(_quiet)
        self._closers: list[Callable[[], Coroutine[Any, Any, None]]] = []
        self._sockets: list[socket.socket] = []
        self._thread = threading.Thread(target=self.loop.run_forever, name="test-servers",
                                        daemon=True)
        self._thread.start()

    def _call(self, coroutine: Coroutine[Any, Any, _T]) -> _T:
        future: Future[_T] = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        return future.result(10)

    def tcp(self, handler: Handler, *, host: str = "127.0.0.1",
            tls: ssl.SSLContext | None = None) -> int:
        """Serve `handler` on a new port of `host` (TLS with `tls`); returns the port."""
        async def start() -> int:
            server = await asyncio.start_server(handler, host, 0, ssl=tls)

            async def close() -> None:
                server.close()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(2):
                        await server.wait_closed()

            self._closers.append(close)
            port: int = server.sockets[0].getsockname()[1]
            return port

        return self._call(start())

    def udp_echo(self, host: str = "127.0.0.1") -> int:
        """Echo every datagram back on a new port of `host`; returns the port."""
        async def start() -> int:
            transport, _ = await self.loop.create_datagram_endpoint(_Echo, local_addr=(host, 0))

            async def close() -> None:
                transport.close()

            self._closers.append(close)
            port: int = transport.get_extra_info("sockname")[1]
            return port

        return self._call(start())

    def udp_silent(self, host: str = "127.0.0.1") -> int:
        """A bound UDP port that never reads: datagrams vanish, no ICMP error comes back."""
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        sock.bind((host, 0))
        self._sockets.append(sock)
        port: int = sock.getsockname()[1]
        return port

    def close(self) -> None:
        async def close_all() -> None:
            for close in reversed(self._closers):
                await close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        try:
            self._call(close_all())
        finally:
            for sock in self._sockets:
                sock.close()
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
            self.loop.close()

    def __enter__(self) -> ServerLoop:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class ThreadedAcceptor:
    """Accepts connections on `host`:`port` (0: any free port) in a thread of its own until
    `close`, handing each to `handle` (which closes it); after `close`, connects are refused."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, name: str = "acceptor") -> None:
        self._listener = socket.create_server((host, port))  # SO_REUSEADDR: re-bindable
        self._listener.settimeout(0.05)
        self.port: int = self._listener.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    def handle(self, conn: socket.socket) -> None:
        conn.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.handle(conn)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self._listener.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class BlockingTlsServer(ThreadedAcceptor):
    """TLS on blocking sockets in a thread, one connection at a time: `+OK\\r\\n` after the
    handshake. Unlike an asyncio server, OpenSSL here sends its alert when it rejects a
    handshake (say, a missing client certificate), as real servers do."""

    def __init__(self, context: ssl.SSLContext, host: str = "127.0.0.1") -> None:
        self._context = context
        super().__init__(host, 0, "tls-server")

    def handle(self, conn: socket.socket) -> None:
        conn.settimeout(5)
        with conn, contextlib.suppress(OSError), \
                self._context.wrap_socket(conn, server_side=True) as tls:
            tls.sendall(b"+OK\r\n")
            tls.recv(1024)


def closed_udp_port(host: str = "127.0.0.1") -> int:
    """A UDP port of `host` nothing is bound to right now."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
    return port


# --- dnsmasq ----------------------------------------------------------------------------------


def require_dnsmasq() -> None:
    """Skip without /usr/sbin/dnsmasq (`make deps-test` installs dnsmasq-base) or root."""
    if shutil.which("dnsmasq", path="/usr/sbin:/usr/bin:/sbin:/bin") is None:
        pytest.skip("missing dnsmasq (`make deps-test` installs dnsmasq-base)")
    if os.geteuid() != 0:
        pytest.skip("dnsmasq runs as root here (--user=root)")


def _free_port() -> int:
    """A port free for UDP and TCP on 127.0.0.1 right now (dnsmasq binds both)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port: int = udp.getsockname()[1]
            with socket.socket() as tcp:
                try:
                    tcp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no port free for UDP and TCP")


_FAKE_DIGEST = "ab" * 32  # a DS digest nothing matches: every answer of the zone is BOGUS
FAIL_ZONE = "fail.lab"


class Dnsmasq:
    """dnsmasq on 127.0.0.1:`port` (see the module docstring); stop with `close()`."""

    def __init__(self, workdir: Path, records: Mapping[str, str] | None = None) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self._procs: list[subprocess.Popen[bytes]] = []
        names = {"ok.lab": "198.18.0.5", **(records or {})}
        hosts = workdir / "dnsmasq.hosts"
        hosts.write_text("".join(f"{ip} {name}\n" for name, ip in names.items()))
        self.port = _free_port()
        upstream = _free_port()
        try:
            self._start("upstream", upstream, [f"--local=/{FAIL_ZONE}/",
                                               f"--address=/{FAIL_ZONE}/198.18.0.9"])
            self._start("front", self.port, [
                f"--addn-hosts={hosts}", "--local=/lab/", "--local-ttl=60",
                f"--server=/{FAIL_ZONE}/127.0.0.1#{upstream}", "--dnssec",
                f"--trust-anchor={FAIL_ZONE},12345,8,2,{_FAKE_DIGEST}",
                f"--trust-anchor=.,12345,8,2,{_FAKE_DIGEST}",
            ])
        except BaseException:
            self.close()
            raise

    def _start(self, name: str, port: int, extra: Sequence[str]) -> None:
        log_path = self.workdir / f"dnsmasq-{name}.log"
        argv = [
            "/usr/sbin/dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv",
            "--no-hosts", "--no-poll", "--pid-file=", "--bind-interfaces",
            "--listen-address=127.0.0.1", f"--port={port}", "--log-queries",
            "--log-facility=-", "--user=root", "--group=root", *extra,
        ]  # fmt: skip
        with log_path.open("wb") as log:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        self._procs.append(proc)
        deadline = time.monotonic() + 10
        while "started, version" not in log_path.read_text(errors="replace"):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"dnsmasq {name} did not start:\n"
                                   f"{log_path.read_text(errors='replace')}")
            time.sleep(0.02)

    def close(self) -> None:
        for proc in self._procs:
            stop_process(proc)
        self._procs.clear()

    def __enter__(self) -> Dnsmasq:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


# --- one probe, as the Runner starts it ---------------------------------------------------------
def spec_of(probes: str, host: str = "127.0.0.1") -> ProbeSpec:
    """The single probe of a one-target config whose `probes:` is the flow mapping `probes`."""
    text = f"targets:\n  - name: t\n    host: '{host}'\n    probes: {probes}\n"
    (target,) = parse_config(text, "test.yml").targets
    (spec,) = target.probes
    return spec


def probe_once(prober: Prober | Callable[[], Prober], spec: ProbeSpec, timeout: float = 1.0,
               ip: str = "127.0.0.1") -> ProbeResult:
    """One probe of `spec`, started as the Runner starts it, by `prober` (kept open) or by a
    fresh one made by calling it (closed afterwards)."""
    async def go() -> ProbeResult:
        own = prober if not callable(prober) else prober()
        try:
            future: asyncio.Future[ProbeResult] = asyncio.get_running_loop().create_future()
            own.start(ip, spec.port, timeout, future.set_result, spec=spec)
            return await future
        finally:
            if own is not prober:
                await own.close()

    return asyncio.run(go())
