"""The free-space guard: a bridge whose store's disk is nearly full refuses new submits with
ESME_RMSGQFUL (before the store itself fails), says so on /readyz, keeps every message it
already accepted, and takes submits again as soon as space is freed — on a real, small
filesystem (tmpfs)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bridge.smpp.pdu import Status
from tests.harness.daemon import StartBridge
from tests.harness.esme import Esme, receipt_id
from tests.harness.loop import wait_until

MIN_FREE_MB = 16


@pytest.fixture
def small_disk(tmpfs: Callable[[str], Path]) -> Path:
    return tmpfs("48m")


def readyz(port: int) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as r:
            body: dict[str, Any] = json.loads(r.read())
    except urllib.error.HTTPError as e:  # 503 when not ready, with the same JSON
        body = json.loads(e.read())
    return body


def test_a_nearly_full_disk_refuses_submits_with_rmsgqful_and_recovers_when_freed(
    small_disk: Path, start_bridge: StartBridge
) -> None:
    bt = start_bridge(
        small_disk / "data", delay=0.3, storage={"min_free_mb": MIN_FREE_MB}
    )
    admin_port = bt.bridge.admin_http.port
    assert readyz(admin_port)["checks"]["disk_space"] is True
    with Esme(bt.port) as esme:
        esme.bind("transceiver")
        before = esme.submit_ok()

        # Another program fills the disk to just under the threshold (the store still fits).
        ballast = small_disk / "ballast"
        with open(ballast, "wb") as f:
            f.write(b"\0" * ((48 - MIN_FREE_MB + 4) * 1024 * 1024))
        assert wait_until(lambda: readyz(admin_port)["checks"]["disk_space"] is False, 5.0)
        assert readyz(admin_port)["ready"] is False

        resp = esme.submit()
        assert resp.status == Status.ESME_RMSGQFUL
        # What was accepted before keeps its promise: its receipt still comes.
        (receipt,) = esme.receipts(1)
        assert receipt_id(receipt) == before

        ballast.unlink()  # the operator frees space: no restart needed
        assert wait_until(lambda: readyz(admin_port)["checks"]["disk_space"] is True, 5.0)
        esme.submit_ok()
    metrics = bt.run(bt.bridge._metrics_text).decode()
    assert 'bridge_messages_rejected_total{account="demo",reason="disk_full"} 1.0' in metrics
    assert "bridge_store_free_bytes " in metrics
