"""Slowloris protection for the HTTP listeners: header and body timeouts, a per-address cap.

uvicorn closes an idle keep-alive connection after a response, but a connection that never
finishes its request headers stays open for ever: a thousand of them from one host used up the
process's file descriptors and with them the SMPP listener (issue 14, finding 5). The guard
wraps uvicorn's HTTP protocol class (httptools or h11, whichever uvicorn picked) and adds:

* **header timeout**: from the moment a connection opens, or a response on it completes, the
  next request's headers must arrive within ``header_timeout`` seconds;
* **body timeout**: once the headers are in, the whole body must arrive within
  ``body_timeout`` seconds;
* **per-address cap**: at most ``max_per_address`` connections from one client address; the
  next one is answered ``503`` and closed at once, so one host cannot hold the listener.

Each closed or refused connection is counted (``on_event(reason)``: the wiring feeds
``bridge_http_guard_total``) and logged as one sampled WARNING per listener and reason (README,
"Reliability"). The app's own time is not limited here: once a request is in, it is the
application's. The state read (``cycle``, ``more_body``) is the same in both of uvicorn's
protocol implementations.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import structlog

from bridge.observability import SampledLog

__all__ = ["GUARD_REASONS", "HttpGuard"]

log = structlog.get_logger("bridge.web")

#: Why the guard closed or refused a connection (label values of bridge_http_guard_total).
GUARD_REASONS = ("per_address_cap", "header_timeout", "body_timeout")

_REFUSED = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\ncontent-length: 31\r\n"
    b"connection: close\r\n\r\ntoo many connections from you.\n"
)


class HttpGuard:
    """Timeouts and the per-address cap of one listener (see the module docstring).
    ``max_per_address = 0`` turns the cap off; a timeout of 0 turns that timeout off."""

    def __init__(
        self,
        listener: str,
        *,
        header_timeout: float = 10.0,
        body_timeout: float = 30.0,
        max_per_address: int = 64,
        on_event: Callable[[str], None] | None = None,
    ) -> None:
        self.listener = listener
        self.header_timeout = header_timeout
        self.body_timeout = body_timeout
        self.max_per_address = max_per_address
        self.on_event = on_event
        self.connections: dict[str, int] = {}  # open connections by client address
        self._sampled = SampledLog(log)

    def admit(self, address: str) -> bool:
        count = self.connections.get(address, 0)
        if self.max_per_address and count >= self.max_per_address:
            self._event("per_address_cap", address)
            return False
        self.connections[address] = count + 1
        return True

    def release(self, address: str) -> None:
        count = self.connections.get(address, 0) - 1
        if count > 0:
            self.connections[address] = count
        else:
            self.connections.pop(address, None)

    def _event(self, reason: str, address: str) -> None:
        if self.on_event is not None:
            self.on_event(reason)
        self._sampled(
            "warning",
            "http.connection_refused" if reason == "per_address_cap" else "http.request_timeout",
            f"{self.listener}:{reason}",
            listener=self.listener,
            reason=reason,
            client=address,
        )

    def protocol(self, base: type[asyncio.Protocol]) -> type[asyncio.Protocol]:
        """``base`` (a uvicorn HTTP protocol class) with this guard applied."""
        guard = self

        class Guarded(base):  # type: ignore[valid-type, misc]
            _guard_address: str | None = None
            _guard_timer: asyncio.TimerHandle | None = None
            _guard_body_cycle: Any = None  # the request whose body the timer now waits for
            _guard_done_cycle: Any = None  # the last request received in full

            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                super().connection_made(transport)
                peer = transport.get_extra_info("peername")
                address = str(peer[0]) if isinstance(peer, tuple) and peer else ""
                if not guard.admit(address):
                    assert isinstance(transport, asyncio.Transport)
                    transport.write(_REFUSED)
                    transport.close()
                    return
                self._guard_address = address
                self._guard_arm(guard.header_timeout, "header_timeout")

            def connection_lost(self, exc: Exception | None) -> None:
                self._guard_cancel()
                if self._guard_address is not None:
                    guard.release(self._guard_address)
                    self._guard_address = None
                super().connection_lost(exc)

            def data_received(self, data: bytes) -> None:
                super().data_received(data)
                cycle = self.cycle
                if cycle is None or cycle is self._guard_done_cycle or self._guard_address is None:
                    return  # still waiting for headers: the header timer runs on
                if not cycle.more_body:
                    self._guard_done_cycle = cycle  # all in: the application's time now
                    self._guard_cancel()
                elif cycle is not self._guard_body_cycle:
                    self._guard_body_cycle = cycle
                    self._guard_arm(guard.body_timeout, "body_timeout")

            def on_response_complete(self) -> None:
                super().on_response_complete()
                if self.transport.is_closing() or self._guard_address is None:
                    return
                cycle = self.cycle
                if cycle is None or cycle.response_complete:
                    self._guard_arm(guard.header_timeout, "header_timeout")
                elif cycle.more_body and cycle is not self._guard_body_cycle:
                    self._guard_body_cycle = cycle  # a pipelined request, body still coming
                    self._guard_arm(guard.body_timeout, "body_timeout")

            def _guard_arm(self, timeout: float, reason: str) -> None:
                self._guard_cancel()
                if timeout > 0:
                    self._guard_timer = self.loop.call_later(timeout, self._guard_expire, reason)

            def _guard_cancel(self) -> None:
                if self._guard_timer is not None:
                    self._guard_timer.cancel()
                    self._guard_timer = None

            def _guard_expire(self, reason: str) -> None:
                self._guard_timer = None
                if self.transport is None or self.transport.is_closing():
                    return
                guard._event(reason, self._guard_address or "")
                self.transport.close()

        Guarded.__name__ = Guarded.__qualname__ = f"Guarded{base.__name__}"
        return Guarded
