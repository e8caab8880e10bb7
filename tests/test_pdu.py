"""The SMPP 3.4 codec against the spec, from hand-written wire bytes.

Every PDU is written out field by field as it appears on the wire (hex, with ASCII text in
quotes) and the test says what the spec says it means. Decoding known bytes, rather than only
round-tripping our own output, is what catches a codec that is consistently wrong both ways.
Round trips and random inputs are in ``test_pdu_properties.py``.
"""

from __future__ import annotations

import re

import pytest

from bridge.core.model import MessageState
from bridge.smpp.pdu import (
    RESPONSE_BIT,
    TLVS,
    CommandId,
    DestAddress,
    DistributionList,
    FrameReader,
    Pdu,
    PduError,
    Status,
    UnsuccessSme,
    command_name,
    decode,
    encode,
    is_known_command,
    layout,
    response_id,
    status_name,
)

_TOKEN = re.compile(r'"([^"]*)"|([0-9A-Fa-f]+)|(\S)')


def wire(*lines: str) -> bytes:
    """Octets from lines of hex groups and "quoted ASCII"; ``#`` starts a comment."""
    out = bytearray()
    for line in lines:
        for text, hexdigits, junk in _TOKEN.findall(line.split("#", 1)[0]):
            assert not junk, f"bad token {junk!r} in {line!r}"
            out += text.encode("ascii") if text or not hexdigits else bytes.fromhex(hexdigits)
    return bytes(out)


def decode_error(data: bytes) -> PduError:
    with pytest.raises(PduError) as info:
        decode(data)
    return info.value


def assert_decodes(data: bytes, expected: Pdu) -> Pdu:
    """``data`` decodes to ``expected`` and encodes back to the very same octets."""
    pdu = decode(data)
    assert pdu == expected
    assert encode(pdu) == data
    return pdu


# --------------------------------------------------------------------------- test helpers


def test_wire_helper_reads_hex_and_text() -> None:
    assert wire('0102 "AB" 00  # comment "x"', "ff") == b"\x01\x02AB\x00\xff"
    assert wire('""') == b""


# --------------------------------------------------------------------------- session PDUs


BIND_BODY = (
    '"SMPP3TEST" 00',  # system_id C(16)
    '"secret08" 00',  # password C(9): 8 characters is the maximum
    '"SUBMIT1" 00',  # system_type C(13)
    "34",  # interface_version 0x34 = SMPP 3.4
    "01",  # addr_ton: international
    "01",  # addr_npi: ISDN
    "00",  # address_range: empty
)
BIND_FIELDS = {
    "system_id": "SMPP3TEST",
    "password": "secret08",
    "system_type": "SUBMIT1",
    "interface_version": 0x34,
    "addr_ton": 1,
    "addr_npi": 1,
    "address_range": "",
}


@pytest.mark.parametrize(
    ("command_hex", "command_id"),
    [
        ("00000001", CommandId.bind_receiver),
        ("00000002", CommandId.bind_transmitter),
        ("00000009", CommandId.bind_transceiver),
    ],
)
def test_bind_requests_share_one_layout(command_hex: str, command_id: CommandId) -> None:
    data = wire(f"0000002F {command_hex} 00000000 00000001", *BIND_BODY)
    pdu = assert_decodes(data, Pdu(command_id, 1, 0, BIND_FIELDS))
    assert pdu.name == command_id.name
    assert not pdu.is_response


@pytest.mark.parametrize(
    ("command_hex", "command_id"),
    [
        ("80000001", CommandId.bind_receiver_resp),
        ("80000002", CommandId.bind_transmitter_resp),
        ("80000009", CommandId.bind_transceiver_resp),
    ],
)
def test_bind_response_with_sc_interface_version(command_hex: str, command_id: CommandId) -> None:
    data = wire(
        f"0000001A {command_hex} 00000000 00000001",
        '"SMSC" 00',  # system_id of the SMSC
        "0210 0001 34",  # TLV sc_interface_version = 3.4
    )
    pdu = assert_decodes(data, Pdu(command_id, 1, 0, {"system_id": "SMSC"}, {0x0210: b"\x34"}))
    assert pdu.tlv("sc_interface_version") == 0x34
    assert pdu.is_response


def test_failed_bind_response_may_have_no_body() -> None:
    data = wire("00000010 80000002 0000000D 00000001")  # ESME_RBINDFAIL, header only
    pdu = assert_decodes(data, Pdu(CommandId.bind_transmitter_resp, 1, Status.ESME_RBINDFAIL))
    assert pdu.fields == {}
    assert pdu.tlv("sc_interface_version") is None


def test_outbind() -> None:
    data = wire("00000018 0000000B 00000000 00000002", '"SMSC" 00', '"pw" 00')
    assert_decodes(data, Pdu(CommandId.outbind, 2, 0, {"system_id": "SMSC", "password": "pw"}))


@pytest.mark.parametrize(
    ("command_hex", "command_id"),
    [
        ("00000006", CommandId.unbind),
        ("80000006", CommandId.unbind_resp),
        ("00000015", CommandId.enquire_link),
        ("80000015", CommandId.enquire_link_resp),
        ("80000008", CommandId.cancel_sm_resp),
        ("80000007", CommandId.replace_sm_resp),
    ],
)
def test_header_only_pdus(command_hex: str, command_id: CommandId) -> None:
    data = wire(f"00000010 {command_hex} 00000000 7FFFFFFF")
    pdu = assert_decodes(data, Pdu(command_id, 0x7FFFFFFF))
    assert pdu.fields == {} and pdu.tlvs == {}


def test_generic_nack_carries_the_status_and_the_offending_sequence_number() -> None:
    data = wire("00000010 80000000 00000003 00000009")  # ESME_RINVCMDID for PDU #9
    pdu = assert_decodes(data, Pdu(CommandId.generic_nack, 9, Status.ESME_RINVCMDID))
    assert pdu.name == "generic_nack"


# --------------------------------------------------------------------------- message PDUs

SUBMIT_SM = wire(
    "0000003C 00000004 00000000 00000003",  # 60 octets, submit_sm, status 0, sequence 3
    "00",  # service_type: default
    "05 00",  # source_addr_ton alphanumeric, source_addr_npi unknown
    '"ACME" 00',  # source_addr
    "01 01",  # dest_addr_ton international, dest_addr_npi ISDN
    '"491701234567" 00',  # destination_addr
    "00 00 00",  # esm_class, protocol_id, priority_flag
    "00",  # schedule_delivery_time: immediate
    "00",  # validity_period: SMSC default
    "01 00 00 00",  # registered_delivery: receipt; replace_if_present; data_coding; default msg
    '05 "hello"',  # sm_length 5, short_message
    "0204 0002 002A",  # TLV user_message_reference = 42
)
SUBMIT_FIELDS = {
    "service_type": "",
    "source_addr_ton": 5,
    "source_addr_npi": 0,
    "source_addr": "ACME",
    "dest_addr_ton": 1,
    "dest_addr_npi": 1,
    "destination_addr": "491701234567",
    "esm_class": 0,
    "protocol_id": 0,
    "priority_flag": 0,
    "schedule_delivery_time": "",
    "validity_period": "",
    "registered_delivery": 1,
    "replace_if_present_flag": 0,
    "data_coding": 0,
    "sm_default_msg_id": 0,
    "short_message": b"hello",
}


def test_submit_sm() -> None:
    pdu = assert_decodes(
        SUBMIT_SM, Pdu(CommandId.submit_sm, 3, 0, SUBMIT_FIELDS, {0x0204: b"\x00\x2a"})
    )
    assert pdu["destination_addr"] == "491701234567"
    assert pdu.get("no_such_field", "x") == "x"
    assert pdu.tlv("user_message_reference") == 42


def test_submit_sm_with_absolute_and_relative_times() -> None:
    data = wire(
        "00000050 00000004 00000000 00000004",
        '"CMT" 00 01 01 "4930" 00 01 01 "4917" 00',
        "00 00 01",  # priority_flag 1
        '"261122045600004+" 00',  # schedule_delivery_time: absolute, UTC+1h
        '"000001000000000R" 00',  # validity_period: relative, one day
        "00 00 08 00",  # data_coding UCS-2
        "04 00480069",  # "Hi" in UCS-2
    )
    fields = {
        **SUBMIT_FIELDS,
        "service_type": "CMT",
        "source_addr_ton": 1,
        "source_addr_npi": 1,
        "source_addr": "4930",
        "destination_addr": "4917",
        "priority_flag": 1,
        "schedule_delivery_time": "261122045600004+",
        "validity_period": "000001000000000R",
        "registered_delivery": 0,
        "data_coding": 8,
        "short_message": "Hi".encode("utf-16-be"),
    }
    assert_decodes(data, Pdu(CommandId.submit_sm, 4, 0, fields))


def test_submit_sm_resp_and_its_empty_error_form() -> None:
    data = wire("00000015 80000004 00000000 00000003", '"MSG1" 00')
    assert_decodes(data, Pdu(CommandId.submit_sm_resp, 3, 0, {"message_id": "MSG1"}))
    data = wire("00000010 80000004 00000058 00000003")  # ESME_RTHROTTLED, no message_id
    pdu = assert_decodes(data, Pdu(CommandId.submit_sm_resp, 3, Status.ESME_RTHROTTLED))
    assert pdu.fields == {}


def test_submit_multi_with_sme_and_distribution_list_destinations() -> None:
    data = wire(
        "0000003A 00000021 00000000 00000005",
        "00",  # service_type
        '01 01 "12345" 00',  # source_addr_ton, source_addr_npi, source_addr
        "02",  # number_of_dests
        '01 01 01 "4917000" 00',  # dest_flag 1 = SME address: ton, npi, destination_addr
        '02 "friends" 00',  # dest_flag 2 = distribution list: dl_name
        "00 00 00 00 00 00 00 00 00",  # esm_class .. sm_default_msg_id, times empty
        '02 "hi"',  # sm_length, short_message
    )
    fields = {
        "service_type": "",
        "source_addr_ton": 1,
        "source_addr_npi": 1,
        "source_addr": "12345",
        "dest_addresses": [DestAddress(1, 1, "4917000"), DistributionList("friends")],
        "esm_class": 0,
        "protocol_id": 0,
        "priority_flag": 0,
        "schedule_delivery_time": "",
        "validity_period": "",
        "registered_delivery": 0,
        "replace_if_present_flag": 0,
        "data_coding": 0,
        "sm_default_msg_id": 0,
        "short_message": b"hi",
    }
    assert_decodes(data, Pdu(CommandId.submit_multi, 5, 0, fields))


def test_submit_multi_resp_lists_the_unsuccessful_destinations() -> None:
    data = wire(
        "00000024 80000021 00000000 00000005",
        '"MSG1" 00',  # message_id
        "01",  # no_unsuccess
        '01 01 "4917000" 00',  # dest_addr_ton, dest_addr_npi, destination_addr
        "0000000B",  # error_status_code ESME_RINVDSTADR
    )
    fields = {
        "message_id": "MSG1",
        "unsuccess_smes": [UnsuccessSme(1, 1, "4917000", Status.ESME_RINVDSTADR)],
    }
    assert_decodes(data, Pdu(CommandId.submit_multi_resp, 5, 0, fields))


def test_submit_multi_resp_with_no_failures() -> None:
    data = wire("00000016 80000021 00000000 00000005", '"MSG1" 00', "00")
    fields = {"message_id": "MSG1", "unsuccess_smes": []}
    assert_decodes(data, Pdu(CommandId.submit_multi_resp, 5, 0, fields))


def test_deliver_sm_receipt_with_receipt_tlvs() -> None:
    data = wire(
        "0000005A 00000005 00000000 00000011",
        "00",  # service_type
        '01 01 "491701234567" 00',  # source: the handset the message went to
        '05 00 "ACME" 00',  # destination: the original sender
        "04",  # esm_class: SMSC delivery receipt
        "00 00 00 00 00 00 00 00",  # protocol_id .. sm_default_msg_id
        '14 "id:MSG1 stat:DELIVRD"',  # sm_length 20, Appendix B text
        '001E 0005 "MSG1" 00',  # receipted_message_id
        "0427 0001 02",  # message_state DELIVERED
        "0423 0003 03 0000",  # network_error_code: GSM, code 0
    )
    pdu = decode(data)
    assert pdu.command_id == CommandId.deliver_sm and pdu.sequence_number == 0x11
    assert pdu["esm_class"] == 0x04
    assert pdu["source_addr"] == "491701234567" and pdu["destination_addr"] == "ACME"
    assert pdu["short_message"] == b"id:MSG1 stat:DELIVRD"
    assert list(pdu.tlvs) == [0x001E, 0x0427, 0x0423]
    assert pdu.tlv("receipted_message_id") == "MSG1"
    assert pdu.tlv("message_state") == MessageState.DELIVERED
    assert pdu.tlv("network_error_code") == b"\x03\x00\x00"
    assert encode(pdu) == data


def test_receipted_message_id_without_nul_is_tolerated() -> None:
    # Some SMSCs omit the terminator of this C-Octet String TLV; the id is still readable.
    data = wire(
        "00000036 00000005 00000000 00000012",
        '00 01 01 "4917" 00 05 00 "ACME" 00 04 00 00 00 00 00 00 00 00',
        "00",  # sm_length 0
        '001E 0004 "MSG1"',  # receipted_message_id, no NUL
        "0427 0001 02",
    )
    pdu = decode(data)
    assert pdu.tlv("receipted_message_id") == "MSG1"
    assert encode(pdu) == data  # the raw value survives as sent


def test_deliver_sm_resp() -> None:
    data = wire("00000011 80000005 00000000 00000011", "00")  # message_id: unused, empty
    assert_decodes(data, Pdu(CommandId.deliver_sm_resp, 0x11, 0, {"message_id": ""}))


def test_data_sm_carries_its_text_in_message_payload() -> None:
    data = wire(
        "0000002A 00000103 00000000 00000006",
        "00",  # service_type
        '01 01 "4917" 00',  # source_addr C(65)
        '01 01 "4918" 00',  # destination_addr C(65)
        "00 01 08",  # esm_class, registered_delivery, data_coding UCS-2
        "0424 0004 00480069",  # message_payload "Hi"
    )
    fields = {
        "service_type": "",
        "source_addr_ton": 1,
        "source_addr_npi": 1,
        "source_addr": "4917",
        "dest_addr_ton": 1,
        "dest_addr_npi": 1,
        "destination_addr": "4918",
        "esm_class": 0,
        "registered_delivery": 1,
        "data_coding": 8,
    }
    pdu = assert_decodes(data, Pdu(CommandId.data_sm, 6, 0, fields, {0x0424: b"\x00H\x00i"}))
    assert pdu.tlv("message_payload").decode("utf-16-be") == "Hi"


def test_data_sm_takes_64_character_addresses() -> None:
    addr = "7" * 64
    data = wire(
        "0000009A 00000103 00000000 00000006",
        f'00 01 01 "{addr}" 00 01 01 "{addr}" 00 00 00 00',
    )
    pdu = decode(data)
    assert pdu["source_addr"] == addr and pdu["destination_addr"] == addr


def test_data_sm_resp_with_delivery_failure_reason() -> None:
    data = wire(
        "0000001A 80000103 000000FE 00000006",  # ESME_RDELIVERYFAILURE
        '"MSG2" 00',
        "0425 0001 01",  # delivery_failure_reason
    )
    pdu = assert_decodes(
        data,
        Pdu(
            CommandId.data_sm_resp,
            6,
            Status.ESME_RDELIVERYFAILURE,
            {"message_id": "MSG2"},
            {0x0425: b"\x01"},
        ),
    )
    assert pdu.tlv("delivery_failure_reason") == 1


def test_query_sm_and_resp() -> None:
    data = wire("0000001C 00000003 00000000 00000007", '"MSG1" 00 01 01 "4917" 00')
    fields = {
        "message_id": "MSG1",
        "source_addr_ton": 1,
        "source_addr_npi": 1,
        "source_addr": "4917",
    }
    assert_decodes(data, Pdu(CommandId.query_sm, 7, 0, fields))
    data = wire(
        "00000028 80000003 00000000 00000007",
        '"MSG1" 00',  # message_id
        '"261122045600004+" 00',  # final_date
        "02",  # message_state DELIVERED
        "00",  # error_code
    )
    fields = {
        "message_id": "MSG1",
        "final_date": "261122045600004+",
        "message_state": MessageState.DELIVERED,
        "error_code": 0,
    }
    assert_decodes(data, Pdu(CommandId.query_sm_resp, 7, 0, fields))


def test_cancel_sm_and_resp() -> None:
    data = wire(
        "00000024 00000008 00000000 00000008",
        "00",  # service_type
        '"MSG1" 00',  # message_id
        '01 01 "4917" 00',  # source
        '01 01 "4918" 00',  # destination
    )
    fields = {
        "service_type": "",
        "message_id": "MSG1",
        "source_addr_ton": 1,
        "source_addr_npi": 1,
        "source_addr": "4917",
        "dest_addr_ton": 1,
        "dest_addr_npi": 1,
        "destination_addr": "4918",
    }
    assert_decodes(data, Pdu(CommandId.cancel_sm, 8, 0, fields))
    assert_decodes(wire("00000010 80000008 00000000 00000008"), Pdu(CommandId.cancel_sm_resp, 8))


def test_replace_sm_and_resp() -> None:
    data = wire(
        "00000034 00000007 00000000 00000009",
        '"MSG1" 00',  # message_id
        '01 01 "4917" 00',  # source
        "00",  # schedule_delivery_time: immediate
        '"000001000000000R" 00',  # validity_period: one day from now
        "01 00",  # registered_delivery, sm_default_msg_id
        '03 "new"',  # sm_length, short_message
    )
    fields = {
        "message_id": "MSG1",
        "source_addr_ton": 1,
        "source_addr_npi": 1,
        "source_addr": "4917",
        "schedule_delivery_time": "",
        "validity_period": "000001000000000R",
        "registered_delivery": 1,
        "sm_default_msg_id": 0,
        "short_message": b"new",
    }
    assert_decodes(data, Pdu(CommandId.replace_sm, 9, 0, fields))
    assert_decodes(wire("00000010 80000007 00000000 00000009"), Pdu(CommandId.replace_sm_resp, 9))


def test_alert_notification_with_ms_availability_status() -> None:
    data = wire(
        "00000023 00000102 00000000 0000000A",
        '01 01 "4917" 00',  # source_addr_ton, source_addr_npi, source_addr C(65)
        '01 01 "ACME" 00',  # esme_addr_ton, esme_addr_npi, esme_addr C(65)
        "0422 0001 00",  # ms_availability_status: available
    )
    fields = {
        "source_addr_ton": 1,
        "source_addr_npi": 1,
        "source_addr": "4917",
        "esme_addr_ton": 1,
        "esme_addr_npi": 1,
        "esme_addr": "ACME",
    }
    pdu = assert_decodes(data, Pdu(CommandId.alert_notification, 10, 0, fields, {0x0422: b"\0"}))
    assert pdu.tlv("ms_availability_status") == 0


def test_c_strings_are_latin1_so_every_octet_survives() -> None:
    data = wire("00000014 80000004 00000000 00000001", "E9 FF 7F 00")
    assert_decodes(data, Pdu(CommandId.submit_sm_resp, 1, 0, {"message_id": "\xe9\xff\x7f"}))


def test_decode_accepts_any_bytes_like_object_and_returns_bytes() -> None:
    for data in (bytearray(SUBMIT_SM), memoryview(SUBMIT_SM)):
        pdu = decode(data)  # type: ignore[arg-type]
        assert type(pdu["short_message"]) is bytes
        assert all(type(v) is bytes for v in pdu.tlvs.values())
        assert pdu == decode(SUBMIT_SM)


# --------------------------------------------------------------------------- TLVs


def test_unknown_and_vendor_tlvs_are_kept_in_wire_order() -> None:
    # The spec: unknown optional parameters are ignored, not fatal. We also keep them, so a
    # relayed PDU loses nothing, and keep their order.
    data = wire(
        "00000032 80000004 00000000 00000001",
        '"MSG1" 00',
        '1400 0003 "abc"',  # vendor-specific range 0x1400..0x3FFF
        "001D 0003 6F6B 00",  # additional_status_info_text "ok"
        "3FFF 0000",  # vendor, empty value
        "0600 0002 0102",  # a tag this codec does not know (an SMPP 5.0 one)
        "1401 0001 FF",
    )
    pdu = decode(data)
    assert list(pdu.tlvs) == [0x1400, 0x001D, 0x3FFF, 0x0600, 0x1401]
    assert pdu.tlvs[0x1400] == b"abc" and pdu.tlvs[0x3FFF] == b""
    assert pdu.tlv("additional_status_info_text") == "ok"
    assert encode(pdu) == data


def test_tlv_by_name_converts_by_type() -> None:
    pdu = Pdu(CommandId.submit_sm)
    pdu.set_tlv("sar_msg_ref_num", 0x1234)
    pdu.set_tlv("sar_total_segments", 3)
    pdu.set_tlv("receipted_message_id", "ABC")
    pdu.set_tlv("message_payload", b"\x00\x01")
    pdu.set_tlv("qos_time_to_live", 86400)
    assert pdu.tlvs == {
        0x020C: b"\x12\x34",
        0x020E: b"\x03",
        0x001E: b"ABC\x00",
        0x0424: b"\x00\x01",
        0x0017: (86400).to_bytes(4, "big"),
    }
    assert pdu.tlv("sar_msg_ref_num") == 0x1234
    assert pdu.tlv("receipted_message_id") == "ABC"
    assert pdu.tlv("message_payload") == b"\x00\x01"
    assert pdu.tlv("source_port", -1) == -1


@pytest.mark.parametrize(
    ("name", "value", "error"),
    [
        ("sar_total_segments", 256, ValueError),  # one octet
        ("sar_msg_ref_num", -1, ValueError),
        ("sar_total_segments", "3", TypeError),
        ("receipted_message_id", "A" * 65, ValueError),  # C(65) incl. NUL
        ("receipted_message_id", "A\0B", ValueError),  # would end early on the far side
        ("receipted_message_id", b"AB", TypeError),
        ("callback_num", b"123", ValueError),  # 4..19 octets
        ("message_payload", "text", TypeError),
    ],
)
def test_set_tlv_rejects_what_the_wire_cannot_carry(
    name: str, value: object, error: type[Exception]
) -> None:
    with pytest.raises(error):
        Pdu(CommandId.submit_sm).set_tlv(name, value)  # type: ignore[arg-type]


def test_tlv_table_follows_the_spec() -> None:
    assert TLVS["message_payload"].tag == 0x0424
    assert TLVS["receipted_message_id"].tag == 0x001E
    assert TLVS["message_state"].tag == 0x0427
    assert TLVS["network_error_code"].min_len == TLVS["network_error_code"].max_len == 3
    assert TLVS["sc_interface_version"].tag == 0x0210
    assert len({t.tag for t in TLVS.values()}) == len(TLVS)


# --------------------------------------------------------------------------- header defects


def test_command_length_below_16_is_fatal_and_keeps_the_sequence_number() -> None:
    reader = FrameReader()
    reader.feed(wire("0000000C 00000004 00000000 0000002A"))
    with pytest.raises(PduError) as info:
        list(reader.frames())
    e = info.value
    assert (e.status, e.fatal, e.sequence_number, e.command_id) == (
        Status.ESME_RINVCMDLEN,
        True,
        0x2A,
        CommandId.submit_sm,
    )
    assert reader.buffered == 0  # the stream cannot be trusted any more


def test_command_length_above_the_maximum_is_fatal_before_it_is_buffered() -> None:
    reader = FrameReader(max_size=70_000)
    reader.feed(wire("00100000 00000004 00000000 0000002B"))  # claims 1 MiB
    with pytest.raises(PduError) as info:
        list(reader.frames())
    assert (info.value.status, info.value.fatal, info.value.sequence_number) == (
        Status.ESME_RINVCMDLEN,
        True,
        0x2B,
    )


def test_impossible_length_before_the_sequence_number_arrived() -> None:
    reader = FrameReader()
    reader.feed(wire("00000001 0000"))
    with pytest.raises(PduError) as info:
        list(reader.frames())
    assert info.value.fatal and info.value.sequence_number == 0


@pytest.mark.parametrize("data", [b"", wire("00000010 00000015 00000000")])
def test_shorter_than_a_header(data: bytes) -> None:
    e = decode_error(data)
    assert e.status == Status.ESME_RINVCMDLEN and e.fatal


@pytest.mark.parametrize("length", ["00000011", "0000000F", "00000100"])
def test_command_length_must_equal_the_octets_given(length: str) -> None:
    e = decode_error(wire(f"{length} 00000015 00000000 00000005"))
    assert (e.status, e.fatal, e.sequence_number) == (Status.ESME_RINVCMDLEN, True, 5)


@pytest.mark.parametrize(
    "command_hex",
    [
        "00000099",  # not an SMPP command
        "80000102",  # alert_notification has no response
        "8000000B",  # nor has outbind
        "00000111",  # broadcast_sm: SMPP 5.0 only
        "00000000",
        "FFFFFFFF",
    ],
)
def test_unknown_command_id_keeps_the_sequence_number(command_hex: str) -> None:
    e = decode_error(wire(f"00000010 {command_hex} 00000000 00000042"))
    assert (e.status, e.fatal, e.sequence_number) == (Status.ESME_RINVCMDID, False, 0x42)
    assert e.command_id == int(command_hex, 16)


def test_request_with_a_layout_but_no_body() -> None:
    e = decode_error(wire("00000010 00000004 00000000 00000007"))
    assert (e.status, e.fatal, e.sequence_number) == (Status.ESME_RINVCMDLEN, False, 7)


def test_octets_after_a_pdu_that_has_no_tlvs() -> None:
    e = decode_error(wire("00000011 00000015 00000000 00000007", "00"))
    assert (e.status, e.sequence_number) == (Status.ESME_RINVCMDLEN, 7)


# --------------------------------------------------------------------------- body defects


def submit_sm(*body: str, seq: int = 0x21) -> bytes:
    """A submit_sm with the given body and a correct command_length."""
    octets = wire(*body)
    return wire(f"{16 + len(octets):08X} 00000004 00000000 {seq:08X}") + octets


GOOD_HEAD = '00 01 01 "4930" 00 01 01 "4917" 00 00 00 00'  # service_type .. priority_flag


def test_a_well_formed_submit_sm_for_the_defect_tests() -> None:
    pdu = decode(submit_sm(GOOD_HEAD, "00 00 00 00 00 00 02 6869"))
    assert pdu["short_message"] == b"hi"


@pytest.mark.parametrize(
    ("body", "status"),
    [
        # The body ends inside a C-Octet String (no NUL before the end).
        ("00 01 01 34393330", Status.ESME_RINVCMDLEN),
        # ... or before a fixed-size field.
        ('00 01 01 "4930" 00 01', Status.ESME_RINVCMDLEN),
        ((GOOD_HEAD, "00 00 00 00 00 00"), Status.ESME_RINVCMDLEN),  # no sm_length
        # source_addr C(21): 21 characters is one too many.
        (
            f'00 01 01 "{"1" * 21}" 00 01 01 "4917" 00 00 00 00 00 00 00 00 00 00 00',
            Status.ESME_RINVSRCADR,
        ),
        (
            f'00 01 01 "{"1" * 20}" 00 01 01 "{"2" * 21}" 00 00 00 00 00 00 00 00 00 00 00',
            Status.ESME_RINVDSTADR,
        ),
        # service_type C(6)
        (
            '"CMTXYZ" 00 01 01 "4930" 00 01 01 "4917" 00 00 00 00 00 00 00 00 00 00 00',
            Status.ESME_RINVSERTYP,
        ),
        # schedule_delivery_time C(17): 17 characters, and anything but 0 or 16.
        ((GOOD_HEAD, '"2611220456000040+" 00 00 00 00 00 00 00'), Status.ESME_RINVSCHED),
        ((GOOD_HEAD, '"2611" 00 00 00 00 00 00 00'), Status.ESME_RINVSCHED),
        ((GOOD_HEAD, '00 "000001000000000R0" 00 00 00 00 00 00'), Status.ESME_RINVEXPIRY),
        ((GOOD_HEAD, '00 "1d" 00 00 00 00 00 00'), Status.ESME_RINVEXPIRY),
        # sm_length says more than the PDU holds.
        ((GOOD_HEAD, '00 00 00 00 00 00 05 "hi"'), Status.ESME_RINVMSGLEN),
        ((GOOD_HEAD, "00 00 00 00 00 00 FF"), Status.ESME_RINVMSGLEN),
    ],
)
def test_submit_sm_body_defects(body: str | tuple[str, ...], status: Status) -> None:
    lines = (body,) if isinstance(body, str) else body
    e = decode_error(submit_sm(*lines))
    assert (e.status, e.fatal, e.sequence_number, e.command_id) == (
        status,
        False,
        0x21,
        CommandId.submit_sm,
    ), str(e)


def test_bind_defects_name_the_field() -> None:
    def bind(*body: str) -> bytes:
        octets = wire(*body)
        return wire(f"{16 + len(octets):08X} 00000002 00000000 00000001") + octets

    too_long_id = bind(f'"{"S" * 16}" 00', *BIND_BODY[1:])  # system_id: 15 characters max
    assert decode_error(too_long_id).status == Status.ESME_RINVSYSID
    too_long_pw = bind(BIND_BODY[0], '"secret089" 00', *BIND_BODY[2:])  # password: 8 max
    assert decode_error(too_long_pw).status == Status.ESME_RINVPASWD
    too_long_type = bind(*BIND_BODY[:2], f'"{"T" * 13}" 00', *BIND_BODY[3:])
    assert decode_error(too_long_type).status == Status.ESME_RINVSYSTYP
    assert decode_error(bind(*BIND_BODY[:3])).status == Status.ESME_RINVCMDLEN  # cut short


def test_submit_sm_resp_message_id_without_nul() -> None:
    e = decode_error(wire("00000014 80000004 00000000 00000003", '"MSG1"'))
    assert (e.status, e.sequence_number) == (Status.ESME_RINVCMDLEN, 3)


@pytest.mark.parametrize(
    ("tlvs", "status"),
    [
        ("0204 0003 002A", Status.ESME_RINVOPTPARSTREAM),  # value runs past the end
        ("1400 0010 00", Status.ESME_RINVOPTPARSTREAM),  # unknown tags too
        ("0204", Status.ESME_RINVOPTPARSTREAM),  # truncated TLV header
        ("0204 0002 002A 00", Status.ESME_RINVOPTPARSTREAM),  # one stray octet
        ("0204 0001 2A", Status.ESME_RINVPARLEN),  # user_message_reference is 2 octets
        ("0423 0002 0300", Status.ESME_RINVPARLEN),  # network_error_code is 3 octets
        ("001E 0000", Status.ESME_RINVPARLEN),  # receipted_message_id: at least the NUL
        ("0204 0002 002A 0204 0002 002B", Status.ESME_RINVOPTPARSTREAM),  # the same tag twice
    ],
)
def test_tlv_defects(tlvs: str, status: Status) -> None:
    e = decode_error(submit_sm(GOOD_HEAD, "00 00 00 00 00 00 00", tlvs))
    assert (e.status, e.sequence_number) == (status, 0x21), str(e)


def submit_multi(*dests: str) -> bytes:
    octets = wire('00 01 01 "4930" 00', *dests, "00 00 00 00 00 00 00 00 00 00")
    return wire(f"{16 + len(octets):08X} 00000021 00000000 00000031") + octets


@pytest.mark.parametrize(
    ("dests", "status"),
    [
        (("00",), Status.ESME_RINVNUMDESTS),  # number_of_dests 0
        (("FF",), Status.ESME_RINVNUMDESTS),  # 255: at most 254
        (('01 03 01 01 "4917" 00',), Status.ESME_RINVDESTFLAG),  # dest_flag 3
        (('01 00 "x" 00',), Status.ESME_RINVDESTFLAG),  # dest_flag 0
        ((f'01 01 01 01 "{"9" * 21}" 00',), Status.ESME_RINVDSTADR),
        ((f'01 02 "{"d" * 21}" 00',), Status.ESME_RINVDLNAME),
        # Two announced, one given: the esm_class octet is then read as a dest_flag.
        (('02 01 01 01 "4917" 00',), Status.ESME_RINVDESTFLAG),
    ],
)
def test_submit_multi_destination_defects(dests: tuple[str, ...], status: Status) -> None:
    e = decode_error(submit_multi(*dests))
    assert (e.status, e.sequence_number) == (status, 0x31), str(e)


def test_submit_multi_cut_inside_its_destination_list() -> None:
    octets = wire('00 01 01 "4930" 00 02 01 01 01 "4917" 00')
    e = decode_error(wire(f"{16 + len(octets):08X} 00000021 00000000 00000031") + octets)
    assert (e.status, e.sequence_number) == (Status.ESME_RINVCMDLEN, 0x31)


def test_submit_multi_takes_254_destinations() -> None:
    pdu = decode(submit_multi("FE", *['01 01 01 "4917" 00'] * 254))
    assert pdu["dest_addresses"] == [DestAddress(1, 1, "4917")] * 254


def test_submit_multi_resp_cut_inside_an_error_status_code() -> None:
    data = wire("00000022 80000021 00000000 00000005", '"MSG1" 00 01 01 01 "4917000" 00 0000')
    assert decode_error(data).status == Status.ESME_RINVCMDLEN


# --------------------------------------------------------------------------- encoding


def test_missing_fields_encode_as_their_empty_value() -> None:
    pdu = Pdu(CommandId.submit_sm, 1, 0, {"destination_addr": "4917", "short_message": b"x"})
    assert encode(pdu) == wire(
        "00000026 00000004 00000000 00000001",
        '00 00 00 00 00 00 "4917" 00 00 00 00 00 00 00 00 00 00',
        '01 "x"',
    )


def test_response_helper_echoes_the_sequence_number() -> None:
    req = decode(SUBMIT_SM)
    assert encode(req.response(message_id="MSG1")) == wire(
        "00000015 80000004 00000000 00000003", '"MSG1" 00'
    )
    # An error response with no fields goes out header-only, as the spec allows.
    assert encode(req.response(Status.ESME_RTHROTTLED)) == wire(
        "00000010 80000004 00000058 00000003"
    )


def test_header_only_pdus_ignore_stray_fields() -> None:
    data = encode(Pdu(CommandId.enquire_link, 5, 0, {"anything": 1}))
    assert data == wire("00000010 00000015 00000000 00000005")


@pytest.mark.parametrize(
    ("pdu", "error"),
    [
        (Pdu(CommandId.submit_sm, 1, 0, {"source_addr": "1" * 21}), ValueError),
        (Pdu(CommandId.submit_sm, 1, 0, {"source_addr": "49\x0017"}), ValueError),
        (Pdu(CommandId.submit_sm, 1, 0, {"source_addr": "€"}), ValueError),  # not Latin-1
        (Pdu(CommandId.submit_sm, 1, 0, {"source_addr": 4917}), TypeError),
        (Pdu(CommandId.submit_sm, 1, 0, {"esm_class": 256}), ValueError),
        (Pdu(CommandId.submit_sm, 1, 0, {"esm_class": -1}), ValueError),
        (Pdu(CommandId.submit_sm, 1, 0, {"esm_class": "4"}), TypeError),
        (Pdu(CommandId.submit_sm, 1, 0, {"short_message": b"x" * 255}), ValueError),
        (Pdu(CommandId.submit_sm, 1, 0, {"short_message": "text"}), TypeError),
        (Pdu(CommandId.submit_sm, 1, 0, {"schedule_delivery_time": "1d"}), ValueError),
        (Pdu(CommandId.submit_sm, 1, 0, {"validity_period": "0" * 17}), ValueError),
        (Pdu(CommandId.submit_sm, 1, 0, {}, {0x0204: b"\x01"}), ValueError),  # 2 octets
        (Pdu(CommandId.submit_sm, 1, 0, {}, {0x1400: b"x" * 0x10000}), ValueError),
        (Pdu(CommandId.submit_sm, 1, 0, {}, {0x10000: b""}), ValueError),
        (Pdu(CommandId.submit_sm, 2**32), ValueError),
        (Pdu(CommandId.submit_sm, 1, -1), ValueError),
        (Pdu(CommandId.enquire_link, 1, 0, {}, {0x1400: b""}), ValueError),  # no TLVs in 3.4
        (Pdu(CommandId.submit_multi, 1, 0, {}), ValueError),  # no destinations
        (Pdu(CommandId.submit_multi, 1, 0, {"dest_addresses": [("x",)]}), TypeError),
        (
            Pdu(CommandId.submit_multi, 1, 0, {"dest_addresses": [DistributionList("d" * 21)]}),
            ValueError,
        ),
        (
            Pdu(
                CommandId.submit_multi_resp, 1, 0, {"unsuccess_smes": [UnsuccessSme(1, 1, "4", -1)]}
            ),
            ValueError,
        ),
        (Pdu(0x00000099), ValueError),
    ],
)
def test_encode_refuses_what_decode_would_reject(pdu: Pdu, error: type[Exception]) -> None:
    with pytest.raises(error):
        encode(pdu)


# --------------------------------------------------------------------------- framing


ENQUIRE_LINK = wire("00000010 00000015 00000000 00000001")


def test_frame_reader_reassembles_a_pdu_sent_byte_by_byte() -> None:
    reader = FrameReader()
    got: list[bytes] = []
    for i in range(len(SUBMIT_SM)):
        reader.feed(SUBMIT_SM[i : i + 1])
        got += reader.frames()
        if i < len(SUBMIT_SM) - 1:
            assert got == [] and reader.buffered == i + 1
    assert got == [SUBMIT_SM] and reader.buffered == 0


def test_frame_reader_cuts_many_pdus_from_one_chunk() -> None:
    reader = FrameReader()
    stream = SUBMIT_SM + ENQUIRE_LINK * 3 + SUBMIT_SM
    reader.feed(stream + SUBMIT_SM[:7])
    frames = list(reader.frames())
    assert frames == [SUBMIT_SM, ENQUIRE_LINK, ENQUIRE_LINK, ENQUIRE_LINK, SUBMIT_SM]
    assert all(type(f) is bytes for f in frames)
    assert reader.buffered == 7  # a partial PDU waits for the rest
    reader.feed(SUBMIT_SM[7:])
    assert list(reader.frames()) == [SUBMIT_SM]


def test_frame_reader_waits_for_a_partial_pdu() -> None:
    reader = FrameReader()
    reader.feed(SUBMIT_SM[:3])  # not even a command_length yet
    assert list(reader.frames()) == []
    reader.feed(SUBMIT_SM[3:-1])
    assert list(reader.frames()) == []
    assert reader.buffered == len(SUBMIT_SM) - 1
    reader.feed(SUBMIT_SM[-1:])
    assert list(reader.frames()) == [SUBMIT_SM]


def test_frame_reader_leaves_the_rest_when_the_caller_stops_early() -> None:
    reader = FrameReader()
    reader.feed(ENQUIRE_LINK + SUBMIT_SM)
    for frame in reader.frames():
        assert frame == ENQUIRE_LINK
        break  # e.g. the session closed after this PDU
    assert reader.buffered == len(SUBMIT_SM)
    assert list(reader.frames()) == [SUBMIT_SM]


def test_frame_reader_buffers_at_most_one_pdu_of_max_size() -> None:
    reader = FrameReader(max_size=1000)
    big = wire("000003E8 00000103 00000000 00000001") + bytes(1000 - 16)  # exactly max_size
    for start in range(0, len(big) - 1, 100):
        reader.feed(big[start : start + 100])
        list(reader.frames())
        assert reader.buffered <= 1000
    # A frame one octet longer than allowed is refused on its header alone.
    reader = FrameReader(max_size=1000)
    reader.feed(wire("000003E9 00000103 00000000 00000002"))
    with pytest.raises(PduError):
        list(reader.frames())


def test_frames_feed_the_decoder() -> None:
    reader = FrameReader()
    reader.feed(SUBMIT_SM + ENQUIRE_LINK)
    pdus = [decode(f) for f in reader.frames()]
    assert [p.command_id for p in pdus] == [CommandId.submit_sm, CommandId.enquire_link]


# --------------------------------------------------------------------------- names and tables


def test_names_and_ids() -> None:
    assert response_id(CommandId.submit_sm) == CommandId.submit_sm_resp == 0x80000004
    assert all(c & RESPONSE_BIT for c in CommandId if c.name.endswith(("_resp", "nack")))
    assert command_name(0x80000004) == "submit_sm_resp"
    assert command_name(0x99) == "0x00000099"
    assert status_name(0x58) == "ESME_RTHROTTLED"
    assert status_name(0x400) == "0x00000400"  # vendor range
    assert Status.ESME_RINVOPTPARSTREAM == 0xC0 and Status.ESME_RINVPARLEN == 0xC2
    assert [s.value for s in MessageState] == list(range(1, 9))


def test_every_command_has_a_layout() -> None:
    for command_id in CommandId:
        assert is_known_command(command_id)
        assert layout(command_id) is not None
    assert layout(0x99) is None and not is_known_command(0x99)
    names = [f.name for f in layout(CommandId.submit_sm) or ()]
    assert names[:4] == ["service_type", "source_addr_ton", "source_addr_npi", "source_addr"]
    assert names[-1] == "short_message"


def test_pdu_error_carries_what_the_session_needs() -> None:
    e = PduError(Status.ESME_RSYSERR, "boom", command_id=4, sequence_number=9, fatal=True)
    assert (e.status, e.command_id, e.sequence_number, e.fatal, str(e)) == (
        Status.ESME_RSYSERR,
        4,
        9,
        True,
        "boom",
    )
