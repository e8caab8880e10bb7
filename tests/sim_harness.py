"""Provider simulators (Starlette apps) served on a free loopback port in a loop of their own
thread, so a test can point a bridge at them and drive both from the test thread."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from loop_thread import LoopThread
from starlette.applications import Starlette

from bridge.web.server import HttpServer


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


@pytest.fixture
def start_simulator() -> Iterator[StartSimulator]:
    """Factory: ``start_simulator(app)``; every simulator is stopped afterwards."""
    started: list[SimulatorThread] = []

    def start(app: Starlette) -> SimulatorThread:
        sim = SimulatorThread(app)
        started.append(sim)
        return sim

    yield start
    for sim in reversed(started):
        sim.stop()


