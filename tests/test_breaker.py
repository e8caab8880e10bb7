"""The per-provider circuit breaker: when it opens, what it lets through, how it closes."""

from __future__ import annotations

from bridge.core.breaker import PROBE_POLL, BreakerState, CircuitBreaker


def test_stays_closed_below_the_threshold_and_an_answer_resets_the_count() -> None:
    b = CircuitBreaker(threshold=3, cooldown=5)
    assert not b.record(False, 0) and not b.record(False, 0)
    b.record(True, 0)  # an answer (accepted or refused) means the provider is up
    assert not b.record(False, 0) and not b.record(False, 0)
    assert b.state is BreakerState.CLOSED and b.wait(0) == 0


def test_opens_after_threshold_transient_failures_in_a_row() -> None:
    b = CircuitBreaker(threshold=3, cooldown=5)
    results = [b.record(False, 10.0) for _ in range(3)]
    assert results == [False, False, True]  # True once: the caller logs it
    assert b.is_open and b.state is BreakerState.OPEN
    assert b.wait(11.0) == 4.0  # seconds until the probe


def test_after_the_cooldown_one_probe_goes_and_the_rest_wait() -> None:
    b = CircuitBreaker(threshold=1, cooldown=5)
    b.record(False, 0)
    assert b.wait(5.0) == 0  # this caller is the probe
    assert b.state is BreakerState.HALF_OPEN
    assert b.wait(5.0) == PROBE_POLL  # everybody else waits for the probe's outcome
    b.record(True, 5.1)
    assert b.state is BreakerState.CLOSED and b.wait(5.1) == 0


def test_a_failed_probe_reopens_for_twice_as_long_up_to_the_maximum() -> None:
    b = CircuitBreaker(threshold=1, cooldown=5, cooldown_max=12)
    b.record(False, 0)
    for now, cooldown in ((5.0, 10.0), (15.0, 12.0), (27.0, 12.0)):
        assert b.wait(now) == 0
        assert b.record(False, now)
        assert (b.state, b.cooldown) == (BreakerState.OPEN, cooldown)
    assert b.wait(38.0) == 1.0
    assert b.wait(39.0) == 0 and b.record(True, 39.0) is False
    assert b.cooldown == 5  # a success starts over from the base cooldown


def test_an_abandoned_probe_lets_the_next_sender_probe_at_once() -> None:
    b = CircuitBreaker(threshold=1, cooldown=5)
    b.record(False, 0)
    assert b.wait(6.0) == 0
    b.abandon_probe(6.0)  # its message was cancelled: nothing was sent
    assert b.state is BreakerState.OPEN and b.wait(6.0) == 0


def test_threshold_zero_disables_it() -> None:
    b = CircuitBreaker(threshold=0)
    for _ in range(100):
        assert not b.record(False, 0)
    assert b.state is BreakerState.CLOSED


def test_a_healthy_check_closes_an_open_circuit_and_resets_its_cooldown() -> None:
    breaker = CircuitBreaker(threshold=1, cooldown=5.0, cooldown_max=30.0)
    breaker.record(False, 0.0)
    assert breaker.wait(6.0) == 0.0  # half-open: the probe
    breaker.record(False, 6.0)  # the probe failed: cooldown doubled
    assert breaker.cooldown == 10.0 and breaker.is_open
    assert breaker.close() is True
    assert (breaker.state, breaker.cooldown, breaker.failures) == (BreakerState.CLOSED, 5.0, 0)
    assert breaker.close() is False  # already closed


def test_breaker_cooldown_max_defaults_to_30_seconds_and_health_probes_to_5() -> None:
    from bridge.config import PipelineConfig

    cfg = PipelineConfig()
    assert (cfg.breaker_cooldown_max, cfg.breaker_health_interval) == (30.0, 5.0)
