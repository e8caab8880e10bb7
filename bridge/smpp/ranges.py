"""The value ranges of SMPP 3.4 §5.2 for the requests an ESME sends, each with its precise status.

The decoder (:mod:`bridge.smpp.pdu`) checks what makes a PDU unreadable (lengths, C-string
sizes, TLV framing); this module checks what a readable PDU may not say (issue 14, finding 12;
the README's "Protocol errors" table lists the answers):

=======================================  ============================  =====================
field (§)                                allowed                       otherwise
=======================================  ============================  =====================
source_addr_ton / dest_addr_ton (5.2.5)  0–6                           ESME_RINVSRCTON / RINVDSTTON
source_addr_npi / dest_addr_npi (5.2.6)  0, 1, 3, 4, 6, 8, 9, 10,      ESME_RINVSRCNPI / RINVDSTNPI
                                         14, 18
esm_class (5.2.12), ESME to SMSC         message type 0, 2 or 4        ESME_RINVESMCLASS
                                         (bits 5..2); any mode/GSM
priority_flag (5.2.14)                   0–3                           ESME_RINVPRTFLG
registered_delivery (5.2.17)             bits 1..0 not 11, 7..5 zero   ESME_RINVREGDLVFLG
replace_if_present_flag (5.2.18)         0–1                           ESME_RINVREPFLAG
sm_default_msg_id (5.2.20)               0–254                         ESME_RINVDFTMSGID
sm_length (5.2.21)                       0–254                         ESME_RINVMSGLEN
number_of_dests (5.2.24)                 1–254                         ESME_RINVNUMDESTS
=======================================  ============================  =====================

data_coding is not range-checked: besides the SMPP 3.4 table, ESMEs send the GSM 03.38 data
coding groups (0x10–0x1F, 0xF0–0xFF) and the text layer interprets them.

One pass over a few dict look-ups per request, no allocation: it runs on the hot path.
"""

from __future__ import annotations

from typing import Final

from bridge.smpp.pdu import CommandId, DestAddress, Pdu, Status

__all__ = ["check_ranges"]

_TON_MAX: Final = 6
_NPI: Final = frozenset({0, 1, 3, 4, 6, 8, 9, 10, 14, 18})
# esm_class bits 5..2 from an ESME: default, delivery acknowledgement, manual acknowledgement
_ESM_TYPES: Final = frozenset({0x00, 0x08, 0x10})

_SOURCE: Final = (
    ("source_addr_ton", "source_addr_npi", Status.ESME_RINVSRCTON, Status.ESME_RINVSRCNPI),
)
_SOURCE_DEST: Final = (
    *_SOURCE,
    ("dest_addr_ton", "dest_addr_npi", Status.ESME_RINVDSTTON, Status.ESME_RINVDSTNPI),
)
_ADDRESSES: Final[dict[int, tuple[tuple[str, str, Status, Status], ...]]] = {
    CommandId.submit_sm: _SOURCE_DEST,
    CommandId.data_sm: _SOURCE_DEST,
    CommandId.cancel_sm: _SOURCE_DEST,
    CommandId.submit_multi: _SOURCE,
    CommandId.query_sm: _SOURCE,
    CommandId.replace_sm: _SOURCE,
}
_MESSAGE: Final = frozenset({CommandId.submit_sm, CommandId.submit_multi})
_WITH_TEXT: Final = frozenset({CommandId.submit_sm, CommandId.submit_multi, CommandId.replace_sm})


_SUBMIT_SM: Final = int(CommandId.submit_sm)


def check_ranges(
    pdu: Pdu, _npi: frozenset[int] = _NPI, _esm: frozenset[int] = _ESM_TYPES
) -> tuple[int, str] | None:
    """(status, what) for the first field of ``pdu`` outside its §5.2 range, else None."""
    if pdu.command_id == _SUBMIT_SM:
        # The hot path: one expression over the decoded fields (~0.2 µs); the field-by-field
        # walk below only runs to name what is wrong.
        f = pdu.fields
        try:
            rd = f["registered_delivery"]
            if (
                f["source_addr_ton"] <= 6  # _TON_MAX
                and f["dest_addr_ton"] <= 6
                and f["source_addr_npi"] in _npi
                and f["dest_addr_npi"] in _npi
                and f["esm_class"] & 0x3C in _esm
                and f["priority_flag"] <= 3
                and f["replace_if_present_flag"] <= 1
                and not rd & 0xE0
                and rd & 0x03 != 0x03
                and f["sm_default_msg_id"] <= 254
                and len(f["short_message"]) <= 254
            ):
                return None
        except KeyError:  # a PDU built by hand, without every field: the careful walk
            pass
    return _walk(pdu)


def _walk(pdu: Pdu) -> tuple[int, str] | None:
    cid = pdu.command_id
    f = pdu.fields
    for ton_name, npi_name, ton_status, npi_status in _ADDRESSES.get(cid, ()):
        if f.get(ton_name, 0) > _TON_MAX:
            return ton_status, ton_name
        if f.get(npi_name, 0) not in _NPI:
            return npi_status, npi_name
    if (cid in _MESSAGE or cid == CommandId.data_sm) and f.get(
        "esm_class", 0
    ) & 0x3C not in _ESM_TYPES:
        return Status.ESME_RINVESMCLASS, "esm_class message type"
    if cid in _MESSAGE:
        if f.get("priority_flag", 0) > 3:
            return Status.ESME_RINVPRTFLG, "priority_flag"
        if f.get("replace_if_present_flag", 0) > 1:
            return Status.ESME_RINVREPFLAG, "replace_if_present_flag"
    rd = f.get("registered_delivery", 0)
    if rd & 0xE0 or rd & 0x03 == 0x03:
        return Status.ESME_RINVREGDLVFLG, "registered_delivery"
    if cid in _WITH_TEXT:
        if f.get("sm_default_msg_id", 0) > 254:
            return Status.ESME_RINVDFTMSGID, "sm_default_msg_id"
        if len(f.get("short_message", b"")) > 254:
            return Status.ESME_RINVMSGLEN, "sm_length"
    if cid == CommandId.submit_multi:
        dests = f.get("dest_addresses", ())
        if len(dests) > 254:
            return Status.ESME_RINVNUMDESTS, "number_of_dests"
        for d in dests:
            if isinstance(d, DestAddress):
                if d.dest_addr_ton > _TON_MAX:
                    return Status.ESME_RINVDSTTON, "dest_addr_ton"
                if d.dest_addr_npi not in _NPI:
                    return Status.ESME_RINVDSTNPI, "dest_addr_npi"
    return None
