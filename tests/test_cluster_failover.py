"""Two real bridge processes (``smpp-bridge run --store-url … --node-id …``) on one real
redis-server: node A killed with SIGKILL under load, node B takes over its work.

The promise under test (README, "Running several nodes"): every submit_sm answered ESME_ROK by
either node ends in a final receipt at the ESME's receiver bind on B; a receipt comes twice only
for what was in flight at the kill. And: Redis away → ESME_RSYSERR, never an ESME_ROK that is
not stored; the node carries on by itself when Redis is back.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge.smpp.pdu import Status
from tests.harness.daemon import bridge_config
from tests.harness.esme import Esme, receipt_fields, receipt_id
from tests.harness.process import LINK_DOWN, Daemon
from tests.harness.redis_server import RedisServer, redis_server

pytestmark = pytest.mark.timeout(120)

DEAD_AFTER = 2.0
CLUSTER = f"[cluster]\nheartbeat_interval = 0.25\ndead_after = {DEAD_AFTER}\n"


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    with redis_server(tmp_path / "redis") as server:
        yield server


@pytest.fixture
def nodes(tmp_path: Path, redis: RedisServer) -> Iterator[dict[str, Daemon]]:
    made: dict[str, Daemon] = {}
    for name in ("a", "b"):
        data_dir = tmp_path / f"data-{name}"
        path = tmp_path / f"{name}.toml"
        path.write_text(bridge_config(data_dir, delay=0.05) + CLUSTER)
        d = Daemon(path, data_dir, tmp_path / f"{name}.log")
        d.extra_args = ["--store-url", redis.url, "--node-id", name]
        made[name] = d
    yield made
    for name, d in made.items():
        d.stop()
        if d.log_path.exists():
            print(f"==== node {name}\n{d.output()}")


class Submitter(threading.Thread):
    """Submits (registered_delivery 1) to one node until told to stop or its link dies."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.esme = Esme(port)
        self.esme.bind("transmitter")
        self.ok: list[str] = []
        self.stop = threading.Event()
        self.link_lost = False

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                resp = self.esme.submit(registered_delivery=1)
                if resp.status == Status.ESME_ROK:
                    self.ok.append(resp.message_id.decode())
        except LINK_DOWN:
            self.link_lost = True


def test_a_node_killed_under_load_has_its_work_finished_by_the_other(
    nodes: dict[str, Daemon],
) -> None:
    a, b = nodes["a"].start(), nodes["b"].start()
    with Esme(b.port) as receiver:
        receiver.bind("receiver")
        on_a, on_b = Submitter(a.port), Submitter(b.port)
        on_a.start()
        on_b.start()
        deadline = time.monotonic() + 30
        while len(on_a.ok) < 150 and time.monotonic() < deadline:
            receiver.pump(0.05)
        a.kill()  # under load: submits, sends, reports and receipts in flight on A
        on_a.join(10)
        assert on_a.link_lost
        while len(on_b.ok) < len(on_a.ok) + 50 and time.monotonic() < deadline:
            receiver.pump(0.05)
        on_b.stop.set()
        on_b.join(10)
        accepted = set(on_a.ok) | set(on_b.ok)
        assert len(on_a.ok) >= 150 and len(on_b.ok) > 0

        def finals() -> set[str]:
            return {
                receipt_id(p)
                for p in receiver.delivered
                if receipt_fields(p).get("stat") == "DELIVRD"
            }

        deadline = time.monotonic() + DEAD_AFTER + 30
        while not accepted <= finals() and time.monotonic() < deadline:
            receiver.pump(0.1)
        missing = accepted - finals()
        assert not missing, f"{len(missing)} of {len(accepted)} ESME_ROK without a receipt"
        counts = Counter(receipt_id(p) for p in receiver.delivered)
        twice = [mid for mid, n in counts.items() if n > 1]
        # Only what was in flight on A at the kill: its sends (sandbox: one provider call at a
        # time per consumer) and its receipts on their way (a delivery window, 64).
        print(f"ESME_ROK: {len(on_a.ok)} on A, {len(on_b.ok)} on B; receipts twice: {len(twice)}")
        assert len(twice) <= 100, len(twice)
        assert "cluster.node_taken_over" in b.output()
        on_a.esme.close()
        on_b.esme.close()


def test_redis_away_means_rsyserr_and_the_node_recovers_by_itself(
    nodes: dict[str, Daemon], redis: RedisServer
) -> None:
    b = nodes["b"].start()
    with Esme(b.port) as esme:
        esme.bind("transceiver")
        before = esme.submit_ok(registered_delivery=1)
        esme.receipts(1)
        redis.kill()
        statuses = {esme.submit(registered_delivery=1).status for _ in range(5)}
        assert statuses == {Status.ESME_RSYSERR}
        redis.start()  # same port, same AOF
        deadline = time.monotonic() + 20
        while True:
            resp = esme.submit(registered_delivery=1)
            if resp.status == Status.ESME_ROK or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert resp.status == Status.ESME_ROK
        after = resp.message_id.decode()
        deadline = time.monotonic() + 10
        while after not in {receipt_id(p) for p in esme.delivered}:
            assert time.monotonic() < deadline, "no receipt for the message after the outage"
            esme.pump(0.1)
        assert before in {receipt_id(p) for p in esme.delivered}
