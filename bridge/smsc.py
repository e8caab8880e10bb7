"""The SMPP face of the pipeline: PDUs in, domain calls, PDUs out.

:class:`SmscHandler` implements the SMPP server's handler seam: it turns submit_sm, data_sm and
submit_multi into :class:`~bridge.core.admission.Submission` (UDH / SAR / message_payload,
data_coding, SMPP times), calls the pipeline, and maps its refusals to command_status values.
:class:`SmppReceiptSender` turns receipts and inbound messages into deliver_sm for the delivery
queue. This module is wiring between layers, which is why it sits beside app.py and not inside
``smpp/`` or ``core/``.
"""

from __future__ import annotations

from typing import Any

import structlog

from bridge.core.accounts import Account
from bridge.core.admission import AccountPolicy, Rejected, RejectReason, Submission
from bridge.core.delivery import DeliveryDone
from bridge.core.model import Address, InboundMessage, Message, Receipt
from bridge.core.pipeline import Pipeline
from bridge.observability import Metrics, SampledLog
from bridge.smpp import text as smstext
from bridge.smpp import udh as smsudh
from bridge.smpp.pdu import (
    CommandId,
    DestAddress,
    Pdu,
    Status,
    UnsuccessSme,
)
from bridge.smpp.receipt_text import format_receipt_text
from bridge.smpp.server import Reply, SessionInfo, SmppServer
from bridge.smpp.timefmt import format_smpp_time, parse_smpp_time

__all__ = ["SmppReceiptSender", "SmscHandler", "decode_payload", "status_for"]

log = structlog.get_logger("bridge.smsc")

_STATUS: dict[RejectReason, int] = {
    RejectReason.INVALID_SOURCE: Status.ESME_RINVSRCADR,
    RejectReason.INVALID_DESTINATION: Status.ESME_RINVDSTADR,
    RejectReason.INVALID_TEXT: Status.ESME_RSUBMITFAIL,
    RejectReason.TOO_LONG: Status.ESME_RINVMSGLEN,
    RejectReason.NO_ROUTE: Status.ESME_RSUBMITFAIL,
    RejectReason.UNICODE_UNSUPPORTED: Status.ESME_RSUBMITFAIL,
    RejectReason.BINARY_UNSUPPORTED: Status.ESME_RSUBMITFAIL,
    RejectReason.FLASH_UNSUPPORTED: Status.ESME_RSUBMITFAIL,
    RejectReason.ALPHANUMERIC_SENDER_UNSUPPORTED: Status.ESME_RSUBMITFAIL,
    RejectReason.SENDER_TOO_LONG: Status.ESME_RSUBMITFAIL,
    RejectReason.QUEUE_FULL: Status.ESME_RMSGQFUL,
    RejectReason.DISK_FULL: Status.ESME_RMSGQFUL,
    RejectReason.INVALID_SCHEDULE: Status.ESME_RINVSCHED,
    RejectReason.INVALID_EXPIRY: Status.ESME_RINVEXPIRY,
    RejectReason.UNKNOWN_MESSAGE: Status.ESME_RINVMSGID,
    RejectReason.NOT_CANCELLABLE: Status.ESME_RCANCELFAIL,
    RejectReason.INVALID_CONCAT: Status.ESME_RSUBMITFAIL,
}


def status_for(reason: RejectReason, command_id: int) -> int:
    """The command_status for a refusal (query/cancel/replace have their own failure codes)."""
    if command_id == CommandId.query_sm:
        return Status.ESME_RQUERYFAIL
    if command_id == CommandId.replace_sm and reason in (
        RejectReason.NOT_CANCELLABLE,
        RejectReason.UNKNOWN_MESSAGE,
    ):
        return Status.ESME_RREPLACEFAIL
    if command_id == CommandId.cancel_sm and reason is RejectReason.UNKNOWN_MESSAGE:
        return Status.ESME_RCANCELFAIL
    return _STATUS[reason]


def decode_payload(payload: bytes, data_coding: int, alphabet: str) -> str | None:
    """Text of a payload, or None for binary data_codings. Raises ValueError if undecodable.

    ``alphabet`` is what the account means by data_coding 0 or 1 (see AccountPolicy).
    """
    if data_coding in (0, 1):
        if data_coding == 1 and alphabet == "ascii":
            return smstext.decode_text(payload, 1)
        return smstext.decode_text(payload, 0, default_alphabet=alphabet)
    if smstext.parse_data_coding(data_coding).alphabet == "binary":
        return None
    return smstext.decode_text(payload, data_coding)


def text_units(text: str, data_coding: int) -> tuple[int, bool]:
    """(length in the units providers count, needs unicode) for routing."""
    if smstext.is_gsm7(text):
        return smstext.gsm7_septet_count(text), False
    return len(text.encode("utf-16-be")) // 2, True


#: Commands whose refusals count in bridge_messages_rejected_total (query/cancel/replace do not).
_SUBMITS = frozenset({CommandId.submit_sm, CommandId.data_sm, CommandId.submit_multi})


def _status_reason(status: int) -> str:
    """bridge_messages_rejected_total's reason for a refusal while decoding: the status name."""
    try:
        return Status(status).name
    except ValueError:
        return "other"


class _Invalid(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status


class SmscHandler:
    """Implements :class:`bridge.smpp.server.SmppHandler` on top of a :class:`Pipeline`."""

    def __init__(
        self,
        pipeline: Pipeline,
        policies: dict[str, AccountPolicy],
        *,
        metrics: Metrics | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.policies = policies
        self.on_bound: list[Any] = []
        self.metrics = metrics if metrics is not None else Metrics()
        # A full disk fails every submit: one line per account every 10 s, not one each.
        self._sampled = SampledLog(log)

    def policy(self, account: Account | None, system_id: str | None) -> AccountPolicy:
        key = system_id or ""
        p = self.policies.get(key)
        if p is None:
            p = AccountPolicy(key, default_region=account.default_region if account else None)
            self.policies[key] = p
        return p

    # ------------------------------------------------------------------ SmppHandler

    def session_bound(self, session: SessionInfo) -> None:
        for cb in self.on_bound:
            cb(session)

    def session_closed(self, session: SessionInfo) -> None:
        return None

    def try_handle(self, session: SessionInfo, pdu: Pdu, reply: Reply, token: Any) -> bool:
        """submit_sm on the hot path: no task, no future — the answer goes out from the store's
        durable callback (one per journal batch). Parts of a concatenated message, and every
        other command, take :meth:`handle_request`."""
        if pdu.command_id != CommandId.submit_sm:
            return False
        policy = self.policy(session.account, session.system_id)
        f = pdu.fields
        try:
            sub = self._submission(
                pdu, policy, f["destination_addr"], f["dest_addr_ton"], f["dest_addr_npi"]
            )
            if not self.pipeline.accept_nowait(sub, self._accepted, (reply, token, policy)):
                return False
        except Rejected as e:
            self.metrics.rejected(policy.system_id, e.reason.name.lower())
            log.debug(
                "smsc.rejected", account=policy.system_id, reason=e.reason.name, detail=e.detail
            )
            reply(token, Pdu(CommandId.submit_sm, command_status=status_for(e.reason, 0)))
        except _Invalid as e:
            self.metrics.rejected(policy.system_id, _status_reason(e.status))
            log.debug("smsc.invalid", account=policy.system_id, detail=str(e))
            reply(token, Pdu(CommandId.submit_sm, command_status=e.status))
        return True

    def _accepted(
        self,
        ctx: tuple[Reply, Any, AccountPolicy],
        message_id: str | None,
        error: BaseException | None,
    ) -> None:
        reply, token, policy = ctx
        if error is not None or message_id is None:
            # Not on disk, so not accepted: the ESME may retry; never an ESME_ROK we cannot keep.
            self.metrics.rejected(policy.system_id, "store_failed")
            self._sampled(
                "warning",
                "smsc.submit_not_stored",
                policy.system_id,
                account=policy.system_id,
                error=type(error).__name__,
                detail=str(error),
            )
            reply(token, Pdu(CommandId.submit_sm, command_status=Status.ESME_RSYSERR))
            return
        self.metrics.accepted(policy.system_id)
        reply(token, Pdu(CommandId.submit_sm, fields={"message_id": message_id}))

    async def handle_request(self, session: SessionInfo, pdu: Pdu) -> Pdu:
        policy = self.policy(session.account, session.system_id)
        cid = pdu.command_id
        try:
            if cid == CommandId.submit_sm:
                sub = self._submission(pdu, policy, pdu.fields["destination_addr"],
                                       pdu.fields["dest_addr_ton"], pdu.fields["dest_addr_npi"])
                mid = await self.pipeline.accept(sub)
                self.metrics.accepted(policy.system_id)
                return Pdu(cid, fields={"message_id": mid})
            if cid == CommandId.data_sm:
                return await self._data_sm(pdu, policy)
            if cid == CommandId.submit_multi:
                return await self._submit_multi(pdu, policy)
            if cid == CommandId.query_sm:
                return await self._query(pdu, policy)
            if cid == CommandId.cancel_sm:
                if not pdu.fields["message_id"]:
                    raise _Invalid(Status.ESME_RCANCELFAIL, "cancel by address is not supported")
                await self.pipeline.cancel(pdu.fields["message_id"], policy.system_id)
                return Pdu(cid)
            if cid == CommandId.replace_sm:
                return await self._replace(pdu, policy)
        except Rejected as e:
            log.debug(
                "smsc.rejected",
                message_id=pdu.fields.get("message_id"),  # query/cancel/replace; submits: None
                account=policy.system_id,
                command=pdu.name,
                reason=e.reason.name,
                detail=e.detail,
            )
            if cid in _SUBMITS:
                self.metrics.rejected(policy.system_id, e.reason.name.lower())
            return Pdu(cid, command_status=status_for(e.reason, cid))
        except _Invalid as e:
            log.debug(
                "smsc.invalid",
                message_id=pdu.fields.get("message_id"),
                account=policy.system_id,
                command=pdu.name,
                detail=str(e),
            )
            if cid in _SUBMITS:
                self.metrics.rejected(policy.system_id, _status_reason(e.status))
            return Pdu(cid, command_status=e.status)
        return Pdu(cid, command_status=Status.ESME_RINVCMDID)

    # ------------------------------------------------------------------ conversions

    def _submission(
        self, pdu: Pdu, policy: AccountPolicy, dest: str, dest_ton: int, dest_npi: int
    ) -> Submission:
        f = pdu.fields
        now = self.pipeline.clock()
        esm_class = f.get("esm_class", 0)
        data_coding = f.get("data_coding", 0)
        payload = f.get("short_message", b"")
        message_payload = pdu.tlv("message_payload")
        if message_payload is not None:
            if payload:
                raise _Invalid(Status.ESME_RINVPARLEN, "short_message and message_payload")
            payload = message_payload
        concat: tuple[int, int, int] | None = None
        udh = b""
        if esm_class & 0x40:
            try:
                ies, payload = smsudh.parse_udh(payload)
                c = smsudh.find_concat(ies)
            except ValueError as e:
                raise _Invalid(Status.ESME_RSUBMITFAIL, f"bad UDH: {e}") from None
            if c is not None:
                concat = (c.reference, c.total, c.seqnum)
                ies = [ie for ie in ies if ie.iei not in (0x00, 0x08)]
            if ies:
                udh = smsudh.build_udh(ies)
        else:
            total = pdu.tlv("sar_total_segments")
            if total is not None:
                ref = pdu.tlv("sar_msg_ref_num", 0)
                seq = pdu.tlv("sar_segment_seqnum", 0)
                if not 1 <= seq <= total:
                    raise _Invalid(Status.ESME_RINVOPTPARAMVAL, "SAR segment out of range")
                concat = (ref, total, seq)
        if f.get("priority_flag", 0) > 3:
            raise _Invalid(Status.ESME_RINVPRTFLG, "priority_flag > 3")
        try:
            schedule_at = parse_smpp_time(f.get("schedule_delivery_time", ""), now)
        except ValueError:
            raise _Invalid(Status.ESME_RINVSCHED, "schedule_delivery_time") from None
        try:
            expire_at = parse_smpp_time(f.get("validity_period", ""), now)
        except ValueError:
            raise _Invalid(Status.ESME_RINVEXPIRY, "validity_period") from None
        if schedule_at is not None and schedule_at <= now:
            schedule_at = None
        if expire_at is None:
            ttl = pdu.tlv("qos_time_to_live")
            if ttl:
                expire_at = now + ttl
        coding = smstext.parse_data_coding(data_coding)
        return Submission(
            account=policy,
            source=Address(f.get("source_addr", ""), f.get("source_addr_ton", 0),
                           f.get("source_addr_npi", 0)),
            destination=Address(dest, dest_ton, dest_npi),
            payload=payload,
            data_coding=data_coding,
            concat=concat,
            udh=udh,
            flash=coding.message_class == 0,
            registered_delivery=f.get("registered_delivery", 0),
            priority=f.get("priority_flag", 0),
            esm_class=esm_class,
            protocol_id=f.get("protocol_id", 0),
            service_type=f.get("service_type", ""),
            schedule_at=schedule_at,
            expire_at=expire_at,
        )

    async def _data_sm(self, pdu: Pdu, policy: AccountPolicy) -> Pdu:
        f = pdu.fields
        if len(f["destination_addr"]) > 20:
            raise _Invalid(Status.ESME_RINVDSTADR, "destination_addr")
        sub = self._submission(pdu, policy, f["destination_addr"], f["dest_addr_ton"],
                               f["dest_addr_npi"])
        mid = await self.pipeline.accept(sub)
        self.metrics.accepted(policy.system_id)
        return Pdu(pdu.command_id, fields={"message_id": mid})

    async def _submit_multi(self, pdu: Pdu, policy: AccountPolicy) -> Pdu:
        """One message per destination; failed destinations in unsuccess_sme."""
        failed: list[UnsuccessSme] = []
        # Stored one by one, dispatched together: a provider that sends in bulk then finds all
        # destinations queued at once (README, "Bulk sends").
        deferred: list[Message] = []
        try:
            return await self._submit_multi_each(pdu, policy, failed, deferred)
        finally:
            self.pipeline.dispatch(deferred)

    async def _submit_multi_each(
        self,
        pdu: Pdu,
        policy: AccountPolicy,
        failed: list[UnsuccessSme],
        deferred: list[Message],
    ) -> Pdu:
        first_id = ""
        for dest in pdu.fields["dest_addresses"]:
            if not isinstance(dest, DestAddress):
                failed.append(UnsuccessSme(0, 0, dest.dl_name[:20], Status.ESME_RCNTSUBDL))
                self.metrics.rejected(policy.system_id, Status.ESME_RCNTSUBDL.name)
                continue
            try:
                sub = self._submission(pdu, policy, dest.destination_addr, dest.dest_addr_ton,
                                       dest.dest_addr_npi)
                mid = await self.pipeline.accept(sub, defer=deferred)
                self.metrics.accepted(policy.system_id)
                first_id = first_id or mid
            except Rejected as e:
                failed.append(UnsuccessSme(dest.dest_addr_ton, dest.dest_addr_npi,
                                           dest.destination_addr, status_for(e.reason, 0)))
                self.metrics.rejected(policy.system_id, e.reason.name.lower())
            except _Invalid as e:
                # A defect of the shared fields fails the whole PDU.
                self.metrics.rejected(policy.system_id, _status_reason(e.status))
                return Pdu(pdu.command_id, command_status=e.status)
        if not first_id:
            status = failed[0].error_status_code if failed else Status.ESME_RSUBMITFAIL
            return Pdu(pdu.command_id, command_status=status,
                       fields={"message_id": "", "unsuccess_smes": failed})
        return Pdu(pdu.command_id, fields={"message_id": first_id, "unsuccess_smes": failed})

    async def _query(self, pdu: Pdu, policy: AccountPolicy) -> Pdu:
        m = await self.pipeline.query(pdu.fields["message_id"], policy.system_id)
        final = m.state.is_final and m.done_at is not None
        return Pdu(
            pdu.command_id,
            fields={
                "message_id": pdu.fields["message_id"],
                "final_date": format_smpp_time(m.done_at) if final and m.done_at else "",
                "message_state": int(m.state),
                "error_code": min(m.error_code, 255),
            },
        )

    async def _replace(self, pdu: Pdu, policy: AccountPolicy) -> Pdu:
        f = pdu.fields
        now = self.pipeline.clock()
        try:
            schedule_at = parse_smpp_time(f["schedule_delivery_time"], now)
        except ValueError:
            raise _Invalid(Status.ESME_RINVSCHED, "schedule_delivery_time") from None
        try:
            expire_at = parse_smpp_time(f["validity_period"], now)
        except ValueError:
            raise _Invalid(Status.ESME_RINVEXPIRY, "validity_period") from None
        payload = pdu.tlv("message_payload") or f["short_message"]
        await self.pipeline.replace(
            f["message_id"],
            policy.system_id,
            payload,
            registered_delivery=f["registered_delivery"],
            schedule_at=schedule_at,
            expire_at=expire_at,
        )
        return Pdu(pdu.command_id)


# --------------------------------------------------------------------------- outbound


def _deliver_sm(source: Address, destination: Address, **fields: Any) -> Pdu:
    return Pdu(
        CommandId.deliver_sm,
        fields={
            "source_addr_ton": source.ton,
            "source_addr_npi": source.npi,
            "source_addr": source.digits[:20],
            "dest_addr_ton": destination.ton,
            "dest_addr_npi": destination.npi,
            "destination_addr": destination.digits[:20],
            **fields,
        },
    )


def receipt_pdu(r: Receipt) -> Pdu:
    """A receipt deliver_sm: esm_class 0x04 (0x20 intermediate), Appendix B text and TLVs."""
    text = format_receipt_text(r).encode("ascii", "replace")
    pdu = _deliver_sm(
        r.source,
        r.destination,
        esm_class=0x20 if r.intermediate else 0x04,
        data_coding=0,
        short_message=text[:254],
    )
    pdu.set_tlv("receipted_message_id", r.message_id)
    pdu.set_tlv("message_state", int(r.state))
    if r.network_error is not None:
        kind, code = r.network_error
        pdu.set_tlv("network_error_code", bytes((kind,)) + code.to_bytes(2, "big"))
    return pdu


def inbound_pdu(m: InboundMessage, default_alphabet: str = "gsm7") -> Pdu:
    """An MO deliver_sm: GSM 03.38 if the text allows, else UCS2; long texts in message_payload."""
    if m.text is None:
        data_coding, payload = 0x04, m.binary
    elif smstext.is_gsm7(m.text):
        data_coding = 0x00
        payload = smstext.encode_text(m.text, 0x00, default_alphabet=default_alphabet)
    else:
        data_coding, payload = 0x08, m.text.encode("utf-16-be")
    pdu = _deliver_sm(
        m.source,
        m.destination,
        data_coding=data_coding,
        short_message=payload if len(payload) <= 254 else b"",
    )
    if len(payload) > 254:
        pdu.set_tlv("message_payload", payload)
    return pdu


class SmppReceiptSender:
    """The delivery queue's way out: deliver_sm to a bound receiver of the account."""

    def __init__(self, server: SmppServer) -> None:
        self.server = server

    def has_receiver(self, account: str) -> bool:
        return self.server.has_receiver(account)

    def send_nowait(
        self, account: str, item: Receipt | InboundMessage, done: DeliveryDone, arg: Any
    ) -> bool:
        pdu = receipt_pdu(item) if isinstance(item, Receipt) else inbound_pdu(item)
        return self.server.deliver_nowait(account, pdu, _answered, (done, arg))

    async def send(self, account: str, item: Receipt | InboundMessage) -> bool | None:
        pdu = receipt_pdu(item) if isinstance(item, Receipt) else inbound_pdu(item)
        result = await self.server.deliver(account, pdu)
        if result.status is None:
            return None
        return result.status == 0


def _answered(ctx: tuple[DeliveryDone, Any], resp: Pdu | None) -> None:
    done, arg = ctx
    done(arg, None if resp is None else resp.command_status == 0)
