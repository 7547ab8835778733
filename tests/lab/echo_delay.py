"""A user-space ICMP echo responder that answers after a fixed delay (netem is not available
here, so delay is made in user space). Run inside the lab's host namespace with the kernel's
own echo replies off (`net.ipv4.icmp_echo_ignore_all = 1`):

    python echo_delay.py SECONDS

It answers every IPv4 echo request with an echo reply carrying the same identifier, sequence
and payload, SECONDS later, from the address it was sent to. Prints `ready` once listening;
runs until killed. Test-only; IPv4 only.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import sys

ECHO_REQUEST, ECHO_REPLY = 8, 0


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071)."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return int(~total & 0xFFFF)


def reply_for(packet: bytes) -> tuple[bytes, str] | None:
    """The echo reply to an IPv4 packet holding an echo request, and where to send it."""
    ihl = (packet[0] & 0x0F) * 4
    icmp = packet[ihl:]
    if len(icmp) < 8 or icmp[0] != ECHO_REQUEST or icmp[1] != 0:
        return None
    body = bytes([ECHO_REPLY, 0, 0, 0]) + icmp[4:]
    body = body[:2] + struct.pack("!H", checksum(body)) + body[4:]
    return body, socket.inet_ntoa(packet[12:16])


async def serve(delay: float) -> None:
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    sock.setblocking(False)

    def readable() -> None:
        while True:
            try:
                packet = sock.recv(65535)
            except BlockingIOError:
                return
            answer = reply_for(packet)
            if answer is not None:
                loop.call_later(delay, sock.sendto, answer[0], (answer[1], 0))

    loop.add_reader(sock.fileno(), readable)
    print("ready", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(serve(float(sys.argv[1])))
