"""ICMP encoding and reply parsing: byte-for-byte against icmplib, and hostile input."""

from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st
from icmplib.sockets import ICMPv4Socket

from hostwatch.probes.icmp_packet import (
    ECHO_REPLY_V4,
    ECHO_REPLY_V6,
    EchoTemplate,
    Parsed,
    parse_v4,
    parse_v6,
)

COOKIE = b"hostwat\x01"
IDENT = 0x4242


def _icmplib_packet(identifier: int, sequence: int, payload: bytes) -> bytes:
    """icmplib's own encoder, used as the reference (no socket is opened)."""
    encoder = object.__new__(ICMPv4Socket)
    encoder._sock = None  # its __del__ closes the (absent) socket
    packet: bytes = encoder._create_packet(identifier, sequence, payload)
    return packet


def _ipv4_header(protocol: int = 1, ihl: int = 5) -> bytes:
    header = bytes([0x40 | ihl, 0]) + struct.pack("!H", 20 + 64) + bytes(5) + bytes([protocol])
    return header + bytes(ihl * 4 - len(header))


def _reply_v4(identifier: int, sequence: int, cookie: bytes = COOKIE) -> bytes:
    template = EchoTemplate(8, cookie, 56)
    request = template.build(identifier, sequence)
    return bytes([ECHO_REPLY_V4]) + request[1:]


def _reply_v6(identifier: int, sequence: int, cookie: bytes = COOKIE) -> bytes:
    request = EchoTemplate(128, cookie, 56).build(identifier, sequence)
    return bytes([ECHO_REPLY_V6]) + request[1:]


class TestEchoTemplate:
    @given(st.integers(0, 0xFFFF), st.integers(0, 0xFFFF), st.integers(8, 200))
    @settings(max_examples=300)
    def test_bytes_equal_icmplib(self, identifier: int, sequence: int, size: int) -> None:
        """The precomputed-checksum request is byte-identical to icmplib's encoder."""
        template = EchoTemplate(8, COOKIE, size)
        expected = _icmplib_packet(identifier, sequence, template.payload)
        assert expected == template.build(identifier, sequence)

    def test_payload_starts_with_cookie(self) -> None:
        """The payload is the cookie, then zero padding to the configured size."""
        template = EchoTemplate(8, COOKIE, 56)
        assert COOKIE + bytes(48) == template.payload


class TestParseReplies:
    def test_v4_reply_with_ip_header(self) -> None:
        """A raw IPv4 socket's echo reply (IP header first) yields id and sequence."""
        packet = _ipv4_header() + _reply_v4(IDENT, 7)
        assert Parsed(IDENT, 7) == parse_v4(packet, COOKIE, has_ip_header=True)

    def test_v4_reply_with_options(self) -> None:
        """An IPv4 header with options (IHL 6) is skipped by its real length."""
        packet = _ipv4_header(ihl=6) + _reply_v4(IDENT, 9)
        assert Parsed(IDENT, 9) == parse_v4(packet, COOKIE, has_ip_header=True)

    def test_v4_datagram_reply(self) -> None:
        """A datagram socket's reply has no IP header."""
        assert Parsed(IDENT, 1) == parse_v4(_reply_v4(IDENT, 1), COOKIE, has_ip_header=False)

    def test_v6_reply(self) -> None:
        """An ICMPv6 echo reply yields id and sequence."""
        assert Parsed(IDENT, 65535) == parse_v6(_reply_v6(IDENT, 65535), COOKIE)

    def test_foreign_cookie_is_not_a_reply(self) -> None:
        """A reply to someone else's ping (another payload) is ignored."""
        packet = _ipv4_header() + _reply_v4(IDENT, 7, cookie=b"\x00" * 8)
        assert parse_v4(packet, COOKIE, has_ip_header=True) is None

    def test_echo_request_is_not_a_reply(self) -> None:
        """Our own outgoing request seen on the raw socket is not a reply."""
        request = EchoTemplate(8, COOKIE, 56).build(IDENT, 3)
        assert parse_v4(_ipv4_header() + request, COOKIE, has_ip_header=True) is None

    def test_not_icmp_protocol(self) -> None:
        """An IPv4 packet whose protocol is not ICMP is ignored."""
        packet = _ipv4_header(protocol=6) + _reply_v4(IDENT, 7)
        assert parse_v4(packet, COOKIE, has_ip_header=True) is None


class TestParseErrors:
    def test_v4_unreachable_quoting_our_request(self) -> None:
        """Destination unreachable quoting our request gives type, code, id and sequence."""
        request = EchoTemplate(8, COOKIE, 56).build(IDENT, 11)
        error = bytes([3, 1, 0, 0, 0, 0, 0, 0]) + _ipv4_header() + request[:8]
        parsed = parse_v4(_ipv4_header() + error, COOKIE, has_ip_header=True)
        assert Parsed(IDENT, 11, is_error=True, icmp_type=3, icmp_code=1) == parsed

    def test_v6_unreachable_quoting_our_request(self) -> None:
        """ICMPv6 destination unreachable quoting our request (after a 40-byte header)."""
        request = EchoTemplate(128, COOKIE, 56).build(IDENT, 12)
        inner_ip = bytes([0x60]) + bytes(5) + bytes([58]) + bytes(33)
        error = bytes([1, 4, 0, 0, 0, 0, 0, 0]) + inner_ip + request[:8]
        assert Parsed(IDENT, 12, is_error=True, icmp_type=1, icmp_code=4) == parse_v6(
            error, COOKIE)

    def test_error_quoting_tcp_is_ignored(self) -> None:
        """An unreachable about a TCP segment is not about our probes."""
        error = bytes([3, 3, 0, 0, 0, 0, 0, 0]) + _ipv4_header(protocol=6) + bytes(8)
        assert parse_v4(_ipv4_header() + error, COOKIE, has_ip_header=True) is None


class TestHostileInput:
    @given(st.binary(max_size=200))
    @settings(max_examples=2000)
    def test_random_bytes_never_raise(self, data: bytes) -> None:
        """Arbitrary bytes never raise, and only parse when they carry our cookie or quote."""
        for parsed in (parse_v4(data, COOKIE, has_ip_header=True),
                       parse_v4(data, COOKIE, has_ip_header=False), parse_v6(data, COOKIE)):
            assert parsed is None or isinstance(parsed, Parsed)

    @given(st.integers(0, 63), st.integers(0, 255))
    @settings(max_examples=2000)
    def test_mutated_reply_is_never_a_different_reply(self, index: int, value: int) -> None:
        """Changing one byte of a valid reply gives either no reply or one still ours."""
        good = bytearray(_reply_v6(IDENT, 5))
        good[index] = value
        parsed = parse_v6(bytes(good), COOKIE)
        if parsed is not None and not parsed.is_error:
            assert good[0] == ECHO_REPLY_V6
            assert bytes(good[8:16]) == COOKIE

    @given(st.binary(min_size=0, max_size=63))
    def test_truncated_reply_is_ignored(self, prefix: bytes) -> None:
        """Any strict prefix of a reply shorter than header and cookie is not a reply."""
        truncated = _reply_v6(IDENT, 5)[: len(prefix) % 16]
        assert parse_v6(truncated, COOKIE) is None
