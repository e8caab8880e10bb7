"""Wiring: builds the parts from a :class:`~bridge.config.Config`, starts and stops them in order.

This is the only module that knows every layer (DESIGN.md, "arrows point down"). Until the
message pipeline lands, message operations go to :class:`~bridge.smpp.server.RejectingHandler`,
which answers ESME_RSYSERR: a bridge that cannot yet deliver must never pretend it did.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from pathlib import Path

import structlog

from bridge.config import Config, ConfigError, apply_overrides, load_config
from bridge.core.accounts import AccountRegistry
from bridge.smpp.server import ServerConfig, SmppHandler, SmppServer
from bridge.smpp.session import SessionConfig

log = structlog.get_logger("bridge.app")


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
        tls_host=tls.host if tls else None,
        tls_port=tls.port if tls else None,
        tls_cert=str(tls.cert) if tls else None,
        tls_key=str(tls.key) if tls else None,
    )


class Bridge:
    """The running daemon: today the SMPP server and its accounts."""

    def __init__(self, cfg: Config, handler: SmppHandler | None = None) -> None:
        self.cfg = cfg
        self.accounts = AccountRegistry(cfg.to_accounts())
        self.smpp = SmppServer(server_config(cfg), self.accounts, handler)

    async def start(self) -> None:
        Path(self.cfg.storage.data_dir).mkdir(parents=True, exist_ok=True)
        await self.smpp.start()

    async def stop(self) -> None:
        await self.smpp.stop()

    def reload(self, overrides: dict[str, object] | None = None) -> bool:
        """SIGHUP: re-read the config file and swap in its accounts; bound sessions stay bound."""
        path = self.cfg.source_path
        if path is None:
            return False
        try:
            new = load_config(path)
            if overrides:
                new = apply_overrides(new, **overrides)  # type: ignore[arg-type]
        except ConfigError as e:
            log.error("config.reload_failed", errors=str(e))
            return False
        self.accounts.replace(new.to_accounts())
        log.info("config.reloaded", accounts=len(self.accounts))
        return True


async def run(cfg: Config, overrides: dict[str, object] | None = None) -> None:
    """Run until SIGINT/SIGTERM, then shut down gracefully."""
    bridge = Bridge(cfg)
    await bridge.start()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    with contextlib.suppress(NotImplementedError, AttributeError):
        loop.add_signal_handler(signal.SIGHUP, bridge.reload, overrides)
    log.info(
        "bridge.started",
        smpp=f"{cfg.smpp.host}:{bridge.smpp.ports['smpp']}",
        accounts=len(bridge.accounts),
        data_dir=str(cfg.storage.data_dir),
    )
    await stop.wait()
    log.info("bridge.stopping")
    await bridge.stop()
