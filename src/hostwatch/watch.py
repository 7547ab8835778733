"""A watch is one probe of one target: its config, its state, and firing it.

`Watches` is the set built from a Config. Building a new set from a new Config reuses the
`Watch` of every unchanged (target, probe), so a reload keeps its state, counters and phase.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import replace

from hostwatch.faults import FaultInjector
from hostwatch.health import Policy
from hostwatch.model import (
    Config,
    IpProtocol,
    MaintenanceWindow,
    ProbeKind,
    ProbeSpec,
    TargetConfig,
)
from hostwatch.probes.base import Prober, ProbeResult, Reason
from hostwatch.resolve import Resolution, Resolver, literal
from hostwatch.state import ProbeState, Transition
from hostwatch.table import StateTable

__all__ = ["Runner", "Watch", "WatchKey", "Watches"]

WatchKey = tuple[str, ProbeKind, IpProtocol]
TransitionListener = Callable[["Watch", Transition], None]


class Watch:
    """One probe of one target (per address family for `ip_protocol: dual`), with its state."""

    __slots__ = ("fixed", "in_flight", "key", "maintenance", "protocol", "spec", "state",
                 "target", "version")

    def __init__(self, target: TargetConfig, spec: ProbeSpec, protocol: IpProtocol,
                 buckets: tuple[float, ...], table: StateTable | None = None) -> None:
        """`buckets`: the RTT histogram's upper bounds; empty for no histogram. `table`: where
        the state publishes its numbers (a table of its own if None)."""
        self.target = target
        self.spec = spec
        self.protocol = protocol
        # Made once: the Watches of every reload use this very tuple as the key.
        self.key: WatchKey = (target.name, spec.kind, protocol)
        self.state = ProbeState(Policy.of(target), target.window, buckets, table)
        self.in_flight = False
        self.maintenance: tuple[MaintenanceWindow, ...] = ()
        # Counts the changes of what the /metrics renderer is told about this watch (its
        # definition, histogram, maintenance windows): hostwatch.exposition.client.
        self.version = 0
        # An IP literal resolves to itself: parsed once here, not at every probe (~4 µs).
        # Adopting a new definition keeps host and ip_protocol, so this stays right. The
        # address alone (the config's own string) where it is usable: no object per watch.
        fixed = literal(target.host, protocol)
        self.fixed: str | Resolution | None = (
            fixed.ip if fixed is not None and fixed.ip is not None else fixed)

    @property
    def buckets(self) -> tuple[float, ...]:
        """The RTT histogram's upper bounds (the state's); empty for no histogram."""
        return self.state.buckets

    @property
    def interval(self) -> float:
        return self.target.interval

    @property
    def probe_name(self) -> str:
        """The probe's identity for scheduling: `icmp`, or `icmp/ip6` for one family of a
        dual-stack target."""
        if self.target.ip_protocol is IpProtocol.DUAL:
            return f"{self.spec.kind.value}/{self.protocol.value}"
        return self.spec.kind.value

    def active_maintenance(self, now: float) -> MaintenanceWindow | None:
        return next((w for w in self.maintenance if w.active(now)), None)

    def can_keep(self, target: TargetConfig, spec: ProbeSpec,
                  buckets: tuple[float, ...]) -> bool:
        """True if this watch can go on as `target`'s: the very same definition (a reload
        keeps unchanged targets' objects), or one it can adopt (`can_adopt`)."""
        return (self.target is target and self.buckets == buckets) or self.can_adopt(target,
                                                                                      spec)

    def can_adopt(self, target: TargetConfig, spec: ProbeSpec) -> bool:
        """True if the state stays meaningful under the new definition: same address, probe
        and window. Labels, thresholds, interval, timeout and the histogram may change."""
        old = self.target
        return (old.host, old.ip_protocol, old.window, self.spec) == (
            target.host, target.ip_protocol, target.window, spec)

    def adopt(self, target: TargetConfig, buckets: tuple[float, ...]) -> None:
        """Take the new definition, keeping health, counters and window; the RTT histogram
        starts over if its buckets changed (or it was switched on or off)."""
        self.target = target
        self.state.tracker.set_policy(Policy.of(target))
        if buckets != self.buckets:
            self.state.set_buckets(buckets)
        self.version += 1


class Watches:
    """All watches of one config, in config order, and the table their states publish to."""

    def __init__(self, watches: list[Watch], table: StateTable | None = None) -> None:
        self._by_key = {w.key: w for w in watches}
        self.table = table if table is not None else StateTable()

    @classmethod
    def build(cls, config: Config, previous: Watches | None = None) -> Watches:
        """The watches of `config`, reusing `previous`'s unchanged ones (and its table). The
        watches of `previous` that are not reused keep their rows until `retire`. The table
        makes room for the new ones first, at once (hostwatch.table.StateTable.reserve)."""
        old = previous._by_key if previous is not None else {}
        table = previous.table if previous is not None else StateTable()
        plan: list[tuple[TargetConfig, ProbeSpec, IpProtocol, tuple[float, ...],
                         tuple[MaintenanceWindow, ...], Watch | None]] = []
        for target in config.targets:
            if not config.shard.owns(target.name):
                continue  # another instance of the fleet probes it
            windows = tuple(w for w in config.maintenance if w.selects(target))
            buckets = config.histogram_buckets if target.rtt_histogram else ()
            for spec in target.probes:
                for protocol in target.ip_protocol.families():
                    kept = old.get((target.name, spec.kind, protocol))
                    if kept is not None and not kept.can_keep(target, spec, buckets):
                        kept = None
                    plan.append((target, spec, protocol, buckets, windows, kept))
        _reserve(table, plan)
        out: list[Watch] = []
        for target, spec, protocol, buckets, windows, kept in plan:
            if kept is None:
                watch = Watch(target, spec, protocol, buckets, table)
            else:
                watch = kept
                if kept.target is not target or kept.buckets != buckets:
                    kept.adopt(target, buckets)
            if watch.maintenance != windows:
                watch.maintenance = windows
                watch.version += 1
            out.append(watch)
        return cls(out, table)

    def retire(self, replaced: Watches) -> None:
        """Release the rows of `replaced`'s watches that this set did not keep (after the
        swap: until then they may still be probing)."""
        for key, watch in replaced._by_key.items():
            if self._by_key.get(key) is not watch:
                watch.state.release()

    def __iter__(self) -> Iterator[Watch]:
        return iter(self._by_key.values())

    def __len__(self) -> int:
        return len(self._by_key)

    def get(self, key: WatchKey) -> Watch | None:
        return self._by_key.get(key)


def _reserve(table: StateTable, plan: Sequence[tuple[TargetConfig, ProbeSpec, IpProtocol,
                                                       tuple[float, ...], object,
                                                       Watch | None]]) -> None:
    """Make room in `table` for what `plan` will allocate: rows and windows of the new
    watches, histograms of the new and of the kept ones whose buckets change."""
    rows = 0
    windows: dict[int, int] = {}
    hists: dict[int, int] = {}
    for target, _spec, _protocol, buckets, _windows, kept in plan:
        if kept is None:
            rows += 1
            windows[target.window] = windows.get(target.window, 0) + 1
        if buckets and (kept is None or kept.buckets != buckets):
            hists[len(buckets) + 2] = hists.get(len(buckets) + 2, 0) + 1
    table.reserve(rows, windows, hists)


class Runner:
    """Fires watches: resolves, starts the prober, records the result, reports transitions."""

    def __init__(self, probers: Mapping[ProbeKind, Prober], resolver: Resolver,
                 on_transition: TransitionListener,
                 clock: Callable[[], float] = time.time) -> None:
        self._probers = probers
        self._resolver = resolver
        self._on_transition = on_transition
        self._clock = clock
        self._faults = FaultInjector()
        self.skipped_in_flight = 0

    def fire(self, watch: Watch) -> None:
        if watch.in_flight:
            self.skipped_in_flight += 1
            return
        target = watch.target
        fixed = watch.fixed
        if isinstance(fixed, str):  # an address literal: nothing to look up or to time
            ip, resolved = fixed, 0.0
        else:
            if fixed is None:
                asked = time.monotonic()
                resolution = self._resolver.get(target.host, watch.protocol)
                resolved = time.monotonic() - asked
            else:  # a literal of the other address family
                resolution, resolved = fixed, 0.0
            if resolution.ip is None:
                reason = resolution.reason or Reason.DNS
                self._record(watch, ProbeResult(reason, "", detail=resolution.detail))
                return
            ip = resolution.ip
        watch.in_flight = True
        prober = self._probers[watch.spec.kind]
        prober.start(ip, watch.spec.port, target.timeout,
                     lambda result: self._done(watch, result, resolved), spec=watch.spec)

    def _done(self, watch: Watch, result: ProbeResult, resolved: float = 0.0) -> None:
        watch.in_flight = False
        if result.phases:  # a probe that times its phases: the address lookup is the first
            result = replace(result, phases=(("resolve", resolved), *result.phases))
        if self._faults.armed:
            self._faults.on_result()
        self._record(watch, result)

    def _record(self, watch: Watch, result: ProbeResult) -> None:
        transition = watch.state.record(result, self._clock())
        if transition is not None:
            self._on_transition(watch, transition)
