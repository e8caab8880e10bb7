"""End to end over iSMS HTTP: smpplib ESME → bridge → iSMS simulator → receipt deliver_sm.

The simulator (``bridge.simulators.isms_http``) runs in a thread of its own and pushes reports
to the bridge's real callback URL (the ``dlr-url`` the adapter sends); outcomes are chosen by
the destination's last two digits (table in the simulator's docstring).
"""

from __future__ import annotations

from typing import Any

import pytest
import smpplib.consts
import smpplib.gsm

from bridge.core.model import MessageState
from bridge.simulators.isms_http import IsmsHttpSimulator
from tests.harness.esme import Esme, receipt_fields, receipt_id, receipts_by_id
from tests.harness.loop import wait_until
from tests.harness.rig import StartRig

pytestmark = pytest.mark.timeout(30)

DELIVERED = "306912345600"
FAILED = "306912345601"
PENDING_THEN_DELIVERED = "306912345603"
NOT_PUSHED = "306912345604"
NO_RECIPIENTS = "306912345691"
INVALID_SENDER = "306912345692"
NO_CREDITS = "306912345693"
BAD_SCHEDULE = "306912345694"
AUTH_ERROR = "306912345695"
FLAKY = "306912345697"


def sends(sim: IsmsHttpSimulator) -> list[dict[str, str]]:
    """The send.php requests the simulator got (the bridge also calls credits.php)."""
    return [r for r in sim.requests if r["script"] == "send.php"]


def submit(esme: Esme, to: str, **fields: Any) -> str:
    values: dict[str, Any] = {"destination_addr": to, "source_addr": "Bridge"}
    values.update(fields)
    return esme.submit_ok(**values)


# --------------------------------------------------------------------------- happy paths


def test_gsm_and_ucs2_messages_get_delivrd_receipts_through_the_dlr_url(
    provider_rig: StartRig,
) -> None:
    rig = provider_rig("isms_http")
    greek = "Καλημέρα από την Αθήνα"
    with rig.esme() as esme:
        plain = submit(esme, DELIVERED, short_message=b"Hello from the ESME")
        ucs2 = submit(esme, DELIVERED, short_message=greek.encode("utf-16-be"), data_coding=8)
        receipts = receipts_by_id(esme.receipts(2))
    assert set(receipts) == {plain, ucs2}
    for r in receipts.values():
        fields = receipt_fields(r)
        assert (fields["stat"], fields["err"], fields["dlvrd"]) == ("DELIVRD", "000", "001")
    requests = rig.state(lambda: sends(rig.sim))
    by_text = {r["message"]: r for r in requests}
    assert by_text["Hello from the ESME"]["coding"] == "GSM"
    assert by_text[greek]["coding"] == "UTF-8"
    assert by_text[greek]["from"] == "Bridge"
    callback = rig.callback_url()
    assert {r["dlr-url"] for r in requests} == {callback}
    assert rig.stored(plain).state is MessageState.DELIVERED


def test_three_udh_parts_are_one_request_and_get_three_receipts(
    provider_rig: StartRig,
) -> None:
    rig = provider_rig("isms_http")
    text = ("Long messages travel whole to iSMS, which concatenates them. " * 8)[:400]
    parts, encoding, esm_class = smpplib.gsm.make_parts(text)
    assert len(parts) == 3
    with rig.esme() as esme:
        ids = [
            submit(esme, DELIVERED, short_message=p, esm_class=esm_class, data_coding=encoding)
            for p in parts
        ]
        receipts = receipts_by_id(esme.receipts(3))
        esme.pump(0.1)
        assert len(esme.delivered) == 3
    assert set(receipts) == set(ids)
    assert all(receipt_fields(r)["stat"] == "DELIVRD" for r in receipts.values())
    assert [r["message"] for r in rig.state(lambda: sends(rig.sim))] == [text]
    assert rig.state(lambda: rig.sim.credits) == 1000.0 - 3


def test_without_a_receipt_request_no_dlr_url_is_sent_and_the_message_ends_accepted(
    provider_rig: StartRig,
) -> None:
    rig = provider_rig("isms_http")
    with rig.esme() as esme:
        silent = submit(esme, DELIVERED, registered_delivery=0)
        assert wait_until(lambda: rig.stored(silent).state is MessageState.ACCEPTED)
        assert esme.query(silent).message_state == MessageState.ACCEPTED
        esme.pump(0.2)
        assert esme.delivered == []
    [send] = rig.state(lambda: sends(rig.sim))
    assert "dlr-url" not in send


def test_registered_delivery_0x11_gets_pending_as_enroute_then_delivrd(
    provider_rig: StartRig,
) -> None:
    rig = provider_rig("isms_http")
    with rig.esme() as esme:
        mid = submit(esme, PENDING_THEN_DELIVERED, registered_delivery=0x11)
        receipts = esme.receipts(2)
        esme.pump(0.2)
    stats = [receipt_fields(r)["stat"] for r in esme.delivered]
    assert stats[0] == "ENROUTE" and stats[-1] == "DELIVRD"
    assert {receipt_id(r) for r in receipts} == {mid}
    assert receipts[-1].esm_class == 0x04


# --------------------------------------------------------------------------- failures


def test_every_documented_error_reaches_the_esme_as_its_receipt(
    provider_rig: StartRig,
) -> None:
    rig = provider_rig("isms_http")
    expected = {
        FAILED: ("UNDELIV", "020"),
        AUTH_ERROR: ("REJECTD", "011"),
        NO_RECIPIENTS: ("REJECTD", "012"),
        INVALID_SENDER: ("REJECTD", "013"),
        NO_CREDITS: ("EXPIRED", "014"),  # transient: retried until the validity ends
        BAD_SCHEDULE: ("REJECTD", "015"),
        FLAKY: ("DELIVRD", "000"),  # HTTP 500 once, then accepted
    }
    with rig.esme() as esme:
        ids = {submit(esme, to, validity_period="000000000002000R"): to for to in expected}
        receipts = receipts_by_id(esme.receipts(len(expected), timeout=8.0))
    assert set(receipts) == set(ids)
    for mid, r in receipts.items():
        fields = receipt_fields(r)
        assert (fields["stat"], fields["err"]) == expected[ids[mid]], ids[mid]
    tried = [r["to"] for r in rig.state(lambda: sends(rig.sim))]
    assert tried.count(FLAKY) == 2
    assert tried.count(NO_CREDITS) > 1
    assert tried.count(AUTH_ERROR) == 1  # permanent: not retried


def test_a_too_long_alphanumeric_sender_is_refused_at_submit(
    provider_rig: StartRig,
) -> None:
    rig = provider_rig("isms_http")
    with rig.esme() as esme:
        resp = esme.submit(
            destination_addr=DELIVERED,
            source_addr="TwelveLetter",
            source_addr_ton=smpplib.consts.SMPP_TON_ALNUM,
        )
        assert resp.status != 0
    assert rig.state(lambda: sends(rig.sim)) == []


# --------------------------------------------------------------------------- polling


def test_poll_mode_gets_receipts_from_query_php(
    provider_rig: StartRig,
) -> None:
    rig = provider_rig("isms_http", provider={"reports": "poll"}, pipeline={"poll_interval": 0.2})
    with rig.esme() as esme:
        ok = submit(esme, DELIVERED)
        bad = submit(esme, FAILED)
        receipts = receipts_by_id(esme.receipts(2))
    assert (receipt_fields(receipts[ok])["stat"], receipt_fields(receipts[bad])["err"]) == (
        "DELIVRD",
        "020",
    )
    requests = rig.state(lambda: list(rig.sim.requests))
    assert all("dlr-url" not in r for r in requests if r["script"] == "send.php")
    assert any(r["script"] == "query.php" for r in requests)
    assert rig.state(lambda: len(rig.sim.pushes)) == 0


def test_a_report_lost_while_the_bridge_was_down_comes_from_the_start_up_poll(
    provider_rig: StartRig,
) -> None:
    first = provider_rig("isms_http")
    with first.esme() as esme:
        mid = submit(esme, NOT_PUSHED)  # iSMS delivers it but never pushes
        assert wait_until(lambda: first.stored(mid).provider_message_id)
    first.bt.stop()
    second = provider_rig(
        "isms_http", sim=first.sim, sim_thread=first.sim_thread, data_dir=first.bt.data_dir
    )
    with second.esme() as esme:
        [receipt] = esme.receipts(1)
    assert receipt_id(receipt) == mid
    assert receipt_fields(receipt)["stat"] == "DELIVRD"


# --------------------------------------------------------------------------- bulk (to=a,b,…)


def test_a_submit_multi_goes_as_one_comma_list_per_bulk_max_and_each_number_gets_its_own_receipt(
    provider_rig: StartRig,
) -> None:
    rig = provider_rig(
        "isms_http", provider={"bulk": True, "bulk_max": 3, "requests_per_second": 5}
    )
    numbers = [f"3069123456{i}0" for i in range(5)] + [FAILED, PENDING_THEN_DELIVERED]
    with rig.esme() as esme:
        resp = esme.submit_multi(numbers, b"Geia se olous", registered_delivery=1)
        assert resp.command_status == 0
        receipts = esme.receipts(7)
    requests = rig.state(lambda: sends(rig.sim))
    assert [len(r["to"].split(",")) for r in requests] == [3, 3, 1]  # 3 requests, not 7
    # One ID for each request; query.php and the pushes name mid and mobile, so each
    # destination still gets its own report.
    by_number = {r.source_addr.decode(): receipt_fields(r) for r in receipts}
    assert (by_number[FAILED]["stat"], by_number[FAILED]["err"]) == ("UNDELIV", "020")
    assert {by_number[n]["stat"] for n in numbers if n != FAILED} == {"DELIVRD"}
    ids = {
        n: m.provider_message_id
        for n, m in (
            (r.source_addr.decode(), rig.stored(receipt_fields(r)["id"])) for r in receipts
        )
    }
    assert all(pid.endswith("/" + n) for n, pid in ids.items())


def test_with_bulk_a_report_is_also_polled_per_number(
    provider_rig: StartRig,
) -> None:
    rig = provider_rig(
        "isms_http",
        provider={"bulk": True, "reports": "poll"},
        pipeline={"poll_interval": 0.2, "poll_backoff_max": 0.4},
    )
    numbers = [DELIVERED, FAILED, NOT_PUSHED]
    with rig.esme() as esme:
        esme.submit_multi(numbers, b"Polled", registered_delivery=1)
        receipts = esme.receipts(3)
    assert len(rig.state(lambda: sends(rig.sim))) == 1
    stats = {r.source_addr.decode(): receipt_fields(r)["stat"] for r in receipts}
    assert stats == {DELIVERED: "DELIVRD", FAILED: "UNDELIV", NOT_PUSHED: "DELIVRD"}
    queries = rig.state(lambda: [r for r in rig.sim.requests if r["script"] == "query.php"])
    assert {q["mobile"] for q in queries} == set(numbers)
