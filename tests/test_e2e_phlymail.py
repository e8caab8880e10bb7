"""End to end with phlyMail: smpplib as the ESME → the whole bridge → the phlyMail simulator over
HTTP → a receipt deliver_sm back to the ESME.

phlyMail has no delivery reports: a message it takes ends at once as ACCEPTED, and an ESME that
asked for a receipt gets ``stat:ACCEPTD err:000`` (docs/providers/phlymail.md). The simulator
answers by the destination's last digits (bridge/simulators/phlymail.py): ``99`` + code forces
that reply, 95 is always HTTP 500, 96/97 fail once (203, HTTP 500) and then succeed. Every wait
is bounded.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from typing import Any

import pytest
import smpplib.gsm

from bridge.core.model import MessageState
from tests.harness.esme import receipt_fields, receipt_fields_by_id, receipt_id
from tests.harness.loop import wait_until
from tests.harness.rig import ProviderRig, StartRig

pytestmark = pytest.mark.timeout(60)

MOBILE = "4917712345678"  # the page's 004917712345678
#: The page's send refusals that no retry fixes (401 is mode=test's, taken the same way).
PERMANENT_CODES = [201, 202, 401, 402]


class Rig(ProviderRig):
    """A bridge routing everything to phlyMail, and the simulator it talks to."""

    def sends(self) -> list[dict[str, str]]:
        """The send calls the gateway got (not the bridge's ``mode=synchro`` health checks)."""
        return self.sim_thread.run(
            lambda: [r for r in self.sim.requests if r.get("mode") in ("sms", "utf")]
        )

    def credit(self) -> float:
        return self.sim_thread.run(lambda: self.sim.credit)


def start(provider_rig: StartRig, **options: Any) -> Rig:
    """A bridge routing everything to phlyMail (``provider``, ``routes``: see the rig)."""
    rig = provider_rig("phlymail", rig_type=Rig, **options)
    assert isinstance(rig, Rig)
    return rig


# --------------------------------------------------------------------------- the happy paths


def test_gsm_message_is_posted_and_ends_acceptd_at_once_since_phlymail_never_reports(
    provider_rig: StartRig,
) -> None:
    rig = start(provider_rig)
    with rig.esme() as esme:
        mid = esme.submit_ok(short_message=b"Hello from the ESME", destination_addr=MOBILE)
        [receipt] = esme.receipts(1)
        esme.pump(0.2)
        assert len(esme.delivered) == 1  # nothing more will ever come
    fields = receipt_fields(receipt)
    assert (receipt_id(receipt), fields["stat"], fields["err"]) == (mid, "ACCEPTD", "000")
    [sent] = rig.sends()
    assert (sent["_method"], sent["mode"], sent["text"]) == ("POST", "sms", "Hello from the ESME")
    assert (sent["to"], sent["from"], sent["user"]) == ("004917712345678", "Bridge", "demophly")
    assert "pass" not in sent and len(sent["encpass"]) == 32
    stored = rig.stored(mid)
    assert (stored.state, stored.provider_message_id) == (MessageState.ACCEPTED, f"phly-{mid}")
    assert rig.credit() == 999


def test_ucs2_text_goes_as_mode_sms_when_latin1_holds_it_else_as_mode_utf(
    provider_rig: StartRig,
) -> None:
    rig = start(provider_rig)
    with rig.esme() as esme:
        latin = esme.submit_ok(
            short_message="Grüße aus Köln".encode("utf-16-be"),
            data_coding=8,
            destination_addr=MOBILE,
        )
        cyrillic = esme.submit_ok(
            short_message="Привет, 5 €".encode("utf-16-be"), data_coding=8, destination_addr=MOBILE
        )
        receipts = receipt_fields_by_id(esme.receipts(2))
    assert {mid: f["stat"] for mid, f in receipts.items()} == {
        latin: "ACCEPTD",
        cyrillic: "ACCEPTD",
    }
    taken = rig.sim_thread.run(lambda: [(m.mode, m.text) for m in rig.sim.messages])
    assert sorted(taken) == [("sms", "Grüße aus Köln"), ("utf", "Привет, 5 €")]


def test_three_udh_parts_become_one_request_and_three_receipts(provider_rig: StartRig) -> None:
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
    assert {(f["stat"], f["err"]) for f in receipts.values()} == {("ACCEPTD", "000")}
    [sent] = rig.sends()
    assert sent["text"] == text
    assert rig.credit() == 1000 - 3  # the gateway's "3 SMS sent"


def test_without_a_receipt_request_the_message_ends_accepted_and_nothing_is_delivered(
    provider_rig: StartRig,
) -> None:
    rig = start(provider_rig)
    with rig.esme() as esme:
        mid = esme.submit_ok(registered_delivery=0, destination_addr=MOBILE)
        assert wait_until(lambda: rig.stored(mid).state is MessageState.ACCEPTED, 3.0)
        esme.pump(0.1)
        assert esme.delivered == []
    assert len(rig.sends()) == 1


# --------------------------------------------------------------------------- failures


def test_every_permanent_reply_code_reaches_the_esme_as_rejectd_with_its_code(
    provider_rig: StartRig,
) -> None:
    rig = start(provider_rig)
    with rig.esme() as esme:
        ids = {
            esme.submit_ok(destination_addr=f"49177123499{code}"): code for code in PERMANENT_CODES
        }
        receipts = receipt_fields_by_id(esme.receipts(len(ids)))
    assert set(receipts) == set(ids)
    for mid, code in ids.items():
        assert (receipts[mid]["stat"], receipts[mid]["err"]) == ("REJECTD", f"{code:03d}")
    assert len(rig.sends()) == len(PERMANENT_CODES)  # refusals are not retried


def test_http_500_and_a_credit_shortfall_are_retried_until_taken(provider_rig: StartRig) -> None:
    rig = start(provider_rig)
    with rig.esme() as esme:
        ids = [esme.submit_ok(destination_addr=n) for n in ("4917712345697", "4917712345696")]
        receipts = receipt_fields_by_id(esme.receipts(2))
    assert set(receipts) == set(ids)
    assert {(f["stat"], f["err"]) for f in receipts.values()} == {("ACCEPTD", "000")}
    assert sorted(r["to"] for r in rig.sends()) == [
        "004917712345696",
        "004917712345696",
        "004917712345697",
        "004917712345697",
    ]


def test_no_credit_is_retried_until_the_validity_ends_then_expired_with_err_203(
    provider_rig: StartRig,
) -> None:
    rig = start(provider_rig)
    with rig.esme() as esme:
        mid = esme.submit_ok(destination_addr="4917712399203", validity_period="000000000001000R")
        [receipt] = esme.receipts(1)
    fields = receipt_fields(receipt)
    assert (receipt_id(receipt), fields["stat"], fields["err"]) == (mid, "EXPIRED", "203")
    sent = rig.sends()
    assert len(sent) > 1 and all(r["to"] == "004917712399203" for r in sent)


def test_a_sender_phlymail_cannot_take_is_rejected_before_any_request(
    provider_rig: StartRig,
) -> None:
    rig = start(provider_rig)
    with rig.esme() as esme:
        mid = esme.submit_ok(source_addr="My Shop", destination_addr=MOBILE)
        [receipt] = esme.receipts(1)
    fields = receipt_fields(receipt)
    assert (receipt_id(receipt), fields["stat"], fields["err"]) == (mid, "REJECTD", "001")
    assert rig.sends() == []


def test_an_unsendable_message_fails_over_to_the_next_provider(provider_rig: StartRig) -> None:
    rig = start(
        provider_rig,
        routes='[[routes]]\nproviders = ["phlymail", "sandbox"]\n',
    )
    with rig.esme() as esme:
        mid = esme.submit_ok(source_addr="My Shop", destination_addr=MOBILE)
        [receipt] = esme.receipts(1)
    assert receipt_fields(receipt)["stat"] == "DELIVRD"  # the sandbox does report
    assert rig.stored(mid).provider == "sandbox"
    assert rig.sends() == []


def test_binary_content_and_non_latin1_text_without_unicode_find_no_route(
    provider_rig: StartRig,
) -> None:
    rig = start(provider_rig, provider={"unicode": False})
    with rig.esme() as esme:
        binary = esme.submit(short_message=b"\x01\x02\x03", data_coding=4, destination_addr=MOBILE)
        cyrillic = esme.submit(
            short_message="Привет".encode("utf-16-be"), data_coding=8, destination_addr=MOBILE
        )
    assert binary.status == cyrillic.status == 0x45  # ESME_RSUBMITFAIL
    assert rig.sends() == []
    # The metric says which obstacle it was, not a bare "no_route": the route exists.
    rejected = rig.bt.bridge.metrics.messages_rejected
    assert rejected.labels("demo", "binary_unsupported")._value.get() == 1
    assert rejected.labels("demo", "unicode_unsupported")._value.get() == 1
    assert rejected.labels("demo", "no_route")._value.get() == 0


# --------------------------------------------------------------------------- health


def test_the_readiness_check_reports_the_balance_and_pushes_are_refused(
    provider_rig: StartRig,
) -> None:
    rig = start(provider_rig)
    rig.sim_thread.run(lambda: setattr(rig.sim, "credit", 96.5))
    provider = rig.bt.bridge.providers["phlymail"]
    assert rig.bt.call(provider.healthy()) is True
    gauge = rig.bt.bridge.metrics.provider_balance.labels("phlymail")
    assert gauge._value.get() == 96.5
    # Nothing is ever pushed: the bridge's callback route for phlyMail answers a bare 404.
    url = rig.bt.run(lambda: rig.bt.bridge.callback_url("phlymail", "report"))
    assert url is not None
    with pytest.raises(urllib.error.HTTPError) as exc:
        urllib.request.urlopen(f"{url}?status=DELIVRD", timeout=5)
    assert exc.value.code == 404
