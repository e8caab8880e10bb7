"""iSMS over SMPP, the MT path: a message encoded, split into submit_sm and the answers read.

Why this module: what the adapter (:mod:`bridge.providers.isms_smpp`) sends is pure translation
— a :class:`~bridge.core.model.Message` in, submit_sm PDUs out, a submit_sm_resp status in, an
outcome out — and is tested as such, apart from the client and its timing. Splitting itself is
:func:`bridge.smpp.udh.split_user_data`, the tree's one splitter; what is iSMS's own here is the
choice of coding and the four ways of sending a long message (``concat``).

Sending (:meth:`~bridge.providers.isms_smpp.IsmsSmppProvider.send`)
    The text is encoded anew, independent of how the ESME sent it: GSM 7-bit (data_coding 0x00,
    unpacked septets) when every character has a GSM code, else UCS-2 (0x08); a flash message
    gets message class 0 (0x10 / 0x18). Binary content keeps the ESME's data_coding (class 0
    added for flash) and its octets. A message longer than one SMS is split into parts with a
    concatenation UDH (``concat = "udh8"``: 8-bit reference, 153 septets / 67 UCS-2 characters a
    part; ``"udh16"``: 16-bit reference, 152 / 66) or with the SAR TLVs (``"sar"``: the SMSC
    builds the UDH; 152 / 66, room for a 16-bit one), or whole in one submit_sm whose
    message_payload TLV carries the text (``"payload"``: short_message empty, the SMSC cuts it;
    a message that fits one SMS still goes in short_message). Other UDH elements the ESME sent
    (ports) go in front of every part (of the payload). The reference is derived from our
    message id (CRC-32), so a message sent again after a restart carries the same reference and
    a handset can drop the duplicate parts. Every part is one submit_sm through the client,
    which keeps the shared TPS limit (``requests_per_second``, 700 by default, iSMS's figure),
    the window and the binds. schedule_delivery_time and validity_period go through as absolute
    SMPP times (UTC); registered_delivery asks for receipts only as the ESME asked (bits 0–1
    and 0x10).

submit_sm_resp
    ESME_ROK: the part is taken. ESME_RTHROTTLED: all sending pauses (``throttle_pause``,
    doubling while the throttling goes on, at most ``throttle_pause_max``) and the part is sent
    again, up to ``throttle_retries`` times, then the send is TRANSIENT. ESME_RMSGQFUL,
    ESME_RX_T_APPN, ESME_RSYSERR, ESME_RINVBNDSTS, a generic_nack without status and every
    :class:`~bridge.smpp.client.ClientError` (not bound, response timeout, connection lost) are
    TRANSIENT (MSGQFUL pauses sending too). Every other status is PERMANENT with ``err`` = the
    status value (capped at 999). See :func:`classify_status`.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from bridge.core.model import Message, OutcomeKind
from bridge.smpp.pdu import CommandId, Pdu, Status
from bridge.smpp.receipt_text import ERR_MAX
from bridge.smpp.text import TextError, gsm7_encode, is_gsm7
from bridge.smpp.timefmt import format_smpp_time
from bridge.smpp.udh import Unit, build_udh, parse_udh, part_room, split_user_data

if TYPE_CHECKING:
    from bridge.providers.isms_smpp import Settings

__all__ = [
    "MAX_PAYLOAD",
    "TRANSIENT_STATUSES",
    "ConcatMode",
    "Part",
    "build_submit",
    "canonical_id",
    "classify_status",
    "message_coding",
    "reference_for",
    "split_message",
]

ConcatMode = Literal["udh8", "udh16", "sar", "payload"]

#: How the upstream gets the text: GSM 7-bit, UCS-2, or the ESME's octets as they are.
Alphabet = Literal["gsm7", "ucs2", "binary"]


@dataclass(frozen=True, slots=True)
class Part:
    """One submit_sm's user data: ``short_message`` (UDH included when ``esm_class`` has 0x40)
    and, in SAR mode, (reference, total, seqnum) for the SAR TLVs. ``payload``: the user data
    goes in the message_payload TLV, short_message stays empty (SMPP 3.4 §5.3.2.32)."""

    short_message: bytes
    esm_class: int
    data_coding: int
    sar: tuple[int, int, int] | None = None
    payload: bool = False


def message_coding(message: Message) -> tuple[int, Alphabet]:
    """(data_coding, alphabet) for the upstream: GSM 7-bit when the text allows, else UCS-2;
    class 0 for flash; binary keeps the ESME's data_coding."""
    if message.text is None:
        dc = message.data_coding
        if message.flash and dc in (0x02, 0x04):
            dc = 0x14  # 8-bit data, message class 0
        return dc, "binary"
    if is_gsm7(message.text):
        return (0x10 if message.flash else 0x00), "gsm7"
    return (0x18 if message.flash else 0x08), "ucs2"


def reference_for(message_id: str, bits: int) -> int:
    """The concatenation reference for a message: stable across restarts and retries."""
    return zlib.crc32(message_id.encode()) & ((1 << bits) - 1)


#: message_payload is at most 64 K octets (SMPP 3.4 §5.3.2.32).
MAX_PAYLOAD = 65535

_UNIT: dict[Alphabet, Unit] = {"gsm7": "gsm7", "ucs2": "ucs2", "binary": "octets"}


def split_message(message: Message, concat: ConcatMode, reference: int) -> list[Part]:
    """Encode ``message`` and cut it into submit_sm parts (see the module docstring).

    Raises :class:`~bridge.smpp.text.TextError` when the text cannot be encoded or would need
    more than 255 parts.
    """
    dc, alphabet = message_coding(message)
    if alphabet == "binary":
        data = message.binary
    elif alphabet == "gsm7":
        data = gsm7_encode(message.text or "")
    else:
        data = (message.text or "").encode("utf-16-be", "surrogatepass")
    unit = _UNIT[alphabet]
    # The ESME's other IEs (ports ...) go in front of every part.
    extra_ies = parse_udh(message.udh)[0] if message.udh else []
    if concat == "payload":
        # One submit_sm: in short_message when it fits one SMS, else whole in message_payload.
        udh = build_udh(extra_ies) if extra_ies else b""
        room = part_room(unit, len(udh)) * (2 if unit == "ucs2" else 1)
        if len(data) <= room:
            return [Part(udh + data, 0x40 if udh else 0, dc)]
        if len(udh) + len(data) > MAX_PAYLOAD:
            raise TextError(f"message longer than {MAX_PAYLOAD} octets")
        return [Part(udh + data, 0x40 if udh else 0, dc, payload=True)]
    bits = 8 if concat == "udh8" else 16
    segments = split_user_data(
        data, unit, reference=reference & ((1 << bits) - 1), ref_bits=bits, extra_ies=extra_ies
    )
    if concat != "sar" or len(segments) == 1:
        return [Part(s.udh + s.payload, 0x40 if s.udh else 0, dc) for s in segments]
    # SAR: parts as large as beside a 16-bit reference UDH, which the SMSC builds from the SAR
    # TLVs; only the ESME's own IEs go in front of the user data.
    udh = build_udh(extra_ies) if extra_ies else b""
    ref, total = reference & 0xFFFF, len(segments)
    return [
        Part(udh + s.payload, 0x40 if udh else 0, dc, (ref, total, seqnum))
        for seqnum, s in enumerate(segments, 1)
    ]


def build_submit(message: Message, part: Part, settings: Settings, now: float) -> Pdu:
    """The submit_sm for one part of ``message``."""
    src = message.source
    if src.ton == 5:
        src_ton, src_npi = 5, 0
    else:
        src_ton, src_npi = src.ton, src.npi
    if settings.source_ton is not None:
        src_ton = settings.source_ton
    if settings.source_npi is not None:
        src_npi = settings.source_npi
    schedule = ""
    if settings.scheduling and message.schedule_at is not None and message.schedule_at > now:
        schedule = format_smpp_time(message.schedule_at)
    validity = ""
    if settings.validity and message.expire_at is not None and message.expire_at > now:
        validity = format_smpp_time(message.expire_at)
    pdu = Pdu(
        CommandId.submit_sm,
        fields={
            "service_type": settings.service_type,
            "source_addr_ton": src_ton,
            "source_addr_npi": src_npi,
            "source_addr": src.digits,
            "dest_addr_ton": settings.dest_ton,
            "dest_addr_npi": settings.dest_npi,
            "destination_addr": message.destination.digits,
            "esm_class": part.esm_class,
            "protocol_id": message.protocol_id,
            "priority_flag": min(max(message.priority, 0), 3),
            "schedule_delivery_time": schedule,
            "validity_period": validity,
            "registered_delivery": message.registered_delivery & 0x13,
            "replace_if_present_flag": 0,
            "data_coding": part.data_coding,
            "sm_default_msg_id": 0,
            "short_message": b"" if part.payload else part.short_message,
        },
    )
    if part.payload:
        pdu.set_tlv("message_payload", part.short_message)
    if part.sar is not None:
        ref, total, seqnum = part.sar
        pdu.set_tlv("sar_msg_ref_num", ref)
        pdu.set_tlv("sar_total_segments", total)
        pdu.set_tlv("sar_segment_seqnum", seqnum)
    return pdu


# --------------------------------------------------------------------------- submit_sm_resp

#: command_status values that mean "not now" rather than "never" (the module docstring).
TRANSIENT_STATUSES: frozenset[int] = frozenset(
    {
        Status.ESME_RTHROTTLED,
        Status.ESME_RMSGQFUL,
        Status.ESME_RX_T_APPN,
        Status.ESME_RSYSERR,
        Status.ESME_RINVBNDSTS,
    }
)


def classify_status(status: int) -> tuple[OutcomeKind, int]:
    """(kind, err) for a submit_sm_resp command_status: ACCEPTED for 0, TRANSIENT for the
    statuses in :data:`TRANSIENT_STATUSES`, else PERMANENT; err is the status, capped at 999."""
    if status == Status.ESME_ROK:
        return OutcomeKind.ACCEPTED, 0
    err = min(status, ERR_MAX)
    if status in TRANSIENT_STATUSES:
        return OutcomeKind.TRANSIENT, err
    return OutcomeKind.PERMANENT, err


def canonical_id(raw: str, fmt: Literal["same", "decimal", "hex"], *, receipt: bool) -> str:
    """The form under which an upstream id is stored and looked up.

    ``same``: as given. ``decimal`` (the SMSC answers submit_sm with a hex id and writes it in
    decimal in receipts) and ``hex`` (the reverse): both sides become the decimal number, so
    the correlation survives a restart. An id that does not parse in its base stays as it is.
    """
    raw = raw.strip()
    if fmt == "same":
        return raw
    hex_side = (fmt == "decimal") != receipt  # which side is written in hex
    try:
        return str(int(raw, 16 if hex_side else 10))
    except ValueError:
        return raw
