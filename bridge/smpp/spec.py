"""SMPP 3.4's vocabulary: command ids, statuses, TLVs, and the :class:`Pdu` object they describe.

Why this module: the codec is generated from tables (:mod:`bridge.smpp.layouts`) and checked
against a reference (:mod:`bridge.smpp.reference`); both, and the session code above them, speak
in these names. It holds no codec logic, so every other codec module can import it. The public
face of the codec is :mod:`bridge.smpp.pdu`, which re-exports what callers need from here.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, Final, NamedTuple

HEADER_SIZE: Final = 16
RESPONSE_BIT: Final = 0x80000000
HEADER: Final = struct.Struct(">IIII")
U32: Final = struct.Struct(">I")
TLV_HEADER: Final = struct.Struct(">HH")


class CommandId(IntEnum):
    """SMPP 3.4 command ids (responses have bit 31 set)."""

    generic_nack = 0x80000000
    bind_receiver = 0x00000001
    bind_receiver_resp = 0x80000001
    bind_transmitter = 0x00000002
    bind_transmitter_resp = 0x80000002
    query_sm = 0x00000003
    query_sm_resp = 0x80000003
    submit_sm = 0x00000004
    submit_sm_resp = 0x80000004
    deliver_sm = 0x00000005
    deliver_sm_resp = 0x80000005
    unbind = 0x00000006
    unbind_resp = 0x80000006
    replace_sm = 0x00000007
    replace_sm_resp = 0x80000007
    cancel_sm = 0x00000008
    cancel_sm_resp = 0x80000008
    bind_transceiver = 0x00000009
    bind_transceiver_resp = 0x80000009
    outbind = 0x0000000B
    enquire_link = 0x00000015
    enquire_link_resp = 0x80000015
    submit_multi = 0x00000021
    submit_multi_resp = 0x80000021
    alert_notification = 0x00000102
    data_sm = 0x00000103
    data_sm_resp = 0x80000103


class Status(IntEnum):
    """SMPP 3.4 command_status values (0xC0–0xC4 under their 3.4 names)."""

    ESME_ROK = 0x00000000
    ESME_RINVMSGLEN = 0x00000001
    ESME_RINVCMDLEN = 0x00000002
    ESME_RINVCMDID = 0x00000003
    ESME_RINVBNDSTS = 0x00000004
    ESME_RALYBND = 0x00000005
    ESME_RINVPRTFLG = 0x00000006
    ESME_RINVREGDLVFLG = 0x00000007
    ESME_RSYSERR = 0x00000008
    ESME_RINVSRCADR = 0x0000000A
    ESME_RINVDSTADR = 0x0000000B
    ESME_RINVMSGID = 0x0000000C
    ESME_RBINDFAIL = 0x0000000D
    ESME_RINVPASWD = 0x0000000E
    ESME_RINVSYSID = 0x0000000F
    ESME_RCANCELFAIL = 0x00000011
    ESME_RREPLACEFAIL = 0x00000013
    ESME_RMSGQFUL = 0x00000014
    ESME_RINVSERTYP = 0x00000015
    ESME_RINVNUMDESTS = 0x00000033
    ESME_RINVDLNAME = 0x00000034
    ESME_RINVDESTFLAG = 0x00000040
    ESME_RINVSUBREP = 0x00000042
    ESME_RINVESMCLASS = 0x00000043
    ESME_RCNTSUBDL = 0x00000044
    ESME_RSUBMITFAIL = 0x00000045
    ESME_RINVSRCTON = 0x00000048
    ESME_RINVSRCNPI = 0x00000049
    ESME_RINVDSTTON = 0x00000050
    ESME_RINVDSTNPI = 0x00000051
    ESME_RINVSYSTYP = 0x00000053
    ESME_RINVREPFLAG = 0x00000054
    ESME_RINVNUMMSGS = 0x00000055
    ESME_RTHROTTLED = 0x00000058
    ESME_RINVSCHED = 0x00000061
    ESME_RINVEXPIRY = 0x00000062
    ESME_RINVDFTMSGID = 0x00000063
    ESME_RX_T_APPN = 0x00000064
    ESME_RX_P_APPN = 0x00000065
    ESME_RX_R_APPN = 0x00000066
    ESME_RQUERYFAIL = 0x00000067
    ESME_RINVOPTPARSTREAM = 0x000000C0
    ESME_ROPTPARNOTALLWD = 0x000000C1
    ESME_RINVPARLEN = 0x000000C2
    ESME_RMISSINGOPTPARAM = 0x000000C3
    ESME_RINVOPTPARAMVAL = 0x000000C4
    ESME_RDELIVERYFAILURE = 0x000000FE
    ESME_RUNKNOWNERR = 0x000000FF


def response_id(command_id: int) -> int:
    """The command_id of the response to a request."""
    return command_id | RESPONSE_BIT


def status_name(status: int) -> str:
    """A readable name for a command_status, also for vendor or unknown codes."""
    try:
        return Status(status).name
    except ValueError:
        return f"0x{status:08X}"


def command_name(command_id: int) -> str:
    """A readable name for a command_id, also for unknown ones."""
    try:
        return CommandId(command_id).name
    except ValueError:
        return f"0x{command_id:08X}"


class PduError(Exception):
    """A PDU that cannot be decoded; ``status`` is the command_status to answer with.

    ``fatal`` marks framing defects (impossible command_length) after which the byte stream can
    no longer be trusted: the session answers generic_nack and closes.
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        command_id: int = 0,
        sequence_number: int = 0,
        fatal: bool = False,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.command_id = command_id
        self.sequence_number = sequence_number
        self.fatal = fatal


class DestAddress(NamedTuple):
    """A submit_multi SME destination (dest_flag 1)."""

    dest_addr_ton: int
    dest_addr_npi: int
    destination_addr: str


class DistributionList(NamedTuple):
    """A submit_multi distribution-list destination (dest_flag 2)."""

    dl_name: str


class UnsuccessSme(NamedTuple):
    """One failed destination in submit_multi_resp."""

    dest_addr_ton: int
    dest_addr_npi: int
    destination_addr: str
    error_status_code: int


# --------------------------------------------------------------------------- TLVs


class TlvSpec(NamedTuple):
    """How one SMPP 3.4 TLV is typed: kind is i1/i2/i4 (integer), c (C-Octet String), o (octets)."""

    tag: int
    name: str
    kind: str
    min_len: int
    max_len: int


# SMPP 3.4 §5.3.2, one TLV a row: tag, name, kind (i1/i2/i4: an integer of 1/2/4 octets; c: a
# C-Octet String; o: octets) and, for c and o, the least and most octets the value may have.
_TLV_TABLE: Final = """
0x0005  dest_addr_subunit            i1
0x0006  dest_network_type            i1
0x0007  dest_bearer_type             i1
0x0008  dest_telematics_id           i2
0x000D  source_addr_subunit          i1
0x000E  source_network_type          i1
0x000F  source_bearer_type           i1
0x0010  source_telematics_id         i1
0x0017  qos_time_to_live             i4
0x0019  payload_type                 i1
0x001D  additional_status_info_text  c   1   256
0x001E  receipted_message_id         c   1    65
0x0030  ms_msg_wait_facilities       i1
0x0201  privacy_indicator            i1
0x0202  source_subaddress            o   2    23
0x0203  dest_subaddress              o   2    23
0x0204  user_message_reference       i2
0x0205  user_response_code           i1
0x020A  source_port                  i2
0x020B  destination_port             i2
0x020C  sar_msg_ref_num              i2
0x020D  language_indicator           i1
0x020E  sar_total_segments           i1
0x020F  sar_segment_seqnum           i1
0x0210  sc_interface_version         i1
0x0302  callback_num_pres_ind        i1
0x0303  callback_num_atag            o   0    65
0x0304  number_of_messages           i1
0x0381  callback_num                 o   4    19
0x0420  dpf_result                   i1
0x0421  set_dpf                      i1
0x0422  ms_availability_status       i1
0x0423  network_error_code           o   3     3
0x0424  message_payload              o   0 65535
0x0425  delivery_failure_reason      i1
0x0426  more_messages_to_send        i1
0x0427  message_state                i1
0x0501  ussd_service_op              o   1     1
0x1201  display_time                 i1
0x1203  sms_signal                   i2
0x1204  ms_validity                  i1
0x130C  alert_on_message_delivery    o   0     1    # 0 by the spec; some ESMEs send 1 octet
0x1380  its_reply_type               i1
0x1383  its_session_info             o   2     2
"""


def _tlv(row: str) -> TlvSpec:
    tag, name, kind, *bounds = row.split("#")[0].split()
    if kind in ("i1", "i2", "i4"):
        size = int(kind[1])
        return TlvSpec(int(tag, 16), name, kind, size, size)
    low, high = bounds
    return TlvSpec(int(tag, 16), name, kind, int(low), int(high))


_TLV_LIST: Final = tuple(_tlv(row) for row in _TLV_TABLE.strip().splitlines())
TLVS: Final[dict[str, TlvSpec]] = {t.name: t for t in _TLV_LIST}
TLV_BY_TAG: Final[dict[int, TlvSpec]] = {t.tag: t for t in _TLV_LIST}
TLV_LIMITS: Final[dict[int, tuple[int, int]]] = {t.tag: (t.min_len, t.max_len) for t in _TLV_LIST}


def _tlv_value(spec: TlvSpec, raw: bytes) -> int | str | bytes:
    kind = spec.kind
    if kind[0] == "i":
        return int.from_bytes(raw, "big")
    if kind == "c":
        # Tolerate a missing terminator: some SMSCs send receipted_message_id without the NUL.
        end = raw.find(b"\0")
        return (raw if end < 0 else raw[:end]).decode("latin-1")
    return raw


def _tlv_raw(spec: TlvSpec, value: int | str | bytes) -> bytes:
    kind = spec.kind
    if kind[0] == "i":
        if not isinstance(value, int):
            raise TypeError(f"TLV {spec.name} takes an int")
        try:
            return value.to_bytes(spec.min_len, "big")
        except OverflowError:
            raise ValueError(f"TLV {spec.name}: {value} outside {spec.min_len} octets") from None
    if kind == "c":
        if not isinstance(value, str):
            raise TypeError(f"TLV {spec.name} takes a str")
        if "\0" in value:  # the NUL would end the string early on the far side
            raise ValueError(f"TLV {spec.name}: NUL inside a C-Octet String")
        raw = value.encode("latin-1") + b"\0"
    else:
        if not isinstance(value, bytes | bytearray):
            raise TypeError(f"TLV {spec.name} takes bytes")
        raw = bytes(value)
    if not spec.min_len <= len(raw) <= spec.max_len:
        raise ValueError(
            f"TLV {spec.name}: length {len(raw)} outside {spec.min_len}..{spec.max_len}"
        )
    return raw


# --------------------------------------------------------------------------- the PDU object


@dataclass(slots=True)
class Pdu:
    """One SMPP PDU: header values, mandatory fields by name and raw TLVs by tag."""

    command_id: int
    sequence_number: int = 0
    command_status: int = 0
    fields: dict[str, Any] = field(default_factory=dict)
    tlvs: dict[int, bytes] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """The command's SMPP name (``submit_sm``), or its hex id when unknown."""
        return command_name(self.command_id)

    @property
    def is_response(self) -> bool:
        return bool(self.command_id & RESPONSE_BIT)

    def __getitem__(self, name: str) -> Any:
        return self.fields[name]

    def get(self, name: str, default: Any = None) -> Any:
        return self.fields.get(name, default)

    def tlv(self, name: str, default: Any = None) -> Any:
        """A TLV's value converted by its type (int, str or bytes); ``default`` when absent."""
        spec = TLVS[name]
        raw = self.tlvs.get(spec.tag)
        if raw is None:
            return default
        return _tlv_value(spec, raw)

    def set_tlv(self, name: str, value: int | str | bytes) -> None:
        spec = TLVS[name]
        self.tlvs[spec.tag] = _tlv_raw(spec, value)

    def response(self, status: int = 0, **fields: Any) -> Pdu:
        """The response to this request, with the same sequence_number."""
        return Pdu(self.command_id | RESPONSE_BIT, self.sequence_number, status, fields)
