"""End to end: smpplib as the ESME against the whole daemon (:class:`bridge.app.Bridge`).

submit_sm goes through the SMPP server, the pipeline (decode, reassemble, validate, route), the
SQLite store and the dispatcher to the sandbox provider; its report comes back through the report
handler and the delivery queue as a receipt deliver_sm. Every wait is bounded.
"""

from __future__ import annotations

import re
import time
from typing import Any

import pytest
import smpplib.consts
import smpplib.gsm

from bridge.core.model import MessageState
from bridge.smpp.pdu import Status
from tests.harness.daemon import Rule, StartBridge
from tests.harness.esme import Esme, receipt_fields, receipt_id, receipts_by_id
from tests.harness.loop import wait_until

pytestmark = pytest.mark.timeout(30)

GERMAN_MOBILE = "4915112345678"
RECEIPT_RE = re.compile(
    r"id:(?P<id>\S+) sub:001 dlvrd:(?P<dlvrd>\d{3}) submit date:\d{10} done date:\d{10}"
    r" stat:(?P<stat>[A-Z]{7}) err:(?P<err>\d{3}) text:(?P<text>.*)"
)
# Sandbox rules by destination suffix (German mobile numbers that differ in the last digits).
UNDELIV = "4915112345601"
REJECTD = "4915112345602"
EXPIRED = "4915112345603"
PERMANENT = "4915112345604"
TRANSIENT = "4915112345699"
FLAKY = "4915112345605"
RULES = [
    Rule("01", "UNDELIV", 42),
    Rule("02", "REJECTD", 7),
    Rule("03", "EXPIRED"),
    Rule("04", "permanent", 17),
    Rule("05", "transient_then_delivrd"),
    Rule("99", "transient"),
]


# --------------------------------------------------------------------------- the basic flow


def test_transceiver_submit_is_acknowledged_then_a_delivrd_receipt_arrives(
    start_bridge: StartBridge,
) -> None:
    bt = start_bridge()
    with Esme(bt.port) as esme:
        esme.bind("transceiver")
        mid = esme.submit_ok(short_message=b"Hello from the ESME", registered_delivery=1)
        [receipt] = esme.receipts(1)
    assert receipt.command == "deliver_sm"
    assert receipt.esm_class == 0x04  # SMSC delivery receipt
    text = receipt.short_message.decode("ascii")
    m = RECEIPT_RE.fullmatch(text)
    assert m, text
    assert m["id"] == mid
    assert (m["dlvrd"], m["stat"], m["err"]) == ("001", "DELIVRD", "000")
    assert m["text"] == "Hello from the ESME"
    assert receipt_id(receipt) == mid
    assert receipt.message_state == MessageState.DELIVERED
    # The receipt comes from the handset, to the original sender.
    assert receipt.source_addr == GERMAN_MOBILE.encode()
    assert receipt.destination_addr == b"Bridge"


def test_submit_on_a_transmitter_receipt_on_a_receiver_of_the_same_account(
    start_bridge: StartBridge,
) -> None:
    bt = start_bridge()
    with Esme(bt.port) as rx, Esme(bt.port) as tx:
        rx.bind("receiver")
        tx.bind("transmitter")
        mid = tx.submit_ok(short_message=b"split binds")
        [receipt] = rx.receipts(1)
        tx.pump(0.1)
        assert tx.delivered == []  # a transmitter is never sent deliver_sm
    assert receipt_id(receipt) == mid
    assert receipt_fields(receipt)["stat"] == "DELIVRD"


def test_ucs2_with_an_emoji_is_accepted_and_decoded(start_bridge: StartBridge) -> None:
    bt = start_bridge()
    text = "Hi 😀 Привет"
    payload = text.encode("utf-16-be")
    assert b"\xd8\x3d\xde\x00" in payload  # the emoji is a surrogate pair on the wire
    with Esme(bt.port) as esme:
        esme.bind()
        mid = esme.submit_ok(short_message=payload, data_coding=8)
        [receipt] = esme.receipts(1)
    assert receipt_id(receipt) == mid
    fields = receipt_fields(receipt)
    assert fields["stat"] == "DELIVRD"
    # The head is ASCII-safe, one character per character: the pair decoded to one emoji.
    assert fields["text"] == "Hi ? ??????"
    assert bt.stored(mid).text == text


def test_incomplete_concatenated_message_gets_a_failure_receipt_for_every_part_received(
    start_bridge: StartBridge,
) -> None:
    bt = start_bridge(pipeline={"reassembly_timeout": 0.3})
    text = ("The quick brown fox jumps over the lazy dog. " * 9)[:400]
    parts, encoding, esm_class = smpplib.gsm.make_parts(text)
    with Esme(bt.port) as esme:
        esme.bind()
        ids = [
            esme.submit_ok(
                short_message=part,
                esm_class=esm_class,
                data_coding=encoding,
                registered_delivery=1,
            )
            for part in parts[:2]
        ]  # part 3 never comes
        receipts = receipts_by_id(esme.receipts(2, timeout=5.0))
    assert set(receipts) == set(ids)
    assert {receipt_fields(r)["stat"] for r in receipts.values()} == {"UNDELIV"}
    assert bt.bridge.pipeline.incomplete == 1


def test_udh_concatenated_message_gets_an_id_and_a_receipt_per_part(
    start_bridge: StartBridge,
) -> None:
    bt = start_bridge()
    text = ("The quick brown fox jumps over the lazy dog. " * 9)[:400]
    parts, encoding, esm_class = smpplib.gsm.make_parts(text)
    assert len(parts) == 3
    assert esm_class == smpplib.consts.SMPP_GSMFEAT_UDHI
    with Esme(bt.port) as esme:
        esme.bind()
        ids = [
            esme.submit_ok(short_message=part, esm_class=esm_class, data_coding=encoding)
            for part in parts
        ]
        receipts = receipts_by_id(esme.receipts(3))
        esme.pump(0.2)
        assert len(esme.delivered) == 3
    assert len(set(ids)) == 3
    assert set(receipts) == set(ids)
    for r in receipts.values():
        fields = receipt_fields(r)
        assert fields["stat"] == "DELIVRD"
        assert fields["text"] == text[:20]
    whole = bt.stored(ids[0])
    assert whole.text == text
    assert whole.state is MessageState.DELIVERED


def test_parts_received_before_a_restart_complete_the_message_after_it(
    start_bridge: StartBridge,
) -> None:
    first = start_bridge()
    text = ("Parts are stored as they come, so a restart loses none. " * 7)[:380]
    parts, encoding, esm_class = smpplib.gsm.make_parts(text)
    assert len(parts) == 3
    with Esme(first.port) as esme:
        esme.bind()
        ids = [
            esme.submit_ok(short_message=part, esm_class=esm_class, data_coding=encoding)
            for part in parts[:2]
        ]
    first.stop()
    second = start_bridge(data_dir=first.data_dir)
    with Esme(second.port) as esme:
        esme.bind()
        ids.append(
            esme.submit_ok(short_message=parts[2], esm_class=esm_class, data_coding=encoding)
        )
        receipts = receipts_by_id(esme.receipts(3))
    assert set(receipts) == set(ids)
    assert second.stored(ids[0]).text == text


def test_sar_tlv_parts_get_a_receipt_each(start_bridge: StartBridge) -> None:
    bt = start_bridge()
    chunks = [b"first half of a SAR message, ", b"and the second half."]
    with Esme(bt.port) as esme:
        esme.bind()
        ids = [
            esme.submit_ok(
                short_message=chunk,
                sar_msg_ref_num=0x1234,
                sar_total_segments=2,
                sar_segment_seqnum=seq,
            )
            for seq, chunk in enumerate(chunks, start=1)
        ]
        receipts = receipts_by_id(esme.receipts(2))
    assert set(receipts) == set(ids)
    assert bt.stored(ids[0]).text == b"".join(chunks).decode()


def test_message_payload_tlv_gets_one_receipt(start_bridge: StartBridge) -> None:
    bt = start_bridge()
    text = "A long text in a message payload TLV. " * 5  # 190 GSM characters
    with Esme(bt.port) as esme:
        esme.bind()
        mid = esme.submit_ok(message_payload=text.encode())
        [receipt] = esme.receipts(1)
        esme.pump(0.2)
        assert len(esme.delivered) == 1
    assert receipt_id(receipt) == mid
    assert receipt_fields(receipt)["text"] == text[:20]
    assert bt.stored(mid).text == text


# --------------------------------------------------------------------------- registered_delivery


def test_registered_delivery_0_gets_no_receipt(start_bridge: StartBridge) -> None:
    bt = start_bridge()
    with Esme(bt.port) as esme:
        esme.bind()
        silent = esme.submit_ok(registered_delivery=0)
        marker = esme.submit_ok(registered_delivery=1)  # reported after the silent one
        esme.receipts(1)
        esme.pump(0.2)
        assert [receipt_id(r) for r in esme.delivered] == [marker]
    assert wait_until(lambda: bt.stored(silent).state is MessageState.DELIVERED, 2.0)


def test_registered_delivery_2_gets_a_receipt_only_for_a_failure(
    start_bridge: StartBridge,
) -> None:
    bt = start_bridge(rules=RULES)
    with Esme(bt.port) as esme:
        esme.bind()
        delivered = esme.submit_ok(registered_delivery=2)
        failed = esme.submit_ok(registered_delivery=2, destination_addr=UNDELIV)
        marker = esme.submit_ok(registered_delivery=1)
        receipts = receipts_by_id(esme.receipts(2))
        esme.pump(0.2)
        assert len(esme.delivered) == 2
    assert set(receipts) == {failed, marker}
    assert receipt_fields(receipts[failed])["stat"] == "UNDELIV"
    assert bt.stored(delivered).state is MessageState.DELIVERED


def test_registered_delivery_0x11_gets_an_intermediate_notification_then_the_final_receipt(
    start_bridge: StartBridge,
) -> None:
    bt = start_bridge()
    with Esme(bt.port) as esme:
        esme.bind()
        mid = esme.submit_ok(registered_delivery=0x11)
        first, final = esme.receipts(2)
    assert first.esm_class == 0x20 and receipt_fields(first)["stat"] == "ENROUTE"
    assert final.esm_class == 0x04 and receipt_fields(final)["stat"] == "DELIVRD"
    assert receipt_id(first) == receipt_id(final) == mid


# --------------------------------------------------------------------------- provider outcomes


@pytest.mark.parametrize(
    ("destination", "stat", "err", "state"),
    [
        (UNDELIV, "UNDELIV", "042", MessageState.UNDELIVERABLE),
        (REJECTD, "REJECTD", "007", MessageState.REJECTED),
        (EXPIRED, "EXPIRED", "000", MessageState.EXPIRED),
        (FLAKY, "DELIVRD", "000", MessageState.DELIVERED),  # retried after a transient error
    ],
)
def test_sandbox_report_outcomes_reach_the_esme_as_receipts(
    start_bridge: StartBridge, destination: str, stat: str, err: str, state: MessageState
) -> None:
    bt = start_bridge(rules=RULES)
    with Esme(bt.port) as esme:
        esme.bind()
        mid = esme.submit_ok(destination_addr=destination)
        [receipt] = esme.receipts(1)
    fields = receipt_fields(receipt)
    assert receipt_id(receipt) == mid
    assert (fields["stat"], fields["err"]) == (stat, err)
    assert fields["dlvrd"] == ("001" if state is MessageState.DELIVERED else "000")
    assert receipt.message_state == state


def test_permanent_refusal_at_send_ends_in_a_failure_receipt(start_bridge: StartBridge) -> None:
    bt = start_bridge(rules=RULES)
    with Esme(bt.port) as esme:
        esme.bind()
        mid = esme.submit_ok(destination_addr=PERMANENT)  # accepted: the refusal comes later
        [receipt] = esme.receipts(1)
    fields = receipt_fields(receipt)
    assert receipt_id(receipt) == mid
    assert fields["stat"] in ("REJECTD", "UNDELIV")
    assert fields["dlvrd"] == "000"
    assert fields["err"] == "017"
    assert receipt.message_state in (MessageState.REJECTED, MessageState.UNDELIVERABLE)
    assert bt.stored(mid).state is MessageState(receipt.message_state)


# --------------------------------------------------------------------------- held receipts


def test_receipt_is_held_while_no_receiver_is_bound(start_bridge: StartBridge) -> None:
    bt = start_bridge()
    with Esme(bt.port) as tx:
        tx.bind("transmitter")
        mid = tx.submit_ok(short_message=b"held for later")
        tx.unbind()
    assert wait_until(lambda: bt.stored(mid).state is MessageState.DELIVERED, 3.0)
    time.sleep(0.1)  # the delivery queue had its chance: nobody to send to
    with Esme(bt.port) as rx:
        rx.bind("receiver")
        [receipt] = rx.receipts(1)
    assert receipt_id(receipt) == mid
    assert receipt_fields(receipt)["text"] == "held for later"


# --------------------------------------------------------------------------- query and cancel


def test_query_sm_of_a_delivered_message_and_of_an_unknown_id(start_bridge: StartBridge) -> None:
    bt = start_bridge()
    with Esme(bt.port) as esme:
        esme.bind()
        mid = esme.submit_ok()
        esme.receipts(1)
        resp = esme.query(mid)
        assert resp.status == Status.ESME_ROK
        assert resp.message_id == mid.encode()
        assert resp.message_state == MessageState.DELIVERED
        assert re.fullmatch(rb"\d{12}\d{3}[+-]", resp.final_date), resp.final_date
        unknown = esme.query("deadbeef")
        assert unknown.status == Status.ESME_RQUERYFAIL


def test_query_sm_of_a_message_already_moved_to_the_archive_on_disk(
    start_bridge: StartBridge,
) -> None:
    bt = start_bridge(storage={"archive_after": 0})
    with Esme(bt.port) as esme:
        esme.bind()
        mid = esme.submit_ok()
        esme.receipts(1)
        assert wait_until(lambda: bt.run(bt.bridge.store.finals_in_memory) == 0, 5.0)
        resp = esme.query(mid)
        assert resp.status == Status.ESME_ROK
        assert resp.message_state == MessageState.DELIVERED


def test_cancel_sm_of_a_scheduled_message_then_query_says_deleted(
    start_bridge: StartBridge,
) -> None:
    bt = start_bridge()
    with Esme(bt.port) as esme:
        esme.bind()
        mid = esme.submit_ok(schedule_delivery_time="000000010000000R")  # in one hour
        assert esme.query(mid).message_state == MessageState.ENROUTE
        assert esme.cancel(mid).status == Status.ESME_ROK
        resp = esme.query(mid)
        assert resp.status == Status.ESME_ROK
        assert resp.message_state == MessageState.DELETED
        # Cancelled once is final: a second cancel fails.
        assert esme.cancel(mid).status == Status.ESME_RCANCELFAIL
    assert bt.stored(mid).state is MessageState.DELETED
    assert bt.run(lambda: bt.bridge.providers["sandbox"].sent) == 0


def test_cancel_sm_of_a_delivered_message_fails(start_bridge: StartBridge) -> None:
    bt = start_bridge()
    with Esme(bt.port) as esme:
        esme.bind()
        mid = esme.submit_ok()
        esme.receipts(1)
        assert esme.cancel(mid).status == Status.ESME_RCANCELFAIL
        assert esme.cancel("deadbeef").status == Status.ESME_RCANCELFAIL
        assert esme.query(mid).message_state == MessageState.DELIVERED


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("fields", "status"),
    [
        ({"destination_addr": "abc"}, Status.ESME_RINVDSTADR),
        ({"source_addr": "TwelveLetter"}, Status.ESME_RINVSRCADR),  # TON 5, > 11 chars
        ({"schedule_delivery_time": "not a time"}, Status.ESME_RINVSCHED),
        ({"validity_period": "991399999999999+"}, Status.ESME_RINVEXPIRY),
    ],
    ids=["destination", "alnum-source", "schedule", "validity"],
)
def test_invalid_submissions_are_refused_in_the_response(
    start_bridge: StartBridge, fields: dict[str, Any], status: int
) -> None:
    bt = start_bridge()
    with Esme(bt.port) as esme:
        esme.bind()
        resp = esme.submit(**fields)
        assert resp.status == status
        # Nothing was queued, no receipt comes, and the session still works.
        ok = esme.submit_ok()
        [receipt] = esme.receipts(1)
        esme.pump(0.1)
        assert len(esme.delivered) == 1
    assert receipt_id(receipt) == ok


def test_account_tps_limit_answers_a_burst_with_rthrottled(start_bridge: StartBridge) -> None:
    bt = start_bridge(account={"tps": 5.0, "max_outstanding": 100})
    with Esme(bt.port) as esme:
        esme.bind()
        sequences = [esme.send_submit(registered_delivery=0) for _ in range(20)]
        statuses = [esme.wait_response(seq).status for seq in sequences]
        assert set(statuses) <= {Status.ESME_ROK, Status.ESME_RTHROTTLED}
        assert statuses.count(Status.ESME_ROK) >= 1
        assert statuses.count(Status.ESME_RTHROTTLED) >= 10
        # The limit refills: within a moment the account may submit again.
        deadline = time.monotonic() + 3.0
        while esme.submit(registered_delivery=0).status != Status.ESME_ROK:
            assert time.monotonic() < deadline, "still throttled"
            time.sleep(0.1)


def test_full_queue_answers_rmsgqful(start_bridge: StartBridge) -> None:
    # Every send to this destination fails transiently, so the messages stay queued.
    bt = start_bridge(rules=RULES, pipeline={"max_queue": 2})
    with Esme(bt.port) as esme:
        esme.bind()
        statuses = [esme.submit(destination_addr=TRANSIENT).status for _ in range(5)]
    assert statuses[:2] == [Status.ESME_ROK, Status.ESME_ROK]
    assert statuses[2:] == [Status.ESME_RMSGQFUL] * 3


def test_decimal_message_id_format(start_bridge: StartBridge) -> None:
    bt = start_bridge(account={"message_id_format": "decimal"})
    with Esme(bt.port) as esme:
        esme.bind()
        ids = [esme.submit_ok() for _ in range(3)]
        receipts = receipts_by_id(esme.receipts(3))
    assert all(i.isdigit() for i in ids), ids
    assert len(set(ids)) == 3
    assert set(receipts) == set(ids)
    assert all(receipt_fields(r)["id"] in ids for r in receipts.values())
