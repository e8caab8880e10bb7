"""The User Data Header (3GPP TS 23.040 §9.2.3.24) and splitting long messages into parts.

Why this module: a message longer than one SMS travels as parts that carry a concatenation IE in
their UDH (or, over SMPP, the SAR TLVs); cutting text into such parts is the same job whoever
sends it — the test ESME (``smpp-bridge send``), the upstream SMSC simulator, the iSMS SMPP
adapter — so it is done once, here, on top of the text codec of :mod:`bridge.smpp.text`.
Sans-IO: pure functions from ``str``/``bytes`` to parts.

Errors in the data (a malformed UDH, a text that needs more than 255 parts) raise
:class:`~bridge.smpp.text.TextError`; misuse of the API raises plain :class:`ValueError`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from bridge.smpp.text import (
    DEFAULT_ALPHABETS,
    GSM7_ESCAPE,
    PYTHON_CODECS,
    SINGLE_OCTET_ALPHABETS,
    TextError,
    encode_text,
    parse_data_coding,
    text_alphabet,
)

__all__ = [
    "MAX_PARTS",
    "Concat",
    "InformationElement",
    "Segment",
    "build_udh",
    "concat_ie",
    "find_concat",
    "message_capacity",
    "parse_udh",
    "part_room",
    "split_binary",
    "split_text",
    "split_user_data",
]

# --------------------------------------------------------------------------------------------
# UDH (3GPP TS 23.040 §9.2.3.24)
# --------------------------------------------------------------------------------------------

IEI_CONCAT_8 = 0x00
IEI_CONCAT_16 = 0x08
IEI_PORT_8 = 0x04
IEI_PORT_16 = 0x05


@dataclass(frozen=True, slots=True)
class InformationElement:
    """One UDH information element: identifier and data (the length octet is implied)."""

    iei: int
    data: bytes


@dataclass(frozen=True, slots=True)
class Concat:
    """A concatenated-SM information element: part ``seqnum`` (1-based) of ``total``."""

    reference: int
    total: int
    seqnum: int
    ref_bits: Literal[8, 16]


def parse_udh(payload: bytes) -> tuple[list[InformationElement], bytes]:
    """Split user data that starts with a UDH into (information elements, the rest).

    Walks every IE rather than matching a ``05 00 03`` prefix, because port-addressed and
    class-2 messages put other IEs first. Raises :class:`TextError` when the UDHL overruns the
    payload or an IE overruns the header.
    """
    if not payload:
        raise TextError("user data header indicated but the user data is empty")
    end = 1 + payload[0]
    if end > len(payload):
        raise TextError(f"UDH length {payload[0]} overruns the {len(payload)}-octet user data")
    ies: list[InformationElement] = []
    pos = 1
    while pos < end:
        if pos + 2 > end:
            raise TextError(f"UDH information element at octet {pos} is truncated")
        data_end = pos + 2 + payload[pos + 1]
        if data_end > end:
            raise TextError(
                f"UDH information element 0x{payload[pos]:02X} at octet {pos} overruns the header"
            )
        ies.append(InformationElement(payload[pos], payload[pos + 2 : data_end]))
        pos = data_end
    return ies, payload[end:]


def build_udh(ies: Sequence[InformationElement]) -> bytes:
    """Serialise IEs into a UDH, UDHL octet first (an empty sequence gives ``b"\\x00"``)."""
    body = bytearray()
    for ie in ies:
        if not 0 <= ie.iei <= 0xFF:
            raise ValueError(f"IEI {ie.iei} is not one octet")
        if len(ie.data) > 0xFF:
            raise ValueError(f"IE 0x{ie.iei:02X} data is longer than 255 octets")
        body.append(ie.iei)
        body.append(len(ie.data))
        body += ie.data
    if len(body) > 0xFF:
        raise ValueError("UDH is longer than 255 octets")
    return bytes((len(body),)) + body


def find_concat(ies: Sequence[InformationElement]) -> Concat | None:
    """The concatenation IE (0x00 8-bit or 0x08 16-bit reference) among ``ies``, if any.

    If several are present the last one wins, as 23.040 prescribes for repeated or mutually
    exclusive IEs. Raises :class:`TextError` for a wrong IE length, a total of 0, a part number
    of 0 or a part number above the total: such a part can never be reassembled.
    """
    found: Concat | None = None
    for ie in ies:
        if ie.iei == IEI_CONCAT_8:
            if len(ie.data) != 3:
                raise TextError(f"concatenation IE 0x00 must be 3 octets, got {len(ie.data)}")
            found = Concat(ie.data[0], ie.data[1], ie.data[2], 8)
        elif ie.iei == IEI_CONCAT_16:
            if len(ie.data) != 4:
                raise TextError(f"concatenation IE 0x08 must be 4 octets, got {len(ie.data)}")
            found = Concat(int.from_bytes(ie.data[:2], "big"), ie.data[2], ie.data[3], 16)
        else:
            continue
        if found.total == 0 or found.seqnum == 0 or found.seqnum > found.total:
            raise TextError(f"invalid concatenation: part {found.seqnum} of {found.total}")
    return found


def _check_ref(reference: int, ref_bits: int) -> None:
    if ref_bits not in (8, 16):
        raise ValueError(f"ref_bits must be 8 or 16, got {ref_bits}")
    if not 0 <= reference < (1 << ref_bits):
        raise ValueError(f"reference {reference} does not fit in {ref_bits} bits")


def concat_ie(reference: int, total: int, seqnum: int, ref_bits: int = 8) -> InformationElement:
    """The concatenation IE for part ``seqnum`` of ``total`` (IEI 0x00, or 0x08 for 16 bits)."""
    _check_ref(reference, ref_bits)
    if not 1 <= total <= 255:
        raise ValueError(f"total must be 1..255, got {total}")
    if not 1 <= seqnum <= total:
        raise ValueError(f"seqnum must be 1..{total}, got {seqnum}")
    if ref_bits == 8:
        return InformationElement(IEI_CONCAT_8, bytes((reference, total, seqnum)))
    return InformationElement(IEI_CONCAT_16, reference.to_bytes(2, "big") + bytes((total, seqnum)))


# --------------------------------------------------------------------------------------------
# Splitting
# --------------------------------------------------------------------------------------------

MAX_PARTS = 255

#: The unit a part's capacity is counted in: septets, UCS-2 code units or octets.
Unit = Literal["gsm7", "ucs2", "octets"]

#: Octets of user data in one SMS (23.040 §9.2.3.24: TP-UDL counts at most 140 octets).
_USER_DATA_OCTETS = 140


@dataclass(frozen=True, slots=True)
class Segment:
    """One SMS of a message: ``udh`` (with UDHL, or ``b""`` when none) + ``payload``.

    ``payload`` is encoded as SMPP carries it: unpacked GSM 7-bit septets, UTF-16BE, or octets.
    """

    payload: bytes
    udh: bytes


def _unit(alphabet: str) -> Unit:
    return "gsm7" if alphabet == "gsm7" else "ucs2" if alphabet == "ucs2" else "octets"


def part_room(unit: Unit, udh_octets: int = 0) -> int:
    """How many units fit in one SMS beside a UDH of ``udh_octets`` octets (UDHL included).

    140 octets of user data: 160 septets, 70 UCS-2 code units or 140 octets alone; after a
    6-octet (8-bit reference) concatenation UDH 153 / 67 / 134, after a 7-octet (16-bit) one
    152 / 66 / 133. GSM 7-bit counts septets as packed on the air: the UDH takes whole septets.
    """
    room = _USER_DATA_OCTETS - udh_octets
    if unit == "gsm7":
        return room * 8 // 7
    if unit == "ucs2":
        return room // 2
    return room


def _concat_udh_octets(ref_bits: int, extra_udh: bytes) -> int:
    """The UDH of a concatenated part: the UDHL, the ESME's other IEs, the 5/6-octet IE."""
    return (len(extra_udh) if extra_udh else 1) + (5 if ref_bits == 8 else 6)


def message_capacity(
    data_coding: int, parts: int = 1, ref_bits: int = 8, *, default_alphabet: str = "gsm7"
) -> int:
    """Per-part capacity in the coding's unit (septets, UCS-2 code units or octets).

    ``parts`` 1 means an SMS without UDH; more parts leave room for the concatenation UDH.
    Non-text codings (binary, compressed, reserved) count octets.
    """
    if not 1 <= parts <= MAX_PARTS:
        raise ValueError(f"parts must be 1..{MAX_PARTS}, got {parts}")
    if ref_bits not in (8, 16):
        raise ValueError(f"ref_bits must be 8 or 16, got {ref_bits}")
    coding = parse_data_coding(data_coding)
    if data_coding == 0:
        if default_alphabet not in DEFAULT_ALPHABETS:
            raise ValueError(f"default_alphabet must be one of {sorted(DEFAULT_ALPHABETS)}")
        alphabet: str = default_alphabet
    else:
        alphabet = "binary" if coding.compressed else coding.alphabet
    unit = _unit(alphabet)
    if parts == 1:
        return part_room(unit)
    return part_room(unit, _concat_udh_octets(ref_bits, b""))


def _segments(
    chunks: list[bytes],
    reference: int,
    ref_bits: int,
    extra_ies: Sequence[InformationElement],
    extra_udh: bytes,
) -> list[Segment]:
    total = len(chunks)
    if total == 1:
        return [Segment(chunks[0], extra_udh)]
    if total > MAX_PARTS:
        raise TextError(f"message needs {total} parts, more than the {MAX_PARTS} allowed")
    return [
        Segment(chunk, build_udh([*extra_ies, concat_ie(reference, total, seqnum, ref_bits)]))
        for seqnum, chunk in enumerate(chunks, 1)
    ]


def _cut(encoded: bytes, size: int, back_off: Callable[[bytes, int], int]) -> list[bytes]:
    """Slice ``encoded`` into pieces of at most ``size`` octets; ``back_off(encoded, cut)`` says
    how many octets to move a cut back so that it does not fall inside a pair."""
    chunks: list[bytes] = []
    pos = 0
    length = len(encoded)
    while pos < length:
        end = pos + size
        if end < length:
            end -= back_off(encoded, end)
        chunks.append(encoded[pos:end])
        pos = end
    return chunks


def _gsm7_escape_back_off(encoded: bytes, cut: int) -> int:
    # 0x1B is never an escaped code, so a 0x1B just before the cut is always an escape prefix.
    return 1 if encoded[cut - 1] == GSM7_ESCAPE else 0


def _surrogate_back_off(encoded: bytes, cut: int) -> int:
    # The last code unit before the cut is a high surrogate: its low half is after the cut.
    return 2 if 0xD8 <= encoded[cut - 2] <= 0xDB else 0


def _no_back_off(encoded: bytes, cut: int) -> int:
    return 0


_BACK_OFF: dict[Unit, Callable[[bytes, int], int]] = {
    "gsm7": _gsm7_escape_back_off,
    "ucs2": _surrogate_back_off,
    "octets": _no_back_off,
}


def _split_by_characters(text: str, codec: str, size: int) -> list[bytes]:
    """For multi-octet charsets (Shift_JIS, ISO-2022-JP, EUC-KR): cut between characters, each
    part encoded on its own (so ISO-2022-JP parts each carry their own escape sequences)."""
    chunks: list[bytes] = []
    pos = 0
    while pos < len(text):
        # Binary search for the longest prefix that fits; every character is at least one
        # octet in these charsets, so no prefix longer than ``size`` characters can fit.
        low, high = pos + 1, min(len(text), pos + size)
        while low < high:
            mid = (low + high + 1) // 2
            if len(text[pos:mid].encode(codec)) <= size:
                low = mid
            else:
                high = mid - 1
        chunk = text[pos:low].encode(codec)
        if len(chunk) > size:
            raise TextError(f"character {text[pos]!r} does not fit in a part")
        chunks.append(chunk)
        pos = low
    return chunks


def _limits(unit: Unit, ref_bits: int, extra_udh: bytes, max_single: int | None) -> tuple[int, int]:
    """(units in a lone part, units in each part of a concatenated message)."""
    single = part_room(unit, len(extra_udh))
    per_part = part_room(unit, _concat_udh_octets(ref_bits, extra_udh))
    if max_single is not None:
        if max_single < 2:
            raise ValueError(f"max_single must be at least 2, got {max_single}")
        single = max_single
        per_part = min(per_part, max_single)
    return single, per_part


def split_user_data(
    data: bytes,
    unit: Unit,
    *,
    reference: int,
    ref_bits: int = 8,
    extra_ies: Sequence[InformationElement] = (),
    max_single: int | None = None,
) -> list[Segment]:
    """Cut encoded user data (``unit``: unpacked GSM septets, UTF-16BE or octets) into parts.

    One part if it fits, with ``extra_ies`` (other IEs the message carries, e.g. ports) as its
    UDH; otherwise parts whose UDH holds ``extra_ies`` and then the concatenation IE for an
    8/16-bit ``reference``, each as large as that UDH leaves room for. A GSM escape pair or a
    UTF-16 surrogate pair is never split across parts. ``max_single`` as for
    :func:`split_text`. Raises :class:`TextError` when more than 255 parts are needed.
    """
    _check_ref(reference, ref_bits)
    extra_udh = build_udh(extra_ies) if extra_ies else b""
    single, per_part = _limits(unit, ref_bits, extra_udh, max_single)
    width = 2 if unit == "ucs2" else 1  # octets per capacity unit
    if len(data) <= single * width:
        return [Segment(data, extra_udh)]
    chunks = _cut(data, per_part * width, _BACK_OFF[unit])
    return _segments(chunks, reference, ref_bits, extra_ies, extra_udh)


def split_text(
    text: str,
    data_coding: int,
    *,
    reference: int,
    ref_bits: int = 8,
    default_alphabet: str = "gsm7",
    max_single: int | None = None,
    extra_ies: Sequence[InformationElement] = (),
) -> list[Segment]:
    """Encode ``text`` and split it into SMS parts with concatenation UDHs when it is too long.

    One part without UDH if it fits (160 septets, 70 UCS-2 code units, 140 octets); otherwise
    parts of 153/152 septets, 67/66 code units or 134/133 octets for an 8/16-bit ``reference``.
    ``max_single`` (in the same units, at least 2) replaces the one-part limit: larger for a
    route that takes the whole text in message_payload, smaller for a route with a tighter
    limit, in which case no part exceeds it either. ``extra_ies`` go in front of every part
    (and leave less room in each). A GSM escape pair or a UTF-16 surrogate pair is never split
    across parts, so every part decodes on its own. Raises :class:`TextError` when the text
    cannot be encoded or needs more than 255 parts.
    """
    _check_ref(reference, ref_bits)
    alphabet = text_alphabet(data_coding, default_alphabet)
    if max_single is not None and max_single < 2:
        raise ValueError(f"max_single must be at least 2, got {max_single}")
    encoded = encode_text(text, data_coding, default_alphabet=default_alphabet)
    if alphabet == "gsm7" or alphabet == "ucs2" or alphabet in SINGLE_OCTET_ALPHABETS:
        return split_user_data(
            encoded,
            _unit(alphabet),
            reference=reference,
            ref_bits=ref_bits,
            extra_ies=extra_ies,
            max_single=max_single,
        )
    extra_udh = build_udh(extra_ies) if extra_ies else b""
    single, per_part = _limits("octets", ref_bits, extra_udh, max_single)
    if len(encoded) <= single:
        return [Segment(encoded, extra_udh)]
    chunks = _split_by_characters(text, PYTHON_CODECS[alphabet], per_part)
    return _segments(chunks, reference, ref_bits, extra_ies, extra_udh)


def split_binary(
    data: bytes,
    *,
    reference: int,
    ref_bits: int = 8,
    extra_ies: Sequence[InformationElement] = (),
) -> list[Segment]:
    """Split 8-bit data: one part up to 140 octets, else parts of 134/133 octets with UDHs."""
    return split_user_data(
        data, "octets", reference=reference, ref_bits=ref_bits, extra_ies=extra_ies
    )
