"""A tcp probe that does more than connect: optional TLS, then `send` and `expect` steps in order
(blackbox_exporter's query_response), with the time of each phase.

Phases: `connect` (the TCP handshake), `tls` (the TLS handshake), `first_byte` (from the end of
those to the first byte received). The whole probe ends within the target's timeout; an
`expect` with its own `timeout` ends sooner. The RTT of a successful probe is the whole dialogue,
from the start of the connect to the last match.

The connection is closed with a reset, like the plain connect probe (SO_LINGER 0, no TIME_WAIT
on our side), also after TLS: no close_notify is sent. The probe has read all it wanted, so a
truncation cannot matter to it, and an orderly TLS shutdown would wait for the peer's
close_notify (asyncio waits up to 30 s), holding the connection and the probe open.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import ssl
from typing import Final

from hostwatch.model import ProbeSpec, Step, TlsOptions
from hostwatch.probes.base import ProbeResult, Reason, TlsInfo
from hostwatch.probes.tcp import _new_socket, classify
from hostwatch.probes.tls import TlsContexts, classify_tls_error, tls_info

__all__ = ["MAX_READ", "MAX_SEND", "decode_escapes", "run_session", "show_bytes"]

MAX_SEND: Final = 1400
"""Bytes one `send` step (or a udp payload) may hold."""
MAX_READ: Final = 64 * 1024
"""Bytes one probe reads at most; an `expect` not matched by then fails."""

_ESCAPES: Final = {"r": "\r", "n": "\n", "t": "\t", "0": "\0", "\\": "\\"}
_HEX: Final = re.compile(r"[0-9A-Fa-f]{2}")
_SHOW: Final = 40


def decode_escapes(text: str) -> bytes:
    """`text` as bytes: UTF-8, with the escapes \\r \\n \\t \\0 \\\\ and \\xNN (one byte).

    ValueError names the first escape that is none of these. Nothing is evaluated.
    """
    out = bytearray()
    pos = 0
    while (slash := text.find("\\", pos)) >= 0:
        out += text[pos:slash].encode()
        code = text[slash + 1:slash + 2]
        if code in _ESCAPES:
            out += _ESCAPES[code].encode()
            pos = slash + 2
        elif code == "x" and _HEX.fullmatch(text, slash + 2, slash + 4):
            out.append(int(text[slash + 2:slash + 4], 16))
            pos = slash + 4
        else:
            shown = text[slash:slash + 4] if code == "x" else text[slash:slash + 2]
            shown = f"`{shown}`" if shown.isprintable() else repr(shown)
            raise ValueError(f"unknown escape {shown}; use \\r, \\n, \\t, \\0, \\\\ or \\xNN")
    out += text[pos:].encode()
    return bytes(out)


def show_bytes(data: bytes | bytearray) -> str:
    """At most the last 40 bytes of `data`, as a Python bytes literal, for a detail."""
    tail = bytes(data[-_SHOW:])
    return ("..." if len(data) > _SHOW else "") + repr(tail)


def _pattern(step: Step) -> str:
    pattern = step.expect.pattern if step.expect is not None else b""
    text = pattern.decode("utf-8", "replace")
    return repr(text if len(text) <= _SHOW else text[:_SHOW - 3] + "...")


class _Failed(Exception):  # noqa: N818  # not an error: a probe outcome, caught in run_session
    """Ends a session early with a result reason and detail."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class _Session:
    """One probe's connection: phases so far, TLS info, and the bytes read."""

    def __init__(self, ip: str, port: int, timeout: float, spec: ProbeSpec) -> None:
        self.loop = asyncio.get_running_loop()
        self.ip = ip
        self.port = port
        self.spec = spec
        self.started = self.loop.time()
        self.deadline = self.started + timeout
        self.timeout = timeout
        self.phases: list[tuple[str, float]] = []
        self.tls: TlsInfo | None = None
        self.buffer = bytearray()  # received and not yet consumed by a match
        self.total = 0  # bytes received

    def result(self, reason: Reason, detail: str = "", rtt: float | None = None) -> ProbeResult:
        return ProbeResult(reason, self.ip, rtt=rtt, detail=detail, phases=tuple(self.phases),
                           tls=self.tls)

    async def open(self, context: ssl.SSLContext | None) -> tuple[asyncio.StreamReader,
                                                                  asyncio.StreamWriter]:
        """Connect, then the TLS handshake if `context`; the streams, or _Failed."""
        try:
            sock = _new_socket(self.ip)
        except OSError as err:
            failed = classify(self.ip, err)
            raise _Failed(failed.reason, failed.detail) from None
        try:
            return await self._handshakes(sock, context)
        except BaseException:
            sock.close()  # once the streams exist, their transport owns the socket
            raise

    async def _handshakes(self, sock: socket.socket, context: ssl.SSLContext | None
                          ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        try:
            async with asyncio.timeout_at(self.deadline):
                await self.loop.sock_connect(sock, (self.ip, self.port))
        except TimeoutError:
            raise _Failed(Reason.TIMEOUT, "") from None
        except OSError as err:
            failed = classify(self.ip, err)
            raise _Failed(failed.reason, failed.detail) from None
        connected = self.loop.time()
        self.phases.append(("connect", connected - self.started))
        if context is None:
            return await asyncio.open_connection(sock=sock, limit=MAX_READ)
        tls = self.spec.tls or TlsOptions()
        try:
            async with asyncio.timeout_at(self.deadline):
                reader, writer = await asyncio.open_connection(
                    sock=sock, limit=MAX_READ, ssl=context,
                    server_hostname=tls.server_name or (self.ip if tls.verify else ""))
        except TimeoutError:
            raise _Failed(Reason.TLS_TIMEOUT, "connected, but the TLS handshake did not finish "
                                              f"within the probe's timeout {self.timeout:g}s"
                          ) from None
        except (OSError, EOFError) as err:
            raise _Failed(*classify_tls_error(err)) from None
        self.phases.append(("tls", self.loop.time() - connected))
        ssl_object = writer.get_extra_info("ssl_object")
        if isinstance(ssl_object, ssl.SSLObject):
            cipher = ssl_object.cipher()
            self.tls = tls_info(ssl_object.version(), cipher[0] if cipher else "",
                                ssl_object.getpeercert(binary_form=True))
        return reader, writer

    async def dialogue(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        ready = self.loop.time()
        for index, step in enumerate(self.spec.steps):
            where = f"steps[{index}]"
            if step.send is not None:
                await self._send(writer, step.send, where)
                continue
            if step.expect is None:
                continue
            deadline, limit = self.deadline, f"the probe's timeout {self.timeout:g}s"
            if step.timeout is not None and self.loop.time() + step.timeout < deadline:
                deadline, limit = self.loop.time() + step.timeout, f"{step.timeout:g}s"
            what = f"{where} (expect {_pattern(step)})"
            while (match := step.expect.search(self.buffer)) is None:
                data = await self._read(reader, deadline, what, limit)
                if self.total == 0:
                    self.phases.append(("first_byte", self.loop.time() - ready))
                self.total += len(data)
                self.buffer += data
            del self.buffer[:match.end()]

    async def _send(self, writer: asyncio.StreamWriter, data: bytes, where: str) -> None:
        try:
            writer.write(data)
            async with asyncio.timeout_at(self.deadline):
                await writer.drain()
        except TimeoutError:
            raise _Failed(Reason.SEND_ERROR, f"{where} (send): the peer did not take "
                                             f"{len(data)} bytes in time") from None
        except ssl.SSLError as err:
            raise _Failed(Reason.TLS_ERROR, f"{where} (send): {classify_tls_error(err)[1]}"
                          ) from None
        except OSError as err:
            detail = os.strerror(err.errno) if err.errno else str(err)
            raise _Failed(Reason.SEND_ERROR, f"{where} (send): {detail}") from None

    async def _read(self, reader: asyncio.StreamReader, deadline: float, what: str,
                    limit: str) -> bytes:
        """The next bytes, or _Failed: `what` is the step, `limit` its timeout, for details."""
        if self.total >= MAX_READ:
            raise _Failed(Reason.EXPECT_MISMATCH, f"{what}: no match in the first 64 KiB; "
                                                  f"last bytes {show_bytes(self.buffer)}")
        try:
            async with asyncio.timeout_at(deadline):
                data = await reader.read(MAX_READ - self.total)
        except TimeoutError:
            raise _Failed(Reason.EXPECT_TIMEOUT, f"{what}: no match within {limit}; "
                                                 f"{self._got()}") from None
        except ssl.SSLError as err:
            raise _Failed(Reason.TLS_ERROR, f"{what}: {classify_tls_error(err)[1]}") from None
        except OSError as err:
            detail = os.strerror(err.errno) if err.errno else str(err)
            raise _Failed(Reason.EXPECT_MISMATCH, f"{what}: {detail.lower()} before a match; "
                                                  f"{self._got()}") from None
        if not data:
            raise _Failed(Reason.EXPECT_MISMATCH, f"{what}: connection closed by the peer "
                                                  f"before a match; {self._got()}")
        return data

    def _got(self) -> str:
        if self.total == 0:
            return "received nothing"
        return f"received {self.total} bytes, unmatched {show_bytes(self.buffer)}"

    def close(self, writer: asyncio.StreamWriter | None) -> None:
        if writer is not None:
            writer.transport.abort()  # SO_LINGER 0: a reset, no close_notify, no TIME_WAIT


async def run_session(ip: str, port: int, timeout: float, spec: ProbeSpec,
                      contexts: TlsContexts) -> ProbeResult:
    """Connect, TLS if `spec.tls`, then the steps; never raises for a network outcome."""
    session = _Session(ip, port, timeout, spec)
    context = None
    if spec.tls is not None:
        try:
            context = contexts.get(spec.tls)
        except (OSError, ssl.SSLError) as err:
            why = classify_tls_error(err)[1]
            return session.result(Reason.TLS_ERROR, f"cannot load the TLS files: {why}")
    writer = None
    try:
        reader, writer = await session.open(context)
        await session.dialogue(reader, writer)
    except _Failed as failed:
        return session.result(failed.reason, failed.detail)
    finally:
        session.close(writer)
    return session.result(Reason.OK, rtt=session.loop.time() - session.started)
