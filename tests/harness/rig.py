"""One provider rig for the provider end-to-end tests: a provider's simulator, a bridge configured
to route everything to it, and a bound ESME.

Every ``tests/test_e2e_<provider>.py`` needs the same three things; this module builds them
from one table (:data:`KINDS`: per provider type, its simulator with the tests' options and the
settings that point the adapter at it), so a test file keeps only what it proves. The
``provider_rig`` fixture (:mod:`tests.harness.plugin`) is the factory; everything it started is
stopped after the test.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bridge.providers.isms_smpp import IsmsSmppProvider
from bridge.simulators.isms_http import IsmsHttpSimulator
from bridge.simulators.mycoolsms import API_PATH, MyCoolSmsSimulator
from bridge.simulators.phlymail import DEFAULT_PASSWORD as PHLYMAIL_PASSWORD
from bridge.simulators.phlymail import DEFAULT_USERNAME as PHLYMAIL_USERNAME
from bridge.simulators.phlymail import PhlymailSimulator
from bridge.simulators.sms1601 import DEFAULT_PASSWORD as SMS1601_PASSWORD
from bridge.simulators.sms1601 import DEFAULT_USERNAME as SMS1601_USERNAME
from bridge.simulators.sms1601 import Sms1601Simulator
from bridge.simulators.smsflatrate import SmsflatrateSimulator
from tests.harness.daemon import BridgeThread, StartBridge, toml_value
from tests.harness.esme import Esme
from tests.harness.loop import LoopThread
from tests.harness.sims import SimulatorThread, UpstreamThread


@dataclass(frozen=True, slots=True)
class Kind:
    """How the tests run one provider type: its simulator and the adapter settings for it."""

    #: The provider's name in the bridge config (the callback URLs and metrics carry it).
    name: str
    #: A fresh simulator object (HTTP kinds: it has an ``app``; ``isms_smpp``: the options of
    #: the SMPP upstream simulator).
    simulator: Callable[[], Any]
    #: The provider table's keys, given where the simulator listens (URL, or SMPP port).
    settings: Callable[[str, int], dict[str, object]]


KINDS: dict[str, Kind] = {
    "isms_http": Kind(
        "isms",
        lambda: IsmsHttpSimulator(delay=0.05),
        lambda url, port: {"base_url": f"{url}/api/http/", "username": "test", "password": "test"},
    ),
    "isms_smpp": Kind(
        "isms",
        lambda: {"delay": 0.05, "retry": 0.1, "tps": 0},
        lambda url, port: {
            "host": "127.0.0.1",
            "port": port,
            "system_id": "isms",
            "password": "isms",
            "reconnect_min": 0.05,
            "reconnect_max": 0.3,
            "response_timeout": 1.0,
            "throttle_pause": 0.05,
        },
    ),
    "mycoolsms": Kind(
        "mycoolsms",
        lambda: MyCoolSmsSimulator(username="bridge", password="secret", delay=0.05),
        lambda url, port: {
            "base_url": f"{url}{API_PATH}",
            "username": "bridge",
            "password": "secret",
        },
    ),
    "phlymail": Kind(
        "phlymail",
        lambda: PhlymailSimulator(slow=1.0),
        lambda url, port: {
            "base_url": f"{url}/http.php",
            "username": PHLYMAIL_USERNAME,
            "password": PHLYMAIL_PASSWORD,
        },
    ),
    "sms1601": Kind(
        "sms1601",
        lambda: Sms1601Simulator(delay=0.05),
        lambda url, port: {
            "base_url": f"{url}/module/gateway.php",
            "username": SMS1601_USERNAME,
            "password": SMS1601_PASSWORD,
        },
    ),
    "smsflatrate": Kind(
        "sf",
        lambda: SmsflatrateSimulator(delay=0.05, rate_limit=0),
        lambda url, port: {
            "base_url": f"{url}/schnittstelle.php",
            "key": "testkey",
            "gateway": "auto10or11",
        },
    ),
}

#: The HTTP adapters' request timeout in these tests (isms_smpp has its own timers).
HTTP_TIMEOUT = 2.0


def provider_table(name: str, settings: Mapping[str, object]) -> str:
    """``[providers.<name>]`` with ``settings`` as TOML."""
    return f"[providers.{name}]\n" + "".join(
        f"{key} = {toml_value(value)}\n" for key, value in settings.items()
    )


@dataclass
class ProviderRig:
    """A running simulator and a bridge routing to it (``name`` in its config)."""

    kind: str
    name: str
    sim: Any
    #: The simulator's loop thread (:class:`SimulatorThread` or :class:`UpstreamThread`).
    sim_thread: LoopThread
    bt: BridgeThread
    esmes: list[Esme] = field(default_factory=list)

    def state(self, fn: Callable[[], Any]) -> Any:
        """``fn()`` inside the simulator's loop (to read or change its state safely)."""
        return self.sim_thread.run(fn)

    def stored(self, message_id: str) -> Any:
        """The bridge's stored message."""
        return self.bt.stored(message_id)

    def callback_url(self, kind: str = "report") -> str:
        """The bridge's callback URL for this provider (``report`` or ``inbound``)."""
        url = self.bt.run(lambda: self.bt.bridge.callback_url(self.name, kind))
        assert url is not None
        return str(url)

    def esme(self, how: str = "transceiver") -> Esme:
        """An smpplib ESME bound to the bridge (use it as a context manager)."""
        esme = Esme(self.bt.port)
        esme.bind(how)
        return esme


StartRig = Callable[..., ProviderRig]
"""The type of the ``provider_rig`` fixture."""


def rig_factory(start_bridge: StartBridge) -> Iterator[StartRig]:
    """The ``provider_rig`` fixture's body: ``provider_rig(kind, ...)`` starts the simulator of
    provider type ``kind`` and a bridge routing everything to it.

    * ``provider``: more (or other) keys of the provider table;
    * ``routes``: the ``[[routes]]`` and any further providers' tables, instead of the one route
      to this provider;
    * ``before_bridge(sim)``: runs (or is awaited) in the simulator's loop before the bridge starts;
    * ``simulator``: a simulator object of the test's own options, instead of the table's;
    * ``sim_thread`` and ``sim``: an earlier rig's simulator, for a second bridge on it;
    * ``rig_type``: a subclass of :class:`ProviderRig` with a test file's own helpers;
    * ``data_dir``, and every other keyword: :func:`~tests.harness.daemon.bridge_config`'s.

    ``isms_smpp`` rigs are returned once the bridge is bound to the upstream.
    """
    rigs: list[ProviderRig] = []

    def start(
        kind: str,
        *,
        provider: Mapping[str, object] | None = None,
        routes: str | None = None,
        before_bridge: Callable[[Any], None] | None = None,
        data_dir: Path | None = None,
        simulator: Any = None,
        sim_thread: LoopThread | None = None,
        sim: Any = None,
        rig_type: type[ProviderRig] = ProviderRig,
        **config: Any,
    ) -> ProviderRig:
        spec = KINDS[kind]
        if sim_thread is None:  # a fresh simulator (else: the one of an earlier rig)
            if kind == "isms_smpp":
                sim_thread = UpstreamThread(**spec.simulator())
                sim = sim_thread.sim
            else:
                sim = spec.simulator() if simulator is None else simulator
                sim_thread = SimulatorThread(sim.app)
        url = getattr(sim_thread, "url", "")
        port = int(getattr(sim_thread, "port", 0))
        settings: dict[str, object] = {"type": kind, **spec.settings(url, port)}
        if kind != "isms_smpp":
            settings["timeout"] = HTTP_TIMEOUT
        settings.update(provider or {})
        if before_bridge is not None:
            sim_thread.call(_prepare(before_bridge, sim))
        extra = provider_table(spec.name, settings)
        extra += routes if routes is not None else f'[[routes]]\nproviders = ["{spec.name}"]\n'
        try:
            bt = start_bridge(data_dir=data_dir, extra=extra, **config)
        except BaseException:
            _stop_simulator(sim_thread, sim)
            raise
        rig = rig_type(kind, spec.name, sim, sim_thread, bt)
        rigs.append(rig)
        if kind == "isms_smpp":
            client = bt.bridge.providers[spec.name]
            assert isinstance(client, IsmsSmppProvider)
            assert bt.call(client.client.wait_bound(5.0))
        return rig

    yield start
    for rig in reversed(rigs):
        rig.bt.stop()
    stopped: set[int] = set()
    for rig in reversed(rigs):
        if id(rig.sim_thread) not in stopped:
            stopped.add(id(rig.sim_thread))
            _stop_simulator(rig.sim_thread, rig.sim)


async def _prepare(before_bridge: Callable[[Any], Any], sim: Any) -> None:
    result = before_bridge(sim)
    if inspect.isawaitable(result):
        await result


def _stop_simulator(sim_thread: LoopThread, sim: Any) -> None:
    if isinstance(sim_thread, UpstreamThread):
        sim_thread.close()
        return
    assert isinstance(sim_thread, SimulatorThread)
    try:
        if hasattr(sim, "close"):
            sim_thread.call(sim.close())
    finally:
        sim_thread.stop()
