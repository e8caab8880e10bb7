"""Provider rate limits hold in every sliding one-second window (issue 14, finding 13).

smsflatrate documents "Maximal 10 Aufrufe pro Sekunde / max. 10 request per second". A token
bucket (aiolimiter) let 18–20 requests out in the first second. The real simulator records the
arrival time of every call (sends, status polls, balance checks); no window of one second,
wherever it starts, may hold more than ten.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from bridge.ratelimit import SlidingWindowLimiter, limiter_for_rate
from bridge.simulators.smsflatrate import SmsflatrateSimulator
from tests.harness.daemon import StartBridge, toml_value
from tests.harness.esme import Esme
from tests.harness.loop import wait_until
from tests.harness.sims import StartSimulator

pytestmark = pytest.mark.timeout(60)


def busiest_window(times: list[float], width: float = 1.0) -> int:
    """The most events in any half-open window [t, t + width) of the sorted ``times``."""
    times = sorted(times)
    best = 0
    j = 0
    for i, t in enumerate(times):
        while j < len(times) and times[j] < t + width:
            j += 1
        best = max(best, j - i)
    return best


def test_busiest_window_counts_events_in_any_sliding_second() -> None:
    assert busiest_window([0.0, 0.5, 0.99, 1.0, 1.5]) == 3
    assert busiest_window([0.0, 1.0, 2.0]) == 1
    assert busiest_window([]) == 0


def test_sliding_window_limiter_never_lets_more_than_its_limit_into_one_window() -> None:
    async def run() -> list[float]:
        limiter = SlidingWindowLimiter(10, 0.2, margin=0.0)
        loop = asyncio.get_running_loop()
        times: list[float] = []

        async def one() -> None:
            await limiter.acquire()
            times.append(loop.time())

        await asyncio.gather(*(one() for _ in range(35)))
        return times

    times = asyncio.run(run())
    assert len(times) == 35
    assert busiest_window(times, 0.2) <= 10
    # A token bucket of the same rate lets 10 out at once and more as it refills: the first
    # 0.2 s would hold up to 12; the sliding window waits a full window for the eleventh.
    assert sorted(times)[10] - sorted(times)[0] >= 0.2


def test_fractional_rates_round_down_and_slow_rates_space_single_calls() -> None:
    fast = limiter_for_rate(2.5)
    slow = limiter_for_rate(0.5)
    assert fast is not None and slow is not None
    assert (fast.max_calls, slow.max_calls) == (2, 1)
    assert slow.period >= 2.0
    assert limiter_for_rate(0) is None


def test_smsflatrate_never_gets_more_than_ten_calls_in_any_second(
    start_bridge: StartBridge, start_simulator: StartSimulator
) -> None:
    # The simulator enforces the limit too (429 above ten a second): none may be throttled.
    sim = SmsflatrateSimulator(delay=0.05, rate_limit=10)
    sim_thread = start_simulator(sim.app)
    provider: dict[str, Any] = {
        "type": "smsflatrate",
        "base_url": f"{sim_thread.url}/schnittstelle.php",
        "key": "testkey",
        "gateway": "auto10or11",
        "timeout": 5.0,
        "push_reports": False,  # reports by status.php polls: they count against the limit
        "concurrency": 16,
    }
    extra = "[providers.sf]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in provider.items())
    extra += '[[routes]]\nproviders = ["sf"]\n'
    bt = start_bridge(extra=extra, pipeline={"poll_interval": 0.2})
    count = 35
    try:
        with Esme(bt.port) as esme:
            esme.bind()
            for i in range(count):
                esme.submit_ok(destination_addr=f"4915112345{i % 10}{i % 7}1",
                               registered_delivery=1)
            esme.receipts(count, timeout=30.0)

        def sends() -> int:
            return sim_thread.run(lambda: sum(1 for r in sim.requests if "to" in r))

        assert wait_until(lambda: sends() >= count, timeout=30.0)
        times = sim_thread.run(lambda: list(sim.request_times))
        throttled = sim_thread.run(lambda: sim.throttled)
    finally:
        sim_thread.call(sim.close())
    assert len(times) > count  # sends, polls and the balance check all counted
    start = min(times)
    assert busiest_window(times) <= 10, [round(t - start, 3) for t in sorted(times)]
    assert throttled == 0


def test_the_smpp_upstream_never_gets_more_submits_than_its_tps_in_any_second() -> None:
    """iSMS documents 700 SMS/s per account for its SMPP upstream; the client's token bucket
    (50 ms worth of burst, for upstreams that count per 100 ms) let that burst out on top of a
    full second's rate. Each part of a long message is a submit_sm of its own, so the client
    itself keeps the limit (scaled down to 100/s here)."""
    from bridge.simulators.smpp_upstream import SmppUpstreamSimulator
    from bridge.smpp.client import ClientConfig, SmppClient
    from bridge.smpp.pdu import CommandId, Pdu

    tps, count = 100.0, 260

    async def accept_all(pdu: Pdu) -> int:
        return 0

    async def run() -> list[float]:
        sim = SmppUpstreamSimulator(tps=0, delay=60.0, window=count)
        await sim.start()
        client = SmppClient(
            ClientConfig("127.0.0.1", sim.port, "isms", "isms", tps=tps, window=count),
            accept_all,
            name="isms",
        )
        try:
            await client.start()
            for _ in range(200):
                if client.bound_count:
                    break
                await asyncio.sleep(0.02)
            pdu = dict(source_addr="Bridge", destination_addr="306912345600",
                       short_message=b"x")
            await asyncio.gather(
                *(client.submit(Pdu(CommandId.submit_sm, fields=pdu)) for _ in range(count))
            )
            return [s.received_at for s in sim.submitted]
        finally:
            await client.stop()
            await sim.close()

    times = asyncio.run(run())
    assert len(times) == count
    assert busiest_window(times) <= tps
