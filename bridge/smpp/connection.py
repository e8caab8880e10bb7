"""What the two asyncio SMPP connections share: writes batched per loop pass, one timer, closing.

:class:`bridge.smpp.server_connection.ServerConnection` (an ESME connected to us) and
:class:`bridge.smpp.client_connection.ClientConnection` (our bind toward an upstream) each drive a
session (:mod:`bridge.smpp.session_core`). Both write what the session queued once per loop
iteration (:meth:`SessionConnection._flush_soon`), stop reading from a peer that does not read
what we write, and wake the session exactly when it has something to do: one ``TimerHandle``
armed at the session's :meth:`next_deadline`, moved earlier only when a write brought an earlier
deadline (a new request, a bind) — never cancelled and re-created per message, and no periodic
tick per connection.
"""

from __future__ import annotations

import abc
import asyncio
import math
from collections.abc import Callable
from typing import Any, Protocol

__all__ = ["SessionConnection"]

# Seconds a timer fires after its deadline at the latest (on top of the loop's own lateness).
_SLACK = 0.001


class _Session(Protocol):
    def take_output(self) -> bytes: ...
    def note_sent(self, now: float) -> None: ...
    def next_deadline(self) -> float: ...
    def handle_timers(self, now: float) -> list[Any]: ...


class SessionConnection(asyncio.Protocol, abc.ABC):
    """One TCP (or TLS) connection driving one session; see the module docstring."""

    session: _Session

    def __init__(self, loop: asyncio.AbstractEventLoop, clock: Callable[[], float]) -> None:
        self.loop = loop
        self.clock = clock
        self.transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf  # when _timer fires (clock() time); inf: not armed
        self._linger: asyncio.TimerHandle | None = None  # a close that waits for answers
        self._flush_scheduled = False
        self._reading_paused = False

    # ------------------------------------------------------------------ flow control

    def pause_writing(self) -> None:
        # The peer does not read what we write: stop reading from it until it catches up.
        if self.transport is not None and not self._reading_paused:
            self.transport.pause_reading()
            self._reading_paused = True

    def resume_writing(self) -> None:
        if self.transport is not None and self._reading_paused:
            self.transport.resume_reading()
            self._reading_paused = False

    # ------------------------------------------------------------------ writing

    def _flush_soon(self) -> None:
        """Write at the end of this loop iteration: what completes in one iteration (responses,
        deliver_sm, submits of many tasks) leaves in one write (one syscall, one TCP segment)
        instead of one each."""
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        data = self.session.take_output()
        transport = self.transport
        if data and transport is not None and not transport.is_closing():
            transport.write(data)
            now = self.clock()
            self.session.note_sent(now)
            self._arm()
            self._wrote(data, now)

    def _wrote(self, data: bytes, now: float) -> None:
        """``data`` was just written at ``now`` (hook: the server counts it)."""

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    # ------------------------------------------------------------------ the timer

    def _next_deadline(self) -> float:
        """When the timer must fire (clock() time): the session's next deadline (a subclass
        adds its own)."""
        return self.session.next_deadline()

    def _arm(self) -> None:
        """Make the timer fire no later than :meth:`_next_deadline`.

        Cheap when nothing moved earlier (the usual case: activity only pushes deadlines
        later, and a new request's deadline is later than the older ones'): one comparison. A
        timer that fires early finds nothing to do and is armed again at the new deadline.
        Every new deadline comes with output, so :meth:`_flush` calls this after each write.
        """
        deadline = self._next_deadline()
        if deadline >= self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = deadline
        # The clock may not be the loop's (tests inject one; uvloop's is cached per pass and in
        # ms): arm by the time left, plus a little so the timer does not fire just before it.
        delay = max(0.0, deadline - self.clock()) + _SLACK
        self._timer = self.loop.call_later(delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = math.inf
        if self._run_timers():
            self._arm()

    @abc.abstractmethod
    def _run_timers(self) -> bool:
        """Run the session's timers and act on their events; False once the connection is
        done (nothing to re-arm)."""

    def _cancel_timers(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = -math.inf  # never armed again
        if self._linger is not None:
            self._linger.cancel()
