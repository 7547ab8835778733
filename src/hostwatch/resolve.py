"""Name → address, with the address family preference, refreshed on a timer.

A resolution failure is a state (`Reason.DNS` or `Reason.NO_ADDRESS` with the resolver's
text), never an exception: an unresolvable name keeps failing its own probes and nothing else.
Literal addresses never touch the resolver.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from hostwatch.model import IpProtocol
from hostwatch.probes.base import Reason

__all__ = ["Resolution", "Resolver"]

log = logging.getLogger(__name__)

_FAMILIES = {IpProtocol.AUTO: socket.AF_UNSPEC, IpProtocol.IP4: socket.AF_INET,
             IpProtocol.IP6: socket.AF_INET6}


@dataclass(frozen=True, slots=True)
class Resolution:
    """The address to probe, or why there is none (`reason` DNS / NO_ADDRESS)."""

    ip: str | None
    reason: Reason | None = None
    detail: str = ""


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
    return Resolution(str(address))


class Resolver:
    """Keeps the current resolution of every (name, ip_protocol) in use."""

    def __init__(self, refresh: float,
                 on_change: Callable[[Key, Resolution, Resolution], None] | None = None) -> None:
        self._refresh = refresh
        self._on_change = on_change
        self._current: dict[Key, Resolution] = {}
        self._task: asyncio.Task[None] | None = None

    def set_refresh(self, seconds: float) -> None:
        self._refresh = seconds

    def get(self, host: str, protocol: IpProtocol) -> Resolution:
        fixed = literal(host, protocol)
        if fixed is not None:
            return fixed
        return self._current.get((host, protocol), PENDING)

    async def update(self, keys: Iterable[Key], timeout: float = 5.0) -> None:
        """Track exactly `keys` (names only) and resolve the new ones now, within `timeout`."""
        wanted = {k for k in keys if literal(*k) is None}
        for gone in set(self._current) - wanted:
            del self._current[gone]
        new = [k for k in wanted if k not in self._current]
        for key in new:
            self._current[key] = PENDING
        if new:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await asyncio.gather(*(self._resolve(k) for k in new))

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="resolver")

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self._refresh)
            await asyncio.gather(*(self._resolve(k) for k in list(self._current)))

    async def _resolve(self, key: Key) -> None:
        host, protocol = key
        result = await lookup(host, protocol)
        old = self._current.get(key)
        if key not in self._current:
            return  # removed by a reload meanwhile
        self._current[key] = result
        if old is not None and old != result and old is not PENDING and self._on_change:
            self._on_change(key, old, result)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


async def lookup(host: str, protocol: IpProtocol) -> Resolution:
    """Resolve `host` once; failures become a Resolution with the resolver's message."""
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, None, family=_FAMILIES[protocol],
                                       type=socket.SOCK_DGRAM)
    except socket.gaierror as err:
        reason = Reason.NO_ADDRESS if err.errno in _NO_DATA else Reason.DNS
        return Resolution(None, reason, f"{host}: {err.strerror}")
    except OSError as err:
        return Resolution(None, Reason.DNS, f"{host}: {err}")
    for family, *_rest, sockaddr in infos:
        if family in (socket.AF_INET, socket.AF_INET6):
            return Resolution(str(ipaddress.ip_address(str(sockaddr[0]).split("%")[0])))
    return Resolution(None, Reason.NO_ADDRESS, f"{host}: no address for {protocol.value}")


_NO_DATA = {getattr(socket, "EAI_NODATA", -5), getattr(socket, "EAI_ADDRFAMILY", -9)}
