"""Duplicate SMS after a timeout (issue 14, finding 8).

A send that timed out was sent again although the provider had taken it (17 of 18 in the
attack run). No documented HTTP API lets the bridge ask whether a send with its reference
arrived (smsflatrate's ``status.php`` and 1601SMS's ``gatewayrapport.php`` want the provider's
id, which the lost answer carried; iSMS's ``query.php`` wants ``mid``; My-Cool-SMS and phlyMail
have no lookup by our reference), so the choice is the operator's, per provider:
``retry_after_timeout = false`` never sends again a request that went out unanswered (the
message ends UNKNOWN), ``true`` (the default) sends it again (at least once).

The real smsflatrate simulator stalls on destinations ending in 408 for ``hang`` seconds and
then takes the message; the bridge's timeout is shorter.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from bridge.providers.http import HttpError, HttpRequest, create_client
from bridge.simulators.smsflatrate import SmsflatrateSimulator
from tests.harness.daemon import BridgeThread
from tests.harness.esme import Esme, receipt_fields
from tests.harness.loop import wait_until
from tests.harness.rig import StartRig
from tests.harness.sims import SimulatorThread

pytestmark = pytest.mark.timeout(60)

STALLS = "4915112345408"  # the simulator answers after `hang` seconds (and takes it then)
HANG = 1.0
TIMEOUT = 0.3


def make(
    provider_rig: StartRig, **keys: Any
) -> tuple[BridgeThread, SmsflatrateSimulator, SimulatorThread]:
    rig = provider_rig(
        "smsflatrate",
        simulator=SmsflatrateSimulator(delay=0.05, rate_limit=0, hang=HANG),
        provider={"timeout": TIMEOUT, **keys},
        pipeline={"retry_base": 0.05, "retry_max": 0.1},
    )
    assert isinstance(rig.sim_thread, SimulatorThread)
    return rig.bt, rig.sim, rig.sim_thread


def taken(sim_thread: SimulatorThread, sim: SmsflatrateSimulator) -> int:
    return int(sim_thread.run(lambda: sum(1 for m in sim.messages.values() if m.to.endswith(
        "408"))))


def test_with_retry_after_timeout_off_a_stalled_send_is_at_the_provider_exactly_once(
    provider_rig: StartRig
) -> None:
    bt, sim, sim_thread = make(provider_rig, retry_after_timeout=False)
    with Esme(bt.port) as esme:
        esme.bind()
        mid = esme.submit_ok(destination_addr=STALLS, registered_delivery=1)
        [receipt] = esme.receipts(1, timeout=10.0)
        assert (receipt_fields(receipt)["id"], receipt_fields(receipt)["stat"]) == (mid, "UNKNOWN")
        assert wait_until(lambda: taken(sim_thread, sim) >= 1, timeout=10.0)
        time.sleep(3 * HANG)  # any second request would have been taken by now
    assert taken(sim_thread, sim) == 1
    sends = sim_thread.run(lambda: [r for r in sim.requests if "to" in r])
    assert len(sends) == 1


def test_with_retry_after_timeout_on_the_documented_risk_is_a_duplicate(
    provider_rig: StartRig
) -> None:
    """The default (at least once): what the README's provider section warns of."""
    bt, sim, sim_thread = make(provider_rig)
    with Esme(bt.port) as esme:
        esme.bind()
        esme.submit_ok(destination_addr=STALLS, registered_delivery=0)
        assert wait_until(lambda: taken(sim_thread, sim) >= 2, timeout=20.0)


def test_a_connect_failure_is_always_sent_again_it_never_reached_the_provider() -> None:
    import asyncio
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there

    async def call(transport: str) -> str:
        client = create_client(transport, timeout=2.0, connect_timeout=1.0)  # type: ignore[arg-type]
        try:
            await client.request(HttpRequest("GET", f"http://127.0.0.1:{port}/"))
        except HttpError as exc:
            return exc.reason
        finally:
            await client.close()
        return "answered"

    assert asyncio.run(call("aiohttp")) == "connect"
    assert asyncio.run(call("httpx")) == "connect"
