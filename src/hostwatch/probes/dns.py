"""The dns prober: ask the target (a DNS server) one question over UDP and check the answer.

This watches DNS servers themselves; how hostwatch resolves its own target names is
`hostwatch.resolve`. The message is built and parsed by dnspython and sent over asyncio-dgram
(`hostwatch.probes.udp.exchange`: a refused port is `refused`, silence `timeout`). The RTT is
the query time. Then, in order: a reply that is not a DNS response to this query (unparsable,
another id or question) is `dns-bad-reply`; an rcode not in `expect_rcode` is `dns-rcode`; an
answer section without `answer_contains` or without a record matching `answer_matches` is
`dns-answer-mismatch`. A truncated (TC) reply is checked as it is; there is no retry over TCP.
"""

from __future__ import annotations

import ipaddress

import dns.exception
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype

from hostwatch.model import DnsOptions, ProbeSpec
from hostwatch.probes.base import DoneCallback, ProbeResult, Reason
from hostwatch.probes.udp import TaskSet, exchange

__all__ = ["DnsProber", "check_reply", "make_query", "same_record"]

_SHOW_RECORDS = 3


def make_query(options: DnsOptions) -> dns.message.Message:
    """A new query (random id) for the name and type of `options`."""
    query = dns.message.make_query(options.name, dns.rdatatype.from_text(options.rdtype))
    if not options.recursion_desired:
        query.flags &= ~dns.flags.RD
    return query


def same_record(text: str, wanted: str) -> bool:
    """Whether a record's data `text` is `wanted`: the same text, the same IP address, or the
    same domain name (case and the final dot aside)."""
    if text == wanted:
        return True
    try:
        return ipaddress.ip_address(text) == ipaddress.ip_address(wanted)
    except ValueError:
        return text.rstrip(".").lower() == wanted.rstrip(".").lower()


def _records(texts: list[str]) -> str:
    if not texts:
        return "the answer is empty"
    shown = ", ".join(texts[:_SHOW_RECORDS])
    more = f" and {len(texts) - _SHOW_RECORDS} more" if len(texts) > _SHOW_RECORDS else ""
    return f"the answer has {shown}{more}"


def check_reply(query: dns.message.Message, data: bytes, options: DnsOptions, ip: str,
                rtt: float) -> ProbeResult:
    """The result of the reply `data` to `query`."""
    asked = f"{options.name} {options.rdtype}"
    try:
        reply = dns.message.from_wire(data)
    except (dns.exception.DNSException, ValueError) as err:
        return ProbeResult(Reason.DNS_BAD_REPLY, ip, detail=(
            f"{asked}: {len(data)} bytes that are not a DNS message ({err})"))
    if not query.is_response(reply):
        return ProbeResult(Reason.DNS_BAD_REPLY, ip, detail=(
            f"{asked}: the reply does not answer the query (flags, id or question differ)"))
    rcode = dns.rcode.to_text(reply.rcode())
    if rcode not in options.rcodes:
        return ProbeResult(Reason.DNS_RCODE, ip, detail=(
            f"{asked}: {rcode}, expected {' or '.join(options.rcodes)}"))
    texts = [rdata.to_text() for rrset in reply.answer for rdata in rrset]
    contains = options.answer_contains
    if contains is not None and not any(same_record(t, contains) for t in texts):
        return ProbeResult(Reason.DNS_ANSWER_MISMATCH, ip, detail=(
            f"{asked}: no record {contains!r}; {_records(texts)}"))
    pattern = options.answer_matches
    if pattern is not None and not any(pattern.search(t) for t in texts):
        return ProbeResult(Reason.DNS_ANSWER_MISMATCH, ip, detail=(
            f"{asked}: no record matches {pattern.pattern!r}; {_records(texts)}"))
    return ProbeResult(Reason.OK, ip, rtt=rtt)


class DnsProber:
    """The `Prober` for dns: one question per probe, one connected datagram socket."""

    name = "dns"

    def __init__(self) -> None:
        self._tasks = TaskSet()

    def start(self, ip: str, port: int | None, timeout: float, done: DoneCallback, *,
              spec: ProbeSpec | None = None) -> None:
        if port is None or spec is None or spec.dns is None:
            raise ValueError("a dns probe needs a port and its options")
        self._tasks.add(self._run(ip, port, timeout, done, spec.dns))

    async def _run(self, ip: str, port: int, timeout: float, done: DoneCallback,
                   options: DnsOptions) -> None:
        query = make_query(options)
        outcome = await exchange(ip, port, query.to_wire(), timeout)
        if isinstance(outcome, ProbeResult):
            done(outcome)
            return
        done(check_reply(query, outcome.data, options, ip, outcome.rtt))

    def in_flight(self) -> int:
        return len(self._tasks)

    async def close(self) -> None:
        await self._tasks.close()
