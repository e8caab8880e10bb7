"""End to end with My-Cool-SMS: smpplib ESME → bridge → the My-Cool-SMS simulator (real HTTP,
JSON ``sendSms``) → ``pushDeliveryReport`` to the message's ``callbackurl`` (or
``getDeliveryReports`` polling) → receipt deliver_sm back to the ESME; and a
``pushIncomingSms`` → deliver_sm. Outcomes are chosen by the destination's last digits (see
``bridge.simulators.mycoolsms``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import smpplib.gsm

from bridge.providers.mycoolsms.api import to_ucs2_hex
from tests.harness.esme import receipt_fields, receipt_id
from tests.harness.loop import wait_until
from tests.harness.rig import ProviderRig, StartRig

pytestmark = pytest.mark.timeout(30)

MOBILE = "49151123456"  # + two digits choosing the simulator's outcome
VIRTUAL_NUMBER = "+4915790000000"  # the account's My-Cool-SMS number for inbound SMS


class Setup(ProviderRig):
    """A My-Cool-SMS rig, with the requests the simulator got."""

    @property
    def report_url(self) -> str:
        return self.callback_url("report")

    @property
    def inbound_url(self) -> str:
        return self.callback_url("inbound")

    def sends(self) -> list[dict[str, Any]]:
        """Parameters of the sendSms calls the simulator got."""
        return self.sim_thread.run(
            lambda: [
                r["params"] for r in self.sim.requests if r["params"].get("function") == "sendSms"
            ]
        )

    def functions(self) -> list[str]:
        return self.sim_thread.run(
            lambda: [str(r["params"].get("function")) for r in self.sim.requests]
        )


@pytest.fixture
def setup(provider_rig: StartRig) -> Callable[..., Setup]:
    """``setup(pipeline=None, **provider keys)``: a simulator and a bridge routing everything
    to it as provider ``mycoolsms``."""

    def make(pipeline: dict[str, object] | None = None, **keys: Any) -> Setup:
        rig = provider_rig(
            "mycoolsms",
            provider=keys,
            rig_type=Setup,
            account={"inbound_numbers": [VIRTUAL_NUMBER]},
            pipeline=pipeline,
        )
        assert isinstance(rig, Setup)
        return rig

    return make


def test_gsm_message_goes_as_send_sms_and_the_pushed_delivered_becomes_a_delivrd_receipt(
    setup: Any,
) -> None:
    s: Setup = setup()
    with s.esme() as esme:
        mid = esme.submit_ok(
            short_message=b"Hello from the ESME",
            destination_addr=MOBILE + "78",
            registered_delivery=1,
        )
        [receipt] = esme.receipts(1)
    fields = receipt_fields(receipt)
    assert (fields["id"], fields["stat"], fields["err"]) == (mid, "DELIVRD", "000")
    [params] = s.sends()
    assert params == {
        "username": "bridge",
        "password": "secret",
        "function": "sendSms",
        "number": "+4915112345678",
        "message": "Hello from the ESME",
        "unicode": False,
        "senderid": "Bridge",
        "callbackurl": s.report_url,
    }
    pushes = s.sim_thread.run(lambda: list(s.sim.pushes))
    assert [(p.url, p.status) for p in pushes] == [(s.report_url, 200)]


def test_ucs2_text_goes_in_ucs2_notation_and_is_delivered(setup: Any) -> None:
    s: Setup = setup()
    text = "Привет, 繁体中文!"
    with s.esme() as esme:
        mid = esme.submit_ok(
            short_message=text.encode("utf-16-be"),
            data_coding=8,
            destination_addr=MOBILE + "78",
        )
        [receipt] = esme.receipts(1)
    assert (receipt_id(receipt), receipt_fields(receipt)["stat"]) == (mid, "DELIVRD")
    [params] = s.sends()
    assert (params["unicode"], params["message"]) == (True, to_ucs2_hex(text))
    bodies = s.sim_thread.run(lambda: [m.body for m in s.sim.messages.values()])
    assert bodies == [text]


def test_three_udh_parts_are_one_send_sms_and_each_part_gets_its_receipt(setup: Any) -> None:
    s: Setup = setup()
    text = ("The quick brown fox jumps over the lazy dog. " * 9)[:400]
    parts, encoding, esm_class = smpplib.gsm.make_parts(text)
    assert len(parts) == 3
    with s.esme() as esme:
        ids = [
            esme.submit_ok(
                short_message=part,
                esm_class=esm_class,
                data_coding=encoding,
                destination_addr=MOBILE + "78",
            )
            for part in parts
        ]
        receipts = esme.receipts(3)
    assert sorted(receipt_id(r) for r in receipts) == sorted(ids)
    assert {receipt_fields(r)["stat"] for r in receipts} == {"DELIVRD"}
    [params] = s.sends()
    assert params["message"] == text
    counts = s.sim_thread.run(lambda: [m.smscount for m in s.sim.messages.values()])
    assert counts == [3]


def test_failure_statuses_reach_the_esme_as_receipts_with_their_err(setup: Any) -> None:
    s: Setup = setup()
    expected = {
        "01": ("UNDELIV", "301"),  # SMS_STATUS_BOUNCED
        "02": ("EXPIRED", "302"),  # SMS_STATUS_EXPIRED
        "03": ("UNDELIV", "303"),  # SMS_STATUS_ERROR
    }
    with s.esme() as esme:
        ids = {
            esme.submit_ok(destination_addr=MOBILE + suffix, registered_delivery=1): suffix
            for suffix in expected
        }
        receipts = esme.receipts(3)
    got = {
        ids[receipt_id(r)]: (receipt_fields(r)["stat"], receipt_fields(r)["err"]) for r in receipts
    }
    assert got == expected


def test_refused_sends_reach_the_esme_as_rejectd_with_the_providers_code(setup: Any) -> None:
    s: Setup = setup()
    with s.esme() as esme:
        ids = {
            esme.submit_ok(destination_addr="491511234" + rule): code
            for rule, code in (("9210", "210"), ("9216", "216"), ("9101", "101"))
        }
        receipts = esme.receipts(3)
    got = {
        ids[receipt_id(r)]: (receipt_fields(r)["stat"], receipt_fields(r)["err"]) for r in receipts
    }
    assert got == {code: ("REJECTD", code) for code in ("210", "216", "101")}


def test_an_alphanumeric_sender_the_provider_refuses_is_rejected_without_a_request(
    setup: Any,
) -> None:
    s: Setup = setup()
    with s.esme() as esme:
        mid = esme.submit_ok(source_addr="My Shop", destination_addr=MOBILE + "78")
        [receipt] = esme.receipts(1)
    fields = receipt_fields(receipt)
    assert (fields["id"], fields["stat"], fields["err"]) == (mid, "REJECTD", "216")
    assert s.sends() == []


def test_a_transient_107_is_retried_then_delivered(setup: Any) -> None:
    s: Setup = setup()
    with s.esme() as esme:
        mid = esme.submit_ok(destination_addr=MOBILE + "07")
        [receipt] = esme.receipts(1)
    assert (receipt_id(receipt), receipt_fields(receipt)["stat"]) == (mid, "DELIVRD")
    assert len(s.sends()) == 2


def test_without_a_push_the_report_is_polled_with_get_delivery_reports(setup: Any) -> None:
    s: Setup = setup(pipeline={"poll_interval": 0.2, "poll_backoff_max": 0.4})
    with s.esme() as esme:
        mid = esme.submit_ok(destination_addr=MOBILE + "06")  # the simulator never pushes
        [receipt] = esme.receipts(1)
    assert (receipt_id(receipt), receipt_fields(receipt)["stat"]) == (mid, "DELIVRD")
    assert "getDeliveryReports" in s.functions()
    assert s.sim_thread.run(lambda: list(s.sim.pushes)) == []


def test_a_scheduled_message_goes_at_once_with_its_scheduletime(setup: Any) -> None:
    s: Setup = setup()
    with s.esme() as esme:
        esme.submit_ok(
            destination_addr=MOBILE + "78", schedule_delivery_time="000000010000000R"
        )  # relative: in one hour
        assert wait_until(lambda: len(s.sends()) == 1)
    [params] = s.sends()
    assert params["scheduletime"].endswith("+00:00")
    statuses = s.sim_thread.run(lambda: [m.status for m in s.sim.messages.values()])
    assert statuses == ["SMS_STATUS_QUEUED"]


def test_an_inbound_sms_pushed_by_the_provider_becomes_a_deliver_sm(setup: Any) -> None:
    s: Setup = setup()
    with s.esme("receiver") as esme:
        status = s.sim_thread.call(
            s.sim.push_inbound(
                "Ja, gerne", sender="+491701234567", to=VIRTUAL_NUMBER, url=s.inbound_url
            )
        )
        assert status == 200
        [mo] = esme.receipts(1)
    assert mo.esm_class & 0x3C == 0  # a plain message, not a receipt
    assert mo.source_addr == b"491701234567"
    assert mo.destination_addr == VIRTUAL_NUMBER[1:].encode()
    assert mo.short_message == b"Ja, gerne"


# --------------------------------------------------------------------------- getIncomingSms


def _incoming_polls(s: Setup) -> int:
    return s.functions().count("getIncomingSms")


def _polling_setup(setup: Any, **keys: Any) -> Setup:
    """A bridge polling getIncomingSms every second, once its first poll (which only learns
    where the inbox stands) has run."""
    s: Setup = setup(poll_inbound=True, inbound_poll_interval=1.0, **keys)
    assert wait_until(lambda: _incoming_polls(s) >= 2)
    return s


def test_an_inbound_sms_that_was_never_pushed_is_polled_and_becomes_a_deliver_sm(
    setup: Any,
) -> None:
    s = _polling_setup(setup)
    with s.esme("receiver") as esme:
        s.sim_thread.call(
            s.sim.push_inbound(
                "Nur per Abruf", sender="+491701234567", to=VIRTUAL_NUMBER, push=False
            )
        )
        [mo] = esme.receipts(1)
        assert mo.esm_class & 0x3C == 0
        assert mo.source_addr == b"491701234567"
        assert mo.destination_addr == VIRTUAL_NUMBER[1:].encode()
        assert mo.short_message == b"Nur per Abruf"
        # Later polls ask only for what is newer: the MO is not delivered again.
        polls = _incoming_polls(s)
        assert wait_until(lambda: _incoming_polls(s) >= polls + 2)
        esme.pump(0.3)
        assert len(esme.delivered) == 1
    calls = s.sim_thread.run(
        lambda: [r["params"] for r in s.sim.requests if r["params"]["function"] == "getIncomingSms"]
    )
    assert calls[-1]["thresholdid"] == 1 and calls[-1]["order"] == "ASC"


def test_an_inbound_sms_both_pushed_and_polled_is_delivered_once(setup: Any) -> None:
    s = _polling_setup(setup)
    with s.esme("receiver") as esme:
        # Pushed first, then found by the poll.
        status = s.sim_thread.call(
            s.sim.push_inbound(
                "Zweimal?", sender="+491701234567", to=VIRTUAL_NUMBER, url=s.inbound_url
            )
        )
        assert status == 200
        esme.receipts(1)
        polls = _incoming_polls(s)
        assert wait_until(lambda: _incoming_polls(s) >= polls + 2)
        # Polled first (the push was late), then pushed: again one deliver_sm.
        s.sim_thread.call(
            s.sim.push_inbound("Spaet", sender="+491701234567", to=VIRTUAL_NUMBER, push=False)
        )
        esme.receipts(2)
        assert s.sim_thread.call(s.sim.repush(2, s.inbound_url)) == 200
        polls = _incoming_polls(s)
        assert wait_until(lambda: _incoming_polls(s) >= polls + 2)
        esme.pump(0.3)
        texts = [pdu.short_message for pdu in esme.delivered]
    assert texts == [b"Zweimal?", b"Spaet"]
    events = s.bt.run(
        lambda: s.bt.bridge.metrics.provider_events.labels(
            "mycoolsms", "inbound_duplicate"
        )._value.get()
    )
    assert events == 2


def test_the_inbound_poll_threshold_survives_a_restart(
    provider_rig: StartRig, tmp_path: Any
) -> None:
    data = tmp_path / "restart"
    poll = {"poll_inbound": True, "inbound_poll_interval": 1.0}
    inbound = {"inbound_numbers": [VIRTUAL_NUMBER]}
    first = provider_rig(
        "mycoolsms",
        provider=poll,
        account=inbound,
        data_dir=data,
        before_bridge=lambda sim: sim.push_inbound("Vor der Einrichtung", push=False),
    )
    sim, sim_thread = first.sim, first.sim_thread

    def polls() -> int:
        return sim_thread.run(
            lambda: sum(r["params"]["function"] == "getIncomingSms" for r in sim.requests)
        )

    assert wait_until(lambda: polls() >= 2)
    sim_thread.call(sim.push_inbound("Eins", push=False))
    with first.esme("receiver") as esme:
        [one] = esme.receipts(1)
    assert one.short_message == b"Eins"  # not the SMS from before polling was enabled
    first.bt.stop()
    sim_thread.call(sim.push_inbound("Zwei", push=False))  # arrives while the bridge is down
    second = provider_rig(
        "mycoolsms", provider=poll, account=inbound, data_dir=data, sim=sim, sim_thread=sim_thread
    )
    with second.esme("receiver") as esme:
        esme.receipts(1)
        n = polls()
        assert wait_until(lambda: polls() >= n + 2)
        esme.pump(0.3)
        assert [pdu.short_message for pdu in esme.delivered] == [b"Zwei"]
