"""Properties of the SMPP codec, checked with hypothesis.

* Every PDU we can build with valid values survives ``decode(encode(pdu)) == pdu``, for every
  command id in the layout table (error responses with an empty body too).
* Whatever bytes arrive, :func:`decode` and :class:`FrameReader` raise nothing but
  :class:`PduError`; the same holds for a valid PDU with one octet changed.
* Every PDU that decodes re-encodes to the very same octets: the codec is canonical.
* The compiled codec agrees with the table-walking reference codec: on every input both accept
  with equal results, or both reject with the same command_status. The compiled decoder may
  never accept what the reference rejects (strictness) nor reject what it accepts (it would
  only be slower, but it would also mean the two read the spec differently).
"""

from __future__ import annotations

import struct
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.smpp import codegen, layouts
from bridge.smpp import reference as oracle
from bridge.smpp.pdu import (
    RESPONSE_BIT,
    TLVS,
    CommandId,
    DestAddress,
    DistributionList,
    FrameReader,
    Pdu,
    PduError,
    UnsuccessSme,
    command_name,
    decode,
    encode,
    layout,
)
from bridge.smpp.spec import TLV_BY_TAG

# Modest example counts keep the whole file well under 20 s on a loaded 2-core machine.
SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
STREAMS = settings(SETTINGS, max_examples=100)  # several PDUs per example
PER_COMMAND = settings(SETTINGS, max_examples=50)  # times 27 command ids

COMMAND_IDS = sorted(layouts.LAYOUTS)
KNOWN_TAGS = sorted(spec.tag for spec in TLVS.values())
TIME_FIELDS = {"schedule_delivery_time", "validity_period"}

# --------------------------------------------------------------------------- strategies

LATIN1 = st.characters(min_codepoint=1, max_codepoint=255)  # any octet but NUL


def cstring(max_chars: int) -> st.SearchStrategy[str]:
    return st.text(LATIN1, max_size=max_chars)


TIME = st.one_of(st.just(""), st.text(LATIN1, min_size=16, max_size=16))
OCTET = st.integers(0, 255)
U32 = st.integers(0, 0xFFFFFFFF)
ADDRESS = cstring(20)
DEST = st.one_of(
    st.builds(DestAddress, OCTET, OCTET, ADDRESS),
    st.builds(DistributionList, ADDRESS),
)
UNSUCCESS = st.builds(UnsuccessSme, OCTET, OCTET, ADDRESS, U32)


def known_tlv() -> st.SearchStrategy[tuple[int, bytes]]:
    def value(tag: int) -> st.SearchStrategy[tuple[int, bytes]]:
        spec = TLV_BY_TAG[tag]
        # message_payload may hold 64 KiB; a few hundred octets exercise the same code.
        return st.binary(min_size=spec.min_len, max_size=min(spec.max_len, 300)).map(
            lambda raw: (tag, raw)
        )

    return st.sampled_from(KNOWN_TAGS).flatmap(value)


UNKNOWN_TLV = st.tuples(
    st.integers(0, 0xFFFF).filter(lambda tag: tag not in TLV_BY_TAG),
    st.binary(max_size=40),
)
TLV_MAP = st.lists(st.one_of(known_tlv(), UNKNOWN_TLV), max_size=6, unique_by=lambda t: t[0]).map(
    dict
)


def field_values(command_id: int) -> st.SearchStrategy[dict[str, Any]]:
    """Valid values for every mandatory field of a command, from its layout."""
    strategies: dict[str, st.SearchStrategy[Any]] = {}
    for f in layout(command_id) or ():
        if f.kind == layouts.C:
            strategies[f.name] = TIME if f.name in TIME_FIELDS else cstring(f.size - 1)
        elif f.kind == layouts.I1:
            strategies[f.name] = OCTET
        elif f.kind == layouts.SM:
            strategies[f.name] = st.binary(max_size=254)
        elif f.kind == layouts.DESTS:
            strategies[f.name] = st.lists(DEST, min_size=1, max_size=254)
        elif f.kind == layouts.UNSUCC:
            strategies[f.name] = st.lists(UNSUCCESS, max_size=254)
        else:  # pragma: no cover
            raise AssertionError(f.kind)
    return st.fixed_dictionaries(strategies)


def pdus(command_id: int) -> st.SearchStrategy[Pdu]:
    tlvs = st.just({}) if command_id in layouts.NO_TLVS else TLV_MAP
    full = st.builds(Pdu, st.just(command_id), U32, U32, field_values(command_id), tlvs)
    if command_id & RESPONSE_BIT and layout(command_id):
        # Error responses may be header-only: fields == {} and no TLVs.
        empty = st.builds(Pdu, st.just(command_id), U32, U32)
        return st.one_of(full, empty)
    return full


ANY_PDU = st.sampled_from(COMMAND_IDS).flatmap(pdus)


# --------------------------------------------------------------------------- helpers


def outcome(decoder: Any, data: bytes) -> Pdu | tuple[str, int]:
    """A decoder's result, or ("error", status) for a PduError."""
    try:
        result = decoder(data)
    except PduError as e:
        return ("error", e.status)
    assert isinstance(result, Pdu)
    return result


def compiled(data: bytes) -> Pdu | None:
    """The compiled decoder alone (no fallback); None when it does not accept the PDU."""
    try:
        length, command_id, status, seq = struct.unpack_from(">IIII", data)
        if length != len(data):
            return None
        return codegen.DECODERS[command_id](data, length, command_id, status, seq)
    except Exception:
        return None


def check_any_input(data: bytes) -> None:
    """What every input, valid or not, must satisfy."""
    got = outcome(decode, data)  # raises the test if anything but PduError escapes
    reference = outcome(oracle.decode_reference, data)
    assert got == reference
    fast = compiled(data)
    if isinstance(reference, Pdu):
        assert fast == reference, "the compiled decoder rejects a PDU the reference accepts"
        assert encode(reference) == data, "decode then encode must give the octets back"
    else:
        assert fast is None, "the compiled decoder accepts a PDU the reference rejects"


def with_header(command_id: int, body: bytes, seq: int = 7) -> bytes:
    return struct.pack(">IIII", 16 + len(body), command_id, 0, seq) + body


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("command_id", COMMAND_IDS, ids=command_name)
@PER_COMMAND
@given(data=st.data())
def test_every_valid_pdu_round_trips(command_id: int, data: st.DataObject) -> None:
    pdu = data.draw(pdus(command_id))
    wire = encode(pdu)
    assert wire == oracle.encode_reference(pdu)
    assert decode(wire) == pdu
    assert oracle.decode_reference(wire) == pdu
    assert compiled(wire) == pdu


@STREAMS
@given(ANY_PDU)
def test_round_trip_through_the_frame_reader(pdu: Pdu) -> None:
    wire = encode(pdu)
    reader = FrameReader()
    reader.feed(wire[:5])
    reader.feed(wire[5:] + wire)
    assert [decode(f) for f in reader.frames()] == [pdu, pdu]
    assert reader.buffered == 0


@STREAMS
@given(ANY_PDU, st.data())
def test_missing_fields_encode_as_their_empty_values(pdu: Pdu, data: st.DataObject) -> None:
    if not pdu.fields:
        return
    keep = data.draw(st.sets(st.sampled_from(sorted(pdu.fields))))
    partial = Pdu(
        pdu.command_id,
        pdu.sequence_number,
        pdu.command_status,
        {k: v for k, v in pdu.fields.items() if k in keep},
        pdu.tlvs,
    )
    try:
        wire = encode(partial)
    except ValueError:
        # Only submit_multi has a field whose empty value is invalid (no destinations).
        assert pdu.command_id == CommandId.submit_multi and "dest_addresses" not in keep
        return
    assert wire == oracle.encode_reference(partial)
    back = decode(wire)
    if keep or partial.tlvs or not pdu.command_id & RESPONSE_BIT:
        assert {k: v for k, v in back.fields.items() if k in keep} == partial.fields
        defaults = codegen.DEFAULTS[pdu.command_id]
        assert {k: v for k, v in back.fields.items() if k not in keep} == {
            k: v for k, v in defaults.items() if k not in keep
        }


# --------------------------------------------------------------------------- hostile input


@SETTINGS
@given(st.binary(max_size=400))
def test_arbitrary_bytes_raise_only_pdu_error(data: bytes) -> None:
    check_any_input(data)


@SETTINGS
@given(st.sampled_from(COMMAND_IDS), st.binary(max_size=300))
def test_random_body_under_a_valid_header(command_id: int, body: bytes) -> None:
    check_any_input(with_header(command_id, body))


@SETTINGS
@given(
    st.sampled_from(COMMAND_IDS),
    st.lists(
        st.one_of(
            st.binary(min_size=1, max_size=8),
            st.sampled_from([b"\0", b"\0" * 16, b"0" * 16 + b"\0", b"\x01", b"\x02"]),
        ),
        max_size=40,
    ),
)
def test_bodies_made_of_plausible_pieces(command_id: int, pieces: list[bytes]) -> None:
    # NUL-terminated runs and small integers get past the first fields far more often than
    # uniform random bytes, so the later fields and the TLV decoder see hostile input too.
    check_any_input(with_header(command_id, b"".join(pieces)))


@SETTINGS
@given(ANY_PDU, st.data())
def test_one_changed_octet_raises_only_pdu_error(pdu: Pdu, data: st.DataObject) -> None:
    wire = bytearray(encode(pdu))
    index = data.draw(st.integers(0, len(wire) - 1), label="index")
    wire[index] = data.draw(OCTET.filter(lambda b: b != wire[index]), label="octet")
    check_any_input(bytes(wire))


@SETTINGS
@given(ANY_PDU, st.data())
def test_truncated_or_extended_pdu_raises_only_pdu_error(pdu: Pdu, data: st.DataObject) -> None:
    wire = encode(pdu)
    body = wire[16:]
    cut = data.draw(st.integers(0, len(body)), label="cut")
    extra = data.draw(st.binary(max_size=12), label="extra")
    check_any_input(with_header(pdu.command_id, body[:cut] + extra, pdu.sequence_number))


@SETTINGS
@given(st.lists(st.binary(max_size=64), max_size=20), st.integers(16, 400))
def test_frame_reader_raises_only_pdu_error_and_stays_bounded(
    chunks: list[bytes], max_size: int
) -> None:
    reader = FrameReader(max_size=max_size)
    for chunk in chunks:
        reader.feed(chunk)
        try:
            frames = list(reader.frames())
        except PduError as e:
            assert e.fatal
            assert reader.buffered == 0
            return
        for frame in frames:
            assert 16 <= len(frame) <= max_size
            check_any_input(frame)
        assert reader.buffered < max(max_size, 16)


@STREAMS
@given(st.lists(ANY_PDU, min_size=1, max_size=5), st.lists(st.integers(1, 50), max_size=30))
def test_frame_reader_cuts_the_stream_wherever_it_is_split(
    pdus_: list[Pdu], sizes: list[int]
) -> None:
    stream = b"".join(encode(p) for p in pdus_)
    reader = FrameReader()
    got: list[Pdu] = []
    pos = 0
    for size in [*sizes, len(stream)]:
        reader.feed(stream[pos : pos + size])
        pos += size
        got += [decode(f) for f in reader.frames()]
    assert got == pdus_
    assert reader.buffered == 0
