"""The per-probe state machine and window: pure, no I/O."""

from __future__ import annotations

import math

import pytest

from hostwatch.config import parse_config
from hostwatch.probes.base import ProbeResult, Reason
from hostwatch.state import Health, Policy, ProbeState
from hostwatch.watch import Watches

BUCKETS = (0.001, 0.01, 0.1)
OK = ProbeResult(Reason.OK, "127.0.0.1", rtt=0.0005)
LOST = ProbeResult(Reason.TIMEOUT, "127.0.0.1")


def _state(failures: int = 3, successes: int = 2, window: int = 10) -> ProbeState:
    return ProbeState(Policy(failure_threshold=failures, success_threshold=successes), window,
                      BUCKETS)


def _feed(state: ProbeState, results: list[ProbeResult]) -> list[tuple[Health, Health]]:
    changes = []
    for i, result in enumerate(results):
        transition = state.record(result, now=1000.0 + i)
        if transition is not None:
            changes.append((transition.previous, transition.current))
    return changes


class TestHysteresis:
    def test_first_success_is_up(self) -> None:
        """UNKNOWN becomes UP on the first success."""
        assert [(Health.UNKNOWN, Health.UP)] == _feed(_state(), [OK])

    def test_single_losses_never_alarm(self) -> None:
        """Failures below the threshold, between successes, never make the probe DOWN."""
        state = _state(failures=3)
        assert [(Health.UNKNOWN, Health.UP)] == _feed(state, [OK, LOST, LOST, OK, LOST, LOST, OK])
        assert Health.UP == state.health

    def test_down_after_threshold(self) -> None:
        """Exactly `failure_threshold` consecutive failures make it DOWN."""
        state = _state(failures=3)
        changes = _feed(state, [OK, LOST, LOST, LOST])
        assert [(Health.UNKNOWN, Health.UP), (Health.UP, Health.DOWN)] == changes

    def test_unknown_straight_to_down(self) -> None:
        """A target that never answered goes UNKNOWN -> DOWN."""
        assert [(Health.UNKNOWN, Health.DOWN)] == _feed(_state(failures=2), [LOST, LOST])

    def test_up_again_needs_success_threshold(self) -> None:
        """From DOWN, one lucky reply is not enough: `success_threshold` in a row are."""
        state = _state(failures=2, successes=3)
        _feed(state, [LOST, LOST])
        assert [] == _feed(state, [OK, OK, LOST, OK, OK])
        assert [(Health.DOWN, Health.UP)] == _feed(state, [OK])

    def test_transition_carries_time_and_result(self) -> None:
        """The transition holds the causing result and when it happened."""
        state = _state(failures=1)
        transition = state.record(LOST, now=42.5)
        assert transition is not None
        assert (LOST, 42.5, 1, 42.5) == (transition.result, transition.at, state.transitions,
                                        state.last_transition_at)


class TestCounters:
    def test_sent_received_and_reasons(self) -> None:
        """Sent counts every attempt on the wire; failures are counted by reason."""
        state = _state()
        refused = ProbeResult(Reason.REFUSED, "127.0.0.1")
        dns = ProbeResult(Reason.DNS, "", detail="nxdomain")
        _feed(state, [OK, LOST, refused, dns, OK])
        assert (4, 2) == (state.sent, state.received)
        assert {Reason.TIMEOUT: 1, Reason.REFUSED: 1, Reason.DNS: 1} == state.failures

    def test_histogram_buckets_are_le(self) -> None:
        """An RTT equal to a bound lands in that bucket; larger than all in +Inf."""
        state = _state()
        rtts = [0.001, 0.0011, 0.05, 0.5]
        _feed(state, [ProbeResult(Reason.OK, "::1", rtt=r) for r in rtts])
        assert [1, 1, 1, 1] == state.bucket_counts
        assert pytest.approx(sum(rtts)) == state.rtt_sum


class TestWindow:
    def test_loss_ratio_over_window_only(self) -> None:
        """Old results leave the window: loss is over the last N results."""
        state = _state(failures=100, window=4)
        _feed(state, [LOST, LOST, LOST, LOST, OK, OK, OK, LOST])
        stats = state.window_stats()
        assert (4, 1, 0.25) == (stats.size, stats.lost, stats.loss_ratio)

    def test_rtt_summary(self) -> None:
        """min, median, max, mean and stddev over the answered probes of the window."""
        state = _state(window=5)
        _feed(state, [ProbeResult(Reason.OK, "::1", rtt=r) for r in (0.9, 0.1, 0.2, 0.3, 0.4,
                                                                    0.5)])
        stats = state.window_stats()
        assert (0.1, 0.3, 0.5) == (stats.rtt_min, stats.rtt_median, stats.rtt_max)
        assert pytest.approx(0.3) == stats.rtt_mean
        assert pytest.approx(math.sqrt(0.02)) == stats.rtt_stddev

    def test_rtt_summary_leaves_failures_out(self) -> None:
        """Failures in the window count as lost and take no part in the RTT summary, in a
        full window and in one still filling."""
        state = _state(failures=100, window=5)
        rtts = (0.2, None, 0.1, None, 0.3)
        _feed(state, [LOST if r is None else ProbeResult(Reason.OK, "::1", rtt=r) for r in rtts])
        stats = state.window_stats()
        assert (5, 2, 0.4) == (stats.size, stats.lost, stats.loss_ratio)
        assert (0.1, 0.2, 0.3) == (stats.rtt_min, stats.rtt_median, stats.rtt_max)
        assert pytest.approx(0.2) == stats.rtt_mean
        filling = _state(failures=100, window=10)
        _feed(filling, [LOST, ProbeResult(Reason.OK, "::1", rtt=0.4), LOST,
                        ProbeResult(Reason.OK, "::1", rtt=0.2)])
        stats = filling.window_stats()
        assert (4, 2) == (stats.size, stats.lost)
        assert (0.2, 0.4) == (stats.rtt_min, stats.rtt_max)
        assert pytest.approx(0.3) == stats.rtt_median

    def test_no_reply_no_rtt(self) -> None:
        """With only failures in the window, the RTT summary is absent and loss is 1."""
        state = _state(failures=100)
        _feed(state, [LOST, LOST])
        stats = state.window_stats()
        assert (1.0, None, None) == (stats.loss_ratio, stats.rtt_median, stats.rtt_mean)

    def test_memory_is_constant(self) -> None:
        """A million results later the window still holds exactly `window` slots."""
        state = _state(window=50)
        pattern = [OK, LOST, OK, OK]
        for i in range(250_000):
            for result in pattern:
                state.record(result, now=float(i))
        stats = state.window_stats()
        assert (50, 1_000_000) == (stats.size, state.sent)
        assert 12 / 50 == stats.loss_ratio  # the window starts mid-pattern: OK, OK, then 12 periods
        assert pytest.approx(0.0005) == stats.rtt_mean


class TestHistogramSwitch:
    def test_switching_keeps_the_watch_and_counters(self) -> None:
        """A reload that turns rtt_histogram off and on again keeps the watch, its health
        and counters; only the histogram goes, and comes back empty."""
        def config(histogram: str) -> str:
            return ("targets:\n  - {name: a, host: 127.0.0.1, probes: {icmp: }, "
                    f"rtt_histogram: {histogram}}}\n")

        first = Watches.build(parse_config(config("true"), "t.yml"))
        (watch,) = first
        for i in range(5):
            watch.state.record(ProbeResult(Reason.OK, "127.0.0.1", rtt=1e-4), 1.7e9 + i)
        assert sum(watch.state.bucket_counts) == 5
        off = Watches.build(parse_config(config("false"), "t.yml"), first)
        assert [watch] == list(off)
        assert (watch.buckets, watch.state.received, watch.state.health) == ((), 5, Health.UP)
        watch.state.record(ProbeResult(Reason.OK, "127.0.0.1", rtt=1e-4), 1.7e9 + 5)
        on = Watches.build(parse_config(config("true"), "t.yml"), off)
        assert [watch] == list(on)
        assert watch.buckets
        assert (sum(watch.state.bucket_counts), watch.state.rtt_sum) == (0, 0.0)
        assert watch.state.received == 6
