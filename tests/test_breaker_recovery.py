"""A provider that comes back gets traffic at once (issue 14, finding 9), and its messages
awaiting a report are polled then (finding 12: pushes lost while it was down).

A healthy provider got no traffic for ~75 s after it came back: the circuit waited for its
cooldown (doubling up to breaker_cooldown_max, then 300 s) before one probe send. Now, while a
circuit is open, the provider's health check (smsflatrate: the balance call) is asked every
``breaker_health_interval``; a healthy answer closes the circuit. The tests configure a
cooldown far longer than the test may run (600 s) and a short health interval, with the real
smsflatrate simulator stopped and started again on the same port: traffic resuming at all
proves that the health check, not the cooldown, closed the circuit.
"""

from __future__ import annotations

from typing import Any

import pytest

from bridge.providers.smsflatrate.reports import push_url
from bridge.simulators.smsflatrate import SmsflatrateSimulator
from tests.harness.daemon import BridgeThread, StartBridge, toml_value
from tests.harness.esme import Esme, receipt_fields
from tests.harness.loop import free_port, wait_until
from tests.harness.sims import SimulatorThread

pytestmark = pytest.mark.timeout(60)

COOLDOWN = 600.0  # longer than the test may run
HEALTH_INTERVAL = 0.2


def make_bridge(start_bridge: StartBridge, port: int) -> BridgeThread:
    provider: dict[str, Any] = {
        "type": "smsflatrate",
        "base_url": f"http://127.0.0.1:{port}/schnittstelle.php",
        "key": "testkey",
        "gateway": "auto10or11",
        "timeout": 2.0,
        "connect_timeout": 1.0,
    }
    extra = "[providers.sf]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in provider.items())
    extra += '[[routes]]\nproviders = ["sf"]\n'
    return start_bridge(
        extra=extra,
        pipeline={
            "breaker_failures": 2,
            "breaker_cooldown": COOLDOWN,
            "breaker_cooldown_max": COOLDOWN,
            "breaker_health_interval": HEALTH_INTERVAL,
            "retry_base": 0.05,
            "retry_max": 0.1,
        },
    )


def circuit_open(bt: BridgeThread) -> bool:
    return bool(bt.run(lambda: bt.bridge.dispatcher.breakers["sf"].is_open))


def test_a_healthy_balance_check_closes_the_circuit_long_before_its_cooldown(
    start_bridge: StartBridge,
) -> None:
    port = free_port()
    sim = SmsflatrateSimulator(delay=0.05, rate_limit=0)
    bt = make_bridge(start_bridge, port)  # the provider is down: nothing listens on its port
    sim.push_url = push_url(bt.run(lambda: bt.bridge.callback_url("sf", "report")))
    with Esme(bt.port) as esme:
        esme.bind()
        mid = esme.submit_ok(registered_delivery=1)
        assert wait_until(lambda: circuit_open(bt), timeout=20.0)
        sim_thread = SimulatorThread(sim.app, port=port)  # the provider is back
        try:
            [receipt] = esme.receipts(1, timeout=20.0)
            assert receipt_fields(receipt)["id"] == mid
            assert not circuit_open(bt)
            requests = sim_thread.run(lambda: list(sim.requests))
            assert [r["uid"] for r in requests if "to" in r] == [mid]
        finally:
            sim_thread.call(sim.close())
            sim_thread.stop()
    # The order at the provider: the balance check that closed the circuit, then the send.
    kinds = ["send" if "to" in r else r.get("request", "status") for r in requests]
    assert kinds[0] == "credits" and kinds.index("send") > 0


def test_messages_awaiting_a_report_are_polled_as_soon_as_the_circuit_closes(
    start_bridge: StartBridge,
) -> None:
    port = free_port()
    sim = SmsflatrateSimulator(delay=0.05, rate_limit=0)  # no push_url: every push is lost
    sim_thread = SimulatorThread(sim.app, port=port)
    bt = make_bridge(start_bridge, port)  # push_poll_after: the default 900 s
    with Esme(bt.port) as esme:
        esme.bind()
        first = esme.submit_ok(registered_delivery=1)
        assert wait_until(lambda: sim_thread.run(lambda: len(sim.messages)) == 1)
        sim_thread.call(sim.close())
        sim_thread.stop()  # the provider goes down with `first` awaiting its report
        second = esme.submit_ok(registered_delivery=1)
        assert wait_until(lambda: circuit_open(bt), timeout=20.0)
        polls_before = sum(1 for r in sim.requests if "id" in r and "to" not in r)
        sim_thread = SimulatorThread(sim.app, port=port)
        try:
            [receipt] = esme.receipts(1, timeout=20.0)
            # The report of the message sent before the outage, fetched by status.php.
            assert (receipt_fields(receipt)["id"], receipt_fields(receipt)["stat"]) == (
                first,
                "DELIVRD",
            )
            polls = sim_thread.run(lambda: [r["id"] for r in sim.requests if "to" not in r
                                            and "id" in r])
            assert len(polls) > polls_before
            assert wait_until(
                lambda: second in sim_thread.run(
                    lambda: [r.get("uid") for r in sim.requests if "to" in r]
                )
            )
        finally:
            sim_thread.call(sim.close())
            sim_thread.stop()
