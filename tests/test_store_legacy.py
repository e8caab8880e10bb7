"""Upgrading from the SQLite store: a data directory with the old ``bridge.db`` is imported into
the journal store once, at the first start, with nothing lost — queued and awaiting messages
with their history, final messages, correlations, reassembly parts and waiting receipts."""

from __future__ import annotations

import time
from pathlib import Path

from bridge.core.model import MessageState
from bridge.core.store import StateChange
from bridge.store.embedded import EmbeddedStore
from bridge.store.legacy import import_legacy
from tests.harness.daemon import StartBridge
from tests.harness.esme import Esme, receipt_fields, receipt_id
from tests.harness.legacy_db import OldBridgeDb
from tests.harness.records import msg, part, receipt

PART_KEY = "demo|Bridge|4915112345678|7"  # account | source | destination | reference


def old_bridge_db(data_dir: Path, now: float = 1000.0, with_part: bool = True) -> None:
    """What a bridge before engine v2 left behind: its schema, its encoding."""
    data_dir.mkdir(parents=True, exist_ok=True)
    old = OldBridgeDb(data_dir / "bridge.db")
    old.message(msg("queued-1", route=["sandbox"], registered_delivery=1, created_at=now))
    taken = msg("taken-1", route=["sandbox"], part_ids=["taken-1", "taken-1b"], created_at=now)
    taken.provider, taken.provider_message_id = "sandbox", "sb-7"
    old.message(taken, StateChange(taken.id, MessageState.ENROUTE, 1001.0, "accepted by sandbox"))
    old.correlation("sandbox", "sb-7", taken.id, 9e9)
    done = msg("done-1", created_at=now, state=MessageState.DELIVERED)
    old.message(done, StateChange(done.id, done.state, 1002.0, "report"))
    if with_part:
        old.part(part(PART_KEY, 1))
    old.delivery("demo", receipt("done-1"), now + 3)
    old.close()


async def test_an_old_bridge_db_is_imported_once_with_everything_it_promised(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    old_bridge_db(data)
    counts = await import_legacy(data, data / "store")
    assert counts == {
        "messages": 3, "live": 2, "correlations": 1, "parts": 1, "deliveries": 1,
    }  # fmt: skip
    assert not (data / "bridge.db").exists() and (data / "bridge.db.imported").exists()
    assert await import_legacy(data, data / "store") is None  # once

    store = EmbeddedStore(data / "store")
    await store.open()
    try:
        assert [m.id for m in store.pending_messages_now()] == ["queued-1"]
        (awaiting,) = store.awaiting_report_now()
        assert awaiting.id == "taken-1" and awaiting.provider_message_id == "sb-7"
        assert store.lookup_now("sandbox", "sb-7") == "taken-1"
        assert store.get_message_now("taken-1b") is not None  # a part id still finds it
        assert [c.detail for c in store.history_now("taken-1")] == ["accepted by sandbox"]
        final = store.get_message_now("done-1")
        assert final is not None and final.state is MessageState.DELIVERED
        assert [c.detail for c in store.history_now("done-1")] == ["report"]
        assert [p.key for p in store.all_parts_now()] == [PART_KEY]
        (item,) = store.pending_deliveries_now("demo")
        assert item.item.message_id == "done-1"  # type: ignore[union-attr]
    finally:
        await store.close()


async def test_an_import_interrupted_half_way_is_done_again_from_the_untouched_file(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    old_bridge_db(data)
    staging = data / "store.importing"
    staging.mkdir()
    (staging / "journal-00000001.log").write_bytes(b"half an import")
    counts = await import_legacy(data, data / "store")
    assert counts is not None and counts["messages"] == 3
    assert not staging.exists()


async def test_a_store_that_already_holds_data_is_never_mixed_with_an_old_file(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    store = EmbeddedStore(data / "store")
    await store.open()
    await store.add_message(msg("new-1"))
    await store.close()
    old_bridge_db(data)
    assert await import_legacy(data, data / "store") is None
    assert (data / "bridge.db").exists()


def test_a_bridge_started_on_an_old_data_directory_sends_what_was_queued_and_its_receipts(
    tmp_path: Path, start_bridge: StartBridge
) -> None:
    data = tmp_path / "data"
    old_bridge_db(data, now=time.time(), with_part=False)
    bt = start_bridge(data)
    with Esme(bt.port) as rx:
        rx.bind("receiver")
        receipts = rx.receipts(2)  # the waiting one, and the queued message's after its send
    assert sorted(receipt_id(r) for r in receipts) == ["done-1", "queued-1"]
    assert all(receipt_fields(r)["stat"] == "DELIVRD" for r in receipts)
