"""iSMS over SMPP, inbound (MO): a deliver_sm from a handset read, and its parts reassembled.

Why this module: the MO path of the adapter (:mod:`bridge.providers.isms_smpp`) is a parser and
a reassembly buffer, both free of I/O. Reassembly is the core's
(:class:`bridge.core.reassembly.ReassemblyBuffer`, the one the SMSC side uses for submit_sm
parts); :class:`MoReassembler` only maps an MO part to the core's fragment and back.

Inbound (MO)
    A deliver_sm that is not a receipt is a message from a handset: decoded text (data_coding 0
    read as ``mo_default_alphabet``), binary otherwise; the user data is short_message or, when
    that is empty, the message_payload TLV (receipts likewise). Concatenated MO (UDH 8/16-bit
    or SAR) is reassembled in memory; parts still missing after ``mo_reassembly_timeout`` are
    given up and what arrived is delivered (in order) rather than lost. The bridge finds the owning
    account by the destination number. An MO nobody owns is answered ESME_ROK (the bridge logs
    and counts it; the SMSC could do nothing better with an error than resend it).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from bridge.core.model import Address, InboundMessage
from bridge.core.reassembly import Fragment, PartKey, ReassemblyBuffer
from bridge.providers.isms_smpp_receipts import user_data
from bridge.smpp.pdu import Pdu
from bridge.smpp.text import TextError, decode_text
from bridge.smpp.udh import Concat, find_concat, parse_udh

__all__ = ["MoPart", "MoReassembler", "inbound_from_parts", "parse_mo"]


@dataclass(frozen=True, slots=True)
class MoPart:
    """One MO deliver_sm: addresses, coding, the user data without the concatenation IE."""

    source: Address
    destination: Address
    data_coding: int
    payload: bytes
    concat: Concat | None = None


def _address(digits: str, ton: int, npi: int) -> Address:
    return Address(digits[1:] if digits.startswith("+") else digits, ton, npi)


def parse_mo(pdu: Pdu) -> MoPart:
    """An MO deliver_sm's parts; a UDH that cannot be read is kept as data (never dropped)."""
    data = user_data(pdu)
    concat: Concat | None = None
    if pdu.get("esm_class", 0) & 0x40 and data:
        try:
            ies, rest = parse_udh(data)
            concat = find_concat(ies)
            data = rest
        except TextError:
            concat = None
    else:
        total = pdu.tlv("sar_total_segments")
        seqnum = pdu.tlv("sar_segment_seqnum")
        if total and seqnum and 1 <= seqnum <= total:
            concat = Concat(pdu.tlv("sar_msg_ref_num", 0), total, seqnum, 16)
    return MoPart(
        source=_address(
            pdu.get("source_addr", ""), pdu.get("source_addr_ton", 0), pdu.get("source_addr_npi", 0)
        ),
        destination=_address(
            pdu.get("destination_addr", ""),
            pdu.get("dest_addr_ton", 0),
            pdu.get("dest_addr_npi", 0),
        ),
        data_coding=pdu.get("data_coding", 0),
        payload=data,
        concat=concat,
    )


def inbound_from_parts(
    parts: Sequence[MoPart], provider: str, received_at: float, default_alphabet: str = "gsm7"
) -> InboundMessage:
    """One InboundMessage from the parts (in order) of an MO: text when the coding is text and
    decodes, else the octets as binary."""
    first = parts[0]
    data = b"".join(p.payload for p in parts)
    text: str | None
    try:
        text = decode_text(data, first.data_coding, default_alphabet=default_alphabet)
        binary = b""
    except (TextError, ValueError):
        text, binary = None, data
    return InboundMessage(
        account="",
        source=first.source,
        destination=first.destination,
        text=text,
        binary=binary,
        received_at=received_at,
        provider=provider,
    )


#: The reference size is part of what tells two MO apart (a PartKey holds it as its namespace).
_NAMESPACE: dict[int, str] = {8: "udh8", 16: "udh16"}
_REF_BITS: dict[str, Literal[8, 16]] = {"udh8": 8, "udh16": 16}


def _fragment(part: MoPart, concat: Concat, now: float) -> Fragment:
    src, dst = part.source, part.destination
    key = PartKey(_NAMESPACE[concat.ref_bits], src.digits, dst.digits, concat.reference)
    meta = bytes((src.ton, src.npi, dst.ton, dst.npi, part.data_coding))
    return Fragment(key, concat.seqnum, concat.total, "", part.payload, now, meta)


def _parts(fragments: Sequence[Fragment]) -> list[MoPart]:
    out: list[MoPart] = []
    for f in fragments:
        key, meta = f.key, f.meta
        out.append(
            MoPart(
                Address(key.source, meta[0], meta[1]),
                Address(key.destination, meta[2], meta[3]),
                meta[4],
                f.payload,
                Concat(key.reference, f.total, f.seqnum, _REF_BITS[key.account]),
            )
        )
    return out


class MoReassembler:
    """Concatenated MO parts by (reference size, source, destination, reference), until all are
    there or ``timeout`` seconds after the first one.

    The rules are the core buffer's (:class:`~bridge.core.reassembly.ReassemblyBuffer`): a part
    with another total under the same reference ends the earlier set, a part arriving after its
    set's deadline opens a new one, and beyond ``max_messages`` sets the oldest is given up.
    """

    def __init__(self, timeout: float, max_messages: int = 10_000) -> None:
        self._buffer = ReassemblyBuffer(timeout, max_messages)

    def __len__(self) -> int:
        return len(self._buffer)

    def add(self, part: MoPart, now: float) -> tuple[list[MoPart] | None, list[list[MoPart]]]:
        """(the whole message's parts in order once complete, else None; the parts of the
        messages this part made the buffer give up, each to be delivered as it is)."""
        c = part.concat
        if c is None or c.total <= 1:
            return [part], []
        assembled, displaced = self._buffer.add(_fragment(part, c, now))
        whole = _parts(assembled.fragments) if assembled is not None else None
        return whole, [_parts(i.fragments) for i in displaced]

    def expired(self, now: float, *, everything: bool = False) -> list[list[MoPart]]:
        """Give up on the messages whose time is up (all of them with ``everything``): their
        parts so far, in order."""
        return [_parts(i.fragments) for i in self._buffer.expire(math.inf if everything else now)]
