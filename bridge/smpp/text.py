"""SMS text: GSM 03.38 (3GPP TS 23.038) and what data_coding means for text.

The User Data Header and splitting a long message into parts are in :mod:`bridge.smpp.udh`.

Why our own GSM 03.38 codec instead of a package: speed and correctness. The ``gsm0338`` codec
package is about 40x slower (~20 k encodes/s against 0.77 M/s for our first prototype, see
docs/architecture.md; this version does several M/s on Latin-script text), and smpplib's table
maps ``§`` and the backtick wrongly (0x5F is ``§``; the backtick is not in the alphabet at all,
so it must force UCS-2 rather than silently become ``¿``). The hot paths are C-level primitives:
``str.encode('latin-1')`` + ``bytes.translate`` with a prebuilt 256-entry table for the common
case, ``codecs.charmap_encode``/``charmap_decode`` otherwise, and septet packing on one big
integer with log2(n) mask-and-shift rounds instead of a loop per bit.

Everything here is sans-IO: pure functions from ``str``/``bytes`` to ``str``/``bytes``.

Conventions, as SMPP carries text:

* GSM 7-bit text in ``short_message`` is *unpacked*, one septet per octet (what nearly every SMSC
  does for data_coding 0); :func:`gsm7_pack`/:func:`gsm7_unpack` exist for the air-interface or
  for the few carriers that want packed octets.
* UCS-2 is sent as UTF-16BE without BOM; characters outside the BMP (emoji) become surrogate
  pairs, which handsets display correctly, so we accept and produce them.
* data_coding 0 ("SMSC default alphabet") is configurable per account, because real ESMEs send
  Latin-1 or ASCII under 0; every other value means what the SMPP 3.4 table (0x00-0x0F) or
  the 3GPP TS 23.038 DCS groups (0x10-0xFF) say.

Errors in the *data* (undecodable bytes, a character the coding cannot carry; in
:mod:`bridge.smpp.udh` a malformed UDH) raise :class:`TextError` so that callers can turn them
into an SMPP error status; misuse of the API (a data_coding beyond one octet, an unknown
``default_alphabet``) raises plain :class:`ValueError`.
"""

from __future__ import annotations

import codecs
import functools
from dataclasses import dataclass
from typing import Literal, TypeAlias

__all__ = [
    "Alphabet",
    "Coding",
    "TextError",
    "choose_coding",
    "decode_text",
    "encode_text",
    "gsm7_decode",
    "gsm7_encode",
    "gsm7_fill_bits",
    "gsm7_pack",
    "gsm7_septet_count",
    "gsm7_unpack",
    "is_gsm7",
    "parse_data_coding",
]


class TextError(ValueError):
    """User data that cannot be decoded, or text that cannot be encoded in the requested coding."""


# --------------------------------------------------------------------------------------------
# GSM 03.38 tables (3GPP TS 23.038 §6.2.1 and §6.2.1.1)
# --------------------------------------------------------------------------------------------

GSM7_ESCAPE = 0x1B

#: The default alphabet, indexed by septet value. 0x1B is the escape to the extension table;
#: it is not a character, so its slot holds a placeholder that no text can contain.
_GSM7_BASE = (
    "@£$¥èéùìòÇ\nØø\rÅå"  # 0x00-0x0F (0x09 is capital Ç per 23.038, not ç)
    "Δ_ΦΓΛΩΠΨΣΘΞ\x1bÆæßÉ"  # 0x10-0x1F
    " !\"#¤%&'()*+,-./"  # 0x20-0x2F (0x24 is the currency sign ¤, not $)
    "0123456789:;<=>?"  # 0x30-0x3F
    "¡ABCDEFGHIJKLMNO"  # 0x40-0x4F (0x40 is ¡, not @)
    "PQRSTUVWXYZÄÖÑÜ§"  # 0x50-0x5F (0x5F is §, not _)
    "¿abcdefghijklmno"  # 0x60-0x6F (0x60 is ¿, the backtick is not in the alphabet)
    "pqrstuvwxyzäöñüà"  # 0x70-0x7F
)
assert len(_GSM7_BASE) == 128

#: The extension table: character -> septet that follows the 0x1B escape.
_GSM7_EXT: dict[str, int] = {
    "\x0c": 0x0A,  # form feed (page break)
    "^": 0x14,
    "{": 0x28,
    "}": 0x29,
    "\\": 0x2F,
    "[": 0x3C,
    "~": 0x3D,
    "]": 0x3E,
    "|": 0x40,
    "€": 0x65,
}
#: The characters of the extension table: two septets each (escape + code) in GSM 03.38.
GSM7_EXTENSION_CHARS = frozenset(_GSM7_EXT)
_GSM7_EXT_DECODE: dict[int, str] = {code: char for char, code in _GSM7_EXT.items()}

#: Decoding table for codecs.charmap_decode: 256 entries, 0x80-0xFF undefined (U+FFFE) so that
#: an octet with the top bit set raises instead of decoding to garbage.
_GSM7_DECODE_TABLE = _GSM7_BASE[:GSM7_ESCAPE] + " " + _GSM7_BASE[GSM7_ESCAPE + 1 :] + "\ufffe" * 128

#: Encoding map for codecs.charmap_encode: every GSM character, extension characters as their
#: two-octet escape sequence. Characters absent from the map raise UnicodeEncodeError.
_GSM7_ENCODE_MAP: dict[int, int | bytes] = {
    ord(char): code for code, char in enumerate(_GSM7_BASE) if code != GSM7_ESCAPE
}
_GSM7_ENCODE_MAP.update({ord(char): bytes((GSM7_ESCAPE, code)) for char, code in _GSM7_EXT.items()})

# Fast path for text that is Latin-1 encodable (all GSM text but Greek capitals and €):
# text.encode("latin-1").translate(_LATIN1_TO_GSM7) maps each octet to its septet. Extension
# characters map to markers 0x80.. (expanded afterwards with bytes.replace), characters outside
# the alphabet map to 0xFF. A result that is pure ASCII is therefore a valid encoding.
# € is common enough to get the same treatment: it is first replaced by U+0080 (a C1 control,
# never valid GSM, so only when the text has none) and _LATIN1_EURO_TO_GSM7 maps 0x80 to €.
_INVALID_MARKER = 0xFF
_ext_markers: list[bytes] = []  # index: marker - 0x80; value: the escape sequence
_latin1_table = bytearray([_INVALID_MARKER]) * 256
for _code, _char in enumerate(_GSM7_BASE):
    if _code != GSM7_ESCAPE and ord(_char) < 256:
        _latin1_table[ord(_char)] = _code
for _char, _code in _GSM7_EXT.items():
    if ord(_char) < 256:
        _marker = 0x80 + len(_ext_markers)
        _latin1_table[ord(_char)] = _marker
        _ext_markers.append(bytes((GSM7_ESCAPE, _code)))
_LATIN1_TO_GSM7 = bytes(_latin1_table)
_euro_marker = 0x80 + len(_ext_markers)
_latin1_table[0x80] = _euro_marker
_ext_markers.append(bytes((GSM7_ESCAPE, _GSM7_EXT["€"])))
_LATIN1_EURO_TO_GSM7 = bytes(_latin1_table)
_EXT_EXPANSIONS = tuple(_ext_markers)
_SEPTETS = bytes(range(0x80))  # bytes.translate(None, _SEPTETS) leaves only the markers
del _latin1_table, _ext_markers, _code, _char, _marker, _euro_marker


def _gsm7_encode_general(text: str) -> bytes:
    """Slow path (about 10x slower): any text, e.g. Greek capitals; also the one that reports
    which character cannot be encoded."""
    try:
        return codecs.charmap_encode(text, "strict", _GSM7_ENCODE_MAP)[0]
    except UnicodeEncodeError as exc:
        char = text[exc.start]
        raise TextError(
            f"character {char!r} (U+{ord(char):04X}) at position {exc.start} "
            "is not in the GSM 03.38 alphabet"
        ) from None


def gsm7_encode(text: str) -> bytes:
    """Encode ``text`` as unpacked GSM 03.38 septets (one per octet), extension chars as 1B xx.

    Raises :class:`TextError` for a character outside the default alphabet and its extension
    table (no silent substitution: a wrong character in an SMS is worse than switching to UCS-2).
    """
    table = _LATIN1_TO_GSM7
    latin = text
    if "€" in text and "\x80" not in text:  # checked first: a failed encode costs ~1 µs
        latin = text.replace("€", "\x80")
        table = _LATIN1_EURO_TO_GSM7
    try:
        raw = latin.encode("latin-1")
    except UnicodeEncodeError:
        return _gsm7_encode_general(text)  # Greek capitals, or not GSM at all
    out = raw.translate(table)
    if out.isascii():
        return out
    markers = set(out.translate(None, _SEPTETS))
    if _INVALID_MARKER in markers:
        return _gsm7_encode_general(text)  # raises, naming the character
    for marker in markers:
        out = out.replace(bytes((marker,)), _EXT_EXPANSIONS[marker - 0x80])
    return out


def _gsm7_decode_run(data: bytes, offset: int = 0) -> str:
    """Decode septets without escapes; ``offset`` locates ``data`` in the message for errors."""
    try:
        return codecs.charmap_decode(data, "strict", _GSM7_DECODE_TABLE)[0]
    except UnicodeDecodeError as exc:
        raise TextError(
            f"octet 0x{data[exc.start]:02X} at position {offset + exc.start} "
            "is not a GSM 7-bit septet"
        ) from None


def gsm7_decode(data: bytes) -> str:
    """Decode unpacked GSM 03.38 septets (one per octet) to text.

    Follows the receiving-entity rules of 23.038 §6.2.1.1 instead of raising, because a phone
    would show *something* and so should we: an escape to an undefined extension code shows the
    default-alphabet character of that code; 1B 1B (reserved for a further extension table) and
    a lone trailing escape show a space. Only octets above 0x7F raise :class:`TextError`.
    """
    if GSM7_ESCAPE not in data:
        return _gsm7_decode_run(data)
    parts: list[str] = []
    start = 0
    end = len(data)
    while True:
        esc = data.find(GSM7_ESCAPE, start)
        if esc < 0:
            parts.append(_gsm7_decode_run(data[start:], start))
            break
        parts.append(_gsm7_decode_run(data[start:esc], start))
        if esc + 1 == end:
            parts.append(" ")  # lone escape at the end: "display as a space"
            break
        code = data[esc + 1]
        if code > 0x7F:
            raise TextError(f"octet 0x{code:02X} at position {esc + 1} is not a GSM 7-bit septet")
        ext = _GSM7_EXT_DECODE.get(code)
        if ext is None:
            ext = " " if code == GSM7_ESCAPE else _GSM7_BASE[code]
        parts.append(ext)
        start = esc + 2
    return "".join(parts)


def gsm7_septet_count(text: str) -> int:
    """Septets ``text`` needs in GSM 03.38; extension characters cost two. Raises TextError."""
    return len(gsm7_encode(text))


def is_gsm7(text: str) -> bool:
    """True when every character of ``text`` is in the GSM 03.38 default or extension table."""
    try:
        gsm7_encode(text)
    except TextError:
        return False
    return True


# --------------------------------------------------------------------------------------------
# Septet packing (23.038 §6.1.2.1.1): septet i occupies bits fill+7i .. fill+7i+6 of a
# little-endian bit stream. We read all septets as one little-endian integer (one septet per
# byte) and squeeze out the unused top bit of every byte in log2(n) rounds: round L merges pairs
# of 7*2^L-bit fields sitting in 8*2^L-bit slots. Unpacking runs the rounds backwards.
# --------------------------------------------------------------------------------------------

_CR = 0x0D


_Rounds: TypeAlias = tuple[tuple[int, int, int, int], ...]
_CACHED_LEVELS = 10  # up to 1024 septets: every short_message; bigger payloads are rare


def _build_septet_rounds(levels: int) -> _Rounds:
    """(low_mask, pack_high_mask, unpack_high_mask, shift) for rounds 0..levels-1, sized for
    2**levels septets. Masks are built by repeating one period's bytes: linear time, where
    the arithmetic form (a division of huge integers) is quadratic."""
    total_octets = 1 << levels
    rounds = []
    for level in range(levels):
        slot = 8 << level  # bits per slot before this round
        field = 7 << level  # data bits per slot
        period_octets = 2 << level  # two slots
        period = ((1 << field) - 1).to_bytes(period_octets, "little")
        low = int.from_bytes(period * (total_octets // period_octets), "little")
        rounds.append((low, low << slot, low << field, slot - field))
    return tuple(rounds)


_cached_septet_rounds = functools.lru_cache(maxsize=_CACHED_LEVELS + 1)(_build_septet_rounds)


def _septet_rounds(levels: int) -> _Rounds:
    if levels <= _CACHED_LEVELS:
        return _cached_septet_rounds(levels)
    return _build_septet_rounds(levels)  # not cached: megabytes of masks for one message


def _levels(count: int) -> int:
    return (count - 1).bit_length() if count > 1 else 0


def gsm7_fill_bits(udh_length: int) -> int:
    """Fill bits after a UDH of ``udh_length`` octets (UDHL included) so text starts on a septet.

    6-octet concatenation UDH -> 1, 7-octet (16-bit reference) -> 0 (3GPP TS 23.040 §9.2.3.24).
    """
    if udh_length < 0:
        raise ValueError("udh_length must not be negative")
    return -(udh_length * 8) % 7


def gsm7_pack(septets: bytes, fill_bits: int = 0) -> bytes:
    """Pack unpacked septets into octets, LSB first, after ``fill_bits`` zero bits (0..6).

    When exactly 7 bits are left over in the last octet they are filled with CR (0x0D), as
    23.038 §6.1.2.3.1 requires so that a receiver deriving the length does not see an ``@``;
    with an explicit length (TP-UDL, sm_length) the CR is simply beyond the end. An empty input
    packs to ``b""`` whatever the fill.
    """
    if not 0 <= fill_bits <= 6:
        raise ValueError("fill_bits must be 0..6")
    count = len(septets)
    if not count:
        return b""
    if not septets.isascii():
        raise TextError("septets must be 0x00..0x7F")
    value = int.from_bytes(septets, "little")
    for low, high, _, shift in _septet_rounds(_levels(count)):
        value = (value & low) | ((value & high) >> shift)
    nbits = fill_bits + 7 * count
    value <<= fill_bits
    nbytes = (nbits + 7) // 8
    if nbytes * 8 - nbits == 7:
        value |= _CR << nbits
    return value.to_bytes(nbytes, "little")


def gsm7_unpack(packed: bytes, septet_count: int | None = None, fill_bits: int = 0) -> bytes:
    """Unpack octets into septets (one per octet), skipping ``fill_bits`` leading bits.

    Without ``septet_count`` the count is derived from the length: every whole septet. If that
    ends exactly on an octet boundary with CR as the last septet, that CR is the padding of
    23.038 §6.1.2.3.1 and is removed ("the receiving entity shall remove the final <CR> ...").
    Seven zero padding bits from a non-conforming sender are indistinguishable from a real ``@``
    and are kept; pass ``septet_count`` (TP-UDL) whenever it is known.
    """
    if not 0 <= fill_bits <= 6:
        raise ValueError("fill_bits must be 0..6")
    available = len(packed) * 8 - fill_bits
    if septet_count is None:
        count = max(available, 0) // 7
    else:
        count = septet_count
        if count < 0:
            raise ValueError("septet_count must not be negative")
        if count and 7 * count > available:
            raise TextError(
                f"{len(packed)} octets with {fill_bits} fill bits cannot hold {count} septets"
            )
    if not count:
        return b""
    value = (int.from_bytes(packed, "little") >> fill_bits) & ((1 << (7 * count)) - 1)
    for low, _, high, shift in reversed(_septet_rounds(_levels(count))):
        value = (value & low) | ((value & high) << shift)
    out = value.to_bytes(count, "little")
    if septet_count is None and available % 7 == 0 and out[-1] == _CR:
        out = out[:-1]
    return out


# --------------------------------------------------------------------------------------------
# data_coding
# --------------------------------------------------------------------------------------------

Alphabet: TypeAlias = Literal[
    "gsm7",  # GSM 03.38 default alphabet
    "ascii",  # IA5 / ASCII
    "latin1",  # ISO-8859-1
    "binary",  # 8-bit data, not text
    "ucs2",  # UTF-16BE
    "jis",  # JIS X 0208-1990 (as Shift_JIS)
    "cyrillic",  # ISO-8859-5
    "hebrew",  # ISO-8859-8
    "pictogram",  # SMPP 0x09, vendor-specific
    "iso2022jp",  # SMPP 0x0A "music codes"
    "kanji",  # SMPP 0x0D, extended Kanji JIS X 0212-1990
    "ksc5601",  # KS C 5601 (as EUC-KR)
    "unknown",  # reserved values
]


@dataclass(frozen=True, slots=True)
class Coding:
    """What a data_coding octet means.

    ``message_class`` 0 is a flash SMS (shown, not stored), 1 ME-specific, 2 SIM-specific,
    3 TE-specific; None when the value does not signal a class. ``compressed`` is the 23.042
    compression flag, which nobody implements: such user data cannot be decoded. ``auto_delete``
    marks the 23.038 "automatic deletion" group 0x40-0x7F.
    """

    alphabet: Alphabet
    message_class: int | None
    compressed: bool = False
    auto_delete: bool = False


_SMPP_TABLE: tuple[Alphabet, ...] = (
    "gsm7",  # 0x00 SMSC default alphabet
    "ascii",  # 0x01 IA5
    "binary",  # 0x02 octet unspecified
    "latin1",  # 0x03
    "binary",  # 0x04 octet unspecified
    "jis",  # 0x05
    "cyrillic",  # 0x06
    "hebrew",  # 0x07
    "ucs2",  # 0x08
    "pictogram",  # 0x09
    "iso2022jp",  # 0x0A
    "unknown",  # 0x0B reserved
    "unknown",  # 0x0C reserved
    "kanji",  # 0x0D
    "ksc5601",  # 0x0E
    "unknown",  # 0x0F reserved
)
_GROUP_ALPHABET: tuple[Alphabet, ...] = ("gsm7", "binary", "ucs2", "unknown")  # DCS bits 3..2


def _parse_data_coding(dc: int) -> Coding:
    if dc < 0x10:
        # SMPP 3.4 §5.2.19 overrides the 3GPP general-coding group for 0x00-0x0F.
        return Coding(_SMPP_TABLE[dc], None)
    if dc < 0x80:
        # 3GPP 23.038 §4: 00xx xxxx general data coding, 01xx xxxx the same with automatic
        # deletion. Bit 5 compressed, bit 4 "bits 1..0 are the class", bits 3..2 alphabet.
        return Coding(
            _GROUP_ALPHABET[(dc >> 2) & 3],
            dc & 3 if dc & 0x10 else None,
            compressed=bool(dc & 0x20),
            auto_delete=bool(dc & 0x40),
        )
    if dc < 0xC0:
        return Coding("unknown", None)  # 1000..1011: reserved coding groups
    if dc < 0xE0:
        return Coding("gsm7", None)  # 1100/1101: message waiting indication, GSM 7-bit
    if dc < 0xF0:
        return Coding("ucs2", None)  # 1110: message waiting indication, UCS-2
    # 1111: data coding / message class; bit 2 = 8-bit data else GSM 7-bit, bits 1..0 = class.
    return Coding("binary" if dc & 0x04 else "gsm7", dc & 3)


_CODINGS: tuple[Coding, ...] = tuple(_parse_data_coding(dc) for dc in range(256))


def parse_data_coding(dc: int) -> Coding:
    """Interpret a data_coding octet (SMPP 3.4 table for 0x00-0x0F, 3GPP 23.038 groups above).

    0x00 is reported as ``gsm7``; what an account really means by 0 is decided in
    :func:`decode_text`/:func:`encode_text` through ``default_alphabet``.
    """
    if not 0 <= dc <= 0xFF:
        raise ValueError(f"data_coding must be one octet, got {dc}")
    return _CODINGS[dc]


#: Python codecs for the alphabets that are plain charsets. 0x05 "JIS (X 0208-1990)" names a
#: character set, not a byte encoding; we read it as Shift_JIS, the usual choice of SMPP stacks
#: that support 0x05 (not verified against a Japanese carrier). 0x0D (JIS X 0212) has no Python
#: codec of its own and 0x09 (pictograms) is vendor-specific: both raise TextError.
PYTHON_CODECS: dict[str, str] = {
    "ascii": "ascii",
    "latin1": "latin-1",
    "cyrillic": "iso8859_5",
    "hebrew": "iso8859_8",
    "ucs2": "utf-16-be",
    "jis": "shift_jis",
    "iso2022jp": "iso2022_jp",
    "ksc5601": "euc_kr",
}
DEFAULT_ALPHABETS = frozenset({"gsm7", "latin1", "ascii"})
SINGLE_OCTET_ALPHABETS = frozenset({"ascii", "latin1", "cyrillic", "hebrew"})


def text_alphabet(data_coding: int, default_alphabet: str) -> str:
    """The alphabet text under ``data_coding`` is written in; TextError if it is not text."""
    if default_alphabet not in DEFAULT_ALPHABETS:
        raise ValueError(f"default_alphabet must be one of {sorted(DEFAULT_ALPHABETS)}")
    coding = parse_data_coding(data_coding)
    if coding.compressed:
        raise TextError(f"data_coding 0x{data_coding:02X}: compressed user data is not supported")
    if data_coding == 0:
        return default_alphabet
    alphabet = coding.alphabet
    if alphabet == "gsm7" or alphabet in PYTHON_CODECS:
        return alphabet
    if alphabet == "binary":
        raise TextError(f"data_coding 0x{data_coding:02X} is binary data, not text")
    raise TextError(f"data_coding 0x{data_coding:02X} ({alphabet}) is not a supported text coding")


def decode_text(data: bytes, data_coding: int, *, default_alphabet: str = "gsm7") -> str:
    """Decode SMPP user data (without UDH) to text.

    GSM 7-bit is expected unpacked, one septet per octet. ``default_alphabet`` is what the
    account means by data_coding 0 ("gsm7", "latin1" or "ascii"). Binary, compressed and exotic
    codings raise :class:`TextError`: the caller keeps such payloads as bytes.
    """
    alphabet = text_alphabet(data_coding, default_alphabet)
    if alphabet == "gsm7":
        return gsm7_decode(data)
    if alphabet == "ucs2" and len(data) % 2:
        raise TextError(f"UCS-2 user data has an odd length ({len(data)} octets)")
    try:
        return data.decode(PYTHON_CODECS[alphabet])
    except UnicodeDecodeError as exc:
        raise TextError(
            f"user data is not valid {alphabet} (data_coding 0x{data_coding:02X}): {exc.reason} "
            f"at octet {exc.start}"
        ) from None


def encode_text(text: str, data_coding: int, *, default_alphabet: str = "gsm7") -> bytes:
    """Encode ``text`` for ``data_coding`` (GSM 7-bit unpacked, UCS-2 as UTF-16BE).

    Raises :class:`TextError` when the coding cannot carry a character of ``text``.
    """
    alphabet = text_alphabet(data_coding, default_alphabet)
    if alphabet == "gsm7":
        return gsm7_encode(text)
    try:
        return text.encode(PYTHON_CODECS[alphabet])
    except UnicodeEncodeError as exc:
        char = text[exc.start]
        raise TextError(
            f"character {char!r} (U+{ord(char):04X}) at position {exc.start} cannot be encoded "
            f"as {alphabet} (data_coding 0x{data_coding:02X})"
        ) from None


def choose_coding(text: str) -> int:
    """data_coding for new text: 0x00 (GSM 7-bit, 160 per SMS) when possible, else 0x08 (70)."""
    return 0x00 if is_gsm7(text) else 0x08
