"""A real SMPP server (:class:`~bridge.smpp.server.SmppServer`) on a loopback port, run in its
own thread and event loop, so that blocking ESME libraries (smpplib, our ``RawEsme``) can
talk to it from the test thread; and test handlers that implement the
:class:`~bridge.smpp.server.SmppHandler` seam in place of the bridge's pipeline."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

from bridge.core.accounts import LOOPBACK_NETWORKS, Account, AccountRegistry, BindType
from bridge.smpp.pdu import Pdu
from bridge.smpp.server import ServerConfig, SessionInfo, SmppHandler, SmppServer
from bridge.smpp.session import SessionConfig
from tests.harness.loop import LoopThread


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


class ServerThread(LoopThread):
    """A SmppServer on 127.0.0.1:<free port> in a background event loop.

    ``server_kw`` overrides :class:`ServerConfig` fields; the bind-failure delay is off unless
    a test asks for it.
    """

    def __init__(
        self,
        accounts: list[Account],
        handler: SmppHandler | None = None,
        session: SessionConfig | None = None,
        **server_kw: Any,
    ) -> None:
        super().__init__()
        values: dict[str, Any] = {
            "host": "127.0.0.1",
            "port": 0,
            "session": session or SessionConfig(),
            "bind_failure_delay": 0.0,
            "bind_failure_delay_max": 0.0,
        }
        values.update(server_kw)
        cfg = ServerConfig(**values)
        self.registry = AccountRegistry(accounts)
        self.server: SmppServer = self.call(self._make(cfg, handler))
        self.port: int = self.server.ports["smpp"]
        self.tls_port: int | None = self.server.ports.get("smpp_tls")

    async def _make(self, cfg: ServerConfig, handler: SmppHandler | None) -> SmppServer:
        server = SmppServer(cfg, self.registry, handler)
        await server.start()
        return server

    def connection_count(self) -> int:
        return self.run(lambda: self.server.connection_count)

    def stop(self) -> None:
        if self.loop.is_closed():
            return
        try:
            self.call(self.server.stop(timeout=2.0))
        finally:
            self.close_loop()


StartServer = Callable[..., ServerThread]
"""The type of the ``smpp_server`` fixture."""


# --------------------------------------------------------------------------- handlers


class AcceptingHandler:
    """A pipeline that accepts every message: submit_sm_resp ESME_ROK with ``msg-<seq>``.

    ``delay(pdu)`` may slow a request down (seconds); every request is recorded.
    """

    def __init__(
        self,
        delay: Callable[[Pdu], float] | None = None,
        message_id: Callable[[Pdu], str] | None = None,
    ) -> None:
        self.delay = delay
        self.message_id = message_id or (lambda pdu: f"msg-{pdu.sequence_number}")
        self.requests: list[Pdu] = []
        self.answered = 0
        self.bound: list[SessionInfo] = []
        self.closed: list[SessionInfo] = []

    def try_handle(self, session: SessionInfo, pdu: Pdu, reply: Any, token: Any) -> bool:
        return False  # every request through handle_request (its delay may await)

    async def handle_request(self, session: SessionInfo, pdu: Pdu) -> Pdu:
        self.requests.append(pdu)
        if self.delay is not None:
            await asyncio.sleep(self.delay(pdu))
        self.answered += 1
        return pdu.response(message_id=self.message_id(pdu))

    def session_bound(self, session: SessionInfo) -> None:
        self.bound.append(session)

    def session_closed(self, session: SessionInfo) -> None:
        self.closed.append(session)


class GatedHandler(AcceptingHandler):
    """Holds every request until :meth:`release` is called (from any thread)."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.waiting = 0

    async def handle_request(self, session: SessionInfo, pdu: Pdu) -> Pdu:
        self.requests.append(pdu)
        self.waiting += 1
        try:
            while not self.gate.is_set():
                await asyncio.sleep(0.005)
        finally:
            self.waiting -= 1
        self.answered += 1
        return pdu.response(message_id=self.message_id(pdu))

    def release(self) -> None:
        self.gate.set()
