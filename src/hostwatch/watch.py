"""A watch is one probe of one target: its config, its state, and firing it.

`Watches` is the set built from a Config. Building a new set from a new Config reuses the
`Watch` of every unchanged (target, probe), so a reload keeps its state, counters and phase.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping

from hostwatch.model import Config, ProbeKind, ProbeSpec, TargetConfig
from hostwatch.probes.base import Prober, ProbeResult, Reason
from hostwatch.resolve import Resolver
from hostwatch.state import ProbeState, Transition

__all__ = ["Watch", "WatchKey", "Watches"]

WatchKey = tuple[str, ProbeKind]
TransitionListener = Callable[["Watch", Transition], None]


class Watch:
    """One probe of one target, with its state; `fire` starts a probe unless one is running."""

    __slots__ = ("buckets", "in_flight", "spec", "state", "target")

    def __init__(self, target: TargetConfig, spec: ProbeSpec, buckets: tuple[float, ...]):
        self.target = target
        self.spec = spec
        self.buckets = buckets
        self.state = ProbeState(target.failure_threshold, target.success_threshold,
                                target.window, buckets)
        self.in_flight = False

    @property
    def key(self) -> WatchKey:
        return (self.target.name, self.spec.kind)

    @property
    def interval(self) -> float:
        return self.target.interval

    def can_adopt(self, target: TargetConfig, spec: ProbeSpec,
                  buckets: tuple[float, ...]) -> bool:
        """True if the state stays meaningful under the new definition: same address, probe,
        window and buckets. Labels, thresholds, interval and timeout may change."""
        old = self.target
        return (old.host, old.ip_protocol, old.window, self.spec, self.buckets) == (
            target.host, target.ip_protocol, target.window, spec, buckets)

    def adopt(self, target: TargetConfig) -> None:
        """Take the new definition, keeping health, counters and window."""
        self.target = target
        self.state.failure_threshold = target.failure_threshold
        self.state.success_threshold = target.success_threshold


class Watches:
    """All watches of one config, in config order."""

    def __init__(self, watches: list[Watch]) -> None:
        self._by_key = {w.key: w for w in watches}

    @classmethod
    def build(cls, config: Config, previous: Watches | None = None) -> Watches:
        old = previous._by_key if previous is not None else {}
        out: list[Watch] = []
        for target in config.targets:
            for spec in target.probes:
                kept = old.get((target.name, spec.kind))
                if kept is not None and kept.can_adopt(target, spec, config.histogram_buckets):
                    kept.adopt(target)
                    out.append(kept)
                else:
                    out.append(Watch(target, spec, config.histogram_buckets))
        return cls(out)

    def __iter__(self) -> Iterator[Watch]:
        return iter(self._by_key.values())

    def __len__(self) -> int:
        return len(self._by_key)

    def get(self, key: WatchKey) -> Watch | None:
        return self._by_key.get(key)


class Runner:
    """Fires watches: resolves, starts the prober, records the result, reports transitions."""

    def __init__(self, probers: Mapping[ProbeKind, Prober], resolver: Resolver,
                 on_transition: TransitionListener,
                 clock: Callable[[], float] = time.time) -> None:
        self._probers = probers
        self._resolver = resolver
        self._on_transition = on_transition
        self._clock = clock
        self.skipped_in_flight = 0

    def fire(self, watch: Watch) -> None:
        if watch.in_flight:
            self.skipped_in_flight += 1
            return
        target = watch.target
        resolution = self._resolver.get(target.host, target.ip_protocol)
        if resolution.ip is None:
            reason = resolution.reason or Reason.DNS
            self._record(watch, ProbeResult(reason, "", detail=resolution.detail))
            return
        watch.in_flight = True
        prober = self._probers[watch.spec.kind]
        prober.start(resolution.ip, watch.spec.port, target.timeout,
                     lambda result: self._done(watch, result))

    def _done(self, watch: Watch, result: ProbeResult) -> None:
        watch.in_flight = False
        self._record(watch, result)

    def _record(self, watch: Watch, result: ProbeResult) -> None:
        transition = watch.state.record(result, self._clock())
        if transition is not None:
            self._on_transition(watch, transition)
