"""TLS for tcp probes: client contexts (built once, rebuilt when their files change), what a
handshake showed, and why one failed.

The peer's certificate is read from its DER bytes by a small parser of the few X.509 fields
hostwatch reports (notAfter, subject, issuer, serial), so this works the same with verification
on or off (`getpeercert()` returns nothing useful when it is off) and needs no extra package.
Python 3.11 has no API for the verified chain (`get_verified_chain` is 3.13+), so the leaf is the
certificate reported; its notAfter is the earliest expiry the probe can see.
"""

from __future__ import annotations

import calendar
import hashlib
import os
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass

from hostwatch.model import TlsOptions
from hostwatch.probes.base import Reason, TlsInfo

__all__ = [
    "CertFields",
    "TlsContexts",
    "build_context",
    "check_files",
    "classify_tls_error",
    "parse_certificate",
    "tls_info",
]

_EXPIRED = 10  # X509_V_ERR_CERT_HAS_EXPIRED
_RECHECK = 5.0  # seconds between checks of a context's files for changes
_FORGET = 3600.0  # a context unused this long is dropped when another one is built
_VERSIONS = {"TLSv1": "TLS 1.0", "TLSv1.1": "TLS 1.1", "TLSv1.2": "TLS 1.2",
             "TLSv1.3": "TLS 1.3"}


def _no_password() -> bytes:
    """An encrypted key is refused rather than prompting on the daemon's terminal."""
    return b""


def build_context(options: TlsOptions) -> ssl.SSLContext:
    """The client context for `options`; OSError or ssl.SSLError if a file cannot be used."""
    if options.verify:
        context = ssl.create_default_context(cafile=options.ca_file)
    else:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if options.cert_file is not None:
        context.load_cert_chain(options.cert_file, options.key_file, password=_no_password)
    return context


def check_files(options: TlsOptions) -> None:
    """Load the files of `options` into a throwaway context, without the system CA store (so
    this is cheap): OSError or ssl.SSLError if one cannot be used. For the config loader."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if options.ca_file is not None:
        context.load_verify_locations(cafile=options.ca_file)
    if options.cert_file is not None:
        context.load_cert_chain(options.cert_file, options.key_file, password=_no_password)


_ContextKey = tuple[bool, str | None, str | None, str | None]
_Stamp = tuple[tuple[int, int, int], ...]


def _key(options: TlsOptions) -> _ContextKey:
    """What a context depends on: not the server name, which is per connection."""
    return (options.verify, options.ca_file, options.cert_file, options.key_file)


def _stamp(key: _ContextKey) -> _Stamp:
    """(inode, size, mtime) of each file of `key`; OSError if one is gone."""
    stamps = []
    for path in key[1:]:
        if isinstance(path, str):
            st = os.stat(path)
            stamps.append((st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(stamps)


@dataclass(slots=True)
class _Entry:
    context: ssl.SSLContext
    stamp: _Stamp
    checked: float
    used: float


class TlsContexts:
    """One context per (verify, ca_file, cert_file, key_file), shared by every probe using it.

    Its files are looked at again at most every 5 s, and the context rebuilt when one changed,
    so a renewed client certificate or CA file is used without a reload. The system CA store
    (verify without `ca_file`) is read once per context.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._entries: dict[_ContextKey, _Entry] = {}

    def get(self, options: TlsOptions) -> ssl.SSLContext:
        """The context for `options`; OSError or ssl.SSLError if its files cannot be used."""
        key, now = _key(options), self._clock()
        entry = self._entries.get(key)
        if entry is not None and now - entry.checked < _RECHECK:
            entry.used = now
            return entry.context
        stamp = _stamp(key)
        if entry is not None and stamp == entry.stamp:
            entry.checked = entry.used = now
            return entry.context
        context = build_context(options)
        self._forget_unused(now)
        self._entries[key] = _Entry(context, stamp, now, now)
        return context

    def _forget_unused(self, now: float) -> None:
        for key in [k for k, e in self._entries.items() if now - e.used > _FORGET]:
            del self._entries[key]

    def __len__(self) -> int:
        return len(self._entries)


def classify_tls_error(err: Exception) -> tuple[Reason, str]:
    """A failed handshake as a reason and a detail: `cert-expired` when verification found an
    expired certificate, else `tls-error` with OpenSSL's words."""
    if isinstance(err, ssl.SSLCertVerificationError):
        reason = Reason.CERT_EXPIRED if err.verify_code == _EXPIRED else Reason.TLS_ERROR
        return reason, f"certificate verify failed: {err.verify_message}"
    if isinstance(err, ssl.SSLError):
        return Reason.TLS_ERROR, str(err.reason or err).lower().replace("_", " ")
    if isinstance(err, ConnectionResetError | BrokenPipeError):
        return Reason.TLS_ERROR, "connection reset by the peer during the handshake"
    if isinstance(err, EOFError | ConnectionAbortedError):
        return Reason.TLS_ERROR, "connection closed by the peer during the handshake"
    if isinstance(err, OSError):
        text = os.strerror(err.errno) if err.errno else str(err)
        return Reason.TLS_ERROR, f"{err.filename}: {text}" if err.filename else text
    return Reason.TLS_ERROR, str(err)


def tls_info(version: str | None, cipher: str, der: bytes | None) -> TlsInfo:
    """TlsInfo from an SSL object's version(), cipher()[0] and getpeercert(binary_form=True).
    A certificate that cannot be parsed leaves the certificate fields empty."""
    shown = _VERSIONS.get(version or "", version or "unknown")
    if not der:
        return TlsInfo(shown, cipher)
    fingerprint = hashlib.sha256(der).hexdigest()
    try:
        cert = parse_certificate(der)
    except ValueError:
        return TlsInfo(shown, cipher, fingerprint_sha256=fingerprint)
    return TlsInfo(shown, cipher, cert.not_after, cert.subject, cert.issuer, cert.serial,
                   fingerprint)


# --- the few fields of an X.509 certificate, from DER -----------------------------------------


@dataclass(frozen=True, slots=True)
class CertFields:
    """notAfter (Unix seconds), subject and issuer as RFC 4514 strings, serial in hex."""

    not_after: float
    subject: str
    issuer: str
    serial: str


_SEQUENCE, _SET, _INTEGER, _OID = 0x30, 0x31, 0x02, 0x06
_UTC_TIME, _GENERALIZED_TIME, _EXPLICIT_0 = 0x17, 0x18, 0xA0
_STRINGS = {0x0C: "utf-8", 0x12: "ascii", 0x13: "ascii", 0x14: "latin-1", 0x16: "ascii",
            0x1A: "ascii", 0x1C: "utf-32-be", 0x1E: "utf-16-be"}
_ATTRIBUTE_NAMES = {"2.5.4.3": "CN", "2.5.4.7": "L", "2.5.4.8": "ST", "2.5.4.10": "O",
                    "2.5.4.11": "OU", "2.5.4.6": "C", "2.5.4.9": "STREET",
                    "0.9.2342.19200300.100.1.25": "DC", "0.9.2342.19200300.100.1.1": "UID"}
_Tlv = tuple[int, int, int]  # tag, first byte of the content, end of the content


def _tlv(data: bytes, pos: int, limit: int) -> _Tlv:
    """The DER element at `pos`, which must end by `limit`."""
    if pos + 2 > limit:
        raise ValueError("truncated DER")
    tag, length, start = data[pos], data[pos + 1], pos + 2
    if tag & 0x1F == 0x1F:
        raise ValueError("multi-byte DER tag")
    if length & 0x80:
        count = length & 0x7F
        if not 1 <= count <= 4 or start + count > limit:
            raise ValueError("bad DER length")
        length = int.from_bytes(data[start:start + count], "big")
        start += count
    if start + length > limit:
        raise ValueError("truncated DER")
    return tag, start, start + length


def _children(data: bytes, parent: _Tlv, tag: int = _SEQUENCE) -> list[_Tlv]:
    """The elements inside `parent`, which must have `tag`."""
    if parent[0] != tag:
        raise ValueError(f"DER tag 0x{parent[0]:02x} where 0x{tag:02x} belongs")
    out, pos = [], parent[1]
    while pos < parent[2]:
        out.append(_tlv(data, pos, parent[2]))
        pos = out[-1][2]
    return out


def parse_certificate(der: bytes) -> CertFields:
    """The fields of a DER certificate; ValueError if it is not one."""
    cert = _children(der, _tlv(der, 0, len(der)))
    if not cert:
        raise ValueError("empty certificate")
    tbs = _children(der, cert[0])
    if tbs and tbs[0][0] == _EXPLICIT_0:
        tbs = tbs[1:]  # the version
    if len(tbs) < 5 or tbs[0][0] != _INTEGER:
        raise ValueError("not a TBSCertificate")
    serial_raw = der[tbs[0][1]:tbs[0][2]]
    validity = _children(der, tbs[3])
    if len(validity) != 2:
        raise ValueError("validity is not two times")
    return CertFields(
        not_after=_time(der, validity[1]),
        subject=_name(der, tbs[4]),
        issuer=_name(der, tbs[2]),
        serial=format(int.from_bytes(serial_raw, "big", signed=True), "x"),
    )


def _time(data: bytes, element: _Tlv) -> float:
    text = data[element[1]:element[2]].decode("ascii")
    if not text.endswith("Z"):
        raise ValueError("certificate time not in UTC")
    if element[0] == _UTC_TIME and len(text) == 13:
        year = int(text[:2])
        text = ("19" if year >= 50 else "20") + text  # RFC 5280 4.1.2.5.1
    elif element[0] != _GENERALIZED_TIME or len(text) != 15:
        raise ValueError("unsupported certificate time")
    parts = [int(text[i:j]) for i, j in ((0, 4), (4, 6), (6, 8), (8, 10), (10, 12), (12, 14))]
    return float(calendar.timegm((*parts, 0, 0, 0)))


def _name(data: bytes, element: _Tlv) -> str:
    """An X.501 Name as RFC 4514 text: the last RDN first, as `cryptography` writes it."""
    rdns = []
    for rdn in _children(data, element):
        attributes = []
        for attribute in _children(data, rdn, _SET):
            oid, value = _children(data, attribute)
            dotted = _oid(data[oid[1]:oid[2]])
            name = _ATTRIBUTE_NAMES.get(dotted, dotted)
            attributes.append(f"{name}={_escape(_string(data, value))}")
        rdns.append("+".join(attributes))
    return ",".join(reversed(rdns))


def _oid(raw: bytes) -> str:
    numbers, value = [], 0
    for byte in raw:
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            numbers.append(value)
            value = 0
    if not numbers:
        raise ValueError("empty OID")
    first = min(numbers[0] // 40, 2)
    return ".".join(str(n) for n in (first, numbers[0] - 40 * first, *numbers[1:]))


def _string(data: bytes, element: _Tlv) -> str:
    raw = data[element[1]:element[2]]
    encoding = _STRINGS.get(element[0])
    if encoding is None:
        return "#" + raw.hex() if raw else ""
    return raw.decode(encoding, "replace")


def _escape(value: str) -> str:
    """RFC 4514 section 2.4 escaping."""
    if not value:
        return ""
    if value.startswith("#") and len(value) > 1 and all(c in "0123456789abcdef"
                                                        for c in value[1:]):
        return value  # a hex-encoded value (not a string type) stays as it is
    for char in '\\"+,;<>':
        value = value.replace(char, "\\" + char)
    value = value.replace("\0", "\\00")
    if value[0] in "# ":
        value = "\\" + value
    if value.endswith(" "):
        value = value[:-1] + "\\ "
    return value
