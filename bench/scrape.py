"""Timed HTTP GETs, and just enough of the Prometheus text format to sum a few series."""

from __future__ import annotations

import gzip
import http.client
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["Sample", "Scrape", "get", "histogram_quantile", "label", "samples", "total"]

Sample = tuple[str, str, float]  # name, the text between the braces, value


@dataclass(frozen=True, slots=True)
class Scrape:
    """One response: status, seconds until the last byte, bytes on the wire, decoded body."""

    status: int
    seconds: float
    wire_bytes: int
    text: str


def get(host: str, port: int, path: str, *, gzipped: bool = False, timeout: float = 30.0,
        method: str = "GET", decode: bool = True) -> Scrape:
    """One request on a fresh connection, timed from sending it to the body's last byte.
    `decode=False` leaves the body as it came (`text` empty): a scraper that only times
    answers must not spend the CPU the daemon runs on (17 MB to decompress and decode,
    ~40 ms a scrape)."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    headers = {"Accept-Encoding": "gzip"} if gzipped else {}
    try:
        started = time.perf_counter()
        conn.request(method, path, headers=headers)
        response = conn.getresponse()
        body = response.read()
        seconds = time.perf_counter() - started
    finally:
        conn.close()
    wire = len(body)
    if not decode:
        return Scrape(response.status, seconds, wire, "")
    if response.getheader("Content-Encoding") == "gzip":
        body = gzip.decompress(body)
    return Scrape(response.status, seconds, wire, body.decode("utf-8", "replace"))


def try_get(host: str, port: int, path: str, timeout: float = 2.0) -> int:
    """The status of a GET, 0 if nothing answers."""
    try:
        return get(host, port, path, timeout=timeout).status
    except (OSError, http.client.HTTPException):
        return 0


def samples(text: str, names: Iterable[str]) -> list[Sample]:
    """Every sample of the named series (exact names, e.g. `foo_total`, `foo_bucket`)."""
    alternatives = "|".join(re.escape(n) for n in sorted(names))
    pattern = re.compile(rf"^({alternatives})(?:{{([^}}]*)}})? (\S+)$", re.MULTILINE)
    return [(m[1], m[2] or "", float(m[3])) for m in pattern.finditer(text)]


def label(labels: str, key: str) -> str | None:
    """The value of `key` in a label text such as `ip="127.0.0.1",probe="icmp"`."""
    match = re.search(rf'(?:^|,){re.escape(key)}="((?:[^"\\]|\\.)*)"', labels)
    return None if match is None else match[1]


def total(found: Iterable[Sample], **wanted: str) -> float:
    """The sum of the values whose labels include every `wanted` pair."""
    return sum(v for _, lbl, v in found if all(label(lbl, k) == w for k, w in wanted.items()))


def histogram_quantile(q: float, buckets: dict[float, float]) -> float:
    """Prometheus-style quantile from cumulative bucket counts (le -> count), interpolated."""
    bounds = sorted(buckets)
    count = buckets[bounds[-1]]
    if count <= 0:
        return 0.0
    rank = q * count
    lower, below = 0.0, 0.0
    for bound in bounds:
        if buckets[bound] >= rank:
            if bound == float("inf"):
                return lower
            span = buckets[bound] - below
            return lower + (bound - lower) * ((rank - below) / span if span else 1.0)
        lower, below = bound, buckets[bound]
    return lower
