"""Wiring: builds the parts from a :class:`~bridge.config.Config`, starts and stops them in order.

This is the only module that knows every layer (docs/architecture.md, "arrows point down"). It
decides nothing itself: who owns an inbound number is :mod:`bridge.core.inbound`, readiness
:mod:`bridge.core.health`, the timed chores :mod:`bridge.core.housekeeping`, the callback URLs
and their tokens :mod:`bridge.web.callbacks`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
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
from bridge.collectors import BridgeCollector, Snapshot
from bridge.config import Config, ConfigError, apply_overrides, load_config
from bridge.config_sections import AccountConfig, AdminConfig, HttpConfig
from bridge.core.accounts import AccountRegistry
from bridge.core.admission import AccountPolicy, RejectReason
from bridge.core.delivery import DeliveryQueue, ReceiptSender
from bridge.core.dispatcher import Dispatcher
from bridge.core.health import ProviderHealth, store_writable
from bridge.core.housekeeping import Housekeeper
from bridge.core.inbound import InboundRouter, inbound_owners
from bridge.core.model import MessageState
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
from bridge.logs import register_secret
from bridge.observability import Metrics
from bridge.providers.registry import ProviderConfig, build_provider
from bridge.runtime import tune_gc
from bridge.smpp.server import ServerConfig, SessionInfo, SmppServer
from bridge.smpp.session import SessionConfig
from bridge.smsc import SmppReceiptSender, SmscHandler, decode_payload, text_units
from bridge.store.embedded import EmbeddedStore
from bridge.store.legacy import import_legacy
from bridge.web.callbacks import callback_base, callback_secret, callback_token, callback_url
from bridge.web.guard import HttpGuard
from bridge.web.server import CallbackEndpoint, HealthReport, HttpServer, build_app

if TYPE_CHECKING:  # cluster mode's modules (and redis-py) load only when a store URL is set
    from bridge.store.cluster import ClusterNode
    from bridge.store.redis import RedisStore

log = structlog.get_logger("bridge.app")


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
        secret = callback_secret(cfg)
        self.callback_tokens = {
            name: callback_token(secret, name, pc) for name, pc in cfg.providers.items()
        }
        _register_secrets(cfg, self.callback_tokens.values())
        self.providers: dict[str, Provider] = {}
        self.provider_checks = ProviderHealth(self.providers)
        self.providers.update(
            (name, build_provider(name, pc, self._provider_context(name)))
            for name, pc in cfg.providers.items()
        )
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
        self.inbound = InboundRouter(
            _owners(cfg.accounts), self.accounts, self.store, self.deliveries, clock, metrics
        )
        st = cfg.storage
        self.housekeeper = Housekeeper(
            self.pipeline,
            self.store,
            clock,
            metrics,
            retention=st.retention,
            min_free_mb=st.min_free_mb,
            free_bytes=lambda: shutil.disk_usage(st.data_dir).free,
            data_dir=str(st.data_dir),
        )
        #: Providers some route sends to.
        self.routed_providers = frozenset(n for r in self.router.routes for n in r.providers)
        #: The last balance each provider reported (for the admin status).
        self.balances: dict[str, float] = {}
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

        def url_for(kind: CallbackKind) -> str | None:
            return self.callback_url(name, kind)

        def set_healthy(healthy: bool) -> None:
            self.provider_checks.set(name, healthy)

        def count_event(event: str) -> None:
            self.metrics.provider_event(name, event)

        return ProviderContext(
            name=name,
            clock=self.clock,
            callback_url=url_for,
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
        return callback_url(callback_base(self.cfg, self.http.port), provider, token, kind)

    def _wake_account(self, account: str) -> None:
        self.deliveries.wake(account)

    def _on_bound(self, session: SessionInfo) -> None:
        if session.system_id and session.bind_type is not None:
            self.deliveries.wake(session.system_id)

    def _dispatched(self) -> None:
        self.pipeline.note_dispatched()

    def _metrics_text(self) -> bytes:
        """GET /metrics: the text exposition of the bridge's registry."""
        return prometheus_client.generate_latest(self.registry)

    async def health(self) -> HealthReport:
        """GET /readyz: can this bridge take a message and keep its promise for it?

        Store: a write goes through (:func:`~bridge.core.health.store_writable`). Listeners: the
        SMPP sockets accept connections. Providers: each one's ``healthy()``, cached briefly.
        """
        store_ok = await store_writable(self.store)
        listening = bool(self.smpp.ports) and self.smpp.listening
        providers = await self.provider_checks.check()
        disk_space = not self.pipeline.disk_low
        report = HealthReport(
            store_ok, listening, providers, self.routed_providers, disk_space=disk_space
        )
        if self.cluster is not None:  # cluster mode: say so, and which node this is
            report.extra["redis"] = store_ok
            report.extra["node"] = self.node_id
        return report

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
            providers_up=dict(self.provider_checks.last),
            circuit_open={name: b.is_open for name, b in self.dispatcher.breakers.items()},
            paused={name: name in self.dispatcher.paused for name in self.providers},
            deliveries_waiting=waiting,
            reassembly_pending=len(self.pipeline.reassembly),
            reassembly_parts=self.pipeline.reassembly.fragment_count,
            upstream=upstream,
            upstream_events=upstream_events,
        )

    async def start(self) -> None:
        data_dir = Path(self.cfg.storage.data_dir)
        data_dir.mkdir(parents=True, exist_ok=True)
        if isinstance(self.store, EmbeddedStore):
            # A data directory of a bridge before engine v2: its bridge.db is imported once.
            await import_legacy(data_dir, self.store.directory)
        await self.store.open()
        for provider in self.providers.values():
            await provider.start(self.reports.on_report, self.inbound.deliver)
        await self.pipeline.restore()
        await self.dispatcher.start()
        self.deliveries.start()
        if self.cluster is not None:
            self.cluster.start()
        self.housekeeper.start()
        self.provider_checks.start()
        await self.smpp.start()
        try:
            await self.http.start()
            self.admin.start()
            await self.admin_http.start()  # last: /readyz must not say ready before SMPP listens
        except BaseException:
            await self.stop()  # e.g. the HTTP port is taken: leave nothing half-started
            raise

    async def stop(self) -> None:
        await self.admin_http.stop()  # first (started last): no probe sees half-stopped parts
        await self.admin.stop()
        await self.http.stop()
        await self.smpp.stop()
        await self.housekeeper.stop()
        await self.provider_checks.stop()
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
            owners = _owners(new.accounts)
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
        self.inbound.owners = owners
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


def _owners(accounts: list[AccountConfig]) -> dict[str, str]:
    """``inbound_numbers`` → account (bridge.core.inbound)."""
    return inbound_owners((a.system_id, a.inbound_numbers) for a in accounts)


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
