"""The reference SMPP codec: decode and encode by walking the layout table, field by field.

Why this module: it is short, obviously faithful to the spec, and precise about what is wrong
with a bad PDU (the command_status to answer with). :func:`bridge.smpp.pdu.decode` falls back to
it whenever the compiled decoder (:mod:`bridge.smpp.codegen`) does not recognise a PDU, and the
property tests hold both compiled codecs to it. The helpers for the variable parts (submit_multi
destinations, unsuccess_sme lists, TLVs) are shared with the compiled codec.
"""

from __future__ import annotations

import struct
from typing import Any

from bridge.smpp.layouts import (
    DEST_ADDR,
    DESTS,
    DL_NAME,
    I1,
    LAYOUTS,
    NO_TLVS,
    SM,
    TIME_FIELDS,
    UNSUCC,
    C,
    Field,
)
from bridge.smpp.spec import (
    HEADER,
    HEADER_SIZE,
    RESPONSE_BIT,
    TLV_BY_TAG,
    TLV_HEADER,
    TLV_LIMITS,
    U32,
    DestAddress,
    DistributionList,
    Pdu,
    PduError,
    Status,
    UnsuccessSme,
    command_name,
)


class Reject(Exception):
    """The compiled decoder does not accept this PDU; the reference decoder will say why."""


class _Short(Reject):
    """The body ended inside a mandatory field."""


class _BadField(Reject):
    """A C-Octet String longer than its maximum (or a time string of the wrong length)."""

    def __init__(self, f: Field) -> None:
        super().__init__(f.name)
        self.field = f


def _cstring(body: bytes, pos: int, f: Field) -> tuple[str, int]:
    end = body.find(b"\0", pos, pos + f.size)
    if end < 0:
        if body.find(b"\0", pos) < 0:
            raise _Short
        raise _BadField(f)
    return body[pos:end].decode("latin-1"), end + 1


def decode_dests(body: bytes, pos: int) -> tuple[list[DestAddress | DistributionList], int]:
    """submit_multi's number_of_dests and dest_address list, starting at ``pos``."""
    count = body[pos]
    pos += 1
    if not 1 <= count <= 254:
        raise PduError(Status.ESME_RINVNUMDESTS, f"number_of_dests {count}")
    dests: list[DestAddress | DistributionList] = []
    for _ in range(count):
        flag = body[pos]
        pos += 1
        if flag == 1:
            ton, npi = body[pos], body[pos + 1]
            addr, pos = _cstring(body, pos + 2, DEST_ADDR)
            dests.append(DestAddress(ton, npi, addr))
        elif flag == 2:
            name, pos = _cstring(body, pos, DL_NAME)
            dests.append(DistributionList(name))
        else:
            raise PduError(Status.ESME_RINVDESTFLAG, f"dest_flag {flag}")
    return dests, pos


def decode_unsuccess(body: bytes, pos: int) -> tuple[list[UnsuccessSme], int]:
    """submit_multi_resp's no_unsuccess and unsuccess_sme list, starting at ``pos``."""
    count = body[pos]
    pos += 1
    smes: list[UnsuccessSme] = []
    for _ in range(count):
        ton, npi = body[pos], body[pos + 1]
        addr, pos = _cstring(body, pos + 2, DEST_ADDR)
        (err,) = U32.unpack_from(body, pos)
        pos += 4
        smes.append(UnsuccessSme(ton, npi, addr, err))
    return smes, pos


def _decode_tlvs(body: bytes, pos: int, end: int) -> dict[int, bytes]:
    """The TLVs in ``body[pos:end]``, in wire order; raises PduError on any defect.

    A tag that appears twice is rejected (ESME_RINVOPTPARSTREAM): ``tlvs`` holds one value per
    tag, and silently keeping either copy would lose what the peer sent (two message_payloads).
    """
    out: dict[int, bytes] = {}
    while pos < end:
        if pos + 4 > end:
            raise PduError(Status.ESME_RINVOPTPARSTREAM, "truncated TLV header")
        tag, length = TLV_HEADER.unpack_from(body, pos)
        pos += 4
        stop = pos + length
        if stop > end:
            raise PduError(
                Status.ESME_RINVOPTPARSTREAM, f"TLV 0x{tag:04X} length {length} overruns the PDU"
            )
        limits = TLV_LIMITS.get(tag)
        if limits is not None and not limits[0] <= length <= limits[1]:
            name = TLV_BY_TAG[tag].name
            raise PduError(Status.ESME_RINVPARLEN, f"TLV {name} has length {length}")
        if tag in out:
            raise PduError(Status.ESME_RINVOPTPARSTREAM, f"TLV 0x{tag:04X} appears twice")
        out[tag] = body[pos:stop]
        pos = stop
    return out


# --------------------------------------------------------------------------- reference decoder


def decode_reference(data: bytes) -> Pdu:
    """Decode by walking the layout table; the oracle for, and the fallback of,
    :func:`bridge.smpp.pdu.decode`."""
    if len(data) < HEADER_SIZE:
        raise PduError(Status.ESME_RINVCMDLEN, "PDU shorter than its header", fatal=True)
    length, command_id, status, seq = HEADER.unpack_from(data)
    if length != len(data):
        raise PduError(
            Status.ESME_RINVCMDLEN,
            f"command_length {length} but {len(data)} octets",
            command_id=command_id,
            sequence_number=seq,
            fatal=True,
        )
    spec = LAYOUTS.get(command_id)
    if spec is None:
        raise PduError(
            Status.ESME_RINVCMDID,
            f"unknown command_id 0x{command_id:08X}",
            command_id=command_id,
            sequence_number=seq,
        )
    pdu = Pdu(command_id, seq, status)
    if length == HEADER_SIZE:
        # Header-only PDU; a response may come with an empty body (error responses).
        if spec and not (command_id & RESPONSE_BIT):
            raise PduError(
                Status.ESME_RINVCMDLEN,
                f"{command_name(command_id)} without a body",
                command_id=command_id,
                sequence_number=seq,
            )
        return pdu
    body = bytes(data[HEADER_SIZE:])
    try:
        pos = _decode_fields(body, spec, pdu.fields)
        if pos < len(body):
            if command_id in NO_TLVS:
                raise PduError(
                    Status.ESME_RINVCMDLEN,
                    f"{len(body) - pos} unexpected octets after the body",
                )
            pdu.tlvs = _decode_tlvs(body, pos, len(body))
    except PduError as e:
        e.command_id = command_id
        e.sequence_number = seq
        raise
    except _BadField as e:
        f = e.field
        what = "neither empty nor 16 characters" if f.name in TIME_FIELDS else "too long"
        raise PduError(
            f.status,
            f"{f.name} {what} (at most {f.size - 1} octets)",
            command_id=command_id,
            sequence_number=seq,
        ) from None
    except (_Short, IndexError, struct.error):
        raise PduError(
            Status.ESME_RINVCMDLEN,
            f"{command_name(command_id)} body ends inside a mandatory field",
            command_id=command_id,
            sequence_number=seq,
        ) from None
    return pdu


def _decode_fields(body: bytes, spec: tuple[Field, ...], out: dict[str, Any]) -> int:
    pos = 0
    for f in spec:
        kind = f.kind
        if kind == C:
            value, pos = _cstring(body, pos, f)
            if f.name in TIME_FIELDS and len(value) not in (0, 16):
                raise _BadField(f)
            out[f.name] = value
        elif kind == I1:
            out[f.name] = body[pos]
            pos += 1
        elif kind == SM:
            sm_length = body[pos]
            pos += 1
            end = pos + sm_length
            if end > len(body):
                raise PduError(
                    Status.ESME_RINVMSGLEN, f"sm_length {sm_length} runs past the end of the PDU"
                )
            out["short_message"] = body[pos:end]
            pos = end
        elif kind == DESTS:
            out["dest_addresses"], pos = decode_dests(body, pos)
        elif kind == UNSUCC:
            out["unsuccess_smes"], pos = decode_unsuccess(body, pos)
        else:  # pragma: no cover - layouts hold only the kinds above
            raise AssertionError(kind)
    return pos


# --------------------------------------------------------------------------- reference encoder


def encode_reference(pdu: Pdu) -> bytes:
    """Encode by walking the layout table; the oracle the compiled encoders are tested against.

    Same contract as :func:`bridge.smpp.pdu.encode`.
    """
    command_id = pdu.command_id
    spec = LAYOUTS.get(command_id)
    if spec is None:
        raise ValueError(f"cannot encode unknown command_id 0x{command_id:08X}")
    fields = pdu.fields
    if not fields and not pdu.tlvs and command_id & RESPONSE_BIT:
        spec = ()
    if pdu.tlvs and command_id in NO_TLVS:
        raise ValueError(f"{command_name(command_id)} carries no TLVs in SMPP 3.4")
    parts: list[bytes] = []
    append = parts.append
    for f in spec:
        kind = f.kind
        if kind == C:
            append(_cbytes(fields.get(f.name, ""), f.size, f.name))
        elif kind == I1:
            append(bytes((fields.get(f.name, 0),)))
        elif kind == SM:
            sm = fields.get("short_message", b"")
            if len(sm) > 254:
                raise ValueError("short_message longer than 254 octets: use message_payload")
            append(bytes((len(sm),)))
            append(bytes(sm))
        elif kind == DESTS:
            append(encode_dests(fields.get("dest_addresses", [])).encode("latin-1"))
        elif kind == UNSUCC:
            append(encode_unsuccess(fields.get("unsuccess_smes", [])).encode("latin-1"))
    append(encode_tlvs(pdu.tlvs))
    body = b"".join(parts)
    try:
        header = HEADER.pack(
            HEADER_SIZE + len(body), command_id, pdu.command_status, pdu.sequence_number
        )
    except struct.error as e:
        raise ValueError(f"header value out of range: {e}") from None
    return header + body


def _cbytes(value: str, size: int, name: str) -> bytes:
    if len(value) >= size or "\0" in value:
        raise bad_cstring(name, value, size)
    if name in TIME_FIELDS and len(value) not in (0, 16):
        raise bad_cstring(name, value, size)
    return value.encode("latin-1") + b"\0"


def bad_cstring(name: str, value: object, size: int) -> ValueError:
    """The error for a C-Octet String value that the wire cannot carry as given."""
    if name in TIME_FIELDS:
        return ValueError(f"{name} must be empty or 16 characters without NUL, not {value!r}")
    return ValueError(f"{name} must be at most {size - 1} characters without NUL, not {value!r}")


def encode_dests(dests: list[DestAddress | DistributionList]) -> str:
    """number_of_dests and the dest_address list, as Latin-1 text (one char per octet)."""
    if not 1 <= len(dests) <= 254:
        raise ValueError(f"submit_multi needs 1..254 destinations, not {len(dests)}")
    out = [chr(len(dests))]
    for d in dests:
        if isinstance(d, DestAddress):
            addr = d.destination_addr
            if len(addr) > 20 or "\0" in addr:
                raise bad_cstring("destination_addr", addr, 21)
            out += ("\x01", chr(d.dest_addr_ton), chr(d.dest_addr_npi), addr, "\0")
        elif isinstance(d, DistributionList):
            name = d.dl_name
            if len(name) > 20 or "\0" in name:
                raise bad_cstring("dl_name", name, 21)
            out += ("\x02", name, "\0")
        else:
            raise TypeError(f"dest_addresses holds DestAddress/DistributionList, not {d!r}")
    return "".join(out)


def encode_unsuccess(smes: list[UnsuccessSme]) -> str:
    """no_unsuccess and the unsuccess_sme list, as Latin-1 text (one char per octet)."""
    out = [chr(len(smes))]
    for s in smes:
        addr = s.destination_addr
        if len(addr) > 20 or "\0" in addr:
            raise bad_cstring("destination_addr", addr, 21)
        out += (chr(s.dest_addr_ton), chr(s.dest_addr_npi), addr, "\0")
        out.append(U32.pack(s.error_status_code).decode("latin-1"))
    return "".join(out)


def encode_tlvs(tlvs: dict[int, bytes]) -> bytes:
    """TLVs in dict order; a known tag must have a length its decoder accepts."""
    out: list[bytes] = []
    for tag, raw in tlvs.items():
        n = len(raw)
        limits = TLV_LIMITS.get(tag)
        if limits is not None and not limits[0] <= n <= limits[1]:
            raise ValueError(f"TLV {TLV_BY_TAG[tag].name}: length {n} outside {limits}")
        out.append(TLV_HEADER.pack(tag, n))  # struct.error beyond 0xFFFF: encode() says so
        out.append(raw)
    return b"".join(out)
