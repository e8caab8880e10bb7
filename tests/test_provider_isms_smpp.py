"""iSMS SMPP upstream adapter: the pure parts (settings, coding and splitting, submit_sm
building, submit_sm_resp statuses, receipt parsing and its vendor variants, correlation of the
parts of a long message, MO reassembly) and the adapter against the upstream simulator (a real
SMPP connection in the test's loop: receipts, throttling, partial sends, outages, MO)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from bridge.config import ConfigError, load_config, load_config_text
from bridge.core.model import (
    Address,
    DeliveryReport,
    InboundMessage,
    Message,
    MessageState,
    OutcomeKind,
)
from bridge.core.provider import ProviderContext
from bridge.providers.isms_smpp import IsmsSmppProvider, Settings, capabilities_for, create
from bridge.providers.isms_smpp_mo import MoPart, MoReassembler, inbound_from_parts, parse_mo
from bridge.providers.isms_smpp_receipts import (
    PartCorrelator,
    UpstreamReceipt,
    is_receipt,
    parse_receipt,
)
from bridge.providers.isms_smpp_submit import (
    build_submit,
    canonical_id,
    classify_status,
    message_coding,
    reference_for,
    split_message,
)
from bridge.simulators.smpp_upstream import SmppUpstreamSimulator
from bridge.smpp.pdu import CommandId, Pdu, Status
from bridge.smpp.text import TextError, decode_text, gsm7_encode
from bridge.smpp.timefmt import format_smpp_time, parse_smpp_time
from bridge.smpp.udh import Concat, find_concat, parse_udh

pytestmark = pytest.mark.timeout(30)

GREEK = "Καλημέρα από την Αθήνα"
MOBILE = "306912345678"


def settings(**kw: Any) -> Settings:
    values: dict[str, Any] = {
        "type": "isms_smpp",
        "host": "127.0.0.1",
        "system_id": "isms",
        "password": "isms",
    }
    values.update(kw)
    return Settings.model_validate(values)


def msg(
    text: str | None = "hello",
    *,
    id: str = "m1",
    dest: str = MOBILE,
    source: Address | None = None,
    **kw: Any,
) -> Message:
    return Message(
        id=id,
        account="demo",
        source=source or Address("Bridge", 5, 0),
        destination=Address(dest),
        text=text,
        **kw,
    )


def reassemble(parts: list[Any], data_coding: int) -> str:
    data = b""
    for p in parts:
        payload = p.short_message
        if p.esm_class & 0x40:
            payload = parse_udh(payload)[1]
        data += payload
    return decode_text(data, data_coding & 0x0C if data_coding >= 0x10 else data_coding)


# =========================================================================== settings


def test_settings_defaults_follow_the_document_700_sms_per_second_and_the_smpp_port() -> None:
    s = settings()
    assert s.requests_per_second == 700.0  # "700 SMS ανά δευτερόλεπτο για κάθε λογαριασμό"
    assert s.port == 2775
    assert s.bind_mode == "transceiver" and s.concat == "udh8"
    assert "isms" not in repr(s.password)


def test_settings_refuse_a_password_longer_than_smpp_allows_without_echoing_it() -> None:
    with pytest.raises(ValidationError):
        settings(password="muchtoolongsecret")
    text = (
        '[[accounts]]\nsystem_id = "demo"\npassword = "x"\n[providers.isms]\n'
        'type = "isms_smpp"\nhost = "h"\nsystem_id = "s"\npassword = "muchtoolongsecret"\n'
    )
    with pytest.raises(ConfigError) as e:
        load_config_text(text)
    assert "providers.isms.password" in str(e.value)
    assert "muchtoolongsecret" not in str(e.value)


def test_settings_refuse_unknown_keys_and_inverted_reconnect_bounds() -> None:
    with pytest.raises(ValidationError):
        settings(hostname="x")
    with pytest.raises(ValidationError):
        settings(reconnect_min=10.0, reconnect_max=1.0)


def test_capabilities_count_parts_by_concatenation_mode() -> None:
    caps = capabilities_for(settings())
    assert (caps.max_gsm7_chars, caps.max_ucs2_chars) == (1530, 670)
    assert caps.unicode and caps.flash and caps.binary and caps.scheduling
    assert caps.reports == "push" and caps.requests_per_second == 700.0
    caps16 = capabilities_for(settings(concat="udh16", max_parts=3, scheduling=False))
    assert (caps16.max_gsm7_chars, caps16.max_ucs2_chars) == (456, 198)
    assert not caps16.scheduling


def test_example_config_loads_with_its_env_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ISMS_SMPP_SYSTEM_ID", "myaccount")
    monkeypatch.setenv("ISMS_SMPP_PASSWORD", "secret12")
    monkeypatch.setenv("SMPP_DEMO_PASSWORD", "demopass")
    path = Path(__file__).parent.parent / "config" / "examples" / "isms_smpp.toml"
    cfg = load_config(path)
    provider = cfg.providers["isms"]
    assert isinstance(provider, Settings)
    assert provider.password.get_secret_value() == "secret12"
    assert provider.requests_per_second == 700.0


# =========================================================================== coding, splitting


def test_gsm_text_is_data_coding_0_and_greek_text_is_ucs2() -> None:
    assert message_coding(msg("hello")) == (0x00, "gsm7")
    # Greek capitals that exist in GSM 03.38 still fit GSM; lower case needs UCS-2.
    assert message_coding(msg("ΔΦΓΛΩΠΨΣΘΞ")) == (0x00, "gsm7")
    assert message_coding(msg(GREEK)) == (0x08, "ucs2")
    assert message_coding(msg("Привет")) == (0x08, "ucs2")
    assert message_coding(msg("مرحبا")) == (0x08, "ucs2")


def test_flash_messages_get_message_class_0() -> None:
    assert message_coding(msg("hello", flash=True)) == (0x10, "gsm7")
    assert message_coding(msg(GREEK, flash=True)) == (0x18, "ucs2")
    binary = msg(None, binary=b"\x01\x02", data_coding=0x04, flash=True)
    assert message_coding(binary) == (0x14, "binary")


def test_binary_content_keeps_the_esmes_data_coding_and_octets() -> None:
    m = msg(None, binary=bytes(range(10)), data_coding=0xF5)
    [part] = split_message(m, "udh8", 1)
    assert part == type(part)(bytes(range(10)), 0, 0xF5)


def test_160_gsm_characters_are_one_part_without_udh() -> None:
    [part] = split_message(msg("a" * 160), "udh8", 7)
    assert part.esm_class == 0 and part.short_message == b"a" * 160


def test_161_gsm_characters_are_two_parts_of_153_and_8_with_an_8_bit_reference() -> None:
    parts = split_message(msg("a" * 161), "udh8", 0x42)
    assert len(parts) == 2
    assert parts[0].short_message[:6] == bytes([5, 0, 3, 0x42, 2, 1])
    assert parts[1].short_message[:6] == bytes([5, 0, 3, 0x42, 2, 2])
    assert [len(p.short_message) - 6 for p in parts] == [153, 8]
    assert all(p.esm_class == 0x40 and p.data_coding == 0 for p in parts)


def test_16_bit_references_leave_152_septets_a_part() -> None:
    parts = split_message(msg("b" * 305), "udh16", 0x1234)
    assert len(parts) == 3
    assert parts[0].short_message[:7] == bytes([6, 8, 4, 0x12, 0x34, 3, 1])
    assert [len(p.short_message) - 7 for p in parts] == [152, 152, 1]


def test_sar_mode_sends_no_udh_but_the_sar_fields() -> None:
    parts = split_message(msg("c" * 200), "sar", 0xBEEF)
    assert [p.sar for p in parts] == [(0xBEEF, 2, 1), (0xBEEF, 2, 2)]
    assert all(p.esm_class == 0 for p in parts)
    assert [len(p.short_message) for p in parts] == [152, 48]


def test_greek_text_splits_in_67_character_parts_and_reassembles() -> None:
    text = GREEK * 4  # 88 characters
    parts = split_message(msg(text), "udh8", 9)
    assert len(parts) == 2
    assert len(parts[0].short_message) - 6 == 67 * 2
    assert reassemble(parts, 0x08) == text


def test_a_gsm_escape_pair_is_never_split_across_parts() -> None:
    text = "a" * 152 + "€" + "b" * 10  # the euro sign is ESC + 0x65 at septets 153-154
    parts = split_message(msg(text), "udh8", 1)
    assert len(parts[0].short_message) - 6 == 152
    assert reassemble(parts, 0) == text


def test_a_surrogate_pair_is_never_split_across_parts() -> None:
    text = "α" * 66 + "😀" + "β" * 10  # the emoji's high surrogate would be unit 67
    parts = split_message(msg(text), "udh8", 1)
    assert len(parts[0].short_message) - 6 == 66 * 2
    assert reassemble(parts, 0x08) == text


def test_other_udh_elements_of_the_esme_go_in_front_of_every_part() -> None:
    ports = bytes([6, 5, 4, 0x0B, 0x84, 0x23, 0xF0])  # 16-bit port addressing IE
    single = split_message(msg(None, binary=b"x" * 100, data_coding=4, udh=ports), "udh8", 1)
    assert single[0].short_message == ports + b"x" * 100 and single[0].esm_class == 0x40
    parts = split_message(msg(None, binary=b"y" * 200, data_coding=4, udh=ports), "udh8", 3)
    for p in parts:
        ies, _ = parse_udh(p.short_message)
        assert [ie.iei for ie in ies] == [0x05, 0x00]
        assert len(p.short_message) <= 140
    assert b"".join(parse_udh(p.short_message)[1] for p in parts) == b"y" * 200


def test_the_reference_comes_from_the_message_id_so_a_resend_reuses_it() -> None:
    assert reference_for("abc", 8) == reference_for("abc", 8) < 256
    assert reference_for("abc", 16) < 65536
    assert reference_for("abc", 16) != reference_for("abd", 16)


def test_a_text_needing_more_than_255_parts_is_refused() -> None:
    with pytest.raises(TextError):
        split_message(msg("x" * (153 * 256)), "udh8", 1)


# =========================================================================== submit_sm


def test_submit_sm_for_an_alphanumeric_sender_and_an_international_number() -> None:
    m = msg("hello", registered_delivery=1, priority=2, protocol_id=0)
    [part] = split_message(m, "udh8", 1)
    pdu = build_submit(m, part, settings(), time.time())
    f = pdu.fields
    assert (f["source_addr_ton"], f["source_addr_npi"], f["source_addr"]) == (5, 0, "Bridge")
    assert (f["dest_addr_ton"], f["dest_addr_npi"], f["destination_addr"]) == (1, 1, MOBILE)
    assert f["registered_delivery"] == 1 and f["priority_flag"] == 2
    assert f["short_message"] == gsm7_encode("hello") and f["data_coding"] == 0


def test_numeric_senders_keep_their_ton_unless_the_settings_fix_it() -> None:
    m = msg("hi", source=Address("306900000000", 1, 1))
    [part] = split_message(m, "udh8", 1)
    f = build_submit(m, part, settings(), 0).fields
    assert (f["source_addr_ton"], f["source_addr_npi"]) == (1, 1)
    f = build_submit(m, part, settings(source_ton=0, source_npi=0, dest_ton=0), 0).fields
    assert (f["source_addr_ton"], f["source_addr_npi"], f["dest_addr_ton"]) == (0, 0, 0)


@pytest.mark.parametrize(
    ("esme", "upstream"),
    [(0, 0), (1, 1), (2, 2), (0x11, 0x11), (0x0D, 0x01), (0x1F, 0x13)],
)
def test_receipts_are_requested_only_as_the_esme_asked(esme: int, upstream: int) -> None:
    m = msg("hi", registered_delivery=esme)
    [part] = split_message(m, "udh8", 1)
    assert build_submit(m, part, settings(), 0).fields["registered_delivery"] == upstream


def test_schedule_and_validity_pass_on_as_absolute_smpp_times() -> None:
    now = 1_800_000_000.0
    m = msg("hi", schedule_at=now + 3600, expire_at=now + 7200)
    [part] = split_message(m, "udh8", 1)
    f = build_submit(m, part, settings(), now).fields
    assert f["schedule_delivery_time"] == format_smpp_time(now + 3600)
    assert parse_smpp_time(f["validity_period"], now) == now + 7200
    f = build_submit(m, part, settings(scheduling=False, validity=False), now).fields
    assert f["schedule_delivery_time"] == "" and f["validity_period"] == ""
    past = msg("hi", schedule_at=now - 5)
    assert build_submit(past, part, settings(), now).fields["schedule_delivery_time"] == ""


def test_sar_parts_carry_the_three_sar_tlvs() -> None:
    m = msg("d" * 200)
    parts = split_message(m, "sar", 0x0102)
    pdu = build_submit(m, parts[1], settings(concat="sar"), 0)
    assert pdu.tlv("sar_msg_ref_num") == 0x0102
    assert pdu.tlv("sar_total_segments") == 2 and pdu.tlv("sar_segment_seqnum") == 2


# =========================================================================== submit_sm_resp


@pytest.mark.parametrize(
    "status",
    [
        Status.ESME_RTHROTTLED,
        Status.ESME_RMSGQFUL,
        Status.ESME_RX_T_APPN,
        Status.ESME_RSYSERR,
        Status.ESME_RINVBNDSTS,
    ],
)
def test_throttling_queue_full_and_system_errors_are_transient(status: int) -> None:
    assert classify_status(status) == (OutcomeKind.TRANSIENT, int(status))


@pytest.mark.parametrize(
    "status",
    [
        Status.ESME_RINVDSTADR,
        Status.ESME_RINVSRCADR,
        Status.ESME_RSUBMITFAIL,
        Status.ESME_RX_P_APPN,
        Status.ESME_RINVMSGLEN,
        Status.ESME_RINVDCS if hasattr(Status, "ESME_RINVDCS") else 0x104,
    ],
)
def test_every_other_status_is_permanent_with_err_the_status(status: int) -> None:
    kind, err = classify_status(status)
    assert kind is OutcomeKind.PERMANENT
    assert err == min(int(status), 999)


def test_ok_is_accepted_and_vendor_statuses_are_capped_at_999() -> None:
    assert classify_status(0) == (OutcomeKind.ACCEPTED, 0)
    assert classify_status(0x400) == (OutcomeKind.PERMANENT, 999)


def test_canonical_ids_for_upstreams_that_change_the_base_in_receipts() -> None:
    assert canonical_id("0008FABD", "same", receipt=False) == "0008FABD"
    # hex in submit_sm_resp, decimal in the receipt: both sides become the number
    assert canonical_id("0008FABD", "decimal", receipt=False) == str(0x8FABD)
    assert canonical_id(str(0x8FABD), "decimal", receipt=True) == str(0x8FABD)
    assert canonical_id("588477", "hex", receipt=False) == "588477"
    assert canonical_id("8fabd", "hex", receipt=True) == "588477"
    assert canonical_id("not-a-number", "decimal", receipt=True) == "not-a-number"


# =========================================================================== receipts


def receipt_pdu(text: str, esm_class: int = 0x04, **tlvs: Any) -> Pdu:
    pdu = Pdu(
        CommandId.deliver_sm,
        fields={"esm_class": esm_class, "source_addr": MOBILE, "short_message": text.encode()},
    )
    for name, value in tlvs.items():
        pdu.set_tlv(name, value)
    return pdu


APPENDIX_B = (
    "id:0008FABD sub:001 dlvrd:001 submit date:2511201030 done date:2511201031"
    " stat:DELIVRD err:000 text:hello"
)


def test_esm_class_receipt_types_are_receipts_and_others_are_mo() -> None:
    assert is_receipt(receipt_pdu("", 0x04))
    assert is_receipt(receipt_pdu("", 0x08))
    assert is_receipt(receipt_pdu("", 0x20))
    assert is_receipt(receipt_pdu("", 0x44))  # receipt with a UDH
    assert not is_receipt(receipt_pdu("", 0x00))
    assert not is_receipt(receipt_pdu("", 0x40))


def test_a_receipt_with_tlvs_and_text() -> None:
    r = parse_receipt(receipt_pdu(APPENDIX_B, receipted_message_id="0008FABD", message_state=2))
    assert r is not None
    assert (r.id, r.state, r.error_code) == ("0008FABD", MessageState.DELIVERED, 0)
    assert r.done_at == parse_smpp_time("251120103100000+", 0)


def test_a_receipt_with_the_text_only() -> None:
    r = parse_receipt(receipt_pdu(APPENDIX_B.replace("DELIVRD err:000", "UNDELIV err:034")))
    assert r is not None
    assert (r.id, r.state, r.error_code) == ("0008FABD", MessageState.UNDELIVERABLE, 34)


def test_the_tlvs_win_over_the_text() -> None:
    r = parse_receipt(
        receipt_pdu(
            APPENDIX_B.replace("id:0008FABD", "id:9"), receipted_message_id="X1", message_state=5
        )
    )
    assert r is not None and (r.id, r.state) == ("X1", MessageState.UNDELIVERABLE)


@pytest.mark.parametrize("word", ["BUFFRED", "ACKED", "ENROUTE"])
def test_vendor_intermediate_words_are_enroute(word: str) -> None:
    r = parse_receipt(receipt_pdu(APPENDIX_B.replace("DELIVRD", word)))
    assert r is not None and r.state is MessageState.ENROUTE


def test_twelve_digit_dates_and_hex_err_values() -> None:
    text = (
        "id:77 sub:001 dlvrd:000 submit date:251120103005 done date:251120103159"
        " stat:REJECTD err:0A1"
    )
    r = parse_receipt(receipt_pdu(text))
    assert r is not None
    assert r.done_at == parse_smpp_time("251120103159000+", 0)
    assert (r.state, r.error_code) == (MessageState.REJECTED, 0xA1)


def test_network_error_code_gives_err_when_the_text_has_none() -> None:
    r = parse_receipt(
        receipt_pdu(
            "", receipted_message_id="A", message_state=5, network_error_code=bytes([3, 0, 27])
        )
    )
    assert r is not None and r.error_code == 27 and r.network_error == (3, 27)


def test_a_receipt_in_message_payload_is_read_too() -> None:
    pdu = receipt_pdu("")
    pdu.fields["short_message"] = b""
    pdu.set_tlv("message_payload", APPENDIX_B.encode())
    r = parse_receipt(pdu)
    assert r is not None and r.id == "0008FABD"


def test_unreadable_receipts_are_none() -> None:
    assert parse_receipt(receipt_pdu("no receipt here")) is None
    assert parse_receipt(receipt_pdu("id:5 stat:WHATEVER")) is None
    intermediate = parse_receipt(receipt_pdu("", 0x20, receipted_message_id="5"))
    assert intermediate is not None and intermediate.state is MessageState.ENROUTE


# =========================================================================== correlation


def up(
    uid: str, state: MessageState, err: int = 0, done_at: float | None = None
) -> UpstreamReceipt:
    return UpstreamReceipt(uid, state, err, done_at)


def three_parts() -> tuple[PartCorrelator, Any]:
    c = PartCorrelator("isms")
    g = c.group("m1", 3)
    for i, uid in enumerate(["A1", "A2", "A3"]):
        c.add(g, i, uid)
    return c, g


def test_a_long_message_is_delivered_once_every_part_is() -> None:
    c, _ = three_parts()
    assert c.on_receipt(up("A2", MessageState.DELIVERED, done_at=2.0), "A2", variants=True) is None
    assert c.on_receipt(up("A1", MessageState.DELIVERED, done_at=3.0), "A1", variants=True) is None
    report = c.on_receipt(up("A3", MessageState.DELIVERED, done_at=1.0), "A3", variants=True)
    assert report == DeliveryReport("isms", "A1", MessageState.DELIVERED, 0, 3.0, None)
    assert len(c) == 0


def test_the_first_failed_part_ends_the_long_message_with_its_stat_and_err() -> None:
    c, _ = three_parts()
    assert c.on_receipt(up("A1", MessageState.DELIVERED), "A1", variants=True) is None
    report = c.on_receipt(up("A2", MessageState.UNDELIVERABLE, 34), "A2", variants=True)
    assert report is not None
    assert (report.provider_message_id, report.state, report.error_code) == (
        "A1",
        MessageState.UNDELIVERABLE,
        34,
    )
    assert c.on_receipt(up("A3", MessageState.DELIVERED), "A3", variants=True) is None
    assert len(c) == 0


def test_one_intermediate_report_per_long_message() -> None:
    c, _ = three_parts()
    first = c.on_receipt(up("A2", MessageState.ENROUTE), "A2", variants=True)
    assert first is not None and first.provider_message_id == "A1" and not first.state.is_final
    assert c.on_receipt(up("A3", MessageState.ENROUTE), "A3", variants=True) is None


def test_accepted_parts_make_the_message_accepted() -> None:
    c, _ = three_parts()
    c.on_receipt(up("A1", MessageState.DELIVERED), "A1", variants=True)
    c.on_receipt(up("A2", MessageState.ACCEPTED), "A2", variants=True)
    report = c.on_receipt(up("A3", MessageState.DELIVERED), "A3", variants=True)
    assert report is not None and report.state is MessageState.ACCEPTED


def test_a_receipt_id_in_another_base_finds_its_part_through_the_variants() -> None:
    c = PartCorrelator("isms")
    g = c.group("m1", 1)
    c.add(g, 0, "0008FABD")
    report = c.on_receipt(up(str(0x8FABD), MessageState.DELIVERED), str(0x8FABD), variants=True)
    assert report is not None and report.provider_message_id == "0008FABD"


def test_an_id_not_awaited_passes_through_as_it_is() -> None:
    c = PartCorrelator("isms")
    report = c.on_receipt(up("ZZ", MessageState.EXPIRED, 3), "ZZ", variants=True)
    assert report == DeliveryReport("isms", "ZZ", MessageState.EXPIRED, 3, None, None)


def test_the_correlator_is_bounded() -> None:
    c = PartCorrelator("isms", max_ids=2)
    for i in range(5):
        c.add(c.group(f"m{i}", 1), 0, f"U{i}")
    assert len(c) == 2
    assert c.find("U0", variants=False) is None and c.find("U4", variants=False) is not None


# =========================================================================== MO


def mo_pdu(payload: bytes, *, esm_class: int = 0, data_coding: int = 0, **tlvs: Any) -> Pdu:
    pdu = Pdu(
        CommandId.deliver_sm,
        fields={
            "source_addr_ton": 1,
            "source_addr_npi": 1,
            "source_addr": "+306900000001",
            "dest_addr_ton": 1,
            "dest_addr_npi": 1,
            "destination_addr": "306999999999",
            "esm_class": esm_class,
            "data_coding": data_coding,
            "short_message": payload,
        },
    )
    for name, value in tlvs.items():
        pdu.set_tlv(name, value)
    return pdu


def test_an_mo_with_an_8_bit_udh_names_its_part() -> None:
    part = parse_mo(mo_pdu(bytes([5, 0, 3, 7, 2, 1]) + b"hi", esm_class=0x40))
    assert part.concat == Concat(7, 2, 1, 8) and part.payload == b"hi"
    assert part.source.digits == "306900000001"  # the '+' goes


def test_an_mo_with_sar_tlvs_names_its_part() -> None:
    part = parse_mo(mo_pdu(b"x", sar_msg_ref_num=300, sar_total_segments=3, sar_segment_seqnum=2))
    assert part.concat == Concat(300, 3, 2, 16)


def test_an_mo_with_a_broken_udh_keeps_its_data() -> None:
    part = parse_mo(mo_pdu(bytes([9, 0, 3]) + b"abc", esm_class=0x40))
    assert part.concat is None and part.payload == bytes([9, 0, 3]) + b"abc"


def mo_part(seq: int, total: int, payload: bytes, ref: int = 1, bits: int = 8) -> MoPart:
    return MoPart(
        Address("306900000001"),
        Address("306999999999"),
        0x08,
        payload,
        Concat(ref, total, seq, bits) if total > 1 else None,  # type: ignore[arg-type]
    )


def test_mo_parts_are_reassembled_in_order_whatever_order_they_come_in() -> None:
    r = MoReassembler(timeout=60)
    text = GREEK * 3
    data = text.encode("utf-16-be")
    chunks = [data[:134], data[134:]]
    assert r.add(mo_part(2, 2, chunks[1]), 0.0) == (None, [])
    whole, given_up = r.add(mo_part(1, 2, chunks[0]), 1.0)
    assert whole is not None and given_up == []
    message = inbound_from_parts(whole, "isms", 5.0)
    assert message.text == text and message.account == "" and message.provider == "isms"
    assert len(r) == 0


def test_mo_parts_of_different_references_do_not_mix() -> None:
    r = MoReassembler(timeout=60)
    assert r.add(mo_part(1, 2, b"\x00a", ref=1), 0) == (None, [])
    assert r.add(mo_part(2, 2, b"\x00b", ref=2), 0) == (None, [])
    assert r.add(mo_part(1, 2, b"\x00c", ref=1, bits=16), 0) == (None, [])
    assert len(r) == 3


def test_an_incomplete_mo_is_given_up_after_the_timeout_with_what_arrived() -> None:
    r = MoReassembler(timeout=10)
    r.add(mo_part(3, 3, b"\x00c"), 0.0)
    r.add(mo_part(1, 3, b"\x00a"), 1.0)
    assert r.expired(9.0) == []
    [parts] = r.expired(10.0)
    assert inbound_from_parts(parts, "isms", 0).text == "ac"


def test_mo_parts_come_back_as_they_went_in() -> None:
    # The core buffer holds fragments: addresses, TON/NPI and data_coding survive the trip.
    r = MoReassembler(timeout=60)
    first = MoPart(
        Address("ALPHA", 5, 0), Address("306999999999", 1, 1), 0x04, b"a", Concat(7, 2, 1, 16)
    )
    second = MoPart(
        Address("ALPHA", 5, 0), Address("306999999999", 1, 1), 0x04, b"b", Concat(7, 2, 2, 16)
    )
    assert r.add(second, 0) == (None, [])
    assert r.add(first, 1) == ([first, second], [])


def test_an_mo_reference_reused_with_another_total_gives_up_the_earlier_one() -> None:
    r = MoReassembler(timeout=60)
    old = mo_part(1, 3, b"\x00a")
    assert r.add(old, 0) == (None, [])
    whole, given_up = r.add(mo_part(1, 2, b"\x00x"), 1)
    assert whole is None and given_up == [[old]] and len(r) == 1


def test_mo_beyond_the_bound_are_given_up_oldest_first() -> None:
    r = MoReassembler(timeout=60, max_messages=2)
    parts = [mo_part(1, 2, b"\x00a", ref=ref) for ref in (1, 2, 3)]
    assert r.add(parts[0], 0) == (None, [])
    assert r.add(parts[1], 1) == (None, [])
    assert r.add(parts[2], 2) == (None, [[parts[0]]])
    assert [p for [p] in r.expired(3, everything=True)] == parts[1:]
    assert len(r) == 0


def test_a_binary_mo_stays_binary() -> None:
    part = parse_mo(mo_pdu(b"\xff\x00\x01", data_coding=0x04))
    message = inbound_from_parts([part], "isms", 0)
    assert message.text is None and message.binary == b"\xff\x00\x01"


# =========================================================================== against the simulator


class Sinks:
    def __init__(self) -> None:
        self.reports: list[DeliveryReport] = []
        self.inbound: list[InboundMessage] = []
        self.owned = True
        self.gate: asyncio.Event | None = None

    async def report(self, report: DeliveryReport) -> bool:
        if self.gate is not None:
            await self.gate.wait()
        self.reports.append(report)
        return True

    async def mo(self, message: InboundMessage) -> bool:
        self.inbound.append(message)
        return self.owned


async def until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


@pytest.fixture
async def sim() -> AsyncIterator[SmppUpstreamSimulator]:
    s = SmppUpstreamSimulator(delay=0.02, retry=0.05, tps=0)
    await s.start()
    yield s
    await s.close()


Started = tuple[IsmsSmppProvider, Sinks]


@pytest.fixture
async def start(sim: SmppUpstreamSimulator) -> AsyncIterator[Callable[..., Any]]:
    providers: list[IsmsSmppProvider] = []

    async def make(bound: bool = True, **kw: Any) -> Started:
        values: dict[str, Any] = {
            "port": sim.port,
            "reconnect_min": 0.05,
            "reconnect_max": 0.2,
            "response_timeout": 1.0,
            "throttle_pause": 0.05,
        }
        values.update(kw)
        p = create("isms", settings(**values), ProviderContext("isms"))
        assert isinstance(p, IsmsSmppProvider)
        sinks = Sinks()
        await p.start(sinks.report, sinks.mo)
        providers.append(p)
        if bound:
            assert await p.client.wait_bound(5.0)
        return p, sinks

    yield make
    for p in providers:
        await p.stop()


async def test_a_message_is_accepted_and_its_delivrd_receipt_reported(
    sim: SmppUpstreamSimulator, start: Callable[..., Any]
) -> None:
    p, sinks = await start()
    assert await p.healthy()
    outcome = await p.send(msg("hello", registered_delivery=1))
    assert outcome.kind is OutcomeKind.ACCEPTED and outcome.parts == 1
    [sub] = sim.submitted
    assert outcome.provider_message_id == sub.message_id and sub.text == "hello"
    await until(lambda: bool(sinks.reports))
    [report] = sinks.reports
    assert (report.provider_message_id, report.state) == (sub.message_id, MessageState.DELIVERED)


async def test_a_long_greek_message_goes_in_three_parts_and_is_reported_once(
    sim: SmppUpstreamSimulator, start: Callable[..., Any]
) -> None:
    p, sinks = await start()
    text = GREEK * 8  # 176 characters: 3 parts of 67
    outcome = await p.send(msg(text, registered_delivery=1))
    assert outcome.kind is OutcomeKind.ACCEPTED and outcome.parts == 3
    concats = [s.concat for s in sim.submitted]
    assert [c.seqnum for c in concats if c] == [1, 2, 3]
    assert len({c.reference for c in concats if c}) == 1
    assert "".join(s.text or "" for s in sim.submitted) == text
    assert all(s.data_coding == 0x08 for s in sim.submitted)
    # The other parts' upstream ids go to the bridge for durable correlation (restarts).
    assert outcome.provider_message_id == sim.submitted[0].message_id
    assert outcome.other_ids == tuple(s.message_id for s in sim.submitted[1:])
    await until(lambda: len(sim.receipts) == 3)
    await until(lambda: bool(sinks.reports))
    await asyncio.sleep(0.05)
    assert [r.provider_message_id for r in sinks.reports] == [sim.submitted[0].message_id]
    assert sinks.reports[0].state is MessageState.DELIVERED


async def test_sar_mode_against_the_simulator(
    sim: SmppUpstreamSimulator, start: Callable[..., Any]
) -> None:
    p, _ = await start(concat="sar")
    outcome = await p.send(msg("z" * 300))
    assert outcome.kind is OutcomeKind.ACCEPTED and outcome.parts == 2
    assert [s.concat for s in sim.submitted] == [
        Concat(reference_for("m1", 16), 2, 1, 16),
        Concat(reference_for("m1", 16), 2, 2, 16),
    ]
    assert all(not s.esm_class & 0x40 for s in sim.submitted)


async def test_an_undeliv_receipt_carries_its_err_and_network_error(
    sim: SmppUpstreamSimulator, start: Callable[..., Any]
) -> None:
    p, sinks = await start()
    await p.send(msg("x", dest="306912345601", registered_delivery=1))
    await until(lambda: bool(sinks.reports))
    [report] = sinks.reports
    assert (report.state, report.error_code, report.network_error) == (
        MessageState.UNDELIVERABLE,
        1,
        (3, 1),
    )


@pytest.mark.parametrize(
    ("suffix", "kind", "err"),
    [
        ("90", OutcomeKind.PERMANENT, Status.ESME_RINVDSTADR),
        ("91", OutcomeKind.PERMANENT, Status.ESME_RSUBMITFAIL),
        ("94", OutcomeKind.PERMANENT, Status.ESME_RX_P_APPN),
        ("93", OutcomeKind.TRANSIENT, Status.ESME_RSYSERR),
    ],
)
async def test_submit_errors_become_outcomes(
    start: Callable[..., Any], suffix: str, kind: OutcomeKind, err: int
) -> None:
    p, _ = await start()
    outcome = await p.send(msg("x", dest="3069123456" + suffix))
    assert (outcome.kind, outcome.error_code) == (kind, err)
    assert outcome.provider_message_id is None


async def test_queue_full_is_transient_then_the_retry_is_accepted(
    start: Callable[..., Any],
) -> None:
    p, _ = await start()
    m = msg("x", dest="306912345692")
    first = await p.send(m)
    assert (first.kind, first.error_code) == (OutcomeKind.TRANSIENT, Status.ESME_RMSGQFUL)
    assert (await p.send(m)).kind is OutcomeKind.ACCEPTED


async def test_a_long_message_refused_after_its_first_part_ends_undeliverable(
    sim: SmppUpstreamSimulator, start: Callable[..., Any]
) -> None:
    p, sinks = await start()
    outcome = await p.send(msg("y" * 400, dest="306912345695", registered_delivery=1))
    assert outcome.kind is OutcomeKind.ACCEPTED
    assert outcome.state is MessageState.UNDELIVERABLE
    assert outcome.error_code == Status.ESME_RSUBMITFAIL and outcome.parts == 1
    assert outcome.provider_message_id == sim.submitted[0].message_id
    # The first part's receipt still comes; it is swallowed (the message already ended).
    await until(lambda: len(sim.receipts) == 1)
    await until(lambda: len(p.correlator) == 0)
    assert sinks.reports == []


async def test_a_transient_failure_mid_message_resends_only_the_missing_parts(
    sim: SmppUpstreamSimulator, start: Callable[..., Any]
) -> None:
    p, sinks = await start()
    m = msg("w" * 400, registered_delivery=1)  # 3 parts
    sim.answer_next(Status.ESME_RMSGQFUL, 1, after=1)
    first = await p.send(m)
    assert first.kind is OutcomeKind.TRANSIENT
    second = await p.send(m)
    assert second.kind is OutcomeKind.ACCEPTED and second.parts == 3
    taken = [s for s in sim.submitted if s.status == 0]
    assert [s.concat.seqnum for s in taken if s.concat] == [1, 2, 3]
    assert second.provider_message_id == taken[0].message_id
    await until(lambda: bool(sinks.reports))
    assert sinks.reports[0].state is MessageState.DELIVERED


async def test_throttling_pauses_and_resends(
    sim: SmppUpstreamSimulator, start: Callable[..., Any]
) -> None:
    p, _ = await start(throttle_pause=0.05)
    sim.throttle_next(2)
    started = time.monotonic()
    outcome = await p.send(msg("x"))
    assert outcome.kind is OutcomeKind.ACCEPTED
    assert p.throttled == 2
    assert time.monotonic() - started >= 0.05 + 0.1  # one pause, then a doubled one


async def test_throttling_beyond_the_retries_is_transient(
    sim: SmppUpstreamSimulator, start: Callable[..., Any]
) -> None:
    p, _ = await start(throttle_pause=0.01, throttle_retries=1)
    sim.throttle_next(5)
    outcome = await p.send(msg("x"))
    assert (outcome.kind, outcome.error_code) == (OutcomeKind.TRANSIENT, Status.ESME_RTHROTTLED)


async def test_an_upstream_that_does_not_answer_is_a_transient_failure(
    sim: SmppUpstreamSimulator, start: Callable[..., Any]
) -> None:
    p, _ = await start(response_timeout=0.2)
    sim.stop_answering()
    outcome = await p.send(msg("x"))
    assert outcome.kind is OutcomeKind.TRANSIENT and "ResponseTimeout" in outcome.detail
    sim.resume_answering()


async def test_while_the_upstream_is_down_sends_are_transient_and_health_is_false(
    sim: SmppUpstreamSimulator, start: Callable[..., Any]
) -> None:
    p, _ = await start(response_timeout=0.2)
    await sim.stop()
    await until(lambda: p.client.bound_count == 0)
    assert not await p.healthy()
    outcome = await p.send(msg("x"))
    assert outcome.kind is OutcomeKind.TRANSIENT and "NotBound" in outcome.detail
    await sim.start()
    assert await p.client.wait_bound(5.0)
    assert (await p.send(msg("x"))).kind is OutcomeKind.ACCEPTED


async def test_a_dropped_connection_is_rebound(
    sim: SmppUpstreamSimulator, start: Callable[..., Any]
) -> None:
    p, _ = await start()
    assert sim.drop_connections() == 1
    await until(lambda: sim.binds == 2)
    assert await p.client.wait_bound(5.0)
    assert (await p.send(msg("x"))).kind is OutcomeKind.ACCEPTED


async def test_wrong_credentials_never_bind(start: Callable[..., Any]) -> None:
    p, _ = await start(bound=False, password="wrong")
    assert not await p.client.wait_bound(0.3)
    assert not await p.healthy()


async def test_decimal_receipt_ids_without_tlvs_are_matched(
    sim: SmppUpstreamSimulator, start: Callable[..., Any]
) -> None:
    sim.receipt_ids, sim.receipt_tlvs, sim.seconds = "decimal", False, True
    p, sinks = await start()
    outcome = await p.send(msg("hello", registered_delivery=1))
    await until(lambda: bool(sinks.reports))
    assert sinks.reports[0].provider_message_id == outcome.provider_message_id
    assert sinks.reports[0].state is MessageState.DELIVERED


async def test_receipt_id_format_decimal_stores_the_number(
    sim: SmppUpstreamSimulator, start: Callable[..., Any]
) -> None:
    sim.receipt_ids = "decimal"
    p, sinks = await start(receipt_id_format="decimal")
    outcome = await p.send(msg("hello", registered_delivery=1))
    assert outcome.provider_message_id == str(int(sim.submitted[0].message_id, 16))
    await until(lambda: bool(sinks.reports))
    assert sinks.reports[0].provider_message_id == outcome.provider_message_id


async def test_the_receipt_is_acknowledged_only_after_the_bridge_has_it(
    sim: SmppUpstreamSimulator, start: Callable[..., Any]
) -> None:
    p, sinks = await start()
    sinks.gate = asyncio.Event()
    outcome = await p.send(msg("hello", registered_delivery=1))
    sub = sim.submitted[0]
    delivery = asyncio.create_task(sim.deliver(sim.receipt_pdu(sub, "DELIVRD", 0)))
    await asyncio.sleep(0.2)
    assert not delivery.done()
    sinks.gate.set()
    result = await delivery
    assert result.status == 0
    assert sinks.reports[0].provider_message_id == outcome.provider_message_id


async def test_an_unreadable_receipt_is_acknowledged_and_counted(
    sim: SmppUpstreamSimulator, start: Callable[..., Any]
) -> None:
    p, sinks = await start()
    result = await sim.deliver(receipt_pdu("garbage"))
    assert result.status == 0 and p.bad_receipts == 1 and not sinks.reports


async def test_mo_text_reaches_the_inbound_sink(
    sim: SmppUpstreamSimulator, start: Callable[..., Any]
) -> None:
    _, sinks = await start()
    assert await sim.send_mo("306900000001", "306999999999", "Γεια") == [0]
    [message] = sinks.inbound
    assert message.text == "Γεια" and message.destination.digits == "306999999999"
    assert message.source == Address("306900000001", 1, 1)


async def test_an_mo_whole_in_message_payload_reaches_the_inbound_sink(
    sim: SmppUpstreamSimulator, start: Callable[..., Any]
) -> None:
    _, sinks = await start()
    text = "Μια μεγάλη απάντηση από το κινητό, " * 4  # 140 UCS-2 characters in one deliver_sm
    assert await sim.send_mo("306900000001", "306999999999", text, payload=True) == [0]
    [message] = sinks.inbound
    assert message.text == text and message.destination.digits == "306999999999"


@pytest.mark.parametrize("concat", ["udh8", "udh16", "sar"])
async def test_a_concatenated_mo_is_reassembled(
    sim: SmppUpstreamSimulator, start: Callable[..., Any], concat: Any
) -> None:
    _, sinks = await start()
    text = "part one, part two and part three of an inbound message"
    statuses = await sim.send_mo("306900000001", "306999999999", text, concat=concat, max_single=20)
    assert len(statuses) == 3 and statuses == [0, 0, 0]
    [message] = sinks.inbound
    assert message.text == text


async def test_an_mo_nobody_owns_is_still_acknowledged(
    sim: SmppUpstreamSimulator, start: Callable[..., Any]
) -> None:
    _, sinks = await start()
    sinks.owned = False
    assert await sim.send_mo("306900000001", "306999999998", "hi") == [0]


async def test_an_incomplete_mo_is_delivered_after_the_timeout(
    sim: SmppUpstreamSimulator, start: Callable[..., Any]
) -> None:
    p, sinks = await start(mo_reassembly_timeout=0.2)
    pdu = mo_pdu(bytes([5, 0, 3, 9, 2, 1]) + gsm7_encode("first half"), esm_class=0x40)
    assert (await sim.deliver(pdu)).status == 0
    await until(lambda: bool(sinks.inbound))
    assert sinks.inbound[0].text == "first half" and p.mo_incomplete == 1


def test_find_concat_is_what_the_simulator_reads() -> None:
    # the simulator reads parts with the same UDH parser the bridge's SMSC uses
    [a, _] = split_message(msg("a" * 200), "udh8", 5)
    assert find_concat(parse_udh(a.short_message)[0]) == Concat(5, 2, 1, 8)
