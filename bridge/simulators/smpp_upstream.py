"""A local upstream SMSC like iSMS.gr's SMPP 3.4 service, for tests, demos and trying a config.

It is our own SMSC server (:class:`bridge.smpp.server.SmppServer`: binds, windows,
enquire_link, TLS-less TCP) with a handler that behaves like a provider's SMSC: it accepts binds
of one account, answers submit_sm with a message id (8 upper-case hex digits, like the
``mid=0008FABD`` of iSMS's query example), sends delivery receipts after ``delay`` seconds as
deliver_sm (esm_class 0x04, the Appendix B text, and the receipted_message_id, message_state and
network_error_code TLVs), enforces the account's 700 SMS/s (answering ESME_RTHROTTLED beyond it,
the server's own per-account limiter) and sends mobile-originated messages on demand
(:meth:`SmppUpstreamSimulator.send_mo`, concatenated with UDH or SAR TLVs too).

Outcomes by the last two digits of the destination (other numbers: ``DELIVRD`` after ``delay``):

====  =====================================================================================
01    receipt ``UNDELIV`` err 001 (network_error_code GSM 0x0001)
02    receipt ``REJECTD`` err 002
03    receipt ``EXPIRED`` err 003
04    an intermediate receipt (esm_class 0x20, ``stat:BUFFRED``) when registered_delivery asks
      for intermediate notifications (0x10), then ``DELIVRD`` one ``delay`` later
05    accepted, never any receipt
90    submit_sm_resp ESME_RINVDSTADR (0x0B)
91    submit_sm_resp ESME_RSUBMITFAIL (0x45)
92    submit_sm_resp ESME_RMSGQFUL (0x14) to the first submit of each (number, user data),
      then accepted and ``DELIVRD``
93    submit_sm_resp ESME_RSYSERR (0x08), always
94    submit_sm_resp ESME_RX_P_APPN (0x65)
95    the first part of a concatenated message is accepted, every later part gets
      ESME_RSUBMITFAIL (a message partly sent)
====  =====================================================================================

A submit_sm may carry its user data in short_message or in the message_payload TLV (then
sm_length must be 0: both at once is refused with ESME_RINVOPTPARAMVAL, SMPP 3.4 §5.3.2.32);
:meth:`~SmppUpstreamSimulator.send_mo` can send an MO whole in message_payload (``payload=True``).

Receipts follow registered_delivery like an SMSC does (bits 0–1: 1 every final receipt, 2 only
failures, 0 none). A receipt that finds no receiver bound, or is refused, is retried every
``retry`` seconds until it is acknowledged (at-least-once, like a real SMSC).

Misbehaviour on demand (methods, for tests): :meth:`~SmppUpstreamSimulator.drop_connections`
(abort every TCP connection), :meth:`~SmppUpstreamSimulator.throttle_next` (ESME_RTHROTTLED to
the next n submits), :meth:`~SmppUpstreamSimulator.answer_next` (any status to the next n,
optionally after letting some pass), :attr:`~SmppUpstreamSimulator.response_delay` (answer slowly),
:meth:`~SmppUpstreamSimulator.stop_answering` / :meth:`~SmppUpstreamSimulator.resume_answering`
(take submits and say nothing), :meth:`~SmppUpstreamSimulator.stop` and
:meth:`~SmppUpstreamSimulator.start` again on the same port (the upstream down for a while).

Options (``smpp-bridge simulate smpp-upstream --port 2775 --option key=value``): ``system_id``
(default ``isms``), ``password`` (``isms``), ``tps`` (``700``; 0 = unlimited), ``delay``
(receipt delay, seconds, ``0.5``), ``receipt_ids`` (``same``; ``decimal`` writes the receipt's
id in decimal, as some carriers do), ``receipt_tlvs`` (``true``; ``false`` sends the text
only), ``receipt_payload`` (``false``; ``true`` puts the receipt text in the message_payload
TLV, short_message empty), ``seconds`` (``false``; ``true`` writes 12-digit dates
``YYMMDDhhmmss``), ``window`` (``10``), ``response_delay`` (``0``).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Network, IPv6Network
from typing import Any, Literal

import structlog

from bridge.core.accounts import Account, AccountRegistry
from bridge.simulators.common import option_bool, option_float
from bridge.smpp.pdu import CommandId, Pdu, Status
from bridge.smpp.server import DeliverResult, Reply, ServerConfig, SessionInfo, SmppServer
from bridge.smpp.session import SessionConfig
from bridge.smpp.text import TextError, choose_coding, decode_text, encode_text
from bridge.smpp.udh import Concat, find_concat, parse_udh, split_binary, split_text

__all__ = [
    "OUTCOMES",
    "ReceiptSent",
    "SmppUpstreamSimulator",
    "Submitted",
    "serve",
]

log = structlog.get_logger("bridge.simulators.smpp_upstream")

#: Outcome rules by the destination's last two digits (see the module docstring).
OUTCOMES: dict[str, tuple[str, int]] = {
    "01": ("UNDELIV", 1),
    "02": ("REJECTD", 2),
    "03": ("EXPIRED", 3),
    "04": ("BUFFRED", 0),
    "05": ("none", 0),
    "90": ("submit", Status.ESME_RINVDSTADR),
    "91": ("submit", Status.ESME_RSUBMITFAIL),
    "92": ("submit_once", Status.ESME_RMSGQFUL),
    "93": ("submit", Status.ESME_RSYSERR),
    "94": ("submit", Status.ESME_RX_P_APPN),
    "95": ("later_parts", Status.ESME_RSUBMITFAIL),
}

_MESSAGE_STATES = {
    "DELIVRD": 2,
    "EXPIRED": 3,
    "DELETED": 4,
    "UNDELIV": 5,
    "ACCEPTD": 6,
    "UNKNOWN": 7,
    "REJECTD": 8,
    "BUFFRED": 1,
}
_ANYWHERE = (IPv4Network("0.0.0.0/0"), IPv6Network("::/0"))

ReceiptIds = Literal["same", "decimal"]


@dataclass(slots=True)
class Submitted:
    """One submit_sm the simulator accepted (or refused: ``status`` != 0)."""

    message_id: str
    status: int
    system_id: str
    source: str
    source_ton: int
    source_npi: int
    destination: str
    dest_ton: int
    dest_npi: int
    esm_class: int
    data_coding: int
    registered_delivery: int
    schedule_delivery_time: str
    validity_period: str
    short_message: bytes
    tlvs: dict[int, bytes]
    pdu: Pdu = field(repr=False)
    received_at: float = 0.0

    @property
    def user_data(self) -> bytes:
        """short_message (or message_payload) without the UDH."""
        data = self.short_message or self.pdu.tlv("message_payload", b"")
        if self.esm_class & 0x40 and data:
            with contextlib.suppress(TextError):
                return parse_udh(data)[1]
        return bytes(data)

    @property
    def concat(self) -> Concat | None:
        """The concatenation IE (UDH) or the SAR TLVs as a :class:`Concat`, if any."""
        return _concat_of(self.pdu)

    @property
    def text(self) -> str | None:
        """The part's text (data_coding 0 read as GSM 7-bit), None when it is not text."""
        try:
            return decode_text(self.user_data, self.data_coding & 0xFF)
        except (TextError, ValueError):
            return None


@dataclass(frozen=True, slots=True)
class ReceiptSent:
    """A receipt (or MO) deliver_sm and what the ESME answered (None: not answered)."""

    message_id: str
    stat: str
    status: int | None


class SmppUpstreamSimulator:
    """The upstream SMSC (see the module docstring). ``await start()``, ``await close()``."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        system_id: str = "isms",
        password: str = "isms",
        tps: float = 700.0,
        delay: float = 0.5,
        receipt_ids: ReceiptIds = "same",
        receipt_tlvs: bool = True,
        receipt_payload: bool = False,
        seconds: bool = False,
        window: int = 10,
        response_delay: float = 0.0,
        retry: float = 0.5,
        enquire_link_interval: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.host = host
        self.port = port
        self.system_id = system_id
        self.password = password
        self.tps = tps
        self.delay = delay
        self.receipt_ids: ReceiptIds = receipt_ids
        self.receipt_tlvs = receipt_tlvs
        self.receipt_payload = receipt_payload
        self.seconds = seconds
        self.window = window
        self.response_delay = response_delay
        self.retry = retry
        self.enquire_link_interval = enquire_link_interval
        self.clock = clock
        self.server: SmppServer | None = None
        self.submitted: list[Submitted] = []
        self.receipts: list[ReceiptSent] = []
        self.mo_sent: list[ReceiptSent] = []
        self.binds = 0  # successful binds so far
        self._ids = itertools.count(0x8FABD)
        self._refs = itertools.count(1)
        self._forced: tuple[int, int, int] = (0, 0, 0)  # (let pass, then answer, status)
        self._answering = asyncio.Event()
        self._answering.set()
        self._refused_once: set[tuple[str, bytes]] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Listen (again) on ``port``; the first start with port 0 picks a free one and keeps
        it, so that a stop()/start() pair looks like an upstream that went down and came back."""
        self._closed = False
        session = SessionConfig(
            system_id="iSMS",
            session_init_timeout=30.0,
            enquire_link_interval=self.enquire_link_interval,
            inactivity_timeout=0.0,
            response_timeout=5.0,
            window=self.window,
        )
        config = ServerConfig(
            host=self.host,
            port=self.port,
            session=session,
            bind_failure_delay=0.0,
            bind_failure_delay_max=0.0,
            shutdown_timeout=1.0,
        )
        account = Account(
            self.system_id,
            self.password,
            allowed_networks=_ANYWHERE,
            tps=self.tps,
            max_outstanding=max(100, self.window * 4),
        )
        self.server = SmppServer(config, AccountRegistry([account]), self)
        await self.server.start()
        self.port = self.server.ports["smpp"]

    async def stop(self) -> None:
        """Stop listening and unbind everyone (pending receipts wait for the next start)."""
        server, self.server = self.server, None
        self._answering.set()  # let held submits answer, so the stop is not held up by them
        if server is not None:
            await server.stop(timeout=1.0)

    async def close(self) -> None:
        """Stop for good: also cancel the receipt timers and retries."""
        self._closed = True
        await self.stop()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    # ------------------------------------------------------------------ misbehaviour

    def drop_connections(self) -> int:
        """Abort every TCP connection at once (no unbind); returns how many."""
        server = self.server
        if server is None:
            return 0
        # The server keeps no public handle on its connections: reaching in is what a
        # simulator of a crashing SMSC is for.
        conns = list(server._connections)
        for conn in conns:
            conn.abort()
        return len(conns)

    def throttle_next(self, n: int) -> None:
        """Answer the next ``n`` submit_sm with ESME_RTHROTTLED."""
        self.answer_next(Status.ESME_RTHROTTLED, n)

    def answer_next(self, status: int, count: int = 1, *, after: int = 0) -> None:
        """Let ``after`` submit_sm pass as usual, then answer ``count`` with ``status``."""
        self._forced = (after, count, status)

    def stop_answering(self) -> None:
        """Keep taking submit_sm but answer none of them (until :meth:`resume_answering`)."""
        self._answering.clear()

    def resume_answering(self) -> None:
        self._answering.set()

    def bound_count(self) -> int:
        return self.server.bound_count(self.system_id) if self.server is not None else 0

    # ------------------------------------------------------------------ SmppHandler

    def session_bound(self, session: SessionInfo) -> None:
        self.binds += 1

    def session_closed(self, session: SessionInfo) -> None:
        return None

    def try_handle(self, session: SessionInfo, pdu: Pdu, reply: Reply, token: Any) -> bool:
        return False  # every answer may wait (forced delays, a paused SMSC): a task each

    async def handle_request(self, session: SessionInfo, pdu: Pdu) -> Pdu:
        if pdu.command_id != CommandId.submit_sm:
            # data_sm, query_sm, cancel_sm, replace_sm, submit_multi: not offered here.
            return pdu.response(Status.ESME_RINVCMDID)
        if self.response_delay > 0:
            await asyncio.sleep(self.response_delay)
        await self._answering.wait()
        status = self._forced_status()
        if status == Status.ESME_RTHROTTLED:
            return pdu.response(status)  # not even recorded: the SMSC did not look at it
        if status == 0 and pdu.get("short_message", b"") and pdu.tlv("message_payload"):
            # "If the message_payload parameter is specified, sm_length must be 0".
            status = Status.ESME_RINVOPTPARAMVAL
        if status == 0:
            status = self._submit_status(pdu)
        message_id = format(next(self._ids), "08X") if status == 0 else ""
        sub = Submitted(
            message_id=message_id,
            status=status,
            system_id=session.system_id or "",
            source=pdu.get("source_addr", ""),
            source_ton=pdu.get("source_addr_ton", 0),
            source_npi=pdu.get("source_addr_npi", 0),
            destination=pdu.get("destination_addr", ""),
            dest_ton=pdu.get("dest_addr_ton", 0),
            dest_npi=pdu.get("dest_addr_npi", 0),
            esm_class=pdu.get("esm_class", 0),
            data_coding=pdu.get("data_coding", 0),
            registered_delivery=pdu.get("registered_delivery", 0),
            schedule_delivery_time=pdu.get("schedule_delivery_time", ""),
            validity_period=pdu.get("validity_period", ""),
            short_message=pdu.get("short_message", b""),
            tlvs=dict(pdu.tlvs),
            pdu=pdu,
            received_at=self.clock(),
        )
        self.submitted.append(sub)
        if status != 0:
            return pdu.response(status)
        self._spawn(self._report_later(sub))
        return pdu.response(0, message_id=message_id)

    def _forced_status(self) -> int:
        after, count, status = self._forced
        if count <= 0:
            return 0
        if after > 0:
            self._forced = (after - 1, count, status)
            return 0
        self._forced = (0, count - 1, status)
        return status

    def _submit_status(self, pdu: Pdu) -> int:
        rule = OUTCOMES.get(str(pdu.get("destination_addr", ""))[-2:])
        if rule is None:
            return 0
        kind, status = rule
        if kind == "submit":
            return status
        if kind == "submit_once":
            data = pdu.get("short_message", b"") or pdu.tlv("message_payload", b"")
            key = (str(pdu.get("destination_addr", "")), bytes(data))
            if key not in self._refused_once:
                self._refused_once.add(key)
                return status
        if kind == "later_parts":
            sub_concat = _concat_of(pdu)
            if sub_concat is not None and sub_concat.seqnum > 1:
                return status
        return 0

    # ------------------------------------------------------------------ receipts

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _report_later(self, sub: Submitted) -> None:
        rule = OUTCOMES.get(sub.destination[-2:])
        stat, err = ("DELIVRD", 0)
        if rule is not None and rule[0] not in ("submit_once", "later_parts"):
            stat, err = rule
        if stat == "none":
            return
        await asyncio.sleep(self.delay)
        rd = sub.registered_delivery
        if stat == "BUFFRED":
            if rd & 0x10:
                await self._deliver_receipt(sub, "BUFFRED", 0, intermediate=True)
            await asyncio.sleep(self.delay)
            stat = "DELIVRD"
        failed = stat != "DELIVRD"
        if rd & 0x03 == 1 or (rd & 0x03 == 2 and failed):
            await self._deliver_receipt(sub, stat, err)

    def receipt_pdu(
        self, sub: Submitted, stat: str, err: int, *, intermediate: bool = False
    ) -> Pdu:
        """The deliver_sm receipt for ``sub`` (options: id form, TLVs, date digits)."""
        now = self.clock()
        fmt = "%y%m%d%H%M%S" if self.seconds else "%y%m%d%H%M"
        rid = sub.message_id if self.receipt_ids == "same" else str(int(sub.message_id, 16))
        dlvrd = "001" if stat == "DELIVRD" else "000"
        head = (sub.text or "")[:20]
        text = (
            f"id:{rid} sub:001 dlvrd:{dlvrd}"
            f" submit date:{time.strftime(fmt, time.gmtime(sub.received_at))}"
            f" done date:{time.strftime(fmt, time.gmtime(now))}"
            f" stat:{stat} err:{err:03d} text:{head}"
        )
        pdu = Pdu(
            CommandId.deliver_sm,
            fields={
                "source_addr_ton": sub.dest_ton,
                "source_addr_npi": sub.dest_npi,
                "source_addr": sub.destination,
                "dest_addr_ton": sub.source_ton,
                "dest_addr_npi": sub.source_npi,
                "destination_addr": sub.source,
                "esm_class": 0x20 if intermediate else 0x04,
                "data_coding": 0,
                "short_message": text.encode("ascii", "replace"),
            },
        )
        if self.receipt_payload:
            pdu.set_tlv("message_payload", pdu.get("short_message"))
            pdu.fields["short_message"] = b""
        if self.receipt_tlvs:
            pdu.set_tlv("receipted_message_id", rid)
            pdu.set_tlv("message_state", _MESSAGE_STATES[stat])
            if err:
                pdu.set_tlv("network_error_code", bytes((3,)) + err.to_bytes(2, "big"))
        return pdu

    async def _deliver_receipt(
        self, sub: Submitted, stat: str, err: int, *, intermediate: bool = False
    ) -> None:
        pdu = self.receipt_pdu(sub, stat, err, intermediate=intermediate)
        result = await self.deliver(pdu, sub.system_id or self.system_id, retry=True)
        self.receipts.append(ReceiptSent(sub.message_id, stat, result.status))

    async def deliver(
        self, pdu: Pdu, system_id: str | None = None, *, retry: bool = False
    ) -> DeliverResult:
        """Send any deliver_sm to a bound receiver of ``system_id`` (the account by default).

        With ``retry``, keep trying every ``retry`` seconds until it is acknowledged (as an
        SMSC keeps a receipt until the ESME takes it); else one attempt.
        """
        system_id = system_id or self.system_id
        while True:
            server = self.server
            if server is None:
                result = DeliverResult(None, "simulator stopped")
            else:
                result = await server.deliver(system_id, pdu)
            if result.acknowledged or not retry or self._closed:
                return result
            await asyncio.sleep(self.retry)

    # ------------------------------------------------------------------ MO

    async def send_mo(
        self,
        source: str,
        destination: str,
        text: str | None = None,
        *,
        binary: bytes = b"",
        concat: Literal["udh8", "udh16", "sar"] = "udh8",
        max_single: int | None = None,
        data_coding: int | None = None,
        system_id: str | None = None,
        retry: bool = False,
        payload: bool = False,
    ) -> list[int | None]:
        """A message from a handset, as one or more deliver_sm (concatenated when long, with a
        UDH or the SAR TLVs; with ``payload`` one deliver_sm, the whole user data in the
        message_payload TLV); returns the ESME's status for each part (None: no answer).

        ``max_single`` (septets / UCS-2 units) forces a long message to split sooner, so a test
        needs no 161-character texts.
        """
        ref = next(self._refs) & (0xFF if concat == "udh8" else 0xFFFF)
        ref_bits = 8 if concat == "udh8" else 16
        if payload:
            if data_coding is not None:
                dc = data_coding
            else:
                dc = choose_coding(text) if text is not None else 0x04
            data = encode_text(text, dc) if text is not None else binary
            pdu = _mo_pdu(source, destination, dc, b"")
            pdu.set_tlv("message_payload", data)
            result = await self.deliver(pdu, system_id, retry=retry)
            self.mo_sent.append(ReceiptSent("", "MO", result.status))
            return [result.status]
        if text is not None:
            dc = choose_coding(text) if data_coding is None else data_coding
            segments = split_text(text, dc, reference=ref, ref_bits=ref_bits, max_single=max_single)
        else:
            dc = 0x04 if data_coding is None else data_coding
            segments = split_binary(binary, reference=ref, ref_bits=ref_bits)
        statuses: list[int | None] = []
        total = len(segments)
        for seqnum, seg in enumerate(segments, 1):
            pdu = _mo_pdu(source, destination, dc, seg.payload)
            fields = pdu.fields
            if total > 1 and concat == "sar":
                pdu.set_tlv("sar_msg_ref_num", ref)
                pdu.set_tlv("sar_total_segments", total)
                pdu.set_tlv("sar_segment_seqnum", seqnum)
            elif seg.udh:
                fields["esm_class"] = 0x40
                fields["short_message"] = seg.udh + seg.payload
            result = await self.deliver(pdu, system_id, retry=retry)
            self.mo_sent.append(ReceiptSent("", "MO", result.status))
            statuses.append(result.status)
        return statuses


def _mo_pdu(source: str, destination: str, data_coding: int, short_message: bytes) -> Pdu:
    """An MO deliver_sm from a handset (a national short destination gets TON 0)."""
    return Pdu(
        CommandId.deliver_sm,
        fields={
            "source_addr_ton": 1,
            "source_addr_npi": 1,
            "source_addr": source,
            "dest_addr_ton": 1 if len(destination) > 8 else 0,
            "dest_addr_npi": 1,
            "destination_addr": destination,
            "esm_class": 0,
            "data_coding": data_coding,
            "short_message": short_message,
        },
    )


def _concat_of(pdu: Pdu) -> Concat | None:
    data = pdu.get("short_message", b"")
    if pdu.get("esm_class", 0) & 0x40 and data:
        try:
            return find_concat(parse_udh(data)[0])
        except TextError:
            return None
    total = pdu.tlv("sar_total_segments")
    if total:
        return Concat(pdu.tlv("sar_msg_ref_num", 0), total, pdu.tlv("sar_segment_seqnum", 0), 16)
    return None


def _receipt_ids(value: str) -> ReceiptIds:
    if value not in ("same", "decimal"):
        raise ValueError(f"--option receipt_ids=: same or decimal, not {value!r}")
    return "same" if value == "same" else "decimal"


async def serve(host: str, port: int, options: Mapping[str, str]) -> None:
    """``smpp-bridge simulate smpp-upstream``: run until cancelled (options: module docstring)."""
    sim = SmppUpstreamSimulator(
        host=host,
        port=port,
        system_id=options.get("system_id", "isms"),
        password=options.get("password", "isms"),
        tps=option_float(options, "tps", 700.0),
        delay=option_float(options, "delay", 0.5),
        receipt_ids=_receipt_ids(options.get("receipt_ids", "same")),
        receipt_tlvs=option_bool(options, "receipt_tlvs", True),
        receipt_payload=option_bool(options, "receipt_payload", False),
        seconds=option_bool(options, "seconds", False),
        window=int(option_float(options, "window", 10)),
        response_delay=option_float(options, "response_delay", 0.0),
    )
    await sim.start()
    print(
        f"SMPP upstream simulator listening on {host}:{sim.port} (system_id {sim.system_id!r})",
        flush=True,
    )
    try:
        await asyncio.Event().wait()
    finally:
        await sim.close()
