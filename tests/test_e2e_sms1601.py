"""End to end with 1601SMS: smpplib as the ESME → the whole bridge → the 1601SMS simulator over
HTTP → the report pushed (or polled) back → a receipt deliver_sm to the ESME.

The simulator answers by the destination's last digits (bridge/simulators/sms1601.py): ``99`` +
code forces that error, 81/82/83 end NOT DELIVERED/REJECTED/NONE, 84 goes through BUFFERED,
96/97 fail once (error 150, HTTP 500) and then succeed. Every wait is bounded.
"""

from __future__ import annotations

from typing import Any

import pytest
import smpplib.gsm

from bridge.core.model import MessageState
from bridge.smpp.pdu import Status
from tests.harness.esme import receipt_fields, receipt_fields_by_id, receipt_id
from tests.harness.loop import wait_until
from tests.harness.rig import ProviderRig, StartRig

pytestmark = pytest.mark.timeout(60)

MOBILE = "32478123456"  # the API page's example number (Belgian mobile)
#: The page's refusals that no retry fixes: REJECTD with err = the code.
PERMANENT_CODES = [c for c in [*range(100, 127), 150] if c not in {108, 115, 120, 121, 150}]


class Rig(ProviderRig):
    """A bridge routing everything to 1601SMS, and the simulator it talks to."""

    def requests(self) -> list[dict[str, str]]:
        """The sends the gateway got (not the bridge's ``action=credits`` health checks)."""
        return self.sim_thread.run(lambda: [r for r in self.sim.requests if "action" not in r])


def start(provider_rig: StartRig, *, push: bool = True, **options: Any) -> Rig:
    """A bridge routing everything to 1601SMS (``provider``, ``routes``, ``pipeline``: see the
    rig); with ``push`` the simulator pushes reports to the bridge's report callback."""
    rig = provider_rig("sms1601", rig_type=Rig, **options)
    assert isinstance(rig, Rig)
    if push:
        url = rig.callback_url("report")
        rig.state(lambda: setattr(rig.sim, "push_url", url))
    return rig


# --------------------------------------------------------------------------- the happy paths


def test_gsm_message_is_sent_with_dutch_parameters_and_a_delivrd_receipt_comes_back(
    provider_rig: StartRig,
) -> None:
    rig = start(provider_rig)
    with rig.esme() as esme:
        mid = esme.submit_ok(short_message=b"Hello from the ESME", destination_addr=MOBILE)
        [receipt] = esme.receipts(1)
    fields = receipt_fields(receipt)
    assert (receipt_id(receipt), fields["stat"], fields["err"]) == (mid, "DELIVRD", "000")
    [sent] = rig.requests()
    assert sent["bericht"] == "Hello from the ESME"
    assert (sent["naar"], sent["afzender"], sent["delivery"]) == (MOBILE, "Bridge", "ja")
    assert sent["referentie"] == mid
    assert rig.stored(mid).state is MessageState.DELIVERED


def test_ucs2_text_of_gsm_characters_is_sent_and_other_unicode_is_refused_at_submit(
    provider_rig: StartRig,
) -> None:
    rig = start(provider_rig)
    with rig.esme() as esme:
        mid = esme.submit_ok(
            short_message="Grüße aus Köln, 5€".encode("utf-16-be"),
            data_coding=8,
            destination_addr=MOBILE,
        )
        [receipt] = esme.receipts(1)
        refused = esme.submit(
            short_message="Привет".encode("utf-16-be"), data_coding=8, destination_addr=MOBILE
        )
    assert receipt_id(receipt) == mid
    assert receipt_fields(receipt)["stat"] == "DELIVRD"
    assert refused.status == Status.ESME_RSUBMITFAIL  # no route carries Unicode
    assert [r["bericht"] for r in rig.requests()] == ["Grüße aus Köln, 5€"]


def test_three_udh_parts_become_one_type_long_request_and_three_receipts(
    provider_rig: StartRig,
) -> None:
    rig = start(provider_rig)
    text = ("The quick brown fox jumps over the lazy dog. " * 9)[:400]
    parts, encoding, esm_class = smpplib.gsm.make_parts(text)
    assert len(parts) == 3
    with rig.esme() as esme:
        ids = [
            esme.submit_ok(
                short_message=part,
                esm_class=esm_class,
                data_coding=encoding,
                destination_addr=MOBILE,
            )
            for part in parts
        ]
        receipts = receipt_fields_by_id(esme.receipts(3))
    assert set(receipts) == set(ids)
    assert {f["stat"] for f in receipts.values()} == {"DELIVRD"}
    [sent] = rig.requests()
    assert (sent["bericht"], sent["type"]) == (text, "long")
    charged = rig.sim_thread.run(lambda: 1000 - rig.sim.credits)
    assert charged == 3


# --------------------------------------------------------------------------- failures


def test_every_permanent_gateway_error_reaches_the_esme_as_rejectd_with_its_code(
    provider_rig: StartRig,
) -> None:
    rig = start(provider_rig)
    with rig.esme() as esme:
        ids = {esme.submit_ok(destination_addr=f"32478199{code}"): code for code in PERMANENT_CODES}
        receipts = receipt_fields_by_id(esme.receipts(len(ids), timeout=10.0))
    assert set(receipts) == set(ids)
    for mid, code in ids.items():
        assert (receipts[mid]["stat"], receipts[mid]["err"]) == ("REJECTD", f"{code:03d}")


def test_report_words_become_receipt_states(provider_rig: StartRig) -> None:
    rig = start(provider_rig)
    with rig.esme() as esme:
        expected = {
            esme.submit_ok(destination_addr="32478123481"): ("UNDELIV", "002"),  # NOT DELIVERED
            esme.submit_ok(destination_addr="32478123482"): ("REJECTD", "003"),  # REJECTED
            esme.submit_ok(destination_addr="32478123483"): ("UNKNOWN", "004"),  # NONE
            esme.submit_ok(destination_addr="32478123484"): ("DELIVRD", "000"),  # via BUFFERED
        }
        receipts = receipt_fields_by_id(esme.receipts(4))
        esme.pump(0.1)
        assert len(esme.delivered) == 4  # BUFFERED is intermediate: not asked for
    assert {mid: (f["stat"], f["err"]) for mid, f in receipts.items()} == expected


def test_http_500_and_maintenance_are_retried_until_delivered(provider_rig: StartRig) -> None:
    rig = start(provider_rig)
    with rig.esme() as esme:
        ids = [esme.submit_ok(destination_addr=n) for n in ("32478123497", "32478123496")]
        receipts = receipt_fields_by_id(esme.receipts(2))
    assert {f["stat"] for f in receipts.values()} == {"DELIVRD"}
    assert set(receipts) == set(ids)
    assert sorted(r["naar"] for r in rig.requests()) == [
        "32478123496",
        "32478123496",
        "32478123497",
        "32478123497",
    ]


def test_no_credits_is_retried_until_the_validity_ends_then_expired_with_err_108(
    provider_rig: StartRig,
) -> None:
    rig = start(provider_rig)
    with rig.esme() as esme:
        mid = esme.submit_ok(destination_addr="32478199108", validity_period="000000000001000R")
        [receipt] = esme.receipts(1, timeout=5.0)
    fields = receipt_fields(receipt)
    assert (receipt_id(receipt), fields["stat"]) == (mid, "EXPIRED")
    # err:108 whether the validity ends as a retry is planned or as a retry timer fires just
    # after the deadline (the dispatcher keeps the last transient failure's code).
    assert fields["err"] == "108"
    sent = rig.requests()
    assert len(sent) > 1 and all(r["naar"] == "32478199108" for r in sent)


def test_a_sender_the_gateway_refuses_is_rejected_with_its_code_before_any_request(
    provider_rig: StartRig,
) -> None:
    rig = start(provider_rig)
    with rig.esme() as esme:
        mid = esme.submit_ok(source_addr="Shop-24", destination_addr=MOBILE)
        [receipt] = esme.receipts(1)
    fields = receipt_fields(receipt)
    assert (receipt_id(receipt), fields["stat"], fields["err"]) == (mid, "REJECTD", "113")
    assert rig.requests() == []


def test_an_unsendable_message_fails_over_to_the_next_provider(provider_rig: StartRig) -> None:
    rig = start(
        provider_rig,
        routes='[[routes]]\nproviders = ["sms1601", "sandbox"]\n',
    )
    with rig.esme() as esme:
        mid = esme.submit_ok(source_addr="Shop-24", destination_addr=MOBILE)
        [receipt] = esme.receipts(1)
    assert receipt_fields(receipt)["stat"] == "DELIVRD"
    assert rig.stored(mid).provider == "sandbox"
    assert rig.requests() == []


# --------------------------------------------------------------------------- options


def test_polling_mode_gets_the_receipt_from_gatewayrapport(provider_rig: StartRig) -> None:
    rig = start(
        provider_rig,
        push=False,
        provider={"reports": "poll"},
        pipeline={"poll_interval": 0.2},
    )
    with rig.esme() as esme:
        mid = esme.submit_ok(destination_addr="32478123481")
        [receipt] = esme.receipts(1, timeout=5.0)
    fields = receipt_fields(receipt)
    assert (receipt_id(receipt), fields["stat"], fields["err"]) == (mid, "UNDELIV", "002")
    assert rig.sim_thread.run(lambda: len(rig.sim.status_requests)) >= 1
    assert rig.sim_thread.run(lambda: list(rig.sim.pushes)) == []


def test_without_a_receipt_request_no_delivery_ja_and_the_message_ends_accepted(
    provider_rig: StartRig,
) -> None:
    rig = start(provider_rig)
    with rig.esme() as esme:
        mid = esme.submit_ok(registered_delivery=0, destination_addr=MOBILE)
        assert wait_until(lambda: rig.stored(mid).state is MessageState.ACCEPTED, 3.0)
        esme.pump(0.1)
        assert esme.delivered == []
    [sent] = rig.requests()
    assert "delivery" not in sent


def test_schedule_delivery_time_becomes_datum_and_the_gateway_holds_it(
    provider_rig: StartRig,
) -> None:
    rig = start(provider_rig)
    with rig.esme() as esme:
        mid = esme.submit_ok(schedule_delivery_time="000000010000000R", destination_addr=MOBILE)
        assert wait_until(lambda: len(rig.requests()) == 1, 3.0)
    [sent] = rig.requests()
    assert len(sent["datum"]) == 12 and sent["emailen"] == "nee"
    outbox = rig.sim_thread.run(lambda: [m.referentie for m in rig.sim.messages.values()])
    assert outbox == [mid]
    assert rig.sim_thread.run(lambda: next(iter(rig.sim.messages.values())).in_outbox)


def test_test_mode_ends_accepted_at_once_and_charges_nothing(provider_rig: StartRig) -> None:
    rig = start(provider_rig, provider={"test": True})
    with rig.esme() as esme:
        mid = esme.submit_ok(destination_addr=MOBILE)
        [receipt] = esme.receipts(1)
    fields = receipt_fields(receipt)
    assert (receipt_id(receipt), fields["stat"], fields["err"]) == (mid, "ACCEPTD", "000")
    assert rig.requests()[0]["test"] == "ja"
    assert rig.sim_thread.run(lambda: rig.sim.credits) == 1000


def test_the_readiness_check_reports_the_credit_balance(provider_rig: StartRig) -> None:
    rig = start(provider_rig)
    rig.sim_thread.run(lambda: setattr(rig.sim, "credits", 476))
    provider = rig.bt.bridge.providers["sms1601"]
    assert rig.bt.call(provider.healthy()) is True
    gauge = rig.bt.bridge.metrics.provider_balance.labels("sms1601")
    assert gauge._value.get() == 476


# --------------------------------------------------------------------------- several numbers


def test_a_submit_multi_goes_as_comma_separated_numbers_and_each_gets_an_acceptd_receipt(
    provider_rig: StartRig,
) -> None:
    rig = start(
        provider_rig,
        provider={"bulk": "all", "bulk_max": 5, "requests_per_second": 2},
    )
    numbers = [f"3247812{i:04d}" for i in range(12)]
    with rig.esme() as esme:
        resp = esme.submit_multi(numbers, b"Aan iedereen", registered_delivery=1)
        assert resp.command_status == 0
        receipts = esme.receipts(12)
    sent = rig.requests()
    assert [len(r["naar"].split(",")) for r in sent] == [5, 5, 2]  # 3 requests, not 12
    assert sorted(n for r in sent for n in r["naar"].split(",")) == numbers
    # No report could name its number: no delivery=ja, no referentie; each one ACCEPTD.
    assert all("delivery" not in r and "referentie" not in r for r in sent)
    fields = [receipt_fields(r) for r in receipts]
    assert {(f["stat"], f["err"]) for f in fields} == {("ACCEPTD", "000")}
    assert sorted(r.source_addr.decode() for r in receipts) == numbers


def test_a_bulk_error_about_one_number_sends_each_number_again_on_its_own(
    provider_rig: StartRig,
) -> None:
    rig = start(
        provider_rig,
        provider={"bulk": "all"},
        pipeline={"retry_base": 0.05, "retry_max": 0.2},
    )
    bad = "3247899106"  # the simulator answers ERROR 106 (no valid mobile number) for it
    numbers = [*(f"3247812{i:04d}" for i in range(4)), bad]
    with rig.esme() as esme:
        esme.submit_multi(numbers, b"Zonder rapport", registered_delivery=2)  # failures only
        [receipt] = esme.receipts(1)
        esme.pump(0.3)
        assert len(esme.delivered) == 1  # the others were delivered: no failure receipt
    fields = receipt_fields(receipt)
    assert receipt.source_addr.decode() == bad and (fields["stat"], fields["err"]) == (
        "REJECTD",
        "106",
    )
    assert wait_until(lambda: len(rig.requests()) == 6)
    sent = rig.requests()
    assert len(sent[0]["naar"].split(",")) == 5  # then one by one
    assert sorted(r["naar"] for r in sent[1:]) == sorted(numbers)
