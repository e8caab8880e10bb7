"""The asyncio SMPP listener: a thin layer that moves bytes between sockets and sessions.

All protocol rules live in :mod:`bridge.smpp.session`; the asyncio side adds what needs a clock,
a socket or other connections: authentication against the accounts (:mod:`bridge.smpp.server_bind`),
bind limits across sessions, brute-force slow-down, per-account TPS, the per-connection timers,
TLS, back-pressure toward slow readers (one connection: :mod:`bridge.smpp.server_connection`),
and the two seams to the pipeline, here with the registry of connections (:class:`SmppServer`):

* inbound: :class:`SmppHandler.handle_request` gets every submit_sm, submit_multi, data_sm,
  query_sm, cancel_sm and replace_sm of a bound session and returns the response to send. Requests
  run concurrently, so responses go out in order of completion, each with its request's sequence
  number.
* outbound: :meth:`SmppServer.deliver` sends a deliver_sm (or data_sm) to a bound receiver or
  transceiver of a system_id, within the session's window, and reports whether it was
  acknowledged.
"""

from __future__ import annotations

import asyncio
import itertools
import ssl
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

import structlog
from aiolimiter import AsyncLimiter

from bridge.core.accounts import (
    Account,
    AccountRegistry,
    BindLockout,
    BindThrottle,
    IPNetwork,
)
from bridge.observability import LoopHistogram, Metrics, SampledLog
from bridge.smpp.admission import Admission, AdmissionConfig
from bridge.smpp.events import (
    BindType,
)
from bridge.smpp.hash_pool import HashPool
from bridge.smpp.listener import Listener, open_listeners
from bridge.smpp.pdu import Pdu, Status
from bridge.smpp.pdu_metrics import PduKey, pdu_labels
from bridge.smpp.server_connection import THROTTLED_COMMANDS, ServerConnection
from bridge.smpp.session import SessionConfig

__all__ = [
    "DeliverResult",
    "RejectingHandler",
    "ServerConfig",
    "SessionInfo",
    "SmppHandler",
    "SmppServer",
]

log = structlog.get_logger("bridge.smpp")

# listen() backlog: asyncio's default of 100 overflows under a reconnect storm, and a dropped
# SYN costs a good ESME 1 s, then 3 s (TCP retransmission) before its bind even arrives. The
# kernel caps it at net.core.somaxconn.
_BACKLOG = 4096


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """Listener settings; timers and windows per session are in :class:`SessionConfig`."""

    host: str = "127.0.0.1"
    port: int = 2775
    session: SessionConfig = field(default_factory=SessionConfig)
    max_connections: int = 1000
    bind_failure_delay: float = 1.0
    bind_failure_delay_max: float = 30.0
    shutdown_timeout: float = 10.0
    # connection admission (see bridge/smpp/admission.py)
    max_unbound_per_address: int = 10
    bind_reserve: int = 100
    allowed_ips: tuple[IPNetwork, ...] | None = None  # None: the union of the accounts'
    log_sample_interval: float = 10.0
    # a receiver owing answers (or not reading) this long is closed; 0 = never
    stalled_receiver_timeout: float = 60.0
    # brute force (README "Binds")
    reveal_bind_errors: bool = False
    bind_lockout_failures: int = 10
    bind_lockout_duration: float = 300.0
    hash_workers: int = 1
    hash_max_pending: int = 16
    tls_host: str | None = None
    tls_port: int | None = None
    tls_cert: str | None = None
    tls_key: str | None = None


@dataclass(slots=True)
class SessionInfo:
    """What the pipeline may know of a session: who, from where, bound how."""

    id: int
    peer_ip: str
    peer_port: int
    tls: bool
    system_id: str | None = None
    bind_type: BindType | None = None
    account: Account | None = None


class DeliverResult(NamedTuple):
    """Outcome of :meth:`SmppServer.deliver`: ``status`` is the ESME's command_status, None when
    there was no answer (``error`` says why: no receiver bound, timeout, connection lost)."""

    status: int | None
    error: str | None = None

    @property
    def acknowledged(self) -> bool:
        return self.status == 0


#: ``reply(token, response)``: how a handler answers a request it took with ``try_handle``.
Reply = Callable[[Any, Pdu], None]


class SmppHandler(Protocol):
    """The pipeline seen from the SMPP server."""

    async def handle_request(self, session: SessionInfo, pdu: Pdu) -> Pdu:
        """Answer a message operation; the returned PDU's id and sequence are set for you."""
        ...

    def try_handle(self, session: SessionInfo, pdu: Pdu, reply: Reply, token: Any) -> bool:
        """The hot path, without a task per request: take the request and call
        ``reply(token, response)`` exactly once — now or later (say, once the message is on
        disk) — and return True; or return False and the request goes to
        :meth:`handle_request` in a task."""
        ...

    def session_bound(self, session: SessionInfo) -> None:
        """A session bound; a receiver bind is the moment to flush queued receipts."""
        ...

    def session_closed(self, session: SessionInfo) -> None: ...


class RejectingHandler:
    """The handler until a pipeline is plugged in: refuses every message, never pretends."""

    async def handle_request(self, session: SessionInfo, pdu: Pdu) -> Pdu:
        return Pdu(pdu.command_id, command_status=Status.ESME_RSYSERR)

    def try_handle(self, session: SessionInfo, pdu: Pdu, reply: Reply, token: Any) -> bool:
        return False

    def session_bound(self, session: SessionInfo) -> None:
        return None

    def session_closed(self, session: SessionInfo) -> None:
        return None




class SmppServer:
    """Accepts ESME connections on a plain and optionally a TLS port."""

    def __init__(
        self,
        config: ServerConfig,
        accounts: AccountRegistry,
        handler: SmppHandler | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        metrics: Metrics | None = None,
    ) -> None:
        self.config = config
        self.accounts = accounts
        self.handler: SmppHandler = handler or RejectingHandler()
        self.clock = clock
        self.metrics = metrics if metrics is not None else Metrics()
        # Loop-local per-PDU metrics (bridge/smpp/pdu_metrics.py), read at scrape time.
        self._pdus_in: dict[PduKey, int] = {}
        self._pdus_out: dict[PduKey, int] = {}
        self.metrics.add_pdu_source(self._pdu_rows)
        self._submit_latency: dict[int, LoopHistogram] = {
            int(cid): self.metrics.submit_latency(cid.name) for cid in THROTTLED_COMMANDS
        }
        self.throttle = BindThrottle(config.bind_failure_delay, config.bind_failure_delay_max)
        self.lockout = BindLockout(config.bind_lockout_failures, config.bind_lockout_duration)
        self.hash_pool = HashPool(config.hash_workers, config.hash_max_pending)
        # Per-event log lines of the SMPP side are sampled (README "Reliability", SMPP).
        self.sampled = SampledLog(log, interval=config.log_sample_interval, clock=clock)
        reserve = min(config.bind_reserve, config.max_connections // 2)
        self.admission: Admission[ServerConnection] = Admission(
            AdmissionConfig(config.max_connections, config.max_unbound_per_address, reserve),
            self._allowed_networks,
        )
        self._refusing = 0  # refused connections waiting to be answered
        self._ids = itertools.count(1)
        self._connections: set[ServerConnection] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._servers: list[Listener] = []
        self._limiters: dict[str, AsyncLimiter] = {}
        #: Cluster mode: ``await bind_gate(system_id, max_binds, bound here)`` says whether one
        #: more bind of the account fits cluster-wide (None: only this server's binds count).
        self.bind_gate: Callable[[str, int, int], Awaitable[bool]] | None = None
        self._rr: dict[str, int] = {}
        self._receiver_event: asyncio.Event | None = None
        self.ports: dict[str, int] = {}

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        cfg = self.config
        # Our own accept loop (bridge/smpp/listener.py): many accepts per loop pass.
        plain = open_listeners(
            cfg.host, cfg.port, _BACKLOG, lambda: ServerConnection(self, self._info(tls=False)),
            None, self._accept_failed,
        )  # fmt: skip
        self._servers.extend(plain)
        self.ports["smpp"] = plain[0].port
        if cfg.tls_port is not None and cfg.tls_cert and cfg.tls_key:
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.load_cert_chain(cfg.tls_cert, cfg.tls_key)
            tls = open_listeners(
                cfg.tls_host or cfg.host, cfg.tls_port, _BACKLOG,
                lambda: ServerConnection(self, self._info(tls=True)), ctx, self._accept_failed,
            )  # fmt: skip
            self._servers.extend(tls)
            self.ports["smpp_tls"] = tls[0].port
        log.info("smpp.listening", **self.ports)

    def _info(self, tls: bool) -> SessionInfo:
        """The SessionInfo of a new connection (its peer is filled in once connected)."""
        return SessionInfo(next(self._ids), "", 0, tls)

    def _accept_failed(self, error: OSError) -> None:
        self.metrics.smpp_event("accept_failed")
        self.sampled("warning", "smpp.accept_failed", str(error.errno), error=str(error))

    async def stop(self, timeout: float | None = None) -> None:
        """Graceful shutdown: stop accepting, unbind bound sessions, let in-flight work finish.

        The unbind goes out first, so that ESMEs stop submitting (later requests get
        ESME_RINVBNDSTS); requests already in the pipeline still get their responses, and each
        connection closes once its unbind is answered and its last response is out. Whatever is
        left at ``timeout`` is aborted.
        """
        timeout = self.config.shutdown_timeout if timeout is None else timeout
        deadline = self.clock() + timeout
        for srv in self._servers:
            srv.close()
        for conn in list(self._connections):
            if conn.session.is_bound:
                conn.unbind()
            else:
                conn._close_when_answered()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=max(0.0, deadline - self.clock()))
        while self._connections and self.clock() < deadline:
            await asyncio.sleep(0.02)
        for conn in list(self._connections):
            conn.abort()
        self._servers.clear()
        self.hash_pool.close()
        log.info("smpp.stopped")

    # ------------------------------------------------------------------ pipeline side

    def bound_count(self, system_id: str) -> int:
        return sum(
            1 for c in self._connections if c.info.system_id == system_id and c.session.is_bound
        )

    def receivers(self, system_id: str) -> list[ServerConnection]:
        return [
            c
            for c in self._connections
            if c.info.system_id == system_id and c.session.can_receive and not c._closed
        ]

    def has_receiver(self, system_id: str) -> bool:
        return bool(self.receivers(system_id))

    async def deliver(self, system_id: str, pdu: Pdu) -> DeliverResult:
        """Send deliver_sm/data_sm to a bound receiver of ``system_id`` (round robin).

        Returns the ESME's command_status, or status None with the reason when nobody is bound,
        the response timed out or the connection was lost: the caller keeps the message queued.
        """
        conns = self.receivers(system_id)
        if not conns:
            return DeliverResult(None, "no receiver bound")
        # Prefer a session with room in its window, round robin among them.
        start = self._rr.get(system_id, 0)
        self._rr[system_id] = start + 1
        ordered = conns[start % len(conns) :] + conns[: start % len(conns)]
        conn = next((c for c in ordered if c.session.window_free > 0), ordered[0])
        resp = await conn.send_request(pdu)
        if resp is None:
            return DeliverResult(None, "no response (timeout or connection lost)")
        return DeliverResult(resp.command_status)

    def deliver_nowait(
        self, system_id: str, pdu: Pdu, done: Callable[[Any, Pdu | None], None], arg: Any
    ) -> bool:
        """:meth:`deliver` without a future: round robin over the receivers of ``system_id``
        with room in their window; False (nothing sent) when none has room or none is bound.
        ``done(arg, response or None)`` runs when the ESME answers (None: timeout, lost)."""
        conns = self.receivers(system_id)
        if not conns:
            return False
        start = self._rr.get(system_id, 0)
        self._rr[system_id] = start + 1
        n = len(conns)
        return any(conns[(start + i) % n].send_request_nowait(pdu, done, arg) for i in range(n))

    async def wait_for_receiver(self) -> None:
        """Wakes when any receiver binds (for delivery queues that wait on unbound accounts)."""
        if self._receiver_event is None:
            self._receiver_event = asyncio.Event()
        await self._receiver_event.wait()

    def _notify_receivers(self) -> None:
        if self._receiver_event is not None:
            self._receiver_event.set()
            self._receiver_event = None

    def limiter_for(self, account: Account) -> AsyncLimiter | None:
        """One rate limiter per account, shared by all its sessions; None when unlimited."""
        if not account.tps:
            return None
        lim = self._limiters.get(account.system_id)
        if lim is None or lim.max_rate != account.tps:
            # time_period of 1 s: aiolimiter's bucket allows a burst of `tps` at once.
            lim = AsyncLimiter(account.tps, 1.0)
            self._limiters[account.system_id] = lim
        return lim

    def _allowed_networks(self) -> tuple[IPNetwork, ...]:
        allowed = self.config.allowed_ips
        return allowed if allowed is not None else self.accounts.networks()

    def _forget(self, conn: ServerConnection) -> None:
        was_bound = conn.info.system_id is not None
        self._connections.discard(conn)
        self.admission.closed(conn)
        if was_bound:
            try:
                self.handler.session_closed(conn.info)
            except Exception:
                log.exception("smpp.session_closed_hook_failed")

    @property
    def connection_count(self) -> int:
        return len(self._connections)

    def revoke_changed(self) -> int:
        """After the accounts were replaced (SIGHUP): revoke every bound session whose account
        is gone, whose password changed or whose address is no longer allowed. Returns how
        many."""
        n = 0
        for conn in list(self._connections):
            info = conn.info
            old = info.account
            if old is None or not conn.session.is_bound:
                continue
            new = self.accounts.get(old.system_id)
            if new is None:
                reason = "account removed"
            elif new.password != old.password:
                reason = "password changed"
            elif not new.ip_allowed(info.peer_ip):
                reason = "address no longer allowed"
            elif new.bind_type_allowed(info.bind_type):
                info.account = new  # other changes (tps, max_outstanding) apply to new binds
                continue
            else:
                reason = "bind type no longer allowed"
            conn.revoke(reason)
            n += 1
        return n

    def kick(self, target: str) -> list[int]:
        """Revoke a session by its id, or every session of a system_id (admin API ``kick``).
        Returns the ids of the sessions kicked."""
        kicked = []
        for conn in list(self._connections):
            info = conn.info
            if info.system_id is None or conn._closed:
                continue
            if str(info.id) == target or info.system_id == target:
                conn.revoke("kicked by the operator")
                kicked.append(info.id)
        return kicked

    def bound_sessions(self) -> list[SessionInfo]:
        """Every bound session (who, from where, bound how), for the admin status."""
        return [
            conn.info
            for conn in list(self._connections)
            if conn.info.system_id is not None
            and conn.info.bind_type is not None
            and conn.session.is_bound
        ]

    def session_counts(self) -> dict[tuple[str, str], int]:
        """Bound sessions by (system_id, bind type), for the sessions gauge."""
        counts: dict[tuple[str, str], int] = {}
        for conn in list(self._connections):
            info = conn.info
            if (
                info.system_id is not None
                and info.bind_type is not None
                and (conn.session.is_bound)
            ):
                key = (info.system_id, info.bind_type.value)
                counts[key] = counts.get(key, 0) + 1
        return counts

    def _pdu_rows(self) -> Iterator[tuple[str, str, str, float]]:
        """bridge_smpp_pdus_total rows (scrape time; the dicts are copied in one step each)."""
        for direction, counts in (("in", self._pdus_in), ("out", self._pdus_out)):
            for (command_id, status), n in list(counts.items()):
                command, status_name = pdu_labels(command_id, status)
                yield direction, command, status_name, n

    @property
    def listening(self) -> bool:
        """True while every listener (plain and TLS) accepts connections: for /readyz."""
        return bool(self._servers) and all(srv.is_serving() for srv in self._servers)
