"""Crash recovery of the real daemon: ``python -m bridge run`` killed with SIGKILL, restarted on
the same data directory.

The promise under test (README, "The message pipeline"): submit_sm_resp ESME_ROK means the
message is durable, and every receipt the ESME asked for reaches it at least once — whether, at
the kill, the message was still queued, handed to the provider (whose report timer died with the
process), reported with its receipt queued, or its receipt sent but not yet acknowledged.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from bridge.core.model import MessageState
from bridge.smpp.pdu import Status
from bridge.store.embedded import EmbeddedStore
from tests.harness.esme import Esme, receipt_fields, receipt_id
from tests.harness.loop import free_port
from tests.harness.process import LINK_DOWN, Daemon
from tests.harness.sims import StartSimulator

pytestmark = pytest.mark.timeout(90)

RECOVERY_TIMEOUT = 20.0


def query_state(esme: Esme, message_id: str) -> int:
    resp = esme.query(message_id)
    assert resp.status == Status.ESME_ROK
    return int(resp.message_state)


def wait_final(esme: Esme, ids: list[str], timeout: float) -> None:
    """Until query_sm says every message is DELIVERED (so its receipt is queued)."""
    deadline = time.monotonic() + timeout
    for mid in ids:
        while query_state(esme, mid) != MessageState.DELIVERED:
            assert time.monotonic() < deadline, f"{mid} not delivered within {timeout}s"
            time.sleep(0.05)


def submit_until_killed(
    esme: Esme, d: Daemon, kill_at: int, window: int = 10
) -> tuple[list[str], int]:
    """Pipelined submit_sm (``window`` outstanding); after the ``kill_at``-th ESME_ROK the daemon
    is SIGKILLed with the next requests in flight, and the responses that reached our socket
    before it died are read. Returns (ids acknowledged with ESME_ROK, requests unanswered)."""
    acked: list[str] = []
    outstanding: list[int] = []
    sent = 0
    try:
        while len(acked) < kill_at or outstanding:
            while len(acked) < kill_at and len(outstanding) < window:
                outstanding.append(esme.send_submit(short_message=f"burst {sent}".encode()))
                sent += 1
            resp = esme.wait_response(outstanding[0], timeout=5.0)
            outstanding.pop(0)
            assert resp.status == Status.ESME_ROK, f"submit_sm_resp status {resp.status:#x}"
            acked.append(resp.message_id.decode())
            if len(acked) == kill_at:
                d.kill()
    except LINK_DOWN:
        pass
    assert len(acked) >= kill_at, f"the link died after {len(acked)} of {kill_at} responses"
    return acked, len(outstanding)


def collect_receipts(
    esme: Esme, wanted: set[str], timeout: float, quiet: float | None = None
) -> Counter[str]:
    """Read receipts until every wanted id has one, ``timeout`` passes, or (with ``quiet``)
    nothing arrived for that long; returns the count per receipted id."""
    deadline = time.monotonic() + timeout
    last_news, seen = time.monotonic(), 0
    while not wanted <= {receipt_id(r) for r in esme.delivered}:
        now = time.monotonic()
        if len(esme.delivered) > seen:
            last_news, seen = now, len(esme.delivered)
        if now >= deadline or (quiet is not None and now - last_news >= quiet):
            break
        with contextlib.suppress(TimeoutError):
            esme.pump(min(deadline - now, 0.25))
    esme.pump(0.3)  # stragglers: duplicates would show here
    return Counter(receipt_id(r) for r in esme.delivered)


def test_every_acknowledged_message_gets_its_receipt_after_sigkill(daemon: Any) -> None:
    # A 2 s report delay: at the kill, phase-2 messages are queued, in flight or awaiting the
    # sandbox's report (its timers die with the process; the restart polls for them).
    d = daemon(delay=2.0).start()

    # Phase 1: 100 messages whose reports arrive before the kill; nobody is bound to receive,
    # so their receipts are queued in the store at the kill.
    with Esme(d.port) as tx:
        tx.bind("transmitter")
        queued = [tx.submit_ok(short_message=f"queued {i}".encode()) for i in range(100)]
        wait_final(tx, queued, timeout=15.0)

        # Phase 2: a pipelined burst, killed mid-way.
        burst, unanswered = submit_until_killed(tx, d, kill_at=200)
    assert d.proc is not None and d.proc.returncode == -signal.SIGKILL
    acked = queued + burst
    assert len(set(acked)) == len(acked)

    d.start()  # same data directory
    with Esme(d.port) as rx:
        rx.bind("receiver")
        # Everything is resolved within one report delay of the restart; 6 s of silence
        # means what is missing is not coming.
        counts = collect_receipts(rx, set(acked), RECOVERY_TIMEOUT, quiet=6.0)
        receipts = list(rx.delivered)

    # Phase-1 messages were final long before the kill: never more than one receipt each.
    assert [mid for mid in queued if counts[mid] > 1] == []
    # A receipt for an id the ESME never saw: only for requests in flight at the kill.
    unknown = set(counts) - set(acked)
    assert len(unknown) <= unanswered, (unknown, unanswered)
    for r in receipts:
        assert receipt_fields(r)["stat"] == "DELIVRD"
        assert r.message_state == MessageState.DELIVERED
    print(
        f"acked {len(acked)} (burst {len(burst)}), unanswered at kill {unanswered}, "
        f"duplicates {sum(c - 1 for c in counts.values())}, unknown {len(unknown)}"
    )

    missing = [mid for mid in acked if mid not in counts]
    if missing:
        d.stop()
        gap = uncorrelated(d.data_dir, missing)
        assert not missing, (
            f"{len(missing)} of {len(acked)} acknowledged ids got no receipt: {missing}; "
            f"of those, taken by the provider but without a correlation row: {gap}"
        )


@pytest.mark.parametrize("same_callback_url", [True, False], ids=["same-url", "url-changed"])
def test_an_http_provider_loses_no_receipt_across_sigkill(
    daemon: Any, start_simulator: StartSimulator, same_callback_url: bool
) -> None:
    """The same promise through a real HTTP provider (the iSMS simulator): reports come back
    as pushes to the bridge's callback URL, pushes that fail are not repeated.

    ``same-url``: like production, the restarted bridge listens where the pushes go.
    ``url-changed``: every push scheduled before the kill goes to a dead port, and reports not
    yet final at the start-up sweep can only be recovered by polling push providers when a
    report is late (``push_poll_after``)."""
    from bridge.simulators.isms_http import IsmsHttpSimulator

    sim = start_simulator(IsmsHttpSimulator(delay=1.0).app)
    extra = f"""
[providers.isms]
type = "isms_http"
base_url = "{sim.url}/api/http/"
username = "test"
password = "test"
timeout = 2.0
[[routes]]
providers = ["isms"]
"""
    d = daemon(extra=extra, pipeline={"poll_interval": 0.5, "push_poll_after": 2.0})
    if same_callback_url:
        d.http_port = free_port()
    d.start()
    with Esme(d.port) as tx:
        tx.bind("transmitter")
        reported = [tx.submit_ok(short_message=f"early {i}".encode()) for i in range(30)]
        wait_final(tx, reported, timeout=15.0)
        burst, unanswered = submit_until_killed(tx, d, kill_at=120)
    acked = reported + burst

    d.start()
    with Esme(d.port) as rx:
        rx.bind("receiver")
        counts = collect_receipts(rx, set(acked), RECOVERY_TIMEOUT, quiet=8.0)
        receipts = list(rx.delivered)
    missing = [mid for mid in acked if mid not in counts]
    assert not missing, f"{len(missing)} of {len(acked)} acknowledged ids got no receipt"
    assert [mid for mid in reported if counts[mid] > 1] == []
    assert len(set(counts) - set(acked)) <= unanswered
    assert {receipt_fields(r)["stat"] for r in receipts} == {"DELIVRD"}


def uncorrelated(data_dir: Path, ids: list[str]) -> list[str]:
    """Of ``ids``, those the store holds as ENROUTE with a provider id but no correlation."""

    async def check() -> list[str]:
        store = EmbeddedStore(data_dir / "store")
        await store.open()
        try:
            out = []
            for mid in ids:
                m = store.get_message_now(mid)
                if (
                    m is not None
                    and m.state is MessageState.ENROUTE
                    and m.provider
                    and m.provider_message_id
                    and store.lookup_now(m.provider, m.provider_message_id) is None
                ):
                    out.append(mid)
            return out
        finally:
            await store.close()

    return asyncio.run(check())


def test_queued_and_unacknowledged_receipts_survive_sigkill(daemon: Any) -> None:
    d = daemon(delay=0.05).start()
    with Esme(d.port) as tx:
        tx.bind("transmitter")
        ids = [tx.submit_ok(short_message=f"report {i}".encode()) for i in range(30)]
        wait_final(tx, ids, timeout=10.0)

    # A receiver that acknowledges the first 8 receipts and leaves the next ones unanswered
    # (the server's window stops there); the rest stay queued in the store.
    with Esme(d.port) as rx:
        answered: list[str] = []

        def status(pdu: Any) -> int | None:
            if len(answered) < 8:
                answered.append(receipt_id(pdu))
                return 0
            return None

        rx.deliver_status = status
        rx.bind("receiver")
        rx.receipts(12, timeout=5.0)
        rx.pump(0.5)  # let the acknowledged ones be removed from the store
        seen = [receipt_id(r) for r in rx.delivered]
        d.kill()
    assert len(answered) == 8
    assert len(seen) < len(ids), "expected some receipts still queued at the kill"

    d.start()
    with Esme(d.port) as rx:
        rx.bind("receiver")
        counts = collect_receipts(rx, set(ids) - set(answered), RECOVERY_TIMEOUT)
    assert set(counts) == set(ids) - set(answered)  # acknowledged ones are not sent again
    assert all(c == 1 for c in counts.values()), counts
