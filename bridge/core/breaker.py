"""A circuit breaker per provider: stop hammering a provider that keeps failing.

Without it, a provider outage makes every queued message try, fail, back off and try again on
its own schedule: thousands of doomed requests a minute, each one a timeout's worth of a worker.
With it, ``threshold`` transient failures in a row *open* the circuit: no message is sent to the
provider for ``cooldown`` seconds (messages that have another provider on their route fail over
to it at once; the others wait, and expire on time). Then one probe goes out (*half-open*): an
answer closes the circuit, another failure opens it again for twice as long, up to
``cooldown_max``. A successful health check closes it at once (:meth:`close`; the dispatcher
asks an open circuit's provider every ``breaker_health_interval`` seconds).

Only transient failures count (no answer, 5xx, throttling): a refusal is an answer, and a
provider that answers is up. Pure state, the clock passed in; the dispatcher does the waiting.
"""

from __future__ import annotations

import enum

__all__ = ["BreakerState", "CircuitBreaker"]


class BreakerState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"  # one probe in flight


#: How long a sender waits before asking again while the probe of a half-open circuit is out.
PROBE_POLL = 0.05


class CircuitBreaker:
    """See the module docstring. ``threshold = 0`` disables it (always closed)."""

    def __init__(
        self, threshold: int = 10, cooldown: float = 5.0, cooldown_max: float = 300.0
    ) -> None:
        self.threshold = threshold
        self.base_cooldown = cooldown
        self.cooldown_max = max(cooldown_max, cooldown)
        self.cooldown = cooldown
        self.state = BreakerState.CLOSED
        self.failures = 0  # consecutive transient failures
        self.opened_at = 0.0
        self.opened = 0  # times opened, for logs

    @property
    def is_open(self) -> bool:
        """Open or probing: not taking ordinary traffic."""
        return self.state is not BreakerState.CLOSED

    def wait(self, now: float) -> float:
        """0 when a send may go now (in half-open: this caller is the probe), else how long
        to wait before asking again."""
        if self.state is BreakerState.CLOSED:
            return 0.0
        if self.state is BreakerState.HALF_OPEN:
            return PROBE_POLL
        remaining = self.opened_at + self.cooldown - now
        if remaining > 0:
            return remaining
        self.state = BreakerState.HALF_OPEN
        return 0.0

    def record(self, answered: bool, now: float) -> bool:
        """The outcome of a send: ``answered`` (accepted or refused) or a transient failure.
        Returns True when this opened the circuit (for a log line)."""
        if answered:
            self.failures = 0
            if self.state is not BreakerState.CLOSED:
                self.state = BreakerState.CLOSED
                self.cooldown = self.base_cooldown
            return False
        self.failures += 1
        if self.state is BreakerState.HALF_OPEN:
            self.cooldown = min(self.cooldown * 2, self.cooldown_max)
            return self._open(now)
        if (
            self.state is BreakerState.CLOSED
            and self.threshold > 0
            and self.failures >= self.threshold
        ):
            return self._open(now)
        return False

    def close(self) -> bool:
        """The provider is known to be up again (a successful health or balance check):
        close at once, without waiting for the cooldown's probe. True when it was open."""
        was_open = self.state is not BreakerState.CLOSED
        self.state = BreakerState.CLOSED
        self.failures = 0
        self.cooldown = self.base_cooldown
        return was_open

    def abandon_probe(self, now: float) -> None:
        """The probe was not sent after all (its message was cancelled or expired): let the
        next sender be the probe at once."""
        if self.state is BreakerState.HALF_OPEN:
            self.state = BreakerState.OPEN
            self.opened_at = now - self.cooldown

    def _open(self, now: float) -> bool:
        self.state = BreakerState.OPEN
        self.opened_at = now
        self.opened += 1
        return True
