"""``smpp-bridge send``: a small ESME to try a bridge (or any SMSC) from the shell.

It binds, submits one text (split into concatenated parts when long, through
:func:`bridge.smpp.text.split_text`), prints each ``submit_sm_resp`` as it arrives and, with
``--wait-receipt``, each delivery receipt for the ids it got back. It is built on the bridge's own
ESME (:class:`bridge.smpp.client.SmppClient`), so it exercises the same code that talks to an
upstream SMSC.

Why it binds as it does: without ``--wait-receipt`` it binds as a *transmitter*, so that the
bridge does not hand it receipts and MO messages queued for the account's real receivers. With
``--wait-receipt`` it needs a *transceiver*; a ``deliver_sm`` that is not a receipt for one of its
own ids is answered ESME_RX_T_APPN (a temporary refusal), so the bridge keeps it queued for the
account's other binds instead of counting it delivered.

Every failure ends in one line on stderr and exit status 1 (never a traceback): connection
refused, bind refused (with the status by name), a refused submit, no response, a receipt that is
not DELIVRD, or no receipt within ``--timeout``. Usage errors exit with 2.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TextIO

from bridge.core.model import MessageState
from bridge.smpp.client import ClientConfig, ClientError, SmppClient
from bridge.smpp.pdu import CommandId, Pdu, Status, status_name
from bridge.smpp.receipt_text import parse_receipt_text, receipt_id_variants
from bridge.smpp.text import TextError, choose_coding
from bridge.smpp.udh import parse_udh, split_text

__all__ = [
    "PASSWORD_ENV",
    "SendError",
    "SendRequest",
    "UsageError",
    "build_submits",
    "parse_address",
    "send",
]

#: The environment variable ``send`` reads the password from when ``--password`` is not given;
#: the same one the shipped configs read the demo account's password from.
PASSWORD_ENV = "SMPP_DEMO_PASSWORD"

#: esm_class message types (bits 5–2) of a delivery report: SMSC delivery receipt, SME
#: delivery acknowledgement, intermediate delivery notification.
_RECEIPT_TYPES = frozenset({0x04, 0x08, 0x20})
_ALPHANUMERIC = re.compile(r"[^0-9+]")


class SendError(Exception):
    """Ends ``send`` with its message as the one line on stderr and exit status 1."""


class UsageError(SendError):
    """What was asked cannot be sent at all (a malformed number, --count 0): exit status 2."""


@dataclass(frozen=True, slots=True)
class SendRequest:
    """What to send, where, and how long to wait for each step (seconds)."""

    to: str
    text: str
    source: str = "Test"
    unicode: bool = False
    wait_receipt: bool = False
    count: int = 1
    host: str = "127.0.0.1"
    port: int = 2775
    system_id: str = "demo"
    password: str = field(default="demopass", repr=False)
    timeout: float = 30.0


def parse_address(address: str, *, source: bool = False) -> tuple[int, int, str]:
    """(TON, NPI, digits) for an address as an operator types it.

    ``+491701234567`` is international (TON 1, NPI 1, without the ``+``); plain digits are
    unknown TON with the ISDN plan (the SMSC applies the account's default region); a source
    with letters is alphanumeric (TON 5, NPI 0).
    """
    address = address.strip()
    if not address:
        raise UsageError("an address is empty")
    if source and _ALPHANUMERIC.search(address):
        return 5, 0, address
    if address.startswith("+") and address[1:].isdigit():
        return 1, 1, address[1:]
    if address.isdigit():
        return 0, 1, address
    raise UsageError(f"{address!r} is not a phone number (digits, optionally with a leading +)")


def build_submits(req: SendRequest, reference: int) -> list[Pdu]:
    """The submit_sm PDUs of one message: one, or several with a concatenation UDH."""
    data_coding = 0x08 if req.unicode else choose_coding(req.text)
    try:
        segments = split_text(req.text, data_coding, reference=reference)
    except TextError as e:
        raise UsageError(f"the text cannot be sent: {e}") from None
    src_ton, src_npi, src = parse_address(req.source, source=True)
    dst_ton, dst_npi, dst = parse_address(req.to)
    pdus = []
    for segment in segments:
        pdus.append(
            Pdu(
                CommandId.submit_sm,
                fields={
                    "source_addr_ton": src_ton,
                    "source_addr_npi": src_npi,
                    "source_addr": src,
                    "dest_addr_ton": dst_ton,
                    "dest_addr_npi": dst_npi,
                    "destination_addr": dst,
                    "esm_class": 0x40 if segment.udh else 0x00,
                    "registered_delivery": 0x01 if req.wait_receipt else 0x00,
                    "data_coding": data_coding,
                    "short_message": segment.udh + segment.payload,
                },
            )
        )
    return pdus


@dataclass(slots=True)
class _Part:
    label: str  # "message 1 part 2/3", for the output
    sent_at: float
    message_id: str = ""
    final: bool = False
    stat: str = ""
    delivered: bool = False


class _Run:
    """The state of one ``send``: the ids we got, the receipts still awaited, the output."""

    def __init__(self, req: SendRequest, out: TextIO, clock: Callable[[], float]) -> None:
        self.req = req
        self.out = out
        self.clock = clock
        self.by_id: dict[str, _Part] = {}
        self.outstanding_submits = 0
        self.awaiting = 0
        self.all_receipts = asyncio.Event()
        self.bind_failure: asyncio.Future[tuple[int | None, str]] = (
            asyncio.get_running_loop().create_future()
        )

    def say(self, line: str) -> None:
        print(line, file=self.out, flush=True)

    def on_bind_failure(self, status: int | None, error: str) -> None:
        if not self.bind_failure.done():
            self.bind_failure.set_result((status, error))

    def _ours(self, receipt_id: str) -> _Part | None:
        for variant in receipt_id_variants(receipt_id):
            part = self.by_id.get(variant)
            if part is not None:
                return part
        return None

    async def on_deliver(self, pdu: Pdu) -> int:
        """Print and acknowledge receipts for our ids; leave everything else to the account's
        other receivers (a temporary refusal keeps it queued in the SMSC)."""
        if (pdu.get("esm_class", 0) & 0x3C) not in _RECEIPT_TYPES:
            return int(Status.ESME_RX_T_APPN)
        data = bytes(pdu.get("short_message", b"") or pdu.tlv("message_payload", b""))
        if pdu.get("esm_class", 0) & 0x40 and data:
            with contextlib.suppress(TextError):
                data = parse_udh(data)[1]
        parsed = parse_receipt_text(data.decode("latin-1"))
        receipt_id = pdu.tlv("receipted_message_id") or (parsed.id if parsed else None)
        part = self._ours(str(receipt_id).strip()) if receipt_id else None
        if part is None:
            return int(Status.ESME_RX_T_APPN)
        stat = parsed.stat if parsed is not None and parsed.stat else "?"
        err = parsed.err_raw if parsed is not None and parsed.err_raw else "?"
        state = parsed.state if parsed is not None else None
        tlv_state = pdu.tlv("message_state")
        if state is None and isinstance(tlv_state, int) and 1 <= tlv_state <= 8:
            state = MessageState(tlv_state)
            stat = stat if stat != "?" else state.stat_word
        final = state is None or state.is_final  # ENROUTE, ACKED, BUFFRED: progress only
        elapsed = self.clock() - part.sent_at
        self.say(
            f"receipt         {part.label}  id={part.message_id}  stat={stat}  err={err}"
            f"  ({elapsed:.1f} s after submit{'' if final else ', not final'})"
        )
        if final and not part.final:
            part.final = True
            part.stat = stat
            # ACCEPTD: taken by a provider that reports nothing further (a success too).
            part.delivered = state in (MessageState.DELIVERED, MessageState.ACCEPTED)
            self.awaiting -= 1
            if self.awaiting == 0 and self.outstanding_submits == 0:
                self.all_receipts.set()
        return int(Status.ESME_ROK)

    async def submit(self, client: SmppClient, pdu: Pdu, label: str) -> bool:
        part = _Part(label, self.clock())
        try:
            resp = await client.submit(pdu)
        except ClientError as e:
            self.say(f"submit_sm_resp  {label}  no response: {e}")
            return False
        finally:
            self.outstanding_submits -= 1
        status = resp.command_status
        if status != 0 or resp.command_id != CommandId.submit_sm_resp:
            self.say(f"submit_sm_resp  {label}  {status_name(status)} (0x{status:08X})")
            return False
        part.message_id = str(resp.get("message_id", ""))
        self.say(f"submit_sm_resp  {label}  ESME_ROK  id={part.message_id}")
        if self.req.wait_receipt:
            self.by_id[part.message_id] = part
            self.awaiting += 1
        return True


def _bind_error(req: SendRequest, status: int | None, error: str) -> str:
    where = f"{req.host}:{req.port}"
    if status is None:
        # "[Errno 111] Connect call failed ('127.0.0.1', 2775)" reads better as the errno's text
        m = re.match(r"\[Errno (\d+)\]", error)
        if m:
            error = os.strerror(int(m.group(1)))
        return f"cannot connect to {where}: {error}"
    hint = ""
    if status in (Status.ESME_RINVPASWD, Status.ESME_RINVSYSID):
        hint = f" (check --system-id and --password, or ${PASSWORD_ENV})"
    elif status == Status.ESME_RBINDFAIL:
        hint = " (address not allowed for the account, bind type not allowed, or max_binds reached)"
    name = f"{status_name(status)} (0x{status:08X})"
    return f"bind as {req.system_id!r} refused by {where}: {name}{hint}"


async def send(req: SendRequest, out: TextIO = sys.stdout) -> int:
    """Run one ``send``; 0 when every submit was accepted (and, waiting, delivered).

    Raises :class:`SendError` for what ends it early (no connection, refused bind, timeout).
    """
    if req.count < 1:
        raise UsageError("--count must be at least 1")
    if req.timeout <= 0:
        raise UsageError("--timeout must be positive")
    reference = random.randrange(256)
    messages = [build_submits(req, (reference + i) % 256) for i in range(req.count)]
    run = _Run(req, out, time.monotonic)
    parts = sum(len(m) for m in messages)
    config = ClientConfig(
        host=req.host,
        port=req.port,
        system_id=req.system_id,
        password=req.password,
        bind_mode="transceiver" if req.wait_receipt else "transmitter",
        window=min(parts, 10),
        tps=0,
        response_timeout=req.timeout,
        connect_timeout=req.timeout,
        reconnect_min=0.5,
        reconnect_max=5.0,
    )
    client = SmppClient(config, run.on_deliver, name="send", on_bind_failure=run.on_bind_failure)
    await client.start()
    try:
        bound = asyncio.ensure_future(client.wait_bound(req.timeout))
        waits: set[asyncio.Future[object]] = {bound, run.bind_failure}  # type: ignore[arg-type]
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        if run.bind_failure.done():
            bound.cancel()
            raise SendError(_bind_error(req, *run.bind_failure.result()))
        if not bound.result():
            raise SendError(f"no bind answer from {req.host}:{req.port} within {req.timeout:g} s")
        bind = "transceiver" if req.wait_receipt else "transmitter"
        run.say(f"bound           {bind} to {req.host}:{req.port} as {req.system_id}")

        run.outstanding_submits = parts
        jobs = []
        for i, pdus in enumerate(messages, 1):
            for j, pdu in enumerate(pdus, 1):
                label = f"message {i}" + (f" part {j}/{len(pdus)}" if len(pdus) > 1 else "")
                jobs.append(run.submit(client, pdu, label))
        accepted = sum(await asyncio.gather(*jobs))
        refused = parts - accepted
        if refused:
            raise SendError(f"{refused} of {parts} submit_sm not accepted")
        if not req.wait_receipt:
            return 0
        if run.awaiting:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(run.all_receipts.wait(), req.timeout)
        if run.awaiting:
            missing = [p.message_id for p in run.by_id.values() if not p.final]
            raise SendError(
                f"timed out after {req.timeout:g} s waiting for {len(missing)} of {parts}"
                f" receipts (ids {', '.join(missing)})"
            )
        failed = [p for p in run.by_id.values() if not p.delivered]
        if failed:
            stats = ", ".join(sorted({p.stat for p in failed}))
            raise SendError(f"{len(failed)} of {parts} not delivered ({stats})")
        return 0
    finally:
        await client.stop(timeout=2.0)
