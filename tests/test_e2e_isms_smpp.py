"""End to end over SMPP both ways: smpplib ESME → bridge → the upstream SMSC simulator (as iSMS's
SMPP service) → receipt deliver_sm from the upstream → receipt deliver_sm to the ESME; MO from
the upstream to the owning account; the upstream dropping the connection, throttling, and being
down for a while (nothing lost). The simulator runs in a loop of its own thread, the bridge in
another; every wait is bounded."""

from __future__ import annotations

from typing import Any

import pytest
import smpplib.consts

from bridge.providers.isms_smpp import IsmsSmppProvider
from bridge.smpp.pdu import Status
from tests.harness.daemon import BridgeThread, StartBridge
from tests.harness.esme import Esme, receipt_fields, receipt_id
from tests.harness.loop import wait_until
from tests.harness.rig import KINDS, StartRig, provider_table
from tests.harness.sims import UpstreamThread

pytestmark = pytest.mark.timeout(60)

MOBILE = "306912345678"
INBOUND_NUMBER = "306999999999"
GREEK = "Καλημέρα από την Αθήνα"


def isms_config(port: int) -> str:
    """The provider table and route of a rig, for an upstream that is not listening yet."""
    spec = KINDS["isms_smpp"]
    settings = {"type": "isms_smpp", **spec.settings("", port)}
    return provider_table(spec.name, settings) + f'[[routes]]\nproviders = ["{spec.name}"]\n'


def start(
    provider_rig: StartRig, before_bridge: Any = None, **keys: Any
) -> tuple[BridgeThread, UpstreamThread]:
    """A bridge bound to a fresh upstream simulator (``isms``, all routes), and that upstream."""
    rig = provider_rig(
        "isms_smpp",
        provider=keys,
        before_bridge=before_bridge,
        account={"inbound_numbers": [INBOUND_NUMBER]},
    )
    assert isinstance(rig.sim_thread, UpstreamThread)
    return rig.bt, rig.sim_thread


def submitted(upstream: UpstreamThread) -> list[Any]:
    return upstream.run(lambda: [s for s in upstream.sim.submitted if s.status == 0])


# --------------------------------------------------------------------------- receipts


def test_a_gsm_message_reaches_the_upstream_and_its_delivrd_receipt_the_esme(
    provider_rig: StartRig,
) -> None:
    bt, upstream = start(provider_rig)
    with Esme(bt.port) as esme:
        esme.bind("transceiver")
        mid = esme.submit_ok(destination_addr=MOBILE, short_message=b"Hello iSMS")
        [receipt] = esme.receipts(1)
    fields = receipt_fields(receipt)
    assert receipt_id(receipt) == mid and fields["id"] == mid
    assert (fields["stat"], fields["err"]) == ("DELIVRD", "000")
    [sub] = submitted(upstream)
    assert (sub.text, sub.destination, sub.source, sub.source_ton) == (
        "Hello iSMS",
        MOBILE,
        "Bridge",
        5,
    )
    assert sub.registered_delivery == 1


def test_ucs2_greek_text_goes_as_ucs2(provider_rig: StartRig) -> None:
    bt, upstream = start(provider_rig)
    with Esme(bt.port) as esme:
        esme.bind("transceiver")
        mid = esme.submit_ok(
            destination_addr=MOBILE,
            data_coding=smpplib.consts.SMPP_ENCODING_ISO10646,
            short_message=GREEK.encode("utf-16-be"),
        )
        [receipt] = esme.receipts(1)
    assert receipt_id(receipt) == mid and receipt_fields(receipt)["stat"] == "DELIVRD"
    [sub] = submitted(upstream)
    assert sub.data_coding == 0x08 and sub.text == GREEK


#: 400 GSM characters: three parts of a concatenated message.
LONG_TEXT = "".join(f"{i:03d} " for i in range(100))


def submit_in_three_parts(esme: Esme) -> list[str]:
    """:data:`LONG_TEXT` as the ESME's own three parts (8-bit UDH reference 0x77); their ids."""
    chunks = [LONG_TEXT[:153], LONG_TEXT[153:306], LONG_TEXT[306:]]
    return [
        esme.submit_ok(
            destination_addr=MOBILE,
            esm_class=0x40,
            short_message=bytes([5, 0, 3, 0x77, 3, n]) + chunk.encode("ascii"),
        )
        for n, chunk in enumerate(chunks, 1)
    ]


def test_a_long_message_in_three_parts_gets_a_receipt_for_each_part(provider_rig: StartRig) -> None:
    bt, upstream = start(provider_rig)
    with Esme(bt.port) as esme:
        esme.bind("transceiver")
        ids = submit_in_three_parts(esme)
        receipts = esme.receipts(3)
    assert sorted(receipt_id(r) for r in receipts) == sorted(ids)
    assert {receipt_fields(r)["stat"] for r in receipts} == {"DELIVRD"}
    parts = submitted(upstream)
    assert len(parts) == 3
    assert "".join(p.text for p in parts) == LONG_TEXT
    assert [p.concat.seqnum for p in parts] == [1, 2, 3]
    # Recorded by the simulator once the bridge's deliver_sm_resp is back (after the ESME may
    # already have its receipts).
    assert wait_until(lambda: upstream.run(lambda: len(upstream.sim.receipts)) == 3)


def test_an_undeliverable_message_and_a_refused_one_reach_the_esme_as_failure_receipts(
    provider_rig: StartRig,
) -> None:
    bt, _ = start(provider_rig)
    with Esme(bt.port) as esme:
        esme.bind("transceiver")
        undeliv = esme.submit_ok(destination_addr="306912345601")
        refused = esme.submit_ok(destination_addr="306912345690")
        receipts = {receipt_id(r): receipt_fields(r) for r in esme.receipts(2)}
    assert (receipts[undeliv]["stat"], receipts[undeliv]["err"]) == ("UNDELIV", "001")
    # ESME_RINVDSTADR (0x0B) from the upstream: REJECTD with err 011
    assert (receipts[refused]["stat"], receipts[refused]["err"]) == ("REJECTD", "011")


def test_a_transient_submit_error_is_retried_until_accepted(provider_rig: StartRig) -> None:
    bt, upstream = start(provider_rig)
    with Esme(bt.port) as esme:
        esme.bind("transceiver")
        mid = esme.submit_ok(destination_addr="306912345692")  # MSGQFUL once, then accepted
        [receipt] = esme.receipts(1)
    assert receipt_id(receipt) == mid and receipt_fields(receipt)["stat"] == "DELIVRD"
    statuses = upstream.run(lambda: [s.status for s in upstream.sim.submitted])
    assert statuses == [Status.ESME_RMSGQFUL, 0]


# --------------------------------------------------------------------------- a rough upstream


def test_the_bridge_rebinds_after_the_upstream_drops_the_connection(provider_rig: StartRig) -> None:
    bt, upstream = start(provider_rig)
    assert upstream.run(upstream.sim.drop_connections) == 1
    assert wait_until(lambda: upstream.run(lambda: upstream.sim.binds) == 2)
    with Esme(bt.port) as esme:
        esme.bind("transceiver")
        mid = esme.submit_ok(destination_addr=MOBILE)
        [receipt] = esme.receipts(1)
    assert receipt_id(receipt) == mid and receipt_fields(receipt)["stat"] == "DELIVRD"
    # The operator sees it: binds back up, one lost session counted.
    snap = bt.run(bt.bridge.metrics_snapshot)
    assert snap.upstream["isms"][0] >= 1
    assert snap.upstream_events[("isms", "disconnect")] >= 1
    text = bt.run(bt.bridge._metrics_text).decode()
    assert 'bridge_upstream_binds{provider="isms"}' in text
    assert 'bridge_upstream_events_total{event="disconnect",provider="isms"}' in text


def test_throttling_slows_the_bridge_down_and_every_message_is_still_delivered(
    provider_rig: StartRig,
) -> None:
    bt, upstream = start(provider_rig, throttle_retries=1)
    upstream.run(lambda: upstream.sim.throttle_next(8))
    with Esme(bt.port) as esme:
        esme.bind("transceiver")
        ids = [esme.submit_ok(destination_addr=MOBILE, short_message=b"m%d" % i) for i in range(5)]
        receipts = esme.receipts(5, timeout=15)
    assert sorted(receipt_id(r) for r in receipts) == sorted(ids)
    assert {receipt_fields(r)["stat"] for r in receipts} == {"DELIVRD"}
    provider = bt.bridge.providers["isms"]
    assert isinstance(provider, IsmsSmppProvider)
    assert bt.run(lambda: provider.throttled) == 8
    assert bt.run(bt.bridge.metrics_snapshot).upstream_events[("isms", "throttled")] == 8
    assert len(submitted(upstream)) == 5


def test_messages_taken_while_the_upstream_is_down_are_delivered_once_it_is_back(
    provider_rig: StartRig,
) -> None:
    bt, upstream = start(provider_rig)
    upstream.call(upstream.sim.stop())
    with Esme(bt.port) as esme:
        esme.bind("transceiver")
        ids = [esme.submit_ok(destination_addr=MOBILE, short_message=b"d%d" % i) for i in range(3)]
        esme.pump(0.5)
        assert esme.delivered == []
        assert submitted(upstream) == []
        upstream.call(upstream.sim.start())
        receipts = esme.receipts(3, timeout=15)
    assert sorted(receipt_id(r) for r in receipts) == sorted(ids)
    assert {receipt_fields(r)["stat"] for r in receipts} == {"DELIVRD"}


# --------------------------------------------------------------------------- MO


def test_an_mo_from_the_upstream_reaches_the_account_owning_the_number(
    provider_rig: StartRig,
) -> None:
    bt, upstream = start(provider_rig)
    with Esme(bt.port) as esme:
        esme.bind("transceiver")
        assert wait_until(bt.has_receiver)
        statuses = upstream.call(
            upstream.sim.send_mo("306900000001", INBOUND_NUMBER, "Reply from a handset")
        )
        assert statuses == [0]
        [mo] = esme.receipts(1)
    assert mo.esm_class & 0x3C == 0  # a message, not a receipt
    assert mo.source_addr.decode() == "306900000001"
    assert mo.destination_addr.decode() == INBOUND_NUMBER
    assert mo.short_message.decode("ascii") == "Reply from a handset"


# --------------------------------------------------------------------------- readiness


def test_readyz_turns_ready_as_soon_as_the_upstream_binds_and_unready_when_it_is_lost(
    start_bridge: StartBridge,
) -> None:
    """The bind is news the provider passes on at once: neither /readyz nor bridge_provider_up
    waits for the next periodic check (which had them say "down" for seconds after the bind)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    bt = start_bridge(extra=isms_config(port))  # nothing listens there yet
    provider = bt.bridge.providers["isms"]
    assert isinstance(provider, IsmsSmppProvider)
    before = bt.call(bt.bridge.health())
    assert before.providers["isms"] is False and not before.ready  # and now cached

    up = UpstreamThread(port=port, delay=0.05, tps=0)
    try:
        assert bt.call(provider.client.wait_bound(10.0))
        after = bt.call(bt.bridge.health())  # well within the cache's lifetime
        assert after.providers["isms"] is True and after.ready
        assert bt.run(lambda: bt.bridge.metrics_snapshot().providers_up["isms"]) is True
    finally:
        up.close()
    assert wait_until(lambda: bt.run(lambda: provider.client.bound_count) == 0, timeout=10)
    lost = bt.call(bt.bridge.health())
    assert lost.providers["isms"] is False and not lost.ready


# --------------------------------------------------------------------------- message_payload


def test_with_concat_payload_a_long_message_is_one_submit_sm_with_message_payload(
    provider_rig: StartRig,
) -> None:
    bt, upstream = start(provider_rig, concat="payload")
    with Esme(bt.port) as esme:
        esme.bind("transceiver")
        ids = submit_in_three_parts(esme)
        short = esme.submit_ok(destination_addr=MOBILE, short_message=b"Short")
        receipts = esme.receipts(4)
    assert sorted(receipt_id(r) for r in receipts) == sorted([*ids, short])
    assert {receipt_fields(r)["stat"] for r in receipts} == {"DELIVRD"}
    long_one, short_one = submitted(upstream)
    # The whole text in the TLV, short_message (sm_length) empty, no UDH, no SAR.
    assert long_one.short_message == b"" and long_one.esm_class & 0x40 == 0
    assert long_one.text == LONG_TEXT and long_one.concat is None
    assert long_one.pdu.tlv("message_payload") == LONG_TEXT.encode("ascii")
    # A message that fits one SMS still goes in short_message.
    assert short_one.short_message == b"Short" and short_one.pdu.tlv("message_payload") is None
    # One receipt per submit_sm (recorded once the bridge's deliver_sm_resp is back).
    assert wait_until(lambda: upstream.run(lambda: len(upstream.sim.receipts)) == 2)


def test_with_concat_payload_ucs2_text_goes_whole_as_ucs2_in_message_payload(
    provider_rig: StartRig,
) -> None:
    bt, upstream = start(provider_rig, concat="payload")
    text = GREEK * 5  # 110 UCS-2 characters: two parts as UDH, one submit_sm here
    with Esme(bt.port) as esme:
        esme.bind("transceiver")
        mid = esme.submit_ok(
            destination_addr=MOBILE,
            data_coding=smpplib.consts.SMPP_ENCODING_ISO10646,
            esm_class=0x40,
            short_message=bytes([5, 0, 3, 9, 2, 1]) + text[:67].encode("utf-16-be"),
        )
        mid2 = esme.submit_ok(
            destination_addr=MOBILE,
            data_coding=smpplib.consts.SMPP_ENCODING_ISO10646,
            esm_class=0x40,
            short_message=bytes([5, 0, 3, 9, 2, 2]) + text[67:].encode("utf-16-be"),
        )
        receipts = esme.receipts(2)
    assert sorted(receipt_id(r) for r in receipts) == sorted([mid, mid2])
    [sub] = submitted(upstream)
    assert sub.data_coding == 0x08 and sub.short_message == b"" and sub.text == text


def test_receipts_carried_in_message_payload_are_read(provider_rig: StartRig) -> None:

    def receipts_in_payload(sim: Any) -> None:
        sim.receipt_payload = True
        sim.receipt_tlvs = False  # the text alone

    bt, upstream = start(provider_rig, receipts_in_payload)
    with Esme(bt.port) as esme:
        esme.bind("transceiver")
        mid = esme.submit_ok(destination_addr=MOBILE[:-2] + "01", short_message=b"Fails")
        [receipt] = esme.receipts(1)
    fields = receipt_fields(receipt)
    assert receipt_id(receipt) == mid
    assert (fields["stat"], fields["err"]) == ("UNDELIV", "001")
    # The simulator records the receipt once the bridge's deliver_sm_resp is back.
    assert wait_until(lambda: upstream.run(lambda: len(upstream.sim.receipts)) == 1)
    [sent] = upstream.run(lambda: list(upstream.sim.receipts))
    assert sent.status == 0
