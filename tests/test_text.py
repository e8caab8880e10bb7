"""bridge.smpp.text against 3GPP TS 23.038 / 23.040 and the SMPP 3.4 data_coding table.

Expected values come from the specifications (the default alphabet and extension tables, the
"hellohello" packing example), from hand-worked bit layouts, or from an independent bit-by-bit
reference packer defined here, never from the code under test.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.smpp.text import (
    Coding,
    TextError,
    choose_coding,
    decode_text,
    encode_text,
    gsm7_decode,
    gsm7_encode,
    gsm7_fill_bits,
    gsm7_pack,
    gsm7_septet_count,
    gsm7_unpack,
    is_gsm7,
    parse_data_coding,
)
from bridge.smpp.udh import (
    Concat,
    InformationElement,
    Segment,
    build_udh,
    concat_ie,
    find_concat,
    message_capacity,
    parse_udh,
    part_room,
    split_binary,
    split_text,
    split_user_data,
)

# 3GPP TS 23.038 §6.2.1, the default alphabet, written out independently of the module's table.
DEFAULT_ALPHABET = {
    0x00: "@", 0x01: "£", 0x02: "$", 0x03: "¥", 0x04: "è", 0x05: "é", 0x06: "ù", 0x07: "ì",
    0x08: "ò", 0x09: "Ç", 0x0A: "\n", 0x0B: "Ø", 0x0C: "ø", 0x0D: "\r", 0x0E: "Å", 0x0F: "å",
    0x10: "Δ", 0x11: "_", 0x12: "Φ", 0x13: "Γ", 0x14: "Λ", 0x15: "Ω", 0x16: "Π", 0x17: "Ψ",
    0x18: "Σ", 0x19: "Θ", 0x1A: "Ξ", 0x1C: "Æ", 0x1D: "æ", 0x1E: "ß", 0x1F: "É",
    0x20: " ", 0x21: "!", 0x22: '"', 0x23: "#", 0x24: "¤", 0x25: "%", 0x26: "&", 0x27: "'",
    0x28: "(", 0x29: ")", 0x2A: "*", 0x2B: "+", 0x2C: ",", 0x2D: "-", 0x2E: ".", 0x2F: "/",
    **{0x30 + i: str(i) for i in range(10)},
    0x3A: ":", 0x3B: ";", 0x3C: "<", 0x3D: "=", 0x3E: ">", 0x3F: "?", 0x40: "¡",
    **{0x41 + i: chr(ord("A") + i) for i in range(26)},
    0x5B: "Ä", 0x5C: "Ö", 0x5D: "Ñ", 0x5E: "Ü", 0x5F: "§", 0x60: "¿",
    **{0x61 + i: chr(ord("a") + i) for i in range(26)},
    0x7B: "ä", 0x7C: "ö", 0x7D: "ñ", 0x7E: "ü", 0x7F: "à",
}  # fmt: skip

# 23.038 §6.2.1.1, the extension table (reached through the 0x1B escape).
EXTENSION_TABLE = {
    0x0A: "\x0c", 0x14: "^", 0x28: "{", 0x29: "}", 0x2F: "\\",
    0x3C: "[", 0x3D: "~", 0x3E: "]", 0x40: "|", 0x65: "€",
}  # fmt: skip

GSM_CHARS = "".join(DEFAULT_ALPHABET.values()) + "".join(EXTENSION_TABLE.values())
gsm_text = st.text(alphabet=st.sampled_from(GSM_CHARS), max_size=600)
septets = st.lists(st.integers(0, 0x7F), max_size=400).map(bytes)


def reference_pack(data: bytes, fill_bits: int = 0) -> bytes:
    """Bit-by-bit packer straight from 23.038 §6.1.2.1.1, with the CR rule of §6.1.2.3.1."""
    bits = [0] * fill_bits
    for septet in data:
        bits += [(septet >> i) & 1 for i in range(7)]
    if not data:
        return b""
    if -len(bits) % 8 == 7:
        bits += [(0x0D >> i) & 1 for i in range(7)]
    bits += [0] * (-len(bits) % 8)
    return bytes(sum(bits[o + i] << i for i in range(8)) for o in range(0, len(bits), 8))


# ---------------------------------------------------------------------------------------------
# GSM 03.38 alphabet
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("code", "char"), sorted(DEFAULT_ALPHABET.items()))
def test_default_alphabet_matches_23038_table(code: int, char: str) -> None:
    assert gsm7_encode(char) == bytes([code])
    assert gsm7_decode(bytes([code])) == char


@pytest.mark.parametrize(("code", "char"), sorted(EXTENSION_TABLE.items()))
def test_extension_table_characters_are_escaped_with_1b(code: int, char: str) -> None:
    assert gsm7_encode(char) == bytes([0x1B, code])
    assert gsm7_decode(bytes([0x1B, code])) == char


def test_section_sign_is_5f_and_underscore_is_11() -> None:
    assert gsm7_encode("§_") == b"\x5f\x11"


def test_backtick_is_not_in_the_gsm_alphabet() -> None:
    assert not is_gsm7("`")
    with pytest.raises(TextError, match="U\\+0060"):
        gsm7_encode("price `5`")


def test_at_dollar_and_currency_sign_use_their_gsm_positions_not_ascii() -> None:
    assert gsm7_encode("@$¤¡¿") == b"\x00\x02\x24\x40\x60"


def test_small_c_cedilla_is_not_silently_replaced_by_capital() -> None:
    assert not is_gsm7("ç")
    assert is_gsm7("Ç")


@pytest.mark.parametrize("char", ["\t", "\x00", "\x1b", "\x7f", "\x80", "ê", "Ж", "😀", "α"])
def test_characters_outside_gsm_raise_text_error(char: str) -> None:
    with pytest.raises(TextError):
        gsm7_encode("ok" + char)
    assert not is_gsm7(char)


def test_text_error_is_a_value_error_naming_the_position() -> None:
    with pytest.raises(ValueError, match="position 4"):
        gsm7_encode("abc€Ж")


def test_euro_sign_costs_two_septets_in_gsm7() -> None:
    assert gsm7_septet_count("€") == 2
    assert gsm7_septet_count("10 €") == 5


def test_every_extension_character_costs_two_septets() -> None:
    assert gsm7_septet_count("".join(EXTENSION_TABLE.values())) == 2 * len(EXTENSION_TABLE)
    assert gsm7_septet_count("plain text") == 10


def test_mixed_text_encodes_via_every_path() -> None:
    # Latin-1 fast path, the euro path, and the general path (Greek capitals) agree.
    assert gsm7_encode("Grüße [x]") == b"Gr\x7e\x1ee \x1b\x3cx\x1b\x3e"
    assert gsm7_encode("5€ {ok}") == b"5\x1b\x65 \x1b\x28ok\x1b\x29"
    assert gsm7_encode("ΔΩ€^") == b"\x10\x15\x1b\x65\x1b\x14"


def test_u0080_is_rejected_even_next_to_a_euro_sign() -> None:
    with pytest.raises(TextError, match="U\\+0080"):
        gsm7_encode("€\x80")


def test_unknown_escape_shows_the_default_alphabet_character() -> None:
    # 23.038 §6.2.1.1: a code not in the extension table displays as the main-table character.
    assert gsm7_decode(b"\x1b\x41\x1b\x00") == "A@"


def test_escape_escape_is_displayed_as_space() -> None:
    # 1B 1B is reserved for another extension table: "display a space".
    assert gsm7_decode(b"a\x1b\x1bb") == "a b"


def test_lone_trailing_escape_is_displayed_as_space() -> None:
    assert gsm7_decode(b"abc\x1b") == "abc "


@pytest.mark.parametrize(
    ("data", "position"), [(b"\x80", 0), (b"ab\xff", 2), (b"\x1b\x80", 1), (b"a\x1b(b\x90", 4)]
)
def test_octets_above_7f_are_not_gsm7(data: bytes, position: int) -> None:
    with pytest.raises(TextError, match=f"position {position} "):
        gsm7_decode(data)


@given(septets)
def test_decoding_never_raises_for_septet_values(data: bytes) -> None:
    assert isinstance(gsm7_decode(data), str)


@given(gsm_text)
def test_gsm7_encode_decode_round_trip(text: str) -> None:
    encoded = gsm7_encode(text)
    assert encoded.isascii()
    assert gsm7_decode(encoded) == text
    assert gsm7_septet_count(text) == len(encoded)


# ---------------------------------------------------------------------------------------------
# Septet packing
# ---------------------------------------------------------------------------------------------


def test_hellohello_packs_as_in_23038() -> None:
    packed = gsm7_pack(gsm7_encode("hellohello"))
    assert packed == bytes.fromhex("E8 32 9B FD 46 97 D9 EC 37")
    assert gsm7_unpack(packed, 10) == b"hellohello"
    assert gsm7_unpack(packed) == b"hellohello"


def test_fill_bits_after_concatenation_udh() -> None:
    assert gsm7_fill_bits(6) == 1  # 05 00 03 RR TT SS: 48 bits, next septet boundary at 49
    assert gsm7_fill_bits(7) == 0  # 06 08 04 RR RR TT SS: 56 bits is a septet boundary
    assert gsm7_fill_bits(0) == 0


def test_packing_with_one_fill_bit_for_a_six_octet_udh() -> None:
    # "hellohello" shifted left by one bit, worked by hand from E8 32 9B FD 46 97 D9 EC 37.
    packed = gsm7_pack(b"hellohello", fill_bits=1)
    assert packed == bytes.fromhex("D0 65 36 FB 8D 2E B3 D9 6F")
    assert gsm7_unpack(packed, 10, fill_bits=1) == b"hellohello"
    # "AB" after one fill bit: 0x41 << 1 = 0x82, then B's 7 bits shifted by 8 -> 82 42.
    assert gsm7_pack(b"AB", fill_bits=1) == b"\x82\x42"


def test_packed_udh_message_is_one_septet_aligned_bit_stream() -> None:
    udh = bytes.fromhex("05 00 03 2A 02 01")
    user_data = udh + gsm7_pack(b"hi", gsm7_fill_bits(len(udh)))
    stream = int.from_bytes(user_data, "little")
    assert (stream >> 49) & 0x7F == ord("h")  # first septet right after 48 UDH bits + 1 fill
    assert (stream >> 56) & 0x7F == ord("i")


def test_seven_spare_bits_are_padded_with_cr() -> None:
    packed = gsm7_pack(b"1234567")  # 49 bits in 7 octets: 7 spare bits
    assert len(packed) == 7
    assert packed[-1] >> 1 == 0x0D
    assert gsm7_unpack(packed) == b"1234567"  # final CR on an octet boundary is padding
    assert gsm7_unpack(packed, 7) == b"1234567"
    assert gsm7_unpack(packed, 8) == b"1234567\r"


def test_derived_count_keeps_a_trailing_at_sign() -> None:
    # Eight septets fill seven octets exactly; a final @ (0x00) is real text, not padding.
    assert gsm7_unpack(gsm7_pack(b"abcdefg\x00")) == b"abcdefg\x00"


def test_fewer_than_seven_spare_bits_are_zero() -> None:
    assert gsm7_pack(b"a") == b"\x61"
    assert gsm7_pack(b"") == b""
    assert gsm7_pack(b"", fill_bits=3) == b""


def test_unpack_rejects_a_count_the_octets_cannot_hold() -> None:
    with pytest.raises(TextError):
        gsm7_unpack(b"\x00" * 7, 9)
    with pytest.raises(TextError):
        gsm7_unpack(b"\x00" * 7, 8, fill_bits=1)


def test_pack_rejects_octets_that_are_not_septets() -> None:
    with pytest.raises(TextError):
        gsm7_pack(b"\x80")


@pytest.mark.parametrize("fill", [-1, 7])
def test_fill_bits_must_be_0_to_6(fill: int) -> None:
    with pytest.raises(ValueError):
        gsm7_pack(b"a", fill)
    with pytest.raises(ValueError):
        gsm7_unpack(b"a", None, fill)


def test_pack_of_a_long_message_payload_matches_reference() -> None:
    data = bytes((i * 37 + i // 7) % 128 for i in range(3000))  # beyond the cached mask sizes
    packed = gsm7_pack(data, 2)
    assert packed == reference_pack(data, 2)
    assert gsm7_unpack(packed, len(data), 2) == data


@given(septets, st.integers(0, 6))
def test_pack_matches_bit_by_bit_reference(data: bytes, fill: int) -> None:
    assert gsm7_pack(data, fill) == reference_pack(data, fill)


@given(septets, st.integers(0, 6))
def test_pack_unpack_round_trip(data: bytes, fill: int) -> None:
    packed = gsm7_pack(data, fill)
    assert len(packed) == ((fill + 7 * len(data) + 7) // 8 if data else 0)
    assert gsm7_unpack(packed, len(data), fill) == data
    derived = gsm7_unpack(packed, None, fill)
    if data[-1:] == b"\r" and (fill + 7 * len(data)) % 8 == 0:
        assert derived == data[:-1]  # the documented 23.038 ambiguity: a CR on the boundary
    else:
        assert derived == data


# ---------------------------------------------------------------------------------------------
# data_coding
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dc", "expected"),
    [
        (0x00, Coding("gsm7", None)),
        (0x01, Coding("ascii", None)),
        (0x02, Coding("binary", None)),
        (0x03, Coding("latin1", None)),
        (0x04, Coding("binary", None)),
        (0x05, Coding("jis", None)),
        (0x06, Coding("cyrillic", None)),
        (0x07, Coding("hebrew", None)),
        (0x08, Coding("ucs2", None)),
        (0x0A, Coding("iso2022jp", None)),
        (0x0D, Coding("kanji", None)),
        (0x0E, Coding("ksc5601", None)),
        (0x0B, Coding("unknown", None)),
        (0x10, Coding("gsm7", 0)),  # flash
        (0x11, Coding("gsm7", 1)),
        (0x12, Coding("gsm7", 2)),
        (0x14, Coding("binary", 0)),
        (0x16, Coding("binary", 2)),  # SIM data download
        (0x18, Coding("ucs2", 0)),  # UCS-2 flash
        (0x1C, Coding("unknown", 0)),
        (0x20, Coding("gsm7", None, compressed=True)),
        (0x38, Coding("ucs2", 0, compressed=True)),
        (0x40, Coding("gsm7", None, auto_delete=True)),
        (0x48, Coding("ucs2", None, auto_delete=True)),
        (0x50, Coding("gsm7", 0, auto_delete=True)),
        (0x80, Coding("unknown", None)),
        (0xC0, Coding("gsm7", None)),  # message waiting, discard
        (0xD8, Coding("gsm7", None)),  # message waiting, store
        (0xE0, Coding("ucs2", None)),  # message waiting, store, UCS-2
        (0xF0, Coding("gsm7", 0)),  # flash
        (0xF1, Coding("gsm7", 1)),
        (0xF4, Coding("binary", 0)),
        (0xF6, Coding("binary", 2)),
        (0xF7, Coding("binary", 3)),
    ],
)
def test_data_coding_values(dc: int, expected: Coding) -> None:
    assert parse_data_coding(dc) == expected


@pytest.mark.parametrize("dc", [-1, 256])
def test_data_coding_is_one_octet(dc: int) -> None:
    with pytest.raises(ValueError):
        parse_data_coding(dc)


def test_data_coding_zero_follows_the_account_default_alphabet() -> None:
    assert decode_text(b"\x00\x02", 0) == "@$"
    assert decode_text(b"caf\xe9", 0, default_alphabet="latin1") == "café"
    assert decode_text(b"plain", 0, default_alphabet="ascii") == "plain"
    assert encode_text("café", 0, default_alphabet="latin1") == b"caf\xe9"
    with pytest.raises(ValueError):
        decode_text(b"x", 0, default_alphabet="utf-8")


def test_explicit_gsm_codings_ignore_the_default_alphabet() -> None:
    assert decode_text(b"\x00", 0xF0, default_alphabet="latin1") == "@"


@pytest.mark.parametrize("dc", [0x10, 0xF0, 0x40, 0xC0])
def test_flash_and_group_gsm7_values_decode_unpacked_septets(dc: int) -> None:
    assert decode_text(gsm7_encode("Alert € now"), dc) == "Alert € now"


@pytest.mark.parametrize("dc", [0x08, 0x18, 0xE0])
def test_ucs2_decodes_surrogate_pairs(dc: int) -> None:
    assert decode_text(bytes.fromhex("D83D DE00 0041"), dc) == "😀A"


def test_emoji_encodes_as_a_utf16_surrogate_pair() -> None:
    assert encode_text("😀", 0x08) == bytes.fromhex("D8 3D DE 00")
    assert encode_text("Привет", 0x08) == "Привет".encode("utf-16-be")


def test_ucs2_odd_length_is_an_error() -> None:
    with pytest.raises(TextError, match="odd"):
        decode_text(b"\x00\x41\x00", 0x08)


def test_ucs2_lone_surrogate_is_an_error() -> None:
    with pytest.raises(TextError):
        decode_text(bytes.fromhex("D83D 0041"), 0x08)
    with pytest.raises(TextError):
        encode_text("\ud83d", 0x08)


@pytest.mark.parametrize(
    ("dc", "text"),
    [
        (0x01, "IA5 text"),
        (0x03, "Ærøskøbing ½"),
        (0x06, "Привет"),
        (0x07, "שלום"),
        (0x05, "日本語"),
        (0x0A, "日本語"),
        (0x0E, "한국어"),
    ],
)
def test_charset_codings_round_trip(dc: int, text: str) -> None:
    assert decode_text(encode_text(text, dc), dc) == text


def test_latin1_is_one_octet_per_character() -> None:
    assert encode_text("é€"[0], 0x03) == b"\xe9"
    with pytest.raises(TextError):
        encode_text("€", 0x03)


def test_ia5_rejects_eight_bit_octets() -> None:
    with pytest.raises(TextError):
        decode_text(b"caf\xe9", 0x01)


@pytest.mark.parametrize("dc", [0x02, 0x04, 0x14, 0xF4])
def test_binary_is_not_text(dc: int) -> None:
    with pytest.raises(TextError, match="binary"):
        decode_text(b"\x01\x02", dc)
    with pytest.raises(TextError):
        encode_text("x", dc)


@pytest.mark.parametrize("dc", [0x09, 0x0B, 0x0D, 0x20, 0x80])
def test_unsupported_codings_raise_text_error(dc: int) -> None:
    with pytest.raises(TextError):
        decode_text(b"abc", dc)


def test_gsm7_text_that_cannot_be_encoded_raises() -> None:
    with pytest.raises(TextError):
        encode_text("Привет", 0x00)


def test_choose_coding_prefers_gsm7() -> None:
    assert choose_coding("Hello {world} €5") == 0x00
    assert choose_coding("Hello `world`") == 0x08
    assert choose_coding("Привет") == 0x08
    assert choose_coding("😀") == 0x08
    assert choose_coding("") == 0x00


# ---------------------------------------------------------------------------------------------
# UDH
# ---------------------------------------------------------------------------------------------


def test_parse_udh_with_8bit_concatenation() -> None:
    ies, rest = parse_udh(bytes.fromhex("05 00 03 2A 03 02") + b"text")
    assert ies == [InformationElement(0x00, b"\x2a\x03\x02")]
    assert rest == b"text"
    assert find_concat(ies) == Concat(reference=0x2A, total=3, seqnum=2, ref_bits=8)


def test_parse_udh_with_16bit_concatenation() -> None:
    ies, rest = parse_udh(bytes.fromhex("06 08 04 12 34 02 01") + b"x")
    assert find_concat(ies) == Concat(reference=0x1234, total=2, seqnum=1, ref_bits=16)
    assert rest == b"x"


def test_port_ie_before_concatenation_ie_is_walked_not_prefix_matched() -> None:
    # WAP push: 16-bit ports 0B84 <- 23F0, then the concatenation IE.
    payload = bytes.fromhex("0B 05 04 0B 84 23 F0 00 03 A5 02 01") + b"\x01\x06"
    ies, rest = parse_udh(payload)
    assert ies == [
        InformationElement(0x05, bytes.fromhex("0B 84 23 F0")),
        InformationElement(0x00, bytes.fromhex("A5 02 01")),
    ]
    assert rest == b"\x01\x06"
    assert find_concat(ies) == Concat(0xA5, 2, 1, 8)


def test_udh_without_concatenation() -> None:
    ies, rest = parse_udh(bytes.fromhex("04 04 02 0B 84") + b"data")
    assert find_concat(ies) is None
    assert rest == b"data"


def test_empty_udh_and_zero_length_ie() -> None:
    assert parse_udh(b"\x00abc") == ([], b"abc")
    assert parse_udh(b"\x02\x70\x00") == ([InformationElement(0x70, b"")], b"")


@pytest.mark.parametrize(
    "payload",
    [
        b"",  # no UDHL at all
        bytes.fromhex("06 00 03 01 02 01"),  # UDHL overruns the payload
        bytes.fromhex("05 00 04 01 02 01"),  # IE length overruns the header
        bytes.fromhex("01 00"),  # IE header truncated by UDHL
    ],
)
def test_malformed_udh_raises(payload: bytes) -> None:
    with pytest.raises(TextError):
        parse_udh(payload)


@pytest.mark.parametrize(
    "ie",
    [
        InformationElement(0x00, bytes.fromhex("01 00 01")),  # total 0
        InformationElement(0x00, bytes.fromhex("01 02 00")),  # part 0
        InformationElement(0x00, bytes.fromhex("01 02 03")),  # part > total
        InformationElement(0x00, bytes.fromhex("01 02")),  # wrong length
        InformationElement(0x08, bytes.fromhex("00 01 02 01 00")),  # wrong length
    ],
)
def test_invalid_concatenation_ie_raises(ie: InformationElement) -> None:
    with pytest.raises(TextError):
        find_concat([ie])


def test_last_concatenation_ie_wins() -> None:
    ies = [concat_ie(1, 2, 1), concat_ie(0x0102, 3, 3, ref_bits=16)]
    assert find_concat(ies) == Concat(0x0102, 3, 3, 16)


def test_build_udh_round_trips_several_ies() -> None:
    ies = [InformationElement(0x05, bytes.fromhex("0B 84 23 F0")), concat_ie(7, 2, 2)]
    udh = build_udh(ies)
    assert udh == bytes.fromhex("0B 05 04 0B 84 23 F0 00 03 07 02 02")
    assert parse_udh(udh) == (ies, b"")
    assert build_udh([]) == b"\x00"


def test_concat_ie_bytes() -> None:
    assert build_udh([concat_ie(0xCC, 3, 1)]) == bytes.fromhex("05 00 03 CC 03 01")
    assert build_udh([concat_ie(0xABCD, 3, 1, 16)]) == bytes.fromhex("06 08 04 AB CD 03 01")


@pytest.mark.parametrize(
    ("reference", "total", "seqnum", "ref_bits"),
    [(256, 2, 1, 8), (-1, 2, 1, 8), (65536, 2, 1, 16), (1, 0, 1, 8), (1, 256, 1, 8),
     (1, 2, 0, 8), (1, 2, 3, 8), (1, 2, 1, 12)],
)  # fmt: skip
def test_concat_ie_rejects_out_of_range_arguments(
    reference: int, total: int, seqnum: int, ref_bits: int
) -> None:
    with pytest.raises(ValueError):
        concat_ie(reference, total, seqnum, ref_bits)


def test_build_udh_rejects_oversized_ie() -> None:
    with pytest.raises(ValueError):
        build_udh([InformationElement(0x70, bytes(256))])


# ---------------------------------------------------------------------------------------------
# Splitting
# ---------------------------------------------------------------------------------------------


def test_exactly_160_gsm_characters_fit_in_one_part() -> None:
    assert split_text("a" * 160, 0x00, reference=1) == [Segment(b"a" * 160, b"")]


def test_161_gsm_characters_make_two_parts_of_153_and_8() -> None:
    parts = split_text("a" * 161, 0x00, reference=0x2A)
    assert [len(p.payload) for p in parts] == [153, 8]
    assert [p.udh for p in parts] == [
        bytes.fromhex("05 00 03 2A 02 01"),
        bytes.fromhex("05 00 03 2A 02 02"),
    ]


def test_16bit_reference_leaves_152_septets_per_part() -> None:
    parts = split_text("a" * 161, 0x00, reference=0x1234, ref_bits=16)
    assert [len(p.payload) for p in parts] == [152, 9]
    assert parts[1].udh == bytes.fromhex("06 08 04 12 34 02 02")


def test_extension_characters_count_against_the_160_limit() -> None:
    assert len(split_text("a" * 158 + "€", 0x00, reference=1)) == 1  # 160 septets
    assert len(split_text("a" * 159 + "€", 0x00, reference=1)) == 2  # 161 septets


def test_an_escape_at_position_153_moves_to_the_next_part() -> None:
    parts = split_text("a" * 152 + "€" + "b" * 20, 0x00, reference=1)
    assert parts[0].payload == b"a" * 152
    assert parts[1].payload == b"\x1b\x65" + b"b" * 20
    assert [gsm7_decode(p.payload) for p in parts] == ["a" * 152, "€" + "b" * 20]


def test_70_ucs2_units_fit_in_one_part_71_do_not() -> None:
    assert len(split_text("Ж" * 70, 0x08, reference=1)) == 1
    parts = split_text("Ж" * 71, 0x08, reference=1)
    assert [len(p.payload) // 2 for p in parts] == [67, 4]


def test_ucs2_16bit_reference_leaves_66_units() -> None:
    parts = split_text("Ж" * 71, 0x08, reference=1, ref_bits=16)
    assert [len(p.payload) // 2 for p in parts] == [66, 5]


def test_surrogate_pair_at_the_boundary_is_not_split() -> None:
    text = "a" * 66 + "😀" + "b" * 10  # the pair would occupy units 67 and 68
    parts = split_text(text, 0x08, reference=1)
    assert [len(p.payload) // 2 for p in parts] == [66, 12]
    assert [decode_text(p.payload, 0x08) for p in parts] == ["a" * 66, "😀" + "b" * 10]


def test_emoji_counts_two_units_against_the_70_limit() -> None:
    assert len(split_text("😀" * 35, 0x08, reference=1)) == 1
    assert len(split_text("😀" * 35 + "a", 0x08, reference=1)) == 2


def test_latin1_is_140_octets_single_and_134_per_part() -> None:
    assert len(split_text("é" * 140, 0x03, reference=1)) == 1
    parts = split_text("é" * 141, 0x03, reference=1)
    assert [len(p.payload) for p in parts] == [134, 7]


def test_latin1_under_data_coding_zero_uses_octet_capacity() -> None:
    parts = split_text("é" * 141, 0x00, reference=1, default_alphabet="latin1")
    assert [p.payload for p in parts] == [b"\xe9" * 134, b"\xe9" * 7]


def test_flash_gsm7_splits_like_gsm7() -> None:
    parts = split_text("a" * 161, 0xF0, reference=1)
    assert [len(p.payload) for p in parts] == [153, 8]


def test_max_single_raises_the_one_part_limit() -> None:
    assert split_text("a" * 500, 0x00, reference=1, max_single=1000) == [Segment(b"a" * 500, b"")]
    parts = split_text("a" * 100, 0x00, reference=1, max_single=50)  # a tighter route limit
    assert [len(p.payload) for p in parts] == [50, 50]
    with pytest.raises(ValueError):
        split_text("abc", 0x00, reference=1, max_single=1)


def test_empty_text_is_one_empty_part() -> None:
    assert split_text("", 0x08, reference=1) == [Segment(b"", b"")]


def test_more_than_255_parts_is_an_error() -> None:
    assert len(split_text("a" * 153 * 255, 0x00, reference=1)) == 255
    with pytest.raises(TextError, match="255"):
        split_text("a" * (153 * 255 + 1), 0x00, reference=1)


def test_split_rejects_binary_and_unencodable_text() -> None:
    with pytest.raises(TextError):
        split_text("abc", 0x04, reference=1)
    with pytest.raises(TextError):
        split_text("Привет", 0x00, reference=1)


def test_split_rejects_a_reference_that_does_not_fit() -> None:
    with pytest.raises(ValueError):
        split_text("a", 0x00, reference=256)


@pytest.mark.parametrize(("dc", "codec"), [(0x05, "shift_jis"), (0x0A, "iso2022_jp")])
def test_multibyte_charsets_split_between_characters(dc: int, codec: str) -> None:
    text = "日本語のテキスト" * 20
    parts = split_text(text, dc, reference=1)
    assert len(parts) > 1
    assert all(len(p.payload) <= 134 for p in parts)
    assert "".join(p.payload.decode(codec) for p in parts) == text


def test_part_room_is_what_140_octets_leave_beside_a_udh() -> None:
    assert [part_room("gsm7", n) for n in (0, 6, 7)] == [160, 153, 152]
    assert [part_room("ucs2", n) for n in (0, 6, 7)] == [70, 67, 66]
    assert [part_room("octets", n) for n in (0, 6, 7)] == [140, 134, 133]


def test_other_ies_go_in_front_of_every_part_and_leave_less_room() -> None:
    ports = InformationElement(0x05, bytes([0x0B, 0x84, 0x23, 0xF0]))  # 6 octets with its header
    [single] = split_text("hi", 0, reference=1, extra_ies=[ports])
    assert single == Segment(b"hi", build_udh([ports]))
    parts = split_text("a" * 200, 0, reference=9, extra_ies=[ports])
    # UDHL + ports IE (6) + concat IE (5) = 12 octets: (140 - 12) * 8 // 7 = 146 septets
    assert [len(p.payload) for p in parts] == [146, 54]
    for seqnum, p in enumerate(parts, 1):
        assert p.udh == build_udh([ports, concat_ie(9, 2, seqnum)])


def test_split_user_data_cuts_encoded_data_like_split_text() -> None:
    text = "€" * 100  # escape pairs: no part may end inside one
    encoded = gsm7_encode(text)
    assert split_user_data(encoded, "gsm7", reference=3) == split_text(text, 0, reference=3)
    ucs2 = ("a😀" * 50).encode("utf-16-be")
    assert split_user_data(ucs2, "ucs2", reference=3, ref_bits=16) == split_text(
        "a😀" * 50, 8, reference=3, ref_bits=16
    )


def test_split_binary_sizes() -> None:
    assert split_binary(bytes(140), reference=1) == [Segment(bytes(140), b"")]
    parts = split_binary(bytes(range(141)), reference=9)
    assert [len(p.payload) for p in parts] == [134, 7]
    assert parts[0].udh == bytes.fromhex("05 00 03 09 02 01")
    assert b"".join(p.payload for p in parts) == bytes(range(141))
    parts16 = split_binary(bytes(141), reference=9, ref_bits=16)
    assert [len(p.payload) for p in parts16] == [133, 8]


@pytest.mark.parametrize(
    ("dc", "parts", "ref_bits", "capacity"),
    [
        (0x00, 1, 8, 160),
        (0x00, 2, 8, 153),
        (0x00, 2, 16, 152),
        (0xF0, 1, 8, 160),
        (0x08, 1, 8, 70),
        (0x08, 3, 8, 67),
        (0x08, 3, 16, 66),
        (0x18, 1, 8, 70),
        (0x03, 1, 8, 140),
        (0x03, 2, 8, 134),
        (0x04, 2, 16, 133),
        (0xF4, 1, 8, 140),
    ],
)
def test_message_capacity(dc: int, parts: int, ref_bits: int, capacity: int) -> None:
    assert message_capacity(dc, parts, ref_bits) == capacity


def test_message_capacity_follows_the_default_alphabet_for_zero() -> None:
    assert message_capacity(0x00, default_alphabet="latin1") == 140


def _join(parts: list[Segment], dc: int) -> str:
    return "".join(decode_text(p.payload, dc) for p in parts)


@given(gsm_text, st.sampled_from([8, 16]))
def test_gsm7_split_then_join_equals_original(text: str, ref_bits: int) -> None:
    parts = split_text(text, 0x00, reference=200, ref_bits=ref_bits)
    assert _join(parts, 0x00) == text  # every part decodes alone: no escape pair was cut
    if len(parts) == 1:
        assert parts[0].udh == b"" and len(parts[0].payload) <= 160
    else:
        for seqnum, part in enumerate(parts, 1):
            assert len(part.payload) <= message_capacity(0x00, len(parts), ref_bits)
            ies, rest = parse_udh(part.udh)
            assert rest == b""
            concat = find_concat(ies)
            assert concat is not None
            assert (concat.reference, concat.total, concat.seqnum) == (200, len(parts), seqnum)
            assert concat.ref_bits == ref_bits


@given(st.text(max_size=400).filter(lambda t: not any(0xD800 <= ord(c) < 0xE000 for c in t)))
def test_ucs2_split_then_join_equals_original(text: str) -> None:
    parts = split_text(text, 0x08, reference=7)
    assert _join(parts, 0x08) == text  # every part decodes alone: no surrogate pair was cut
    limit = 70 if len(parts) == 1 else 67
    assert all(len(p.payload) <= 2 * limit for p in parts)
