"""The asyncio ESME toward an upstream SMSC (iSMS SMPP): binds, reconnects, submits, receives.

All protocol rules live in the sans-IO :mod:`bridge.smpp.client_session`, one bind's socket in
:mod:`bridge.smpp.client_connection` (whose errors, ClientError, ResponseTimeout and
ConnectionLost, are importable from here too: they are this client's API); this module adds what
spans the binds:

* ``binds`` sessions per upstream (transceivers, or as many transmitters plus as many receivers),
  each kept up by its own loop: connect (optionally TLS), bind, run until the connection ends,
  wait a backoff (exponential with jitter; wrong credentials wait ``reconnect_max``), again.
* :meth:`SmppClient.submit`: a window slot on the least loaded bound transmitter, then a token of
  the TPS limiter shared by all binds, then the PDU goes out in the next coalesced write; the
  response comes back through the session's pending table (the future is its context).
* deliver_sm / data_sm from the upstream go to ``on_deliver``; the response carries its status
  and leaves only after it returned, so nothing is acknowledged that was not stored.
* :meth:`SmppClient.stop`: no new submits, in-flight ones get their responses, then unbind.

Why our own client rather than aiosmpplib: see docs/architecture.md (no window, an O(n) correlator,
16-bit UDH references misread); ``python -m benchmarks.client`` compares the two.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import ssl
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal, cast

import structlog
from aiolimiter import AsyncLimiter

from bridge.ratelimit import limiter_for_rate

# ClientError, ResponseTimeout and ConnectionLost are defined with the connection that raises
# them; they are this module's API too (providers/isms_smpp.py and send.py import them here).
from bridge.smpp.client_connection import (
    ClientConnection,
    ClientError,
    ConnectionLost,
    ResponseTimeout,
)
from bridge.smpp.client_session import AUTH_FAILURES, ClientSessionConfig, backoff_delay
from bridge.smpp.events import BindType
from bridge.smpp.pdu import Pdu, status_name

__all__ = [
    "ClientConfig",
    "ClientError",
    "ConnectionLost",
    "DeliverHandler",
    "NotBound",
    "ResponseTimeout",
    "SmppClient",
]

log = structlog.get_logger("bridge.smpp.client")

DeliverHandler = Callable[[Pdu], Awaitable[int]]
"""Called for each deliver_sm / data_sm from the upstream; returns the command_status to answer."""

# How long a burst the TPS limiter allows when tps_burst is 0: 50 ms worth of the rate. aiolimiter
# lets a whole period's capacity out at once, so AsyncLimiter(700, 1.0) would send 700 submits
# in the first instant, which an upstream counting per 100 ms (many do) answers with throttling.
_AUTO_BURST_SECONDS = 0.05


@dataclass(frozen=True, slots=True)
class ClientConfig:
    """One upstream SMSC: where, who, how many binds, and the timers and limits of each."""

    host: str
    port: int
    system_id: str
    password: str = field(repr=False)  # never logged
    system_type: str = ""
    # transmitter: TX binds only (an ESME that wants no deliver_sm, e.g. `smpp-bridge send`)
    bind_mode: Literal["transceiver", "tx_rx", "transmitter"] = "transceiver"
    binds: int = 1  # sessions (tx_rx: this many TX plus this many RX)
    addr_ton: int = 0
    addr_npi: int = 0
    address_range: str = ""
    enquire_link_interval: float = 30.0
    response_timeout: float = 10.0
    window: int = 10  # requests in flight per bind
    tps: float = 700.0  # submits per second across all binds; 0 = unlimited
    reconnect_min: float = 1.0
    reconnect_max: float = 60.0
    connect_timeout: float = 10.0
    tls: bool = False
    # Added: how many submits the TPS limiter lets out at once; 0 = 50 ms worth (at least 1).
    tps_burst: float = 0.0


class NotBound(ClientError):
    """No transmitter-capable bind is up (or the client is stopping): nothing was sent."""


class _LogThrottle:
    """At most one log line per ``interval`` seconds for a repeating failure, with a count of
    the ones suppressed in between (an on_deliver that fails for every message must not flood)."""

    __slots__ = ("_last", "interval", "suppressed")

    def __init__(self, interval: float = 10.0) -> None:
        self.interval = interval
        self._last = -1e18
        self.suppressed = 0

    def allow(self, now: float) -> int | None:
        """None: stay silent; else log now, mentioning the returned number suppressed."""
        if now - self._last < self.interval:
            self.suppressed += 1
            return None
        self._last = now
        n, self.suppressed = self.suppressed, 0
        return n


class SmppClient:
    """An ESME with ``config.binds`` sessions to one upstream SMSC; see the module docstring."""

    def __init__(
        self,
        config: ClientConfig,
        on_deliver: DeliverHandler,
        *,
        name: str = "upstream",
        on_bound_change: Callable[[int], None] | None = None,
        on_bind_failure: Callable[[int | None, str], None] | None = None,
        ssl_context: ssl.SSLContext | None = None,
        clock: Callable[[], float] = time.monotonic,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        if config.binds < 1:
            raise ValueError("binds must be at least 1")
        if config.window < 1:
            raise ValueError("window must be at least 1")
        self.config = config
        self.name = name
        self.clock = clock
        self._on_deliver = on_deliver
        self._on_bound_change = on_bound_change
        # (bind status, or None when no bind answer came; error text) after each failed attempt
        self._on_bind_failure = on_bind_failure
        self._ssl_context = ssl_context
        self._jitter = jitter
        self.log = log.bind(upstream=name)
        self._loop: asyncio.AbstractEventLoop = cast(asyncio.AbstractEventLoop, None)
        self._tx: list[ClientConnection] = []  # bound, may submit
        self._connections: set[ClientConnection] = set()
        self._loops: list[asyncio.Task[None]] = []
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._bound_event = asyncio.Event()
        self._stop_event = asyncio.Event()
        self._stopping = False
        self._deliver_failures = _LogThrottle()
        # Event counts for metrics: connections lost after a bind, binds refused, connects
        # that got no bind answer.
        self.disconnects = 0
        self.bind_refusals = 0
        self.connect_failures = 0
        self.limiter: AsyncLimiter | None = None
        if config.tps > 0:
            burst = config.tps_burst or max(1.0, config.tps * _AUTO_BURST_SECONDS)
            burst = max(1.0, burst)
            self.limiter = AsyncLimiter(burst, burst / config.tps)
        # The bucket spreads submits; the window keeps the documented limit: no second,
        # wherever it starts, holds more than `tps` submits (the bucket alone lets its burst
        # out on top of a full second's rate). README, "Reliability".
        self.window = limiter_for_rate(config.tps)
        if config.bind_mode == "tx_rx":
            self._slots = [(BindType.TRANSMITTER, f"tx{i + 1}") for i in range(config.binds)] + [
                (BindType.RECEIVER, f"rx{i + 1}") for i in range(config.binds)
            ]
        elif config.bind_mode == "transmitter":
            self._slots = [(BindType.TRANSMITTER, f"tx{i + 1}") for i in range(config.binds)]
        else:
            self._slots = [(BindType.TRANSCEIVER, f"trx{i + 1}") for i in range(config.binds)]

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Start every bind's connect/bind/reconnect loop in the background; returns at once."""
        if self._loops:
            return
        self._loop = asyncio.get_running_loop()
        self._stopping = False
        self._stop_event.clear()
        cfg = self.config
        self.log.info(
            "smpp_client.starting",
            host=cfg.host,
            port=cfg.port,
            system_id=cfg.system_id,
            bind_mode=cfg.bind_mode,
            binds=cfg.binds,
            tls=cfg.tls,
        )
        for bind_type, label in self._slots:
            self._loops.append(self._loop.create_task(self._run_bind(bind_type, label)))

    async def stop(self, timeout: float = 5.0) -> None:
        """Unbind every session gracefully, then close.

        Submits not yet sent fail with NotBound at once; those in flight get their responses
        (deliver handlers running finish and answer), then each session unbinds and closes when
        its unbind_resp arrives. Whatever is still open at ``timeout`` is aborted (its in-flight
        submits fail with ConnectionLost).
        """
        if self._stopping:
            return
        self._stopping = True
        self._stop_event.set()
        deadline = self.clock() + timeout
        self._wake_all()
        for conn in list(self._connections):
            conn.begin_stop()
        while self._connections and self.clock() < deadline:
            await asyncio.sleep(0.01)
        for conn in list(self._connections):
            conn.log.warning("smpp_client.stop_timeout", in_flight=conn.session.in_flight)
            conn.abort()
        for task in self._loops:
            task.cancel()
        for conn in list(self._connections):
            for handler in list(conn._handlers):
                handler.cancel()
        if self._loops:
            await asyncio.gather(*self._loops, return_exceptions=True)
        self._loops.clear()
        self.log.info("smpp_client.stopped")

    async def wait_bound(self, timeout: float) -> bool:
        """True once at least one transmitter-capable bind is up (False after ``timeout``)."""
        if self._tx:
            return True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._bound_event.wait(), timeout)
        return bool(self._tx)

    @property
    def bound_count(self) -> int:
        """Transmitter-capable binds up now (and taking submits)."""
        return len(self._tx)

    @property
    def in_flight(self) -> int:
        """Submits sent and awaiting their responses, across all binds."""
        return sum(c.session.in_flight for c in self._connections)

    # ------------------------------------------------------------------ submit

    async def submit(self, pdu: Pdu) -> Pdu:
        """Send a submit_sm (or data_sm, ...) built by the caller; return its response.

        Waits for a window slot on the least loaded bound transmitter, then for the shared TPS
        limiter (in that order: a token taken while no slot is free would let the sends bunch
        up above the rate once slots free), then sends. The response comes back whatever its
        command_status (a generic_nack too): the caller classifies it. Raises NotBound when no
        bind is up within response_timeout, ResponseTimeout, ConnectionLost; ValueError /
        TypeError for a PDU the codec cannot encode (a caller bug, not transient).
        """
        conn = self._pick() if not self._waiters else None
        if conn is None:
            conn = await self._wait_for_slot()
        limiter = self.limiter
        if limiter is not None:
            conn.reserved += 1
            try:
                await limiter.acquire()
                if self.window is not None:
                    await self.window.acquire()
            finally:
                conn.reserved -= 1
            if not conn.has_room():  # dropped or stopping meanwhile: another bind, if any
                conn = self._pick() or await self._wait_for_slot()
        fut: asyncio.Future[Pdu] = self._loop.create_future()
        conn.send(pdu, fut)
        return await fut

    def _pick(self) -> ClientConnection | None:
        """The bound transmitter with the most free window, None when all are full (or none)."""
        tx = self._tx
        if len(tx) == 1:
            conn = tx[0]
            return conn if conn.has_room() else None
        best: ClientConnection | None = None
        best_free = 0
        for conn in tx:
            free = conn.session.window_free - conn.reserved
            if free > best_free and not conn.stopping:
                best, best_free = conn, free
        return best

    async def _wait_for_slot(self) -> ClientConnection:
        """Queue until a window slot frees; without any bind, wait response_timeout for one."""
        deadline: float | None = None
        while True:
            if self._stopping or not self._loops:
                raise NotBound(f"{self.name}: client not running")
            conn = self._pick()
            if conn is not None:
                return conn
            fut: asyncio.Future[None] = self._loop.create_future()
            self._waiters.append(fut)
            try:
                if self._tx:
                    await fut  # a response, timeout or drop frees a slot within response_timeout
                else:
                    if deadline is None:
                        deadline = self.clock() + self.config.response_timeout
                    remaining = deadline - self.clock()
                    if remaining <= 0:
                        raise NotBound(f"{self.name}: no bind up")
                    try:
                        await asyncio.wait_for(fut, remaining)
                    except TimeoutError:
                        raise NotBound(
                            f"{self.name}: no bind up within {self.config.response_timeout}s"
                        ) from None
            finally:
                # Woken futures (a result set) were popped by _wake(); any other is still queued.
                # (Asking first: deque.remove() formats the repr of a missing item, ~8 µs.)
                if not fut.done() or fut.cancelled():
                    fut.cancel()
                    with contextlib.suppress(ValueError):
                        self._waiters.remove(fut)  # O(n), only on timeout or cancellation

    def _wake(self, n: int) -> None:
        """Slots freed: wake up to ``n`` queued submitters, first come first served."""
        waiters = self._waiters
        while n and waiters:
            fut = waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                n -= 1

    def _wake_all(self) -> None:
        """A bind came or went, or we stop: every queued submitter looks again."""
        waiters = self._waiters
        while waiters:
            fut = waiters.popleft()
            if not fut.done():
                fut.set_result(None)

    # ------------------------------------------------------------------ binds

    def _session_config(self, bind_type: BindType) -> ClientSessionConfig:
        cfg = self.config
        return ClientSessionConfig(
            system_id=cfg.system_id,
            password=cfg.password,
            bind_type=bind_type,
            system_type=cfg.system_type,
            addr_ton=cfg.addr_ton,
            addr_npi=cfg.addr_npi,
            address_range=cfg.address_range,
            enquire_link_interval=cfg.enquire_link_interval,
            response_timeout=cfg.response_timeout,
            window=cfg.window,
        )

    async def _run_bind(self, bind_type: BindType, label: str) -> None:
        """Keep one bind up until stop(): connect, bind, run, back off, again. Never raises."""
        cfg = self.config
        attempt = 0
        blog = self.log.bind(bind=label)
        while not self._stopping:
            try:
                status, error = await self._connect_and_run(bind_type, label)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # never let one bug end the loop: log and back off
                blog.exception("smpp_client.bind_loop_error")
                status, error = None, repr(e)
            if self._stopping:
                break
            if status == 0:
                attempt = 0  # it was bound: the first retry comes soon
            if status in AUTH_FAILURES:
                # These credentials will not start working by retrying quickly.
                delay = backoff_delay(63, cfg.reconnect_min, cfg.reconnect_max, self._jitter())
            else:
                delay = backoff_delay(attempt, cfg.reconnect_min, cfg.reconnect_max, self._jitter())
                attempt += 1
            if status is not None and status != 0:
                self.bind_refusals += 1
                blog.warning(
                    "smpp_client.bind_refused",
                    status=status_name(status),
                    system_id=cfg.system_id,
                    retry_in=round(delay, 3),
                )
            elif status is None:
                self.connect_failures += 1
                blog.warning("smpp_client.connect_failed", error=error, retry_in=round(delay, 3))
            else:
                self.disconnects += 1
                blog.info("smpp_client.reconnecting", retry_in=round(delay, 3))
            if status != 0 and self._on_bind_failure is not None:
                try:
                    self._on_bind_failure(status, error)
                except Exception:
                    blog.exception("smpp_client.on_bind_failure_failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop_event.wait(), delay)

    async def _connect_and_run(self, bind_type: BindType, label: str) -> tuple[int | None, str]:
        """One connection's life. Returns (bind status, error): 0 when it was bound (and has
        ended), the refusal status, or None when no bind answer came (error says why)."""
        cfg = self.config
        ctx: ssl.SSLContext | None = None
        if cfg.tls:
            ctx = self._ssl_context or ssl.create_default_context()
        session_config = self._session_config(bind_type)
        try:
            _, conn = await asyncio.wait_for(
                self._loop.create_connection(
                    lambda: ClientConnection(self, session_config, label),
                    cfg.host,
                    cfg.port,
                    ssl=ctx,
                    server_hostname=cfg.host if ctx is not None else None,
                ),
                cfg.connect_timeout,
            )
        except TimeoutError:
            return None, f"connect timeout ({cfg.connect_timeout}s)"
        except OSError as e:
            return None, str(e) or type(e).__name__
        try:
            status = await asyncio.shield(conn.bound)
            await asyncio.shield(conn.closed)
        except asyncio.CancelledError:
            conn.abort()
            raise
        if status is None:
            return None, "connection closed before the bind was answered"
        return status, ""

    def _connection_bound(self, conn: ClientConnection) -> None:
        if self._stopping or conn.stopping:
            conn.begin_stop()
            return
        if conn.session.can_submit:
            self._tx.append(conn)
            self._bound_event.set()
            self._bound_changed()
            self._wake_all()

    def _drop_tx(self, conn: ClientConnection) -> None:
        """The connection takes no more submits (unbinding, unbound, closed)."""
        try:
            self._tx.remove(conn)
        except ValueError:
            return
        if not self._tx:
            self._bound_event.clear()
        self._bound_changed()
        # Submitters queued for its slots look again (another bind, or NotBound in time).
        self._wake_all()

    def _connection_gone(self, conn: ClientConnection) -> None:
        self._connections.discard(conn)
        self._drop_tx(conn)

    def _bound_changed(self) -> None:
        callback = self._on_bound_change
        if callback is not None:
            try:
                callback(len(self._tx))
            except Exception:
                self.log.exception("smpp_client.on_bound_change_failed")
