"""The mandatory-field layout of every SMPP 3.4 PDU: one table that both codecs are built from.

Why this module: the table *is* the spec's chapter 4 in data form. The reference codec
(:mod:`bridge.smpp.reference`) walks it field by field; the code generator
(:mod:`bridge.smpp.codegen`) compiles it into one decoder and one encoder per command. Keeping it
apart from both makes it readable against the spec on its own.
"""

from __future__ import annotations

from typing import Final, NamedTuple

from bridge.smpp.spec import CommandId, Status

# Field kinds: C = C-Octet String (max incl. NUL), I1/I2/I4 integers, SM = sm_length +
# short_message, DESTS = submit_multi destinations, UNSUCC = submit_multi_resp failures.
C, I1, I2, I4, SM, DESTS, UNSUCC = range(7)

# Which command_status a C-Octet String that is too long earns, by field name.
_FIELD_STATUS: Final[dict[str, int]] = {
    "system_id": Status.ESME_RINVSYSID,
    "password": Status.ESME_RINVPASWD,
    "system_type": Status.ESME_RINVSYSTYP,
    "service_type": Status.ESME_RINVSERTYP,
    "source_addr": Status.ESME_RINVSRCADR,
    "destination_addr": Status.ESME_RINVDSTADR,
    "esme_addr": Status.ESME_RINVDSTADR,
    "schedule_delivery_time": Status.ESME_RINVSCHED,
    "validity_period": Status.ESME_RINVEXPIRY,
    "message_id": Status.ESME_RINVMSGID,
    "dl_name": Status.ESME_RINVDLNAME,
}


class Field(NamedTuple):
    """One mandatory field: its SMPP name, kind (C, I1 ... above), size and bounds status."""

    name: str
    kind: int
    size: int  # max octets incl. NUL for C strings
    status: int  # command_status when the value is out of bounds


def _f(name: str, kind: int, size: int = 0) -> Field:
    return Field(name, kind, size, _FIELD_STATUS.get(name, Status.ESME_RINVPARLEN))


# The address triples most requests carry (TON, NPI, a 21-octet address).
_SOURCE = (
    _f("source_addr_ton", I1),
    _f("source_addr_npi", I1),
    _f("source_addr", C, 21),
)
_DEST = (
    _f("dest_addr_ton", I1),
    _f("dest_addr_npi", I1),
    _f("destination_addr", C, 21),
)
_BIND = (
    _f("system_id", C, 16),
    _f("password", C, 9),
    _f("system_type", C, 13),
    _f("interface_version", I1),
    _f("addr_ton", I1),
    _f("addr_npi", I1),
    _f("address_range", C, 41),
)
_BIND_RESP = (_f("system_id", C, 16),)
_SM_TAIL = (
    _f("esm_class", I1),
    _f("protocol_id", I1),
    _f("priority_flag", I1),
    _f("schedule_delivery_time", C, 17),
    _f("validity_period", C, 17),
    _f("registered_delivery", I1),
    _f("replace_if_present_flag", I1),
    _f("data_coding", I1),
    _f("sm_default_msg_id", I1),
    _f("short_message", SM),
)
_SUBMIT = (_f("service_type", C, 6), *_SOURCE, *_DEST, *_SM_TAIL)
_MESSAGE_ID = (_f("message_id", C, 65),)

LAYOUTS: Final[dict[int, tuple[Field, ...]]] = {
    CommandId.generic_nack: (),
    CommandId.bind_receiver: _BIND,
    CommandId.bind_transmitter: _BIND,
    CommandId.bind_transceiver: _BIND,
    CommandId.bind_receiver_resp: _BIND_RESP,
    CommandId.bind_transmitter_resp: _BIND_RESP,
    CommandId.bind_transceiver_resp: _BIND_RESP,
    CommandId.outbind: (_f("system_id", C, 16), _f("password", C, 9)),
    CommandId.unbind: (),
    CommandId.unbind_resp: (),
    CommandId.enquire_link: (),
    CommandId.enquire_link_resp: (),
    CommandId.submit_sm: _SUBMIT,
    CommandId.deliver_sm: _SUBMIT,
    CommandId.submit_sm_resp: _MESSAGE_ID,
    # The spec says deliver_sm_resp's message_id is unused (empty); ESMEs that fill it are let be.
    CommandId.deliver_sm_resp: _MESSAGE_ID,
    CommandId.data_sm: (
        _f("service_type", C, 6),
        _f("source_addr_ton", I1),
        _f("source_addr_npi", I1),
        _f("source_addr", C, 65),
        _f("dest_addr_ton", I1),
        _f("dest_addr_npi", I1),
        _f("destination_addr", C, 65),
        _f("esm_class", I1),
        _f("registered_delivery", I1),
        _f("data_coding", I1),
    ),
    CommandId.data_sm_resp: _MESSAGE_ID,
    CommandId.submit_multi: (
        _f("service_type", C, 6),
        *_SOURCE,
        _f("dest_addresses", DESTS),
        *_SM_TAIL,
    ),
    CommandId.submit_multi_resp: (_f("message_id", C, 65), _f("unsuccess_smes", UNSUCC)),
    CommandId.query_sm: (
        _f("message_id", C, 65),
        *_SOURCE,
    ),
    CommandId.query_sm_resp: (
        _f("message_id", C, 65),
        _f("final_date", C, 17),
        _f("message_state", I1),
        _f("error_code", I1),
    ),
    CommandId.cancel_sm: (
        _f("service_type", C, 6),
        _f("message_id", C, 65),
        *_SOURCE,
        *_DEST,
    ),
    CommandId.cancel_sm_resp: (),
    CommandId.replace_sm: (
        _f("message_id", C, 65),
        *_SOURCE,
        _f("schedule_delivery_time", C, 17),
        _f("validity_period", C, 17),
        _f("registered_delivery", I1),
        _f("sm_default_msg_id", I1),
        _f("short_message", SM),
    ),
    CommandId.replace_sm_resp: (),
    CommandId.alert_notification: (
        _f("source_addr_ton", I1),
        _f("source_addr_npi", I1),
        _f("source_addr", C, 65),
        _f("esme_addr_ton", I1),
        _f("esme_addr_npi", I1),
        _f("esme_addr", C, 65),
    ),
}

# PDUs that carry no TLVs in SMPP 3.4; trailing octets there are a length defect.
NO_TLVS: Final = frozenset(
    {
        CommandId.generic_nack,
        CommandId.unbind,
        CommandId.unbind_resp,
        CommandId.enquire_link,
        CommandId.enquire_link_resp,
        CommandId.outbind,
        CommandId.cancel_sm,
        CommandId.cancel_sm_resp,
        CommandId.replace_sm_resp,
        CommandId.query_sm,
        CommandId.query_sm_resp,
    }
)


# The variable-length parts of submit_multi and submit_multi_resp, field by field.
DEST_ADDR: Final = _f("destination_addr", C, 21)
DL_NAME: Final = _f("dl_name", C, 21)


def layout(command_id: int) -> tuple[Field, ...] | None:
    """The mandatory-field layout of a command, None when the command is unknown."""
    return LAYOUTS.get(command_id)


def is_known_command(command_id: int) -> bool:
    return command_id in LAYOUTS


# Time strings are empty (NUL only) or exactly 16 characters (YYMMDDhhmmsstnnp), spec §7.1.
# final_date (query_sm_resp) is left lenient: it comes from upstream SMSCs we do not control.
TIME_FIELDS: Final = frozenset({"schedule_delivery_time", "validity_period"})
