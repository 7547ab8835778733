"""The state machine beyond UP/DOWN: DEGRADED by loss or latency, FLAPPING, reasons."""

from __future__ import annotations

import random

from hostwatch.health import Health, Policy
from hostwatch.probes.base import ProbeResult, Reason
from hostwatch.state import ProbeState, Transition

BUCKETS = (0.001, 0.01)


def _ok(rtt: float = 0.0005) -> ProbeResult:
    return ProbeResult(Reason.OK, "198.18.0.2", rtt=rtt)


LOST = ProbeResult(Reason.TIMEOUT, "198.18.0.2")


def _run(state: ProbeState, results: list[ProbeResult], start: float = 0.0,
         step: float = 1.0) -> list[Transition]:
    out = []
    for i, result in enumerate(results):
        transition = state.record(result, start + i * step)
        if transition is not None:
            out.append(transition)
    return out


class TestDegraded:
    def test_loss_above_threshold_is_degraded_with_reason(self) -> None:
        """Every third probe lost (33%): DEGRADED with reason `loss`, never DOWN."""
        state = ProbeState(Policy(), 100, BUCKETS)
        changes = _run(state, [_ok(), _ok(), LOST] * 30)
        assert [Health.UP, Health.DEGRADED] == [t.current for t in changes]
        assert "loss" == changes[-1].reason
        assert "30% of the last 20 probes lost (threshold 10%)" == changes[-1].detail

    def test_degraded_clears_below_half_the_threshold(self) -> None:
        """Back to UP only once loss is under half the threshold (hysteresis)."""
        state = ProbeState(Policy(degraded_loss_ratio=0.2), 20, BUCKETS)
        _run(state, [_ok(), LOST] * 10)
        assert Health.DEGRADED == state.health
        _run(state, [_ok()] * 11, start=100)  # loss now 9/20 -> 45%... then falls
        assert Health.DEGRADED == state.health
        changes = _run(state, [_ok()] * 9, start=200)
        assert [Health.UP] == [t.current for t in changes]  # 1/20 = 5% < 10%

    def test_latency_threshold(self) -> None:
        """A mean RTT over `degraded_rtt` is DEGRADED with reason `latency`."""
        state = ProbeState(Policy(degraded_rtt=0.01), 20, BUCKETS)
        changes = _run(state, [_ok(0.002)] * 10 + [_ok(0.05)] * 10)
        assert [Health.UP, Health.DEGRADED] == [t.current for t in changes]
        assert "latency" == changes[-1].reason

    def test_recovery_is_not_degraded_by_the_outage(self) -> None:
        """After DOWN, the failures of the outage do not make the recovered target DEGRADED."""
        state = ProbeState(Policy(failure_threshold=3, success_threshold=2), 100, BUCKETS)
        changes = _run(state, [_ok()] * 20 + [LOST] * 30 + [_ok()] * 20)
        assert [Health.UP, Health.DOWN, Health.UP] == [t.current for t in changes]


class TestDown:
    def test_down_carries_failure_reason_and_detail(self) -> None:
        """DOWN's reason is the last failure's: e.g. unreachable with the ICMP type/code."""
        state = ProbeState(Policy(failure_threshold=2), 10, BUCKETS)
        unreachable = ProbeResult(Reason.UNREACHABLE, "198.18.0.2",
                                  detail="destination-unreachable (icmp type 3 code 1)")
        changes = _run(state, [unreachable, unreachable])
        assert (Health.DOWN, "unreachable", unreachable.detail) == (
            changes[-1].current, changes[-1].reason, changes[-1].detail)

    def test_thirty_percent_loss_never_down_with_defaults(self) -> None:
        """5,000 probes at 30% independent loss (seeded): never DOWN with the default
        thresholds, DEGRADED, and the window's loss near 30%. docs/states.md has the math."""
        rng = random.Random(20261123)  # noqa: S311 - a reproducible simulation, not crypto
        state = ProbeState(Policy(), 100, BUCKETS)
        results = [LOST if rng.random() < 0.3 else _ok() for _ in range(5000)]
        changes = _run(state, results)
        assert Health.DOWN not in [t.current for t in changes]
        assert Health.DEGRADED == state.health
        assert abs(state.failures[Reason.TIMEOUT] / 5000 - 0.3) < 0.03


class TestFlapping:
    def _toggle(self, state: ProbeState, cycles: int, start: float) -> list[Transition]:
        results = ([LOST] * 3 + [_ok()] * 3) * cycles
        return _run(state, results, start=start)

    def test_toggling_becomes_flapping_and_settles(self) -> None:
        """A target going down and up repeatedly is FLAPPING; the changes inside stay quiet;
        after a quiet flap window it leaves FLAPPING for its real state."""
        policy = Policy(failure_threshold=3, success_threshold=2, flap_window=60, flap_start=4,
                        flap_stop=1, degraded_loss_ratio=1.0)
        state = ProbeState(policy, 100, BUCKETS)
        _run(state, [_ok()] * 5)
        changes = self._toggle(state, 6, start=10)
        publics = [t.current for t in changes]
        assert Health.FLAPPING in publics
        flapping_at = publics.index(Health.FLAPPING)
        assert [Health.FLAPPING] == publics[flapping_at:]  # no more entries while flapping
        assert "flapping" == changes[flapping_at].reason
        settle = _run(state, [_ok()] * 80, start=100)
        assert [Health.UP] == [t.current for t in settle]
        assert Health.UP == state.health

    def test_few_changes_are_not_flapping(self) -> None:
        """Changes below `flap_start` inside the window never make it FLAPPING."""
        policy = Policy(failure_threshold=3, success_threshold=2, flap_window=60, flap_start=6,
                        degraded_loss_ratio=1.0)
        state = ProbeState(policy, 100, BUCKETS)
        _run(state, [_ok()] * 5)
        changes = self._toggle(state, 2, start=10)
        assert Health.FLAPPING not in [t.current for t in changes]


class TestLongRuns:
    def test_counts_stop_at_the_thresholds(self) -> None:
        """Runs of successes and failures stop counting at their threshold (months of
        results make no int object per watch) and still judge exactly: DOWN at the 5th
        failure after 1,500 successes, and after a reload that raises the thresholds while
        DOWN, UP again at the new 10th success."""
        state = ProbeState(Policy(failure_threshold=5, success_threshold=3), 100, ())
        _run(state, [_ok()] * 1500)
        assert (state.health, state.tracker.consecutive_successes) == (Health.UP, 3)
        assert [] == _run(state, [LOST] * 4, start=2000)
        assert [Health.DOWN] == [t.current for t in _run(state, [LOST], start=3000)]
        _run(state, [LOST] * 500, start=4000)
        assert state.tracker.consecutive_failures == 5
        state.tracker.set_policy(Policy(failure_threshold=50, success_threshold=10))
        assert [] == _run(state, [_ok()] * 9, start=5000)
        assert [Health.UP] == [t.current for t in _run(state, [_ok()], start=6000)]
