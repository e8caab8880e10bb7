"""SMPP 3.4 PDUs: the public face of the sans-IO codec (bytes to :class:`Pdu` and back).

Why our own codec: the pure-Python SMPP libraries decode an order of magnitude slower, raise on
vendor TLVs, lose UDHs or mis-decode GSM text (see docs/architecture.md). This module takes
bytes and returns :class:`Pdu` objects (and back); it reads no clock and touches no socket.
Callers import everything from here; the work is done by the modules below it, one per job:

* :mod:`bridge.smpp.spec` — command ids, statuses, TLVs, :class:`Pdu` and :class:`PduError`;
* :mod:`bridge.smpp.layouts` — the mandatory-field layout of every command (the one table);
* :mod:`bridge.smpp.reference` — the table-walking codec: the oracle and the error reporter;
* :mod:`bridge.smpp.codegen` — the fast decoders and encoders compiled from the table;
* :mod:`bridge.smpp.framing` — :class:`FrameReader`, a byte stream cut into PDUs.

Shape of a decoded PDU:

* ``fields`` holds every mandatory field by its SMPP name. C-Octet Strings become ``str``
  (decoded as Latin-1, so every octet survives a round trip), integers ``int``, ``short_message``
  ``bytes`` (``sm_length`` is implied by it), submit_multi destinations a list of
  :class:`DestAddress` / :class:`DistributionList`, submit_multi_resp failures a list of
  :class:`UnsuccessSme`.
* ``tlvs`` maps tag → raw value octets, in wire order, unknown tags included, so that nothing an
  ESME sent is lost. :meth:`Pdu.tlv` and :meth:`Pdu.set_tlv` convert by TLV name.
* A response whose body is empty (allowed for error responses) has ``fields == {}``.

Every defect in the input raises :class:`PduError` carrying the command_status to answer with;
no other exception leaves :func:`decode`.
"""

from __future__ import annotations

import struct
from typing import Final

from bridge.smpp.codegen import DECODERS, DEFAULTS, ENCODERS
from bridge.smpp.framing import FrameReader
from bridge.smpp.layouts import is_known_command, layout
from bridge.smpp.reference import Reject, decode_reference
from bridge.smpp.spec import (
    HEADER,
    HEADER_SIZE,
    RESPONSE_BIT,
    TLVS,
    CommandId,
    DestAddress,
    DistributionList,
    Pdu,
    PduError,
    Status,
    TlvSpec,
    UnsuccessSme,
    command_name,
    response_id,
    status_name,
)

__all__ = [
    "HEADER_SIZE",
    "RESPONSE_BIT",
    "TLVS",
    "CommandId",
    "DestAddress",
    "DistributionList",
    "FrameReader",
    "Pdu",
    "PduError",
    "Status",
    "TlvSpec",
    "UnsuccessSme",
    "command_name",
    "decode",
    "encode",
    "is_known_command",
    "layout",
    "response_id",
    "status_name",
]

_HEADER_UNPACK: Final = HEADER.unpack_from  # one global lookup per decode, not two

# What the compiled decoders (and the header unpack and lookup before them) raise on input they
# do not accept. Catching more than needed would only cost speed, never correctness: the
# reference decoder has the last word.
_NOT_RECOGNISED: Final = (Reject, PduError, IndexError, KeyError, ValueError, struct.error)


def decode(data: bytes) -> Pdu:
    """Decode one whole PDU (header included; framing already checked its length).

    Raises :class:`PduError` with the command_status to answer with; nothing else escapes.
    """
    if type(data) is not bytes:
        data = bytes(data)  # the compiled decoders slice: bytes in, bytes (not views) out
    try:
        length, command_id, status, seq = _HEADER_UNPACK(data)
        if length == len(data):
            return DECODERS[command_id](data, length, command_id, status, seq)
    except _NOT_RECOGNISED:
        pass
    # Not a well-formed PDU (or shorter than a header): the reference decoder names the defect.
    return decode_reference(data)


def encode(pdu: Pdu) -> bytes:
    """Encode a PDU. Missing mandatory fields take their empty value (0, "" or b"").

    A response with no fields and no TLVs is encoded header-only (how error responses are sent).
    Raises ValueError for values the wire cannot carry (over-long strings, strings with NUL or
    outside Latin-1, integers outside their octets, TLVs on PDUs without TLVs, known TLVs of the
    wrong length), TypeError for values of the wrong type. What :func:`encode` returns,
    :func:`decode` accepts.
    """
    command_id = pdu.command_id
    encoder = ENCODERS.get(command_id)
    if encoder is None:
        raise ValueError(f"cannot encode unknown command_id 0x{command_id:08X}")
    try:
        try:
            return encoder(
                pdu.fields, pdu.tlvs, command_id, pdu.command_status, pdu.sequence_number
            )
        except KeyError:
            # Some mandatory field is missing: the slow path, with the defaults merged in.
            fields = {**DEFAULTS[command_id], **pdu.fields}
            return encoder(fields, pdu.tlvs, command_id, pdu.command_status, pdu.sequence_number)
    except UnicodeEncodeError as e:
        raise ValueError(
            f"{command_name(command_id)}: a string outside Latin-1 or an integer field outside"
            f" 0..255 ({e.object[e.start : e.end]!r})"
        ) from None
    except struct.error as e:
        raise ValueError(f"{command_name(command_id)}: value out of range: {e}") from None
