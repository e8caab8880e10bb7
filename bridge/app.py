"""Wiring: builds the parts from a :class:`~bridge.config.Config`, starts and stops them in order.

This is the only module that knows every layer (docs/architecture.md, "arrows point down").
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import hmac
import shutil
import signal
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import prometheus_client
import structlog
from pydantic import SecretStr

from bridge.admin.service import AdminService
from bridge.admin.token import admin_token
from bridge.admin.web import build_admin_app
from bridge.config import (
    AccountConfig,
    AdminConfig,
    Config,
    ConfigError,
    HttpConfig,
    ProviderConfig,
    apply_overrides,
    load_config,
)
from bridge.core.accounts import AccountRegistry
from bridge.core.admission import AccountPolicy, RejectReason
from bridge.core.delivery import DeliveryQueue, ReceiptSender
from bridge.core.dispatcher import Dispatcher
from bridge.core.model import InboundMessage, MessageState
from bridge.core.pipeline import Pipeline
from bridge.core.provider import (
    CallbackKind,
    CallbackProvider,
    Capabilities,
    Provider,
    ProviderContext,
    StatsProvider,
)
from bridge.core.reports import ReportHandler
from bridge.core.router import Route, Router
from bridge.observability import BridgeCollector, Metrics, Snapshot, register_secret
from bridge.passwords import secret_file
from bridge.providers.registry import PROVIDER_TYPES
from bridge.runtime import tune_gc
from bridge.smpp.server import ServerConfig, SessionInfo, SmppServer
from bridge.smpp.session import SessionConfig
from bridge.smsc import SmppReceiptSender, SmscHandler, decode_payload, text_units
from bridge.store.embedded import EmbeddedStore
from bridge.store.legacy import import_legacy
from bridge.web.guard import HttpGuard
from bridge.web.server import CallbackEndpoint, HealthReport, HttpServer, build_app

if TYPE_CHECKING:  # cluster mode's modules (and redis-py) load only when a store URL is set
    from bridge.store.cluster import ClusterNode
    from bridge.store.redis import RedisStore

log = structlog.get_logger("bridge.app")

#: Provider health checks may be remote calls (a balance query): /readyz reuses a result this
#: many seconds old rather than hitting every provider on every probe, and gives up on a
#: provider that has not answered within PROVIDER_HEALTH_TIMEOUT (it counts as unhealthy).
PROVIDER_HEALTH_TTL = 5.0
PROVIDER_HEALTH_TIMEOUT = 2.0
#: bridge_provider_up: providers are checked this often in the background (and whenever /readyz
#: asks); the gauge shows the last answer.
PROVIDER_UP_INTERVAL = 30.0


CALLBACK_SECRET_FILE = "callback.secret"


def _build_store(cfg: Config, metrics: Metrics) -> EmbeddedStore | RedisStore:
    """The embedded journal, or Redis when ``[storage] url`` (``--store-url``) names one."""
    st = cfg.storage
    if st.url is None:
        return EmbeddedStore(
            Path(st.data_dir) / "store", metrics=metrics, archive_after=st.archive_after
        )
    from bridge.store.redis import RedisStore

    return RedisStore(
        st.url,
        metrics=metrics,
        prefix=st.prefix,
        node_id=cfg.cluster.node,
        timeout=st.timeout,
        dead_after=cfg.cluster.dead_after,
        password=st.password.get_secret_value() if st.password is not None else None,
    )


def server_config(cfg: Config) -> ServerConfig:
    """Translate the ``[smpp]`` section into the SMPP layer's own settings."""
    s = cfg.smpp
    session = SessionConfig(
        system_id=s.system_id,
        session_init_timeout=s.session_init_timeout,
        enquire_link_interval=s.enquire_link_interval,
        inactivity_timeout=s.inactivity_timeout,
        response_timeout=s.response_timeout,
        window=s.window,
        max_pdu_size=s.max_pdu_size,
    )
    tls = s.tls
    return ServerConfig(
        host=s.host,
        port=s.port,
        session=session,
        max_connections=s.max_connections,
        bind_failure_delay=s.bind_failure_delay,
        bind_failure_delay_max=s.bind_failure_delay_max,
        shutdown_timeout=s.shutdown_timeout,
        max_unbound_per_address=s.max_unbound_per_address,
        bind_reserve=s.bind_reserve,
        allowed_ips=tuple(s.allowed_ips) if s.allowed_ips is not None else None,
        log_sample_interval=s.log_sample_interval,
        stalled_receiver_timeout=s.stalled_receiver_timeout,
        reveal_bind_errors=s.reveal_bind_errors,
        bind_lockout_failures=s.bind_lockout_failures,
        bind_lockout_duration=s.bind_lockout_duration,
        hash_workers=s.hash_workers,
        hash_max_pending=s.hash_max_pending,
        tls_host=tls.host if tls else None,
        tls_port=tls.port if tls else None,
        tls_cert=str(tls.cert) if tls else None,
        tls_key=str(tls.key) if tls else None,
    )


class Bridge:
    """The running daemon: store, providers, pipeline, dispatcher, delivery queue, SMPP server.

    Start order: store (and what it holds: pending messages, parts, queued receipts), providers,
    dispatcher, delivery queue, and only then the SMPP listener, so no ESME is answered before
    the bridge can keep its promises. Stop order is the reverse.
    """

    def __init__(self, cfg: Config, *, clock: Callable[[], float] = time.time) -> None:
        self.cfg = cfg
        self.clock = clock
        self.accounts = AccountRegistry(cfg.to_accounts())
        # Metrics: one registry per bridge (several bridges in one test process must not
        # collide in the global default one); /metrics serves generate_latest(self.registry).
        self.registry = prometheus_client.CollectorRegistry()
        self.metrics = metrics = Metrics(self.registry)
        self.store: EmbeddedStore | RedisStore = _build_store(cfg, metrics)
        self.node_id = cfg.cluster.node
        # The node as an info metric (a constant 1): dashboards join on it, no per-series label.
        prometheus_client.Gauge(
            "bridge_node_info",
            "Always 1; this bridge's node id and store (embedded or redis) as labels.",
            ["node", "store"],
            registry=self.registry,
        ).labels(self.node_id, "redis" if cfg.storage.url else "embedded").set(1)
        self._callback_secret = _callback_secret(cfg)
        self.callback_tokens = {
            name: _callback_token(self._callback_secret, name, pc)
            for name, pc in cfg.providers.items()
        }
        _register_secrets(cfg, self.callback_tokens.values())
        self.providers: dict[str, Provider] = {
            name: _build_provider(name, pc, self._provider_context(name))
            for name, pc in cfg.providers.items()
        }
        self._owners = _inbound_owners(cfg.accounts)
        _prime_metrics(metrics, cfg)
        capabilities = {
            name: _with_limits(p.capabilities, cfg.providers[name])
            for name, p in self.providers.items()
        }
        for name, p in self.providers.items():
            p.capabilities = capabilities[name]
        self.router = Router(_routes(cfg, self.providers), capabilities)
        pc = cfg.pipeline
        self.reports = ReportHandler(
            self.store, clock, on_receipts=self._wake_account, metrics=metrics
        )
        self.dispatcher = Dispatcher(
            self.store,
            self.providers,
            self.reports,
            clock,
            backoff_base=pc.retry_base,
            backoff_max=pc.retry_max,
            poll_interval=pc.poll_interval,
            breaker_failures=pc.breaker_failures,
            breaker_cooldown=pc.breaker_cooldown,
            breaker_cooldown_max=max(pc.breaker_cooldown_max, pc.breaker_cooldown),
            breaker_health_interval=pc.breaker_health_interval,
            poll_backoff_max=max(pc.poll_backoff_max, pc.poll_interval),
            push_poll_after=pc.push_poll_after,
            on_dispatched=self._dispatched,
            metrics=metrics,
        )
        self.pipeline = Pipeline(
            self.store,
            self.router,
            self.dispatcher,
            self.reports,
            decode_payload,
            clock=clock,
            max_queue=pc.max_queue,
            reassembly_timeout=pc.reassembly_timeout,
            chars=text_units,
            metrics=metrics,
        )
        self.policies = {a.system_id: _policy(a) for a in cfg.accounts}
        self.handler = SmscHandler(self.pipeline, self.policies, metrics=metrics)
        self.smpp = SmppServer(server_config(cfg), self.accounts, self.handler, metrics=metrics)
        sender: ReceiptSender = SmppReceiptSender(self.smpp)
        self.cluster: ClusterNode | None = None
        if cfg.storage.url is not None:
            from bridge.store.cluster import attach

            self.cluster, sender = attach(self, sender)
        self.deliveries = DeliveryQueue(
            self.store,
            sender,
            clock,
            window=pc.delivery_window,
            retry_delay=pc.delivery_retry,
            max_age=pc.receipt_max_age,
            metrics=metrics,
        )
        self.handler.on_bound.append(self._on_bound)
        self._reaper: asyncio.Task[None] | None = None
        self._housekeeper: asyncio.Task[None] | None = None
        self._health_checker: asyncio.Task[None] | None = None
        self._disk_watch: asyncio.Task[None] | None = None
        self._routed = frozenset(name for r in self.router.routes for name in r.providers)
        #: The last balance each provider reported (for the admin status).
        self.balances: dict[str, float] = {}
        self._provider_health: dict[str, bool] = {}
        self._provider_health_at = float("-inf")
        self._provider_health_lock = asyncio.Lock()
        self.http = HttpServer(
            cfg.http.host,
            cfg.http.port,
            # Callbacks only: this port faces the providers (the internet, for push
            # providers); /metrics, health and the admin API are on the admin listener.
            build_app(
                callbacks={
                    name: CallbackEndpoint(self.callback_tokens[name], provider)
                    for name, provider in self.providers.items()
                    if isinstance(provider, CallbackProvider)
                },
                metrics_sink=metrics,
            ),
            guard=_guard("http", cfg.http, metrics),
        )
        # The operator's listener: admin API, status page, /metrics and the health probes,
        # off the callback port (which faces the providers, and so the internet).
        self.admin = AdminService(self, clock=clock)
        self.admin_token = admin_token(cfg, create=True)  # None: [admin] allow_unauthenticated
        register_secret(self.admin_token)
        self.admin_http = HttpServer(
            cfg.admin.host,
            cfg.admin.port,
            build_admin_app(
                self.admin,
                token=self.admin_token,
                metrics=self._metrics_text,
                health=self.health,
                metrics_auth=cfg.admin.metrics_auth,
                on_refused=metrics.admin_refused.inc,
            ),
            name="admin",
            guard=_guard("admin", cfg.admin, metrics),
        )

        self.registry.register(BridgeCollector(self.metrics_snapshot))
        # What the default registry would have served: process CPU/memory/fds, GC, platform.
        prometheus_client.ProcessCollector(registry=self.registry)
        prometheus_client.PlatformCollector(registry=self.registry)
        prometheus_client.GCCollector(registry=self.registry)

    def _provider_context(self, name: str) -> ProviderContext:
        gauge = self.metrics.provider_balance.labels(name)

        def balance(value: float) -> None:
            gauge.set(value)
            self.balances[name] = value

        def callback_url(kind: CallbackKind) -> str | None:
            return self.callback_url(name, kind)

        def set_healthy(healthy: bool) -> None:
            self._provider_health[name] = healthy

        def count_event(event: str) -> None:
            self.metrics.provider_event(name, event)

        return ProviderContext(
            name=name,
            clock=self.clock,
            callback_url=callback_url,
            set_balance=balance,
            set_healthy=set_healthy,
            state_dir=Path(self.cfg.storage.data_dir) / "providers",
            count_event=count_event,
        )

    def callback_url(self, provider: str, kind: CallbackKind) -> str | None:
        """Where ``provider`` pushes ``kind`` (token included): ``[http] public_url``, else
        this server's own address (right for local simulators; set public_url in production)."""
        token = self.callback_tokens.get(provider)
        if token is None:
            return None
        return _callback_url(_callback_base(self.cfg, self.http.port), provider, token, kind)

    def _wake_account(self, account: str) -> None:
        self.deliveries.wake(account)

    def _on_bound(self, session: SessionInfo) -> None:
        if session.system_id and session.bind_type is not None:
            self.deliveries.wake(session.system_id)

    def _dispatched(self) -> None:
        self.pipeline.note_dispatched()

    def _metrics_text(self) -> bytes:
        """GET /metrics: the text exposition of the bridge's registry."""
        # The bridge's own CollectorRegistry (Bridge.registry) once the metrics wiring has
        # one; until then the process-wide default (python_gc_*, process_* collectors).
        registry = getattr(self, "registry", None)
        if registry is None:
            registry = prometheus_client.REGISTRY
        return prometheus_client.generate_latest(registry)

    async def health(self) -> HealthReport:
        """GET /readyz: can this bridge take a message and keep its promise for it?

        Store: a write transaction that changes nothing (expiring correlations up to time 0)
        goes through the same writer thread and commit as a submit_sm, so it fails when the
        store is closed, its writer died or the disk refuses writes. Listeners: the SMPP
        sockets accept connections. Providers: each one's ``healthy()``, cached briefly.
        """
        try:
            await asyncio.wait_for(self.store.expire_correlations(0.0), PROVIDER_HEALTH_TIMEOUT)
            store_ok = True
        except Exception as exc:
            log.warning("health.store_failed", error=type(exc).__name__)
            store_ok = False
        listening = bool(self.smpp.ports) and self.smpp.listening
        providers = await self._providers_health()
        report = HealthReport(
            store_ok, listening, providers, self._routed, disk_space=not self.pipeline.disk_low
        )
        if self.cluster is not None:  # cluster mode: say so, and which node this is
            report.extra["redis"] = store_ok
            report.extra["node"] = self.node_id
        return report

    @property
    def routed_providers(self) -> frozenset[str]:
        """Providers some route sends to."""
        return self._routed

    def listeners(self) -> dict[str, str]:
        """Where this bridge listens, by name (smpp, smpp_tls, http, admin)."""
        out = {}
        tls = self.cfg.smpp.tls
        for name, port in self.smpp.ports.items():
            host = tls.host if name != "smpp" and tls is not None else self.cfg.smpp.host
            out[name] = f"{host}:{port}"
        out["http"] = self.http.address
        out["admin"] = self.admin_http.address
        return out

    async def provider_health(self) -> dict[str, bool]:
        """Each provider's last health check (refreshed when older than a few seconds)."""
        return await self._providers_health()

    async def _providers_health(self) -> dict[str, bool]:
        """Each provider's ``healthy()``, asked concurrently at most every PROVIDER_HEALTH_TTL
        seconds (concurrent probes share one round); a timeout or an exception is unhealthy."""

        async def check(name: str, provider: Provider) -> bool:
            try:
                return bool(await asyncio.wait_for(provider.healthy(), PROVIDER_HEALTH_TIMEOUT))
            except Exception as exc:
                log.warning("health.provider_failed", provider=name, error=type(exc).__name__)
                return False

        async with self._provider_health_lock:
            now = time.monotonic()
            if now - self._provider_health_at >= PROVIDER_HEALTH_TTL:
                names = list(self.providers)
                results = await asyncio.gather(*(check(n, self.providers[n]) for n in names))
                self._provider_health = dict(zip(names, results, strict=True))
                self._provider_health_at = time.monotonic()
            return dict(self._provider_health)

    def metrics_snapshot(self) -> Snapshot:
        """The scrape-time gauges (BridgeCollector); runs in the loop (the /metrics route)."""
        sessions: dict[tuple[str, str], int] = {
            (a.system_id, bt.value): 0
            for a in self.accounts.accounts()
            for bt in a.allowed_bind_types
        }
        sessions.update(self.smpp.session_counts())
        now = self.clock()
        queues = {
            name: (self.dispatcher.queue_depth(name), self.dispatcher.oldest_age(name, now))
            for name in self.providers
        }
        waiting = {a.system_id: 0 for a in self.accounts.accounts()}
        try:
            waiting.update(self.store.delivery_depths())
        except Exception:  # the store is closed (stopping): no numbers rather than no page
            waiting = {}
        upstream: dict[str, tuple[int, int]] = {}
        upstream_events: dict[tuple[str, str], int] = {}
        for name, provider in self.providers.items():
            if isinstance(provider, StatsProvider):
                stats = provider.stats()
                upstream[name] = (stats.binds, stats.in_flight)
                for event, n in stats.events.items():
                    upstream_events[(name, event)] = n
        return Snapshot(
            connections=self.smpp.connection_count,
            sessions=sessions,
            queues=queues,
            providers_up=dict(self._provider_health),
            circuit_open={name: b.is_open for name, b in self.dispatcher.breakers.items()},
            paused={name: name in self.dispatcher.paused for name in self.providers},
            deliveries_waiting=waiting,
            reassembly_pending=len(self.pipeline.reassembly),
            reassembly_parts=self.pipeline.reassembly.fragment_count,
            upstream=upstream,
            upstream_events=upstream_events,
        )

    async def _check_providers(self, interval: float = PROVIDER_UP_INTERVAL) -> None:
        """Keep bridge_provider_up current even when nothing probes /readyz."""
        while True:
            try:
                await self._providers_health()
            except Exception:
                log.exception("health.provider_check_failed")
            await asyncio.sleep(interval)

    def owner_of(self, number: str) -> str | None:
        """The account whose ``inbound_numbers`` match ``number`` (exact, else the longest
        ``prefix*``), or None."""
        return _owner(self._owners, number)

    async def _inbound(self, message: InboundMessage) -> bool:
        """The providers' inbound sink: queue the MO durably for its account (the one the
        adapter named, else the owner of the receiving number)."""
        account = message.account or self.owner_of(message.destination.digits)
        if account is None or self.accounts.get(account) is None:
            log.warning(
                "inbound_unowned",
                provider=message.provider,
                destination=message.destination.digits,
                account=account,
            )
            self.metrics.inbound(message.provider, "unowned")
            return False
        if account != message.account:
            message = dataclasses.replace(message, account=account)
        await self.store.enqueue_delivery(account, message, self.clock())
        self.metrics.inbound(message.provider, "queued")
        self.deliveries.wake(account)
        return True

    async def start(self) -> None:
        data_dir = Path(self.cfg.storage.data_dir)
        data_dir.mkdir(parents=True, exist_ok=True)
        if isinstance(self.store, EmbeddedStore):
            # A data directory of a bridge before engine v2: its bridge.db is imported once.
            await import_legacy(data_dir, self.store.directory)
        await self.store.open()
        for provider in self.providers.values():
            await provider.start(self.reports.on_report, self._inbound)
        await self.pipeline.restore()
        await self.dispatcher.start()
        self.deliveries.start()
        if self.cluster is not None:
            self.cluster.start()
        self._reaper = asyncio.create_task(self._reap_parts(), name="reassembly-timeouts")
        self._housekeeper = asyncio.create_task(self._housekeeping(), name="housekeeping")
        self._health_checker = asyncio.create_task(
            self._check_providers(), name="provider-health"
        )
        self._check_disk()
        self._disk_watch = asyncio.create_task(self._watch_disk(), name="disk-watch")
        await self.smpp.start()
        try:
            await self.http.start()
            self.admin.start()
            await self.admin_http.start()  # last: /readyz must not say ready before SMPP listens
        except BaseException:
            await self.stop()  # e.g. the HTTP port is taken: leave nothing half-started
            raise

    async def _watch_disk(self, interval: float = 1.0) -> None:
        """Every second: is there room on the store's disk? (One statvfs call, microseconds.)"""
        while True:
            await asyncio.sleep(interval)
            self._check_disk()

    def _check_disk(self) -> None:
        """Refuse new submits (ESME_RMSGQFUL) while free space is under ``[storage]
        min_free_mb``, and say so once — a WARNING when it starts, INFO when it ends — rather
        than one line per refusal on the very disk that is full."""
        minimum = self.cfg.storage.min_free_mb * 1024 * 1024
        try:
            free = shutil.disk_usage(self.cfg.storage.data_dir).free
        except OSError as exc:
            log.warning("store.disk_unreadable", error=repr(exc))
            return
        self.metrics.store_free_bytes.set(free)
        low = minimum > 0 and free < minimum
        if low == self.pipeline.disk_low:
            return
        self.pipeline.disk_low = low
        if low:
            log.warning(
                "store.disk_low",
                free_mb=free // (1024 * 1024),
                min_free_mb=self.cfg.storage.min_free_mb,
                data_dir=str(self.cfg.storage.data_dir),
                action="new submits refused with ESME_RMSGQFUL until space is freed",
            )
        else:
            log.info("store.disk_ok", free_mb=free // (1024 * 1024), submits="accepted again")

    async def _reap_parts(self) -> None:
        """Time out incomplete concatenated messages (each part gets a failure receipt)."""
        while True:
            deadline = self.pipeline.reassembly.next_deadline()
            now = self.clock()
            delay = 1.0 if deadline is None else min(1.0, max(0.0, deadline - now))
            await asyncio.sleep(delay)
            try:
                await self.pipeline.expire_parts()
            except Exception:
                log.exception("pipeline.expire_parts_failed")

    async def _housekeeping(self, interval: float = 300.0) -> None:
        """Forget provider-id correlations past their expiry (reports for them count as
        unknown) and purge final messages past ``[storage] retention``, so the database does
        not grow for ever. Purging runs in batches of short transactions."""
        while True:
            await asyncio.sleep(interval)
            try:
                removed = await self.store.expire_correlations(self.clock())
                if removed:
                    log.info("store.correlations_expired", count=removed)
                retention = self.cfg.storage.retention
                if retention > 0:
                    purged = await self._purge(self.clock() - retention)
                    if purged:
                        log.info("store.messages_purged", count=purged)
            except Exception:
                log.exception("store.housekeeping_failed")

    async def _purge(self, created_before: float, batch: int = 10_000) -> int:
        """Purge in batches, one short transaction each, so live writes are never held up
        for long, until the backlog is gone."""
        total = 0
        while True:
            n = await self.store.purge_final(created_before, batch)
            total += n
            if n < batch:
                return total
            await asyncio.sleep(0)

    async def stop(self) -> None:
        await self.admin_http.stop()  # first (started last): no probe sees half-stopped parts
        await self.admin.stop()
        await self.http.stop()
        await self.smpp.stop()
        for task in (self._reaper, self._housekeeper, self._health_checker, self._disk_watch):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self.cluster is not None:
            await self.cluster.stop()
        await self.dispatcher.stop()
        await self.deliveries.stop()
        for provider in self.providers.values():
            await provider.stop()
        await self.store.close()

    def reload(self, overrides: dict[str, object] | None = None) -> bool:
        """SIGHUP: re-read the config file and swap in its accounts; bound sessions stay bound."""
        path = self.cfg.source_path
        if path is None:
            return False
        try:
            new = load_config(path, sets=self.cfg.command_line_sets)
            if overrides:
                new = apply_overrides(new, **overrides)  # type: ignore[arg-type]
        except ConfigError as e:
            log.error("config.reload_failed", errors=str(e))
            return False
        if set(new.providers) != set(self.providers):
            # Provider instances hold pools and timers: adding or removing one needs a restart.
            log.error(
                "config.reload_failed",
                errors="the [providers] set changed; restart the bridge to apply it",
            )
            return False
        # All or nothing: everything the new file makes is built before any of it is applied,
        # so a file refused at any step leaves the running config whole (README, "Reliability").
        try:
            accounts = new.to_accounts()
            owners = _inbound_owners(new.accounts)
            policies = {a.system_id: _policy(a) for a in new.accounts}
            routes = _routes(new, self.providers)
        except Exception as exc:
            log.error("config.reload_failed", errors=f"{type(exc).__name__}: {exc}"[:500])
            return False
        self.accounts.replace(accounts)
        # Removed accounts, changed passwords, addresses no longer allowed: unbind their
        # sessions (README "Revocation").
        revoked = self.smpp.revoke_changed()
        _prime_metrics(self.metrics, new)
        self._owners = owners
        self.policies.clear()
        self.policies.update(policies)
        self.router.replace_routes(routes)
        log.info(
            "config.reloaded",
            accounts=len(self.accounts),
            routes=len(new.routes),
            sessions_revoked=revoked,
        )
        return True


def _register_secrets(cfg: Config, tokens: Iterable[str]) -> None:
    """Every credential and callback token a library's log line might quote (a URL, an
    exception text): the stdlib log handler blanks them (bridge.observability)."""
    for token in tokens:
        register_secret(token)
    for pc in cfg.providers.values():
        for value in pc.__dict__.values():
            if isinstance(value, SecretStr):
                register_secret(value.get_secret_value())


def _routes(cfg: Config, providers: Mapping[str, object]) -> list[Route]:
    """The configured routing rules; with none, everything goes to the first provider."""
    return [
        Route(
            list(r.providers),
            accounts=r.accounts,
            countries=r.countries,
            prefixes=r.prefixes,
            regex=r.regex,
            name=r.name,
        )
        for r in cfg.routes
    ] or [Route([next(iter(providers), "sandbox")], name="default")]


def _guard(listener: str, limits: HttpConfig | AdminConfig, metrics: Metrics) -> HttpGuard:
    """Header/body timeouts and the per-address cap of one HTTP listener (bridge.web.guard)."""
    counter = metrics.http_guard
    return HttpGuard(
        listener,
        header_timeout=limits.header_timeout,
        body_timeout=limits.body_timeout,
        max_per_address=limits.max_connections_per_ip,
        on_event=lambda reason: counter.labels(listener, reason).inc(),
    )


def _prime_metrics(metrics: Metrics, cfg: Config) -> None:
    """Series for the config's accounts and providers, at zero (see Metrics.prime)."""
    metrics.prime(
        accounts={a.system_id: [b.value for b in a.allowed_bind_types] for a in cfg.accounts},
        providers=list(cfg.providers),
        # The pipeline's reasons, and a store that could not take the message.
        reject_reasons=[*(r.name.lower() for r in RejectReason), "store_failed"],
        receipt_states=[s.stat_word for s in MessageState if s.is_final],
    )


def _policy(a: AccountConfig) -> AccountPolicy:
    return AccountPolicy(
        a.system_id,
        default_region=a.default_region,
        message_id_format=a.message_id_format,
        default_alphabet=a.data_coding_0,
        alphabet_1=a.data_coding_1,
        strict_numbers=a.strict_numbers,
        default_validity=a.default_validity,
    )


def callback_urls(cfg: Config) -> dict[str, dict[str, str]]:
    """Each push-capable provider's callback URLs by kind, as a running bridge on ``cfg`` would
    hand them out (``smpp-bridge callback-urls``): for provider web interfaces that want the URL
    typed in (an account-level push URL). Uses the same secret as the bridge (the data
    directory's ``callback.secret`` is created if it does not exist yet)."""
    secret = _callback_secret(cfg)
    base = _callback_base(cfg, cfg.http.port)
    urls: dict[str, dict[str, str]] = {}
    for name, pc in cfg.providers.items():
        provider = _build_provider(name, pc, ProviderContext(name=name))
        if isinstance(provider, CallbackProvider):
            token = _callback_token(secret, name, pc)
            # A provider whose account-level URL must carry placeholders says which.
            suffixes: Mapping[str, str] = getattr(provider, "callback_url_suffixes", {})
            urls[name] = {
                kind: _callback_url(base, name, token, kind) + suffixes.get(kind, "")
                for kind in provider.callback_kinds
            }
    return urls


def _callback_base(cfg: Config, port: int) -> str:
    """``[http] public_url``, else this server's own address on ``port`` (a wildcard listen
    address becomes loopback: right for local simulators; production sets public_url)."""
    if cfg.http.public_url is not None:
        return cfg.http.public_url
    host = cfg.http.host
    if host in ("", "0.0.0.0", "::"):
        host = "127.0.0.1"
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{port}"


def _callback_url(base: str, provider: str, token: str, kind: str) -> str:
    return f"{base}/callbacks/{provider}/{token}/{kind}"


def _build_provider(name: str, pc: ProviderConfig, ctx: ProviderContext) -> Provider:
    """The adapter a ``[providers.NAME]`` table describes (bridge.providers.registry)."""
    return PROVIDER_TYPES[pc.type].create(name, pc, ctx)


def _callback_secret(cfg: Config) -> bytes:
    """``[http] callback_secret``, else a random secret kept in the data directory (created
    once, mode 0600), so callback URLs handed to providers survive restarts."""
    if cfg.http.callback_secret is not None:
        return cfg.http.callback_secret.get_secret_value().encode()
    value = secret_file(Path(cfg.storage.data_dir) / CALLBACK_SECRET_FILE)
    assert value is not None  # created when missing
    return value.encode()


def _callback_token(secret: bytes, name: str, pc: ProviderConfig) -> str:
    """The provider's ``callback_token``, else HMAC-SHA256(secret, name): unguessable without
    the secret, stable across restarts, different per provider."""
    token = getattr(pc, "callback_token", None)
    if token is not None:
        return str(token.get_secret_value())
    return hmac.new(secret, f"callback:{name}".encode(), hashlib.sha256).hexdigest()[:40]


def _inbound_owners(accounts: list[AccountConfig]) -> dict[str, str]:
    """``inbound_numbers`` → account; prefixes keep their trailing ``*``."""
    owners: dict[str, str] = {}
    for a in accounts:
        for number in a.inbound_numbers:
            owners.setdefault(number.lstrip("+"), a.system_id)
    return owners


def _owner(owners: Mapping[str, str], number: str) -> str | None:
    digits = number.lstrip("+")
    if digits in owners:
        return owners[digits]
    for end in range(len(digits), 0, -1):
        owner = owners.get(digits[:end] + "*")
        if owner is not None:
            return owner
    return None


def _with_limits(caps: Capabilities, pc: ProviderConfig) -> Capabilities:
    return dataclasses.replace(
        caps, requests_per_second=pc.requests_per_second, concurrency=pc.concurrency
    )


def _log_providers_and_routes(cfg: Config) -> None:
    """One INFO line per provider and per route: what this instance will send where."""
    from bridge.summary import provider_endpoint, route_lines

    for name, pc in cfg.providers.items():
        log.info(
            "bridge.provider",
            provider=name,
            type=pc.type,
            endpoint=provider_endpoint(pc),
            requests_per_second=pc.requests_per_second or "unlimited",
            concurrency=pc.concurrency,
        )
    for line in route_lines(cfg):
        log.info("bridge.route", route=line)


async def run(cfg: Config, overrides: dict[str, object] | None = None) -> None:
    """Run until SIGINT/SIGTERM, then shut down gracefully."""
    bridge = Bridge(cfg)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    # Handlers first: a signal that arrives while the listeners open (a supervisor's early
    # SIGHUP, say) must not hit the default action, which for SIGHUP is to terminate.
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    with contextlib.suppress(NotImplementedError, AttributeError):
        loop.add_signal_handler(signal.SIGHUP, bridge.reload, overrides)
    await bridge.start()
    tune_gc()  # the loaded state is frozen out of the collector's walks (bridge/runtime.py)
    log.info(
        "bridge.started",
        smpp=f"{cfg.smpp.host}:{bridge.smpp.ports['smpp']}",
        http=bridge.http.address,
        admin=bridge.admin_http.address,
        accounts=len(bridge.accounts),
        data_dir=str(cfg.storage.data_dir),
    )
    _log_providers_and_routes(cfg)
    await stop.wait()
    log.info("bridge.stopping")
    await bridge.stop()
