"""Provider simulators in a loop of their own thread, so a test can point a bridge at them and
drive both from the test thread: the HTTP ones (Starlette apps) on a free loopback port
(:class:`SimulatorThread`), the SMPP upstream (iSMS SMPP) likewise (:class:`UpstreamThread`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from starlette.applications import Starlette

from bridge.simulators.smpp_upstream import SmppUpstreamSimulator
from bridge.web.server import HttpServer
from tests.harness.loop import LoopThread


class SimulatorThread(LoopThread):
    """Serves ``app`` on 127.0.0.1 (``port``, default a free one: a provider that comes back
    is a new thread on the old port). ``url`` is ``http://127.0.0.1:PORT``;
    ``run(fn)`` reads or changes the simulator's state inside its loop."""

    def __init__(self, app: Starlette, port: int = 0) -> None:
        super().__init__()
        self.server = HttpServer("127.0.0.1", port, app, shutdown_timeout=1.0)
        try:
            self.call(self.server.start(), timeout=10.0)
        except BaseException:
            self.close_loop()
            raise
        self.port: int = self.server.port
        self.url = f"http://127.0.0.1:{self.port}"
        self._stopped = False

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        try:
            self.call(self.server.stop(), timeout=10.0)
        finally:
            self.close_loop()


StartSimulator = Callable[[Starlette], SimulatorThread]


class UpstreamThread(LoopThread):
    """The SMPP upstream simulator in a loop of its own thread; ``run``/``call`` reach into it."""

    def __init__(self, **options: Any) -> None:
        super().__init__()
        self.sim = SmppUpstreamSimulator(**options)
        self.call(self.sim.start())
        self.port = self.sim.port

    def close(self) -> None:
        try:
            self.call(self.sim.close())
        finally:
            self.close_loop()
