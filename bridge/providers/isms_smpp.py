"""iSMS.gr over SMPP 3.4: the bridge as an ESME of iSMS's SMSC (``type = "isms_smpp"``).

iSMS's document gives the SMPP service in one paragraph: SMPP 3.4, Greek/Arabic/Russian text,
flash messages, concatenated messages, real-time delivery receipts, 700 SMS per second per
account, accounts opened on request. Everything else is SMPP 3.4 as written, so this adapter is
a plain SMPP client (:mod:`bridge.smpp.client`) plus the translations listed below; the host
and port come with the account (the default port is 2775, the IANA port for SMPP).

The adapter is this module (settings, capabilities, the :class:`IsmsSmppProvider` that drives
the client) and three of pure translation beside it:

* :mod:`bridge.providers.isms_smpp_submit` — sending: coding, long messages, submit_sm, the
  meaning of each submit_sm_resp status;
* :mod:`bridge.providers.isms_smpp_receipts` — receipts read and, for long messages, the parts'
  receipts aggregated into one report;
* :mod:`bridge.providers.isms_smpp_mo` — inbound messages read and reassembled.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import structlog
from pydantic import BeforeValidator, Field, SecretStr, field_validator, model_validator

from bridge.core.model import DeliveryReport, Message, MessageState, Outcome, OutcomeKind
from bridge.core.provider import (
    Capabilities,
    InboundSink,
    Provider,
    ProviderContext,
    ProviderStats,
    ReportSink,
)
from bridge.observability import SampledLog
from bridge.providers.isms_smpp_mo import MoPart, MoReassembler, inbound_from_parts, parse_mo
from bridge.providers.isms_smpp_receipts import (
    PartCorrelator,
    PartGroup,
    is_receipt,
    parse_receipt,
    user_data,
)
from bridge.providers.isms_smpp_submit import (
    ConcatMode,
    build_submit,
    canonical_id,
    classify_status,
    reference_for,
    split_message,
)
from bridge.providers.settings import (
    NonNegFloat,
    PosFloat,
    ProviderSettings,
    Secret,
    resolve_env,
)
from bridge.smpp.client import ClientConfig, ClientError, SmppClient
from bridge.smpp.pdu import CommandId, Pdu, Status, status_name
from bridge.smpp.text import TextError

__all__ = ["IsmsSmppProvider", "Settings", "capabilities_for", "create"]

log = structlog.get_logger("bridge.providers.isms_smpp")


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


# --------------------------------------------------------------------------- the provider


@dataclass(slots=True)
class _Progress:
    """A message some of whose parts are taken (a transient failure stopped the send)."""

    group: PartGroup
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
        self._warn("upstream_throttled", status=status_name(status), pause=round(self._pause, 3))

    def _warn(self, event: str, **fields: Any) -> None:
        """A warning about the upstream, at most one per event and interval (SampledLog)."""
        self._sampled("warning", event, self.name, provider=self.name, **fields)

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
            self._warn("upstream_receipt_unreadable", text=user_data(pdu)[:160].decode("latin-1"))
            return
        fmt = self.settings.receipt_id_format
        canonical = canonical_id(receipt.id, fmt, receipt=True)
        report = self.correlator.on_receipt(receipt, canonical, variants=fmt == "same")
        if report is not None and self._reports is not None:
            await self._reports(report)

    async def _on_mo(self, pdu: Pdu) -> None:
        whole, given_up = self.mo.add(parse_mo(pdu), self._monotonic())
        for parts in given_up:
            await self._deliver_incomplete_mo(parts)
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
            await self._deliver_incomplete_mo(parts)

    async def _deliver_incomplete_mo(self, parts: Sequence[MoPart]) -> None:
        """An MO given up before all its parts came: what arrived, in order, rather than lost."""
        self.mo_incomplete += 1
        total = parts[0].concat.total if parts[0].concat else 1
        self._warn("upstream_mo_incomplete", parts=len(parts), total=total)
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
