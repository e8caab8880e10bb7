"""Shared fixtures: a real SMPP server on a loopback port, run in its own thread and event loop,
so that blocking ESME libraries (smpplib) can talk to it from the test thread."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import replace
from typing import Any, TypeVar

import pytest

from bridge.core.accounts import LOOPBACK_NETWORKS, Account, AccountRegistry, BindType
from bridge.smpp.server import ServerConfig, SmppHandler, SmppServer
from bridge.smpp.session import SessionConfig

T = TypeVar("T")


def make_account(**overrides: Any) -> Account:
    """The demo account of config/bridge.toml, with overrides."""
    values: dict[str, Any] = {
        "system_id": "demo",
        "password": "demopass",
        "allowed_bind_types": frozenset(BindType),
        "allowed_networks": LOOPBACK_NETWORKS,
        "max_binds": 10,
        "tps": 0.0,
        "max_outstanding": 1000,
        "default_region": None,
    }
    values.update(overrides)
    return Account(**values)


class ServerThread:
    """A SmppServer on 127.0.0.1:<free port> in a background event loop."""

    def __init__(
        self,
        accounts: list[Account],
        handler: SmppHandler | None = None,
        session: SessionConfig | None = None,
        **server_kw: Any,
    ) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        cfg = ServerConfig(
            host="127.0.0.1",
            port=0,
            session=session or SessionConfig(),
            bind_failure_delay=0.0,
            bind_failure_delay_max=0.0,
            **server_kw,
        )
        self.registry = AccountRegistry(accounts)
        self.server = self.call(self._make(cfg, handler))
        self.port = self.server.ports["smpp"]

    async def _make(self, cfg: ServerConfig, handler: SmppHandler | None) -> SmppServer:
        server = SmppServer(cfg, self.registry, handler)
        await server.start()
        return server

    def call(self, coro: Any, timeout: float = 10.0) -> Any:
        """Run a coroutine in the server's loop and wait for its result."""
        fut: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return fut.result(timeout)

    def run(self, fn: Callable[[], T]) -> T:
        """Run a plain function in the server's loop (to read its state safely)."""

        async def wrapper() -> T:
            return fn()

        return self.call(wrapper())  # type: ignore[no-any-return]

    def stop(self) -> None:
        try:
            self.call(self.server.stop(timeout=2.0))
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(5)
            self.loop.close()


@pytest.fixture
def smpp_server() -> Iterator[Callable[..., ServerThread]]:
    """Factory: smpp_server(accounts=[...], handler=..., session=SessionConfig(...))."""
    started: list[ServerThread] = []

    def start(
        accounts: list[Account] | None = None,
        handler: SmppHandler | None = None,
        session: SessionConfig | None = None,
        **kw: Any,
    ) -> ServerThread:
        st = ServerThread(accounts or [make_account()], handler, session, **kw)
        started.append(st)
        return st

    yield start
    for st in started:
        st.stop()


__all__ = ["ServerThread", "make_account", "replace"]
