"""The HTTP endpoint, served from the event loop: /metrics, /, /-/healthy, /-/ready, /-/reload.

A small HTTP/1.1 server on asyncio streams: every connection is its own task with read
timeouts and size limits, so a slow or idle client never holds up another scrape.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final, Protocol

from hostwatch.webconfig import Authenticator, WebConfig

__all__ = ["ListenAddress", "MetricsBody", "WebServer", "parse_listen_address"]

log = logging.getLogger(__name__)

# The Prometheus text format (what prometheus-client's generate_latest writes), as
# prometheus-client 0.26 labels it.
CONTENT_TYPE: Final = "text/plain; version=1.0.0; charset=utf-8"
MAX_HEADER_BYTES = 16 * 1024
READ_TIMEOUT = 10.0
MAX_REQUESTS_PER_CONNECTION = 1000


@dataclass(frozen=True, slots=True)
class ListenAddress:
    host: str  # "" means every address
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_listen_address(text: str) -> ListenAddress:
    """`host:port`, `:port` or `[v6]:port`; ValueError with what is wrong otherwise."""
    host, sep, port_text = text.rpartition(":")
    if not sep:
        raise ValueError(f"{text!r} has no port; use host:port, :port or [::1]:port")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"{text!r}: put an IPv6 address in brackets, e.g. [::1]:10115")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"{text!r}: the port must be a number from 0 to 65535")
    return ListenAddress(host, int(port_text))


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = ()


class MetricsBody(Protocol):
    """Writes a /metrics response (hostwatch.exposition.Scraper)."""

    async def serve(self, writer: asyncio.StreamWriter, head: bytes, gzipped: bool) -> None:
        """Write `head`, then the body as HTTP chunks; ConnectionAbortedError if the body
        could not be completed (the connection must then be closed)."""


@dataclass(frozen=True, slots=True)
class Streamed:
    """The /metrics response: chunked transfer encoding, written by `body`."""

    body: MetricsBody
    content_type: str = CONTENT_TYPE


_UNAUTHORIZED = Response(401, b"authentication required\n",
                         headers=(("WWW-Authenticate", 'Basic realm="hostwatch"'),))
TLS_HANDSHAKE_TIMEOUT = 10.0


_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found",
            405: "Method Not Allowed", 413: "Payload Too Large", 500: "Internal Server Error",
            503: "Service Unavailable"}


class WebServer:
    """Routes requests; `reload` is called for POST /-/reload and returns (ok, message)."""

    def __init__(self, metrics: MetricsBody,
                 reload: Callable[[], Awaitable[tuple[bool, str]]],
                 ready: Callable[[], bool], targets_json: Callable[[], bytes],
                 status_html: Callable[[str], bytes]) -> None:
        self._metrics_body = metrics
        self._targets_json = targets_json
        self._status_html = status_html
        self._reload = reload
        self._ready = ready
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._ssl: ssl.SSLContext | None = None
        self._auth = Authenticator({})

    def secure(self, web_config: WebConfig) -> None:
        """Serve with the TLS context and basic auth users of `--web.config.file`."""
        self._ssl = web_config.ssl_context
        self._auth = Authenticator(web_config.users)

    async def start(self, address: ListenAddress) -> list[tuple[str, int]]:
        """Bind and listen; returns the bound addresses. OSError (e.g. in use) propagates."""
        self._server = await asyncio.start_server(
            self._serve, host=address.host or None, port=address.port, reuse_address=True,
            limit=MAX_HEADER_BYTES, ssl=self._ssl,
            ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT if self._ssl else None)
        return [s.getsockname()[:2] for s in self._server.sockets]

    async def start_on_socket(self, sock: socket.socket) -> None:
        self._server = await asyncio.start_server(
            self._serve, sock=sock, limit=MAX_HEADER_BYTES, ssl=self._ssl,
            ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT if self._ssl else None)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._connections.add(task)
        try:
            await self._serve_requests(reader, writer)
        except (ConnectionError, TimeoutError, asyncio.IncompleteReadError,
                asyncio.LimitOverrunError, ValueError):
            pass  # the client went away, was too slow, or sent garbage
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, TimeoutError):
                async with asyncio.timeout(1.0):
                    await writer.wait_closed()
            if task is not None:
                self._connections.discard(task)

    async def _serve_requests(self, reader: asyncio.StreamReader,
                              writer: asyncio.StreamWriter) -> None:
        for _ in range(MAX_REQUESTS_PER_CONNECTION):
            async with asyncio.timeout(READ_TIMEOUT):
                head = await reader.readuntil(b"\r\n\r\n")
            method, path, headers = _parse_head(head)
            length = int(headers.get("content-length", "0") or "0")
            if length > MAX_HEADER_BYTES:
                await _write(writer, Response(413, b"request body too large\n"), False, False)
                return
            if length:
                async with asyncio.timeout(READ_TIMEOUT):
                    await reader.readexactly(length)
            if await self._auth.check(headers.get("authorization", "")):
                response = await self._route(method, path)
            else:
                response = _UNAUTHORIZED
            keep = headers.get("connection", "").lower() != "close"
            gz = "gzip" in headers.get("accept-encoding", "")
            await _write(writer, response, keep, gz, head_only=method == "HEAD")
            if not keep:
                return

    async def _route(self, method: str, target: str) -> Response | Streamed:
        path, _, query = target.partition("?")
        if path == "/-/reload":
            if method != "POST":
                return Response(405, b"use POST to reload the configuration\n")
            ok, message = await self._reload()
            return Response(200 if ok else 500, (message + "\n").encode())
        if method not in ("GET", "HEAD"):
            return Response(405, b"method not allowed\n")
        if path == "/":
            return Response(200, self._status_html(query), "text/html; charset=utf-8")
        if path == "/metrics":
            return self._metrics()
        handler = {"/-/healthy": _healthy, "/-/ready": self._ready_page,
                   "/api/v1/targets": self._targets}.get(path, _not_found)
        return handler()

    def _metrics(self) -> Streamed:
        """Rendered and written by the renderer process (hostwatch.exposition): a scrape of
        thousands of targets never holds up the event loop."""
        return Streamed(self._metrics_body)

    def _targets(self) -> Response:
        return Response(200, self._targets_json(), "application/json")

    def _ready_page(self) -> Response:
        if self._ready():
            return Response(200, b"Ready.\n")
        return Response(503, b"Not ready.\n")


def _healthy() -> Response:
    return Response(200, b"Healthy.\n")


def _not_found() -> Response:
    return Response(404, b"not found; try /metrics\n")


def _parse_head(head: bytes) -> tuple[str, str, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise ValueError("not an HTTP/1.x request line")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return parts[0], parts[1], headers


async def _write(writer: asyncio.StreamWriter, response: Response | Streamed, keep: bool,
                 gz: bool, head_only: bool = False) -> None:
    if isinstance(response, Streamed):
        await _write_streamed(writer, response, keep, gz, head_only)
        return
    body = response.body
    extra = ""
    if gz and len(body) > 1024:
        body = gzip.compress(body, compresslevel=1)
        extra = "Content-Encoding: gzip\r\n"
    head = (f"HTTP/1.1 {response.status} {_REASONS.get(response.status, '')}\r\n"
            f"Content-Type: {response.content_type}\r\nContent-Length: {len(body)}\r\n"
            + "".join(f"{k}: {v}\r\n" for k, v in response.headers) +
            f"{extra}Connection: {'keep-alive' if keep else 'close'}\r\n\r\n")
    writer.write(head.encode("latin-1"))
    if not head_only:
        writer.write(body)
    async with asyncio.timeout(READ_TIMEOUT):
        await writer.drain()


async def _write_streamed(writer: asyncio.StreamWriter, response: Streamed, keep: bool,
                          gz: bool, head_only: bool) -> None:
    """200 with a chunked body; a failure half-way cuts the connection (no final chunk), so
    the client sees an incomplete response rather than a wrong one."""
    encoding = "Content-Encoding: gzip\r\n" if gz else ""
    head = (f"HTTP/1.1 200 OK\r\nContent-Type: {response.content_type}\r\n"
            f"Transfer-Encoding: chunked\r\n{encoding}"
            f"Connection: {'keep-alive' if keep else 'close'}\r\n\r\n").encode("latin-1")
    if head_only:
        writer.write(head)
    else:
        await response.body.serve(writer, head, gz)
    async with asyncio.timeout(READ_TIMEOUT):
        await writer.drain()
