"""The pytest plugin of the test harness (loaded by ``tests/conftest.py``): the shared fixtures
and the logging set-up every test run needs.

Fixtures: ``smpp_server`` (an SmppServer in a loop thread), ``start_bridge`` (the whole daemon),
``start_simulator`` (an HTTP provider simulator), ``provider_rig`` (simulator + bridge routing
to it), ``tmpfs`` (a real small filesystem), ``daemon`` (``smpp-bridge run`` as a process)."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from starlette.applications import Starlette

from bridge.core.accounts import Account
from bridge.smpp.server import SmppHandler
from bridge.smpp.session import SessionConfig
from tests.harness.daemon import BridgeThread, StartBridge
from tests.harness.process import daemon_factory
from tests.harness.rig import StartRig, rig_factory
from tests.harness.server import ServerThread, StartServer, make_account
from tests.harness.sims import SimulatorThread, StartSimulator


def pytest_configure(config: pytest.Config) -> None:
    """Send structlog through stdlib logging (unless a test setup configured it), so that
    pytest captures server logs per test and shows them only for failures."""
    if not structlog.is_configured():
        structlog.configure(
            processors=[
                structlog.stdlib.add_log_level,
                structlog.processors.TimeStamper(fmt="iso"),
                structlog.dev.ConsoleRenderer(colors=False),
            ],
            logger_factory=structlog.stdlib.LoggerFactory(),
        )


@pytest.fixture
def smpp_server() -> Iterator[StartServer]:
    """Factory: smpp_server(accounts=[...], handler=..., session=SessionConfig(...), **config)."""
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


@pytest.fixture
def start_bridge(tmp_path: Path) -> Iterator[StartBridge]:
    """Factory: ``start_bridge(data_dir=None, **bridge_config options)``; each bridge gets a
    fresh data directory unless one is given (to restart on the same store); every bridge is
    stopped afterwards."""
    started: list[BridgeThread] = []

    def start(data_dir: Path | None = None, **config: Any) -> BridgeThread:
        bt = BridgeThread(data_dir or tmp_path / f"data{len(started)}", **config)
        started.append(bt)
        return bt

    yield start
    for bt in reversed(started):
        bt.stop()


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


@pytest.fixture
def provider_rig(start_bridge: StartBridge) -> Iterator[StartRig]:
    """Factory: ``provider_rig(kind, provider=..., routes=..., **bridge_config)``: a provider
    simulator and a bridge routing to it (:func:`tests.harness.rig.rig_factory`)."""
    yield from rig_factory(start_bridge)


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """``tmpfs("1m")``: a real filesystem of that size, so ENOSPC comes from the kernel, not from
    a mock; unmounted after the test. Skips the test where mounting is not allowed."""
    mounts: list[Path] = []

    def mount(size: str) -> Path:
        path = tmp_path / f"tmpfs-{len(mounts)}"
        path.mkdir()
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if result.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
        mounts.append(path)
        return path

    yield mount
    for path in mounts:
        subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Any]:
    """Factory: ``daemon(**bridge_config options)`` writes the config and returns a Daemon
    (not started). Its log is printed at teardown, which pytest shows for failed tests."""
    yield from daemon_factory(tmp_path)
