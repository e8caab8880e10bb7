"""iSMS.gr over SMPP 3.4: the bridge as an ESME of iSMS's SMSC (``type = "isms_smpp"``).

iSMS's document gives the SMPP service in one paragraph: SMPP 3.4, Greek/Arabic/Russian text,
flash messages, concatenated messages, real-time delivery receipts, 700 SMS per second per
account, accounts opened on request. Everything else is SMPP 3.4 as written, so this adapter is
a plain SMPP client (:mod:`bridge.smpp.client`) plus the translations below; the host and port
come with the account (the default port is 2775, the IANA port for SMPP).

Sending (:meth:`IsmsSmppProvider.send`)
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

Long messages: correlation and partial sends
    The dispatcher stores one provider id per message: ours is the first part's upstream id.
    The other parts' ids map to it in memory (:class:`PartCorrelator`), and the message's report
    is *aggregated*: the first failure of any part ends it (with that part's stat and err); it
    is DELIVRD only when every part reported DELIVRD (ACCEPTD when some said ACCEPTD); the first
    intermediate report goes through once. The aggregation lives as long as the process
    (bounded); every part's id is also correlated durably (``Outcome.other_ids``), so after a
    restart a receipt for any part still finds the message, and the first final one decides.
    A part refused permanently after earlier parts were taken cannot be recalled: the message
    ends UNDELIV with that part's status as ``err`` (no failover, which would deliver the first
    parts twice). A part that fails transiently leaves the parts already taken recorded, and
    the dispatcher's retry sends only the remaining ones (with the same reference).

Receipts from the upstream (deliver_sm / data_sm with esm_class 0x04, 0x08 or 0x20)
    The TLVs first (receipted_message_id, message_state, network_error_code), then the Appendix
    B text (:func:`bridge.smpp.receipt_text.parse_receipt_text`: any field order, 10/12-digit dates,
    ``ACKED``/``BUFFRED``… as intermediate). Ids written in another base than in the
    submit_sm_resp are matched through ``receipt_id_format`` (restart-proof) and, with the
    default ``"same"``, through :func:`~bridge.smpp.receipt_text.receipt_id_variants` against the
    ids awaiting a receipt. ``err`` is the text's err (decimal, or hex with letters), else the
    network_error_code's code, capped at 999. The deliver_sm_resp goes back only after the
    report was handed to the bridge (which stores it); an unparseable receipt or one for an
    unknown id is answered ESME_ROK (it will never become matchable: refusing it would only make
    the SMSC resend it for ever), logged and counted by the bridge.

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

import asyncio
import contextlib
import ssl
import time
import zlib
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Literal

import structlog
from pydantic import BeforeValidator, Field, SecretStr, field_validator, model_validator

from bridge.core.model import (
    Address,
    DeliveryReport,
    InboundMessage,
    Message,
    MessageState,
    Outcome,
    OutcomeKind,
)
from bridge.core.provider import (
    Capabilities,
    InboundSink,
    Provider,
    ProviderContext,
    ProviderStats,
    ReportSink,
)
from bridge.observability import SampledLog
from bridge.providers.settings import (
    NonNegFloat,
    PosFloat,
    ProviderSettings,
    Secret,
    resolve_env,
)
from bridge.smpp.client import ClientConfig, ClientError, SmppClient
from bridge.smpp.pdu import CommandId, Pdu, Status, status_name
from bridge.smpp.receipt_text import ERR_MAX, parse_receipt_text, receipt_id_variants
from bridge.smpp.text import TextError, decode_text, gsm7_encode, is_gsm7
from bridge.smpp.timefmt import format_smpp_time
from bridge.smpp.udh import Concat, build_udh, concat_ie, find_concat, parse_udh

__all__ = [
    "RECEIPT_ESM_TYPES",
    "TRANSIENT_STATUSES",
    "IsmsSmppProvider",
    "MoPart",
    "MoReassembler",
    "Part",
    "PartCorrelator",
    "Settings",
    "UpstreamReceipt",
    "build_submit",
    "canonical_id",
    "capabilities_for",
    "classify_status",
    "create",
    "inbound_from_parts",
    "is_receipt",
    "message_coding",
    "parse_mo",
    "parse_receipt",
    "reference_for",
    "split_message",
]

log = structlog.get_logger("bridge.providers.isms_smpp")

ConcatMode = Literal["udh8", "udh16", "sar", "payload"]


class Settings(ProviderSettings):
    """``[providers.NAME] type = "isms_smpp"``: where iSMS's SMSC is, the account, the options.

    ``requests_per_second`` (700, iSMS's limit per account) is both the dispatcher's message
    rate and the client's submit_sm rate shared by every bind (a long message is several
    submit_sm). ``concurrency`` is how many messages are being sent at once; the window (per
    bind) bounds the submit_sm awaiting their response.
    """

    type: Literal["isms_smpp"]
    requests_per_second: NonNegFloat = 700.0
    concurrency: Annotated[int, Field(ge=1)] = 32
    host: Annotated[str, Field(min_length=1)]
    port: Annotated[int, Field(ge=1, le=65535)] = 2775
    # plain or "env:VAR"
    system_id: Annotated[str, BeforeValidator(resolve_env), Field(min_length=1, max_length=15)]
    password: Secret
    system_type: Annotated[str, Field(max_length=12)] = ""
    address_range: Annotated[str, Field(max_length=40)] = ""
    bind_mode: Literal["transceiver", "tx_rx"] = "transceiver"
    binds: Annotated[int, Field(ge=1, le=32)] = 1
    window: Annotated[int, Field(ge=1, le=1000)] = 10
    enquire_link_interval: NonNegFloat = 30.0
    response_timeout: PosFloat = 10.0
    connect_timeout: PosFloat = 10.0
    reconnect_min: PosFloat = 1.0
    reconnect_max: PosFloat = 60.0
    tls: bool = False
    tls_verify: bool = True  # false: accept any certificate (a test SMSC); never in production
    service_type: Annotated[str, Field(max_length=5)] = ""
    # None: the ESME's own TON/NPI (alphanumeric senders are TON 5 / NPI 0)
    source_ton: Annotated[int, Field(ge=0, le=6)] | None = None
    source_npi: Annotated[int, Field(ge=0, le=18)] | None = None
    dest_ton: Annotated[int, Field(ge=0, le=6)] = 1
    dest_npi: Annotated[int, Field(ge=0, le=18)] = 1
    concat: ConcatMode = "udh8"
    max_parts: Annotated[int, Field(ge=1, le=255)] = 10
    scheduling: bool = True  # pass schedule_delivery_time on (false: the bridge holds them)
    validity: bool = True  # pass the message's expiry on as validity_period
    throttle_pause: PosFloat = 1.0
    throttle_pause_max: PosFloat = 10.0
    throttle_retries: Annotated[int, Field(ge=0, le=100)] = 3
    receipt_id_format: Literal["same", "decimal", "hex"] = "same"
    mo_default_alphabet: Literal["gsm7", "latin1", "ascii"] = "gsm7"
    mo_reassembly_timeout: PosFloat = 60.0

    @field_validator("password")
    @classmethod
    def _password_fits(cls, value: SecretStr) -> SecretStr:
        if len(value.get_secret_value()) > 8:
            raise ValueError("an SMPP password has at most 8 characters")
        return value

    @model_validator(mode="after")
    def _ranges(self) -> Settings:
        if self.reconnect_min > self.reconnect_max:
            raise ValueError("reconnect_min must not exceed reconnect_max")
        if self.throttle_pause > self.throttle_pause_max:
            raise ValueError("throttle_pause must not exceed throttle_pause_max")
        return self


# --------------------------------------------------------------------------- capabilities

# Characters (septets / UCS-2 units) per part of a concatenated message.
_PER_PART: dict[ConcatMode, tuple[int, int]] = {
    "udh8": (153, 67),
    "udh16": (152, 66),
    "sar": (152, 66),
    # One submit_sm with the whole text in message_payload: the SMSC cuts it, typically with
    # an 8-bit reference UDH; the length limit counts parts of that size.
    "payload": (153, 67),
}


def capabilities_for(settings: Settings) -> Capabilities:
    """What this upstream carries: unicode, flash, binary, ``max_parts`` parts, push reports."""
    gsm, ucs2 = _PER_PART[settings.concat]
    return Capabilities(
        max_gsm7_chars=settings.max_parts * gsm if settings.max_parts > 1 else 160,
        max_ucs2_chars=settings.max_parts * ucs2 if settings.max_parts > 1 else 70,
        unicode=True,
        binary=True,
        flash=True,
        scheduling=settings.scheduling,
        alphanumeric_sender=True,
        max_sender_chars=11,
        reports="push",
        requests_per_second=settings.requests_per_second,
        concurrency=settings.concurrency,
    )


# --------------------------------------------------------------------------- encoding, splitting

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


def _capacity(alphabet: Alphabet, udh_octets: int) -> int:
    """Octets of encoded user data that fit next to a UDH of ``udh_octets`` (UDHL included).

    GSM 7-bit counts unpacked septets (one octet each here): the UDH takes whole septets
    (fill bits), so 160 - ceil(udh_octets * 8 / 7).
    """
    if alphabet == "gsm7":
        return 160 - (udh_octets * 8 + 6) // 7
    if alphabet == "ucs2":
        return (140 - udh_octets) // 2 * 2
    return 140 - udh_octets


def _back_off(alphabet: Alphabet, data: bytes, cut: int) -> int:
    """Move a cut back so that no GSM escape pair or UTF-16 surrogate pair is split."""
    if alphabet == "gsm7" and data[cut - 1] == 0x1B:
        return 1
    if alphabet == "ucs2" and 0xD8 <= data[cut - 2] <= 0xDB:
        return 2
    return 0


#: message_payload is at most 64 K octets (SMPP 3.4 §5.3.2.32).
MAX_PAYLOAD = 65535


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
    extra = message.udh[1:] if message.udh else b""  # the ESME's other IEs, UDHL stripped
    single = _capacity(alphabet, 1 + len(extra) if extra else 0)
    if len(data) <= single:
        udh = (bytes((len(extra),)) + extra) if extra else b""
        return [Part(udh + data, 0x40 if udh else 0, dc)]
    if concat == "payload":
        # The whole user data in one submit_sm (the ESME's other IEs stay in front of it).
        udh = (bytes((len(extra),)) + extra) if extra else b""
        if len(udh) + len(data) > MAX_PAYLOAD:
            raise TextError(f"message longer than {MAX_PAYLOAD} octets")
        return [Part(udh + data, 0x40 if udh else 0, dc, payload=True)]
    ie_octets = {"udh8": 5, "udh16": 6, "sar": 6}[concat]
    per_part = _capacity(alphabet, 1 + len(extra) + ie_octets)
    chunks: list[bytes] = []
    pos = 0
    while pos < len(data):
        end = pos + per_part
        if end < len(data):
            end -= _back_off(alphabet, data, end)
        chunks.append(data[pos:end])
        pos = end
    total = len(chunks)
    if total > 255:
        raise TextError(f"message needs {total} parts, more than 255")
    if concat == "sar":
        ref = reference & 0xFFFF
        udh = (bytes((len(extra),)) + extra) if extra else b""
        return [
            Part(udh + chunk, 0x40 if udh else 0, dc, (ref, total, seqnum))
            for seqnum, chunk in enumerate(chunks, 1)
        ]
    bits = 8 if concat == "udh8" else 16
    ref = reference & ((1 << bits) - 1)
    extra_ies = parse_udh(bytes((len(extra),)) + extra)[0] if extra else []
    return [
        Part(build_udh([*extra_ies, concat_ie(ref, total, seqnum, bits)]) + chunk, 0x40, dc)
        for seqnum, chunk in enumerate(chunks, 1)
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


# --------------------------------------------------------------------------- receipts

#: esm_class message types (bits 5–2) that carry a delivery report: SMSC delivery receipt,
#: SME delivery acknowledgement, intermediate delivery notification.
RECEIPT_ESM_TYPES = frozenset({0x04, 0x08, 0x20})


def is_receipt(pdu: Pdu) -> bool:
    return (pdu.get("esm_class", 0) & 0x3C) in RECEIPT_ESM_TYPES


@dataclass(frozen=True, slots=True)
class UpstreamReceipt:
    """What a receipt deliver_sm said: the upstream id (as written), state, err, time."""

    id: str
    state: MessageState
    error_code: int = 0
    done_at: float | None = None
    network_error: tuple[int, int] | None = None


def _user_data(pdu: Pdu) -> bytes:
    data = pdu.get("short_message", b"") or pdu.tlv("message_payload", b"")
    return bytes(data)


def parse_receipt(pdu: Pdu) -> UpstreamReceipt | None:
    """Read a receipt deliver_sm/data_sm: TLVs first, then the Appendix B text; None when it
    names no id or no state we understand."""
    data = _user_data(pdu)
    if pdu.get("esm_class", 0) & 0x40 and data:
        with contextlib.suppress(TextError):
            data = parse_udh(data)[1]
    parsed = parse_receipt_text(data.decode("latin-1")) if data else None
    rid = pdu.tlv("receipted_message_id") or (parsed.id if parsed is not None else None)
    if not rid:
        return None
    state: MessageState | None = None
    tlv_state = pdu.tlv("message_state")
    if tlv_state is not None and 1 <= tlv_state <= 8:
        state = MessageState(tlv_state)
    elif parsed is not None and parsed.state is not None:
        state = parsed.state
    elif pdu.get("esm_class", 0) & 0x3C == 0x20:
        state = MessageState.ENROUTE  # an intermediate notification without a readable state
    if state is None:
        return None
    network_error: tuple[int, int] | None = None
    raw_net = pdu.tlv("network_error_code")
    if isinstance(raw_net, bytes) and len(raw_net) == 3:
        network_error = (raw_net[0], int.from_bytes(raw_net[1:], "big"))
    err = parsed.err if parsed is not None and parsed.err is not None else None
    if err is None:
        err = network_error[1] if network_error is not None else 0
    return UpstreamReceipt(
        id=str(rid).strip(),
        state=state,
        error_code=min(max(err, 0), ERR_MAX),
        done_at=parsed.done_date if parsed is not None else None,
        network_error=network_error,
    )


_SUCCESS = frozenset({MessageState.DELIVERED, MessageState.ACCEPTED})


@dataclass(slots=True)
class _Group:
    """The parts of one message that asked for receipts, and what each part reported."""

    message_id: str
    total: int
    first_id: str = ""
    part_ids: list[str] = field(default_factory=list)
    finals: dict[int, UpstreamReceipt] = field(default_factory=dict)
    intermediate_sent: bool = False
    done: bool = False


def _norm(upstream_id: str) -> str:
    """The index key of an id: leading zeros and letter case do not tell ids apart."""
    return upstream_id.lstrip("0").upper() or "0"


class PartCorrelator:
    """Upstream part ids awaiting a receipt → their message (the first part's id) and the
    aggregation of the parts' receipts into one report (see the module docstring).

    Ids are indexed without leading zeros and case (:func:`_norm`), so that a receipt id in
    another base is found through :func:`~bridge.smpp.receipt_text.receipt_id_variants`. Bounded:
    at most ``max_ids`` ids are kept; beyond, the oldest go (their receipts then pass through
    under their own id, which the bridge counts as unknown unless it is a first part).
    """

    def __init__(self, provider: str, max_ids: int = 500_000) -> None:
        self.provider = provider
        self.max_ids = max_ids
        self._ids: OrderedDict[str, tuple[_Group, int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._ids)

    def group(self, message_id: str, total: int) -> _Group:
        return _Group(message_id, total)

    def add(self, group: _Group, index: int, upstream_id: str) -> None:
        """Part ``index`` (0-based) was taken under ``upstream_id`` (canonical form)."""
        if index == 0:
            group.first_id = upstream_id
        group.part_ids.append(upstream_id)
        if not upstream_id or group.done:
            return
        self._ids[_norm(upstream_id)] = (group, index)
        while len(self._ids) > self.max_ids:
            self._ids.popitem(last=False)

    def close(self, group: _Group) -> None:
        """No report for this message is wanted any more (final, or ended by the send). The
        ids of parts whose receipt is still to come stay until it comes, so that it is
        swallowed here rather than counted as unknown by the bridge."""
        group.done = True
        for index, uid in enumerate(group.part_ids):
            if index in group.finals:
                self._forget(group, uid)

    def _forget(self, group: _Group, uid: str) -> None:
        key = _norm(uid)
        entry = self._ids.get(key)
        if entry is not None and entry[0] is group:
            del self._ids[key]

    def find(self, receipt_id: str, *, variants: bool) -> tuple[_Group, int] | None:
        entry = self._ids.get(_norm(receipt_id))
        if entry is None and variants:
            for v in receipt_id_variants(receipt_id)[1:]:
                entry = self._ids.get(_norm(v))
                if entry is not None:
                    break
        return entry

    def on_receipt(
        self, receipt: UpstreamReceipt, canonical: str, *, variants: bool
    ) -> DeliveryReport | None:
        """The report to hand to the bridge for this receipt, or None (nothing to say yet)."""
        entry = self.find(canonical, variants=variants)
        if entry is None:
            # Not awaited here (a restart, a message that asked for no receipt): as it is.
            return DeliveryReport(
                self.provider,
                canonical,
                receipt.state,
                receipt.error_code,
                receipt.done_at,
                receipt.network_error,
            )
        group, index = entry
        if group.done:
            if receipt.state.is_final:
                self._forget(group, group.part_ids[index])
            return None
        if not receipt.state.is_final:
            if group.intermediate_sent or not group.first_id:
                return None
            group.intermediate_sent = True
            return DeliveryReport(
                self.provider, group.first_id, receipt.state, 0, receipt.done_at, None
            )
        group.finals[index] = receipt
        if receipt.state not in _SUCCESS:
            self.close(group)
            return DeliveryReport(
                self.provider,
                group.first_id,
                receipt.state,
                receipt.error_code,
                receipt.done_at,
                receipt.network_error,
            )
        if len(group.finals) < group.total:
            return None
        self.close(group)
        finals = list(group.finals.values())
        delivered = all(r.state is MessageState.DELIVERED for r in finals)
        times = [r.done_at for r in finals if r.done_at is not None]
        return DeliveryReport(
            self.provider,
            group.first_id,
            MessageState.DELIVERED if delivered else MessageState.ACCEPTED,
            0,
            max(times) if times else None,
            None,
        )


# --------------------------------------------------------------------------- inbound (MO)


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
    data = _user_data(pdu)
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


_MoKey = tuple[str, str, int, int, int]


class MoReassembler:
    """Concatenated MO parts by (source, destination, reference, total, reference size), until
    all are there or ``timeout`` seconds after the first one."""

    def __init__(self, timeout: float, max_messages: int = 10_000) -> None:
        self.timeout = timeout
        self.max_messages = max_messages
        self._buffers: dict[_MoKey, tuple[float, dict[int, MoPart]]] = {}

    def __len__(self) -> int:
        return len(self._buffers)

    def add(self, part: MoPart, now: float) -> list[MoPart] | None:
        """The whole message's parts in order once complete, else None (kept)."""
        c = part.concat
        if c is None or c.total <= 1:
            return [part]
        key = (part.source.digits, part.destination.digits, c.reference, c.total, c.ref_bits)
        started, parts = self._buffers.get(key, (now, {}))
        parts[c.seqnum] = part
        if len(parts) >= c.total:
            self._buffers.pop(key, None)
            return [parts[i] for i in sorted(parts)]
        self._buffers[key] = (started, parts)
        return None

    def expired(self, now: float, *, everything: bool = False) -> list[list[MoPart]]:
        """Give up on the messages whose time is up (all of them with ``everything``, or the
        oldest beyond ``max_messages``): their parts so far, in order."""
        out: list[list[MoPart]] = []
        over = len(self._buffers) - self.max_messages
        for key, (started, parts) in list(self._buffers.items()):
            if everything or now - started >= self.timeout or over > 0:
                over -= 1
                del self._buffers[key]
                out.append([parts[i] for i in sorted(parts)])
        return out


# --------------------------------------------------------------------------- the provider


@dataclass(slots=True)
class _Progress:
    """A message some of whose parts are taken (a transient failure stopped the send)."""

    group: _Group
    ids: list[str] = field(default_factory=list)


def _client_config(settings: Settings) -> ClientConfig:
    return ClientConfig(
        host=settings.host,
        port=settings.port,
        system_id=settings.system_id,
        password=settings.password.get_secret_value(),
        system_type=settings.system_type,
        bind_mode=settings.bind_mode,
        binds=settings.binds,
        address_range=settings.address_range,
        enquire_link_interval=settings.enquire_link_interval,
        response_timeout=settings.response_timeout,
        window=settings.window,
        tps=settings.requests_per_second,
        reconnect_min=settings.reconnect_min,
        reconnect_max=settings.reconnect_max,
        connect_timeout=settings.connect_timeout,
        tls=settings.tls,
    )


def _ssl_context(settings: Settings) -> ssl.SSLContext | None:
    if not settings.tls or settings.tls_verify:
        return None  # the client's default: verified against the system's CAs
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


class IsmsSmppProvider:
    """The :class:`~bridge.core.provider.Provider` over an SMPP upstream (module docstring).

    Counters for tests and logs: ``throttled`` (ESME_RTHROTTLED answers), ``bad_receipts``
    (receipts that could not be read), ``mo_incomplete`` (MO given up incomplete).
    """

    def __init__(
        self,
        name: str,
        settings: Settings,
        ctx: ProviderContext,
        *,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.settings = settings
        self.ctx = ctx
        self.capabilities = capabilities_for(settings)
        self.client = SmppClient(
            _client_config(settings),
            self._on_deliver,
            name=name,
            ssl_context=_ssl_context(settings),
            # Ready as soon as a bind is up (and not after it is lost): see healthy().
            on_bound_change=lambda binds: ctx.set_healthy(binds > 0),
        )
        self.correlator = PartCorrelator(name)
        self.mo = MoReassembler(settings.mo_reassembly_timeout)
        self._monotonic = monotonic
        self._reports: ReportSink | None = None
        self._inbound: InboundSink | None = None
        self._progress: OrderedDict[str, _Progress] = OrderedDict()
        self._max_progress = 10_000
        self._resume_at = 0.0
        self._pause = settings.throttle_pause
        self._sweeper: asyncio.Task[None] | None = None
        self._sampled = SampledLog(log)
        self.throttled = 0
        self.bad_receipts = 0
        self.mo_incomplete = 0

    # ------------------------------------------------------------------ lifecycle

    async def start(self, reports: ReportSink, inbound: InboundSink) -> None:
        """Start binding in the background (a down upstream must not hold up the bridge)."""
        self._reports = reports
        self._inbound = inbound
        await self.client.start()
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().create_task(
                self._sweep_mo(), name=f"{self.name}-mo-reassembly"
            )

    def stats(self) -> ProviderStats:
        """Binds, in-flight submits and event counts for the scrape-time metrics."""
        client = self.client
        return ProviderStats(
            binds=client.bound_count,
            in_flight=client.in_flight,
            events={
                "disconnect": client.disconnects,
                "bind_refused": client.bind_refusals,
                "connect_failed": client.connect_failures,
                "throttled": self.throttled,
                "receipt_unreadable": self.bad_receipts,
                "mo_incomplete": self.mo_incomplete,
            },
        )

    async def stop(self) -> None:
        """Unbind (in-flight submits get their answers), then hand on incomplete MO as is."""
        await self.client.stop()
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        with contextlib.suppress(Exception):
            await self._flush_mo(everything=True)

    #: ``healthy()`` is the upstream's binds: a bind closes an open circuit (the dispatcher).
    has_health_check = True

    async def healthy(self) -> bool:
        return self.client.bound_count > 0

    async def poll(self, messages: Sequence[Message]) -> list[DeliveryReport]:
        return []  # receipts are pushed (deliver_sm); query_sm is not used

    # ------------------------------------------------------------------ sending

    async def send(self, message: Message) -> Outcome:
        s = self.settings
        bits = 8 if s.concat == "udh8" else 16
        try:
            parts = split_message(message, s.concat, reference_for(message.id, bits))
        except (TextError, ValueError) as e:
            return Outcome(
                OutcomeKind.PERMANENT,
                detail=f"cannot encode for SMPP: {e}"[:200],
                error_code=Status.ESME_RINVMSGLEN,
            )
        progress = self._progress.pop(message.id, None)
        if progress is None or progress.group.total != len(parts):
            progress = _Progress(self.correlator.group(message.id, len(parts)))
        wants_receipts = bool(message.registered_delivery & 0x13)
        total = len(parts)
        for index in range(len(progress.ids), total):
            pdu = build_submit(message, parts[index], s, self.ctx.clock())
            try:
                resp = await self._submit(pdu)
            except ClientError as e:
                self._keep(message.id, progress)
                return Outcome(OutcomeKind.TRANSIENT, detail=f"upstream: {type(e).__name__}")
            status = resp.command_status
            if resp.command_id == CommandId.generic_nack and status == 0:
                status = Status.ESME_RSYSERR
            kind, err = classify_status(status)
            where = f" (part {index + 1} of {total})" if total > 1 else ""
            if kind is OutcomeKind.TRANSIENT:
                self._keep(message.id, progress)
                return Outcome(
                    OutcomeKind.TRANSIENT, detail=f"{status_name(status)}{where}", error_code=err
                )
            if kind is OutcomeKind.PERMANENT:
                if not progress.ids:
                    return Outcome(
                        OutcomeKind.PERMANENT, detail=status_name(status), error_code=err
                    )
                # Earlier parts are out and cannot be recalled: end it here, no failover.
                self.correlator.close(progress.group)
                return Outcome(
                    OutcomeKind.ACCEPTED,
                    provider_message_id=progress.ids[0] or None,
                    detail=f"partly sent: {status_name(status)}{where}",
                    error_code=err,
                    parts=index,
                    state=MessageState.UNDELIVERABLE,
                )
            uid = canonical_id(str(resp.get("message_id", "")), s.receipt_id_format, receipt=False)
            progress.ids.append(uid)
            if wants_receipts:
                self.correlator.add(progress.group, index, uid)
        # Every part's id is correlated durably too: after a restart (when the in-memory part
        # map is gone) a later part's receipt still finds the message.
        others = tuple(uid for uid in progress.ids[1:] if uid) if wants_receipts else ()
        return Outcome(
            OutcomeKind.ACCEPTED,
            provider_message_id=progress.ids[0] or None,
            parts=total,
            other_ids=others,
        )

    def _keep(self, message_id: str, progress: _Progress) -> None:
        """Remember the parts already taken, for the retry (bounded, oldest dropped)."""
        if not progress.ids:
            return
        self._progress[message_id] = progress
        while len(self._progress) > self._max_progress:
            self._progress.popitem(last=False)

    async def _submit(self, pdu: Pdu) -> Pdu:
        """One part through the client, after any throttling pause; ESME_RTHROTTLED pauses
        all sending and the part goes again (``throttle_retries`` times)."""
        retries = self.settings.throttle_retries
        attempt = 0
        while True:
            delay = self._resume_at - self._monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            copy = Pdu(pdu.command_id, fields=dict(pdu.fields), tlvs=dict(pdu.tlvs))
            resp = await self.client.submit(copy)
            status = resp.command_status
            if status in (Status.ESME_RTHROTTLED, Status.ESME_RMSGQFUL):
                self._slow_down(status)
                if status == Status.ESME_RTHROTTLED and attempt < retries:
                    attempt += 1
                    continue
            elif status == 0:
                self._pause = self.settings.throttle_pause
            return resp

    def _slow_down(self, status: int) -> None:
        """Pause every send; a throttle within a running pause doubles the next pause."""
        now = self._monotonic()
        if now < self._resume_at + self._pause:
            self._pause = min(self._pause * 2, self.settings.throttle_pause_max)
        self._resume_at = max(self._resume_at, now + self._pause)
        self.throttled += 1
        self._sampled(
            "warning",
            "upstream_throttled",
            self.name,
            provider=self.name,
            status=status_name(status),
            pause=round(self._pause, 3),
        )

    # ------------------------------------------------------------------ from the upstream

    async def _on_deliver(self, pdu: Pdu) -> int:
        """A deliver_sm/data_sm: a receipt or an MO. Returns only once the bridge has it."""
        if is_receipt(pdu):
            await self._on_receipt(pdu)
        else:
            await self._on_mo(pdu)
        return Status.ESME_ROK

    async def _on_receipt(self, pdu: Pdu) -> None:
        receipt = parse_receipt(pdu)
        if receipt is None:
            self.bad_receipts += 1
            self._sampled(
                "warning",
                "upstream_receipt_unreadable",
                self.name,
                provider=self.name,
                text=_user_data(pdu)[:160].decode("latin-1"),
            )
            return
        fmt = self.settings.receipt_id_format
        canonical = canonical_id(receipt.id, fmt, receipt=True)
        report = self.correlator.on_receipt(receipt, canonical, variants=fmt == "same")
        if report is not None and self._reports is not None:
            await self._reports(report)

    async def _on_mo(self, pdu: Pdu) -> None:
        part = parse_mo(pdu)
        whole = self.mo.add(part, self._monotonic())
        if whole is not None:
            await self._deliver_mo(whole)

    async def _deliver_mo(self, parts: Sequence[MoPart]) -> None:
        if self._inbound is None:
            return
        message = inbound_from_parts(
            parts, self.name, self.ctx.clock(), self.settings.mo_default_alphabet
        )
        await self._inbound(message)  # False (nobody owns the number): logged by the bridge

    async def _flush_mo(self, *, everything: bool = False) -> None:
        for parts in self.mo.expired(self._monotonic(), everything=everything):
            self.mo_incomplete += 1
            self._sampled(
                "warning",
                "upstream_mo_incomplete",
                self.name,
                provider=self.name,
                parts=len(parts),
                total=parts[0].concat.total if parts[0].concat else 1,
            )
            await self._deliver_mo(parts)

    async def _sweep_mo(self) -> None:
        interval = min(max(self.settings.mo_reassembly_timeout / 4, 0.05), 5.0)
        while True:
            await asyncio.sleep(interval)
            try:
                await self._flush_mo()
            except Exception:
                log.exception("upstream_mo_flush_failed", provider=self.name)


def create(name: str, settings: Settings, ctx: ProviderContext) -> Provider:
    return IsmsSmppProvider(name, settings, ctx)
