"""My-Cool-SMS: inbound SMS, pushed (``pushIncomingSms``) or polled (``getIncomingSms``), once.

The MO half of the adapter, its own module because polling has state the rest of the adapter
does not: :class:`InboundPoller` keeps a durable threshold (the highest id already queued) in
the data directory, and since the push carries no id, recognises an MO that arrived both ways
by its content (:func:`fingerprint`) and delivers it once.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import structlog

from bridge.core.model import Address, InboundMessage
from bridge.providers.http import HttpError, HttpResponse
from bridge.providers.http_provider import classify_http_status
from bridge.providers.mycoolsms.api import (
    TON_ALPHANUMERIC,
    encode_request,
    from_ucs2_hex,
    json_object,
    success_items,
)
from bridge.providers.mycoolsms.settings import MAX_SENDER_CHARS
from bridge.smpp.text import TextError, gsm7_decode

if TYPE_CHECKING:
    from bridge.providers.mycoolsms import MyCoolSmsProvider

__all__ = [
    "DEDUPE_WINDOW",
    "MAX_INBOUND_PER_POLL",
    "MAX_REMEMBERED",
    "InboundPoller",
    "PolledSms",
    "fingerprint",
    "incoming_fields",
    "parse_inbound_poll",
    "parse_inbound_push",
]

log = structlog.get_logger("bridge.providers.mycoolsms")

#: getIncomingSms ``limit`` per call (the default is 25; 0 would mean "no limit", unbounded).
MAX_INBOUND_PER_POLL = 100
#: How long a pushed (or polled) MO's content is remembered to recognise the same MO arriving
#: the other way. A push comes within seconds; a poll within ``inbound_poll_interval``.
DEDUPE_WINDOW = 86400.0
#: At most this many remembered contents per direction (oldest dropped first).
MAX_REMEMBERED = 10000


def _inbound_address(value: str, *, allow_text: bool) -> Address:
    digits = value.strip()
    if digits.startswith("00"):
        digits = digits[2:]
    digits = digits.lstrip("+")
    if digits.isdigit() and len(digits) <= 15:
        return Address(digits, 1, 1)
    if allow_text and 0 < len(value.strip()) <= MAX_SENDER_CHARS:
        return Address(value.strip(), TON_ALPHANUMERIC, 0)
    raise ValueError("not a phone number")


def _inbound_text(data: Mapping[str, Any]) -> str:
    """``body`` (the text as a Unicode string) first; else ``bodyucs2``; else ``bodygsm7``
    (GSM septets as hex, one per octet)."""
    body = data.get("body")
    if isinstance(body, str):
        return body
    ucs2 = data.get("bodyucs2")
    if isinstance(ucs2, str) and ucs2:
        return from_ucs2_hex(ucs2)
    gsm = data.get("bodygsm7")
    if isinstance(gsm, str) and gsm:
        try:
            return gsm7_decode(bytes.fromhex(gsm))
        except (ValueError, TextError):
            raise ValueError("bodygsm7 is not GSM7 notation") from None
    raise ValueError("no text (body, bodyucs2 or bodygsm7)")


def parse_inbound_push(body: bytes, *, provider: str, received_at: float) -> InboundMessage:
    """``pushIncomingSms`` → an :class:`InboundMessage` (account left to the bridge's
    ``inbound_numbers``). ValueError when malformed."""
    data = json_object(body)
    sender, to = data.get("from"), data.get("to")
    if not isinstance(sender, str) or not sender.strip():
        raise ValueError("no from")
    if not isinstance(to, str) or not to.strip():
        raise ValueError("no to")
    try:
        source = _inbound_address(sender, allow_text=True)
        destination = _inbound_address(to, allow_text=False)
    except ValueError as exc:
        raise ValueError(f"from/to: {exc}") from None
    return InboundMessage(
        account="",
        source=source,
        destination=destination,
        text=_inbound_text(data),
        received_at=received_at,
        provider=provider,
    )


def incoming_fields(
    *,
    username: str,
    password: str,
    threshold: int,
    limit: int,
    order: Literal["ASC", "DESC"] = "ASC",
    virtual_number: str | None = None,
) -> dict[str, Any]:
    """``getIncomingSms``: the SMS with an id above ``threshold``, oldest first."""
    fields: dict[str, Any] = {
        "username": username,
        "password": password,
        "function": "getIncomingSms",
        "thresholdid": threshold,
        "thresholdoperator": "gt",
        "limit": limit,
        "order": order,
    }
    if virtual_number:
        fields["virtualnumber"] = virtual_number
    return fields


@dataclass(frozen=True, slots=True)
class PolledSms:
    """One entry of ``getIncomingSms``'s ``messages``: its id and the MO (None when the entry
    is unusable: it is skipped, but its id still moves the threshold)."""

    id: int
    message: InboundMessage | None
    error: str = ""


def _int_id(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value >= 0 else None
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


def parse_inbound_poll(
    response: HttpResponse, *, provider: str, received_at: float
) -> tuple[list[PolledSms], int | None]:
    """``getIncomingSms`` → (entries sorted by id, ``maxid``). ValueError for an error reply
    or a body that is not the documented one. Entries without a usable id are dropped (no
    threshold can pass them); entries with an id but no sender/number/text are returned with
    ``message=None`` so the caller logs them and moves on."""
    reply, items = success_items(response, "messages")
    out: list[PolledSms] = []
    for item in items:
        if not isinstance(item, dict):
            continue
        sms_id = _int_id(item.get("id"))
        if sms_id is None:
            continue
        sender, to = item.get("senderid"), item.get("virtualnumber")
        try:
            if not isinstance(sender, str) or not sender.strip():
                raise ValueError("no senderid")
            if not isinstance(to, str) or not to.strip():
                raise ValueError("no virtualnumber")
            message = InboundMessage(
                account="",
                source=_inbound_address(sender, allow_text=True),
                destination=_inbound_address(to, allow_text=False),
                text=_inbound_text(item),
                received_at=received_at,
                provider=provider,
            )
        except ValueError as exc:
            out.append(PolledSms(sms_id, None, str(exc)))
            continue
        out.append(PolledSms(sms_id, message))
    out.sort(key=lambda p: p.id)
    return out, _int_id(reply.get("maxid"))


def fingerprint(message: InboundMessage) -> str:
    """What an MO pushed and the same MO polled have in common (the push has no id): sender,
    receiving number and text, hashed (the state file holds no numbers or texts)."""
    key = f"{message.source.digits}\0{message.destination.digits}\0{message.text or ''}"
    return hashlib.sha256(key.encode("utf-8", errors="surrogatepass")).hexdigest()[:32]


class _Seen:
    """A multiset of fingerprints with expiry (oldest first), bounded."""

    def __init__(self, window: float) -> None:
        self.window = window
        self.items: deque[tuple[str, float]] = deque()
        self.counts: dict[str, int] = {}

    def add(self, fp: str, now: float) -> None:
        self.items.append((fp, now + self.window))
        self.counts[fp] = self.counts.get(fp, 0) + 1
        while len(self.items) > MAX_REMEMBERED:
            self._drop_left()

    def _drop_left(self) -> None:
        fp, _ = self.items.popleft()
        n = self.counts.get(fp, 0) - 1
        if n > 0:
            self.counts[fp] = n
        else:
            self.counts.pop(fp, None)

    def expire(self, now: float) -> None:
        while self.items and self.items[0][1] <= now:
            self._drop_left()

    def take(self, fp: str) -> bool:
        """Remove one occurrence of ``fp``; True if there was one."""
        n = self.counts.get(fp, 0)
        if n <= 0:
            return False
        for i, (item, _) in enumerate(self.items):
            if item == fp:
                del self.items[i]
                break
        if n > 1:
            self.counts[fp] = n - 1
        else:
            del self.counts[fp]
        return True

    def dump(self) -> list[list[Any]]:
        return [[fp, expires] for fp, expires in self.items]

    def load(self, items: Any, now: float) -> None:
        if not isinstance(items, list):
            return
        for item in items:
            if (
                isinstance(item, list)
                and len(item) == 2
                and isinstance(item[0], str)
                and isinstance(item[1], int | float)
                and item[1] > now
            ):
                self.items.append((item[0], float(item[1])))
                self.counts[item[0]] = self.counts.get(item[0], 0) + 1


def _write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    with contextlib.suppress(OSError):
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class InboundPoller:
    """``getIncomingSms`` polling with its durable threshold and the push/poll dedupe.

    State (``<data_dir>/providers/<name>.inbound.json``): ``thresholdid`` (the highest id
    already queued or skipped), and the fingerprints of MOs taken by push and not yet seen by
    poll (``pushed``) and vice versa (``polled``). Written (fsync, rename) after every MO
    queued and every push taken: a crash can at worst deliver one MO twice, never lose one.
    Without a state file (first start) the threshold starts at the provider's current
    ``maxid``: SMS received before polling was enabled are not fetched again.
    """

    def __init__(self, provider: MyCoolSmsProvider, path: Path | None) -> None:
        self.provider = provider
        self.path = path
        self.threshold: int | None = None
        self.pushed = _Seen(DEDUPE_WINDOW)
        self.polled = _Seen(DEDUPE_WINDOW)
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._failing = False
        self._stopping = False
        self._taking = False  # inside _take: queuing an MO and writing its threshold
        self.wake = asyncio.Event()

    # ------------------------------------------------------------------ state
    def load(self) -> None:
        if self.path is None or not self.path.exists():
            return
        try:
            data = json.loads(self.path.read_text("utf-8"))
        except (OSError, ValueError) as exc:
            log.warning(
                "mycoolsms_inbound_state_unreadable", provider=self.provider.name, error=str(exc)
            )
            return
        if not isinstance(data, dict):
            return
        threshold = _int_id(data.get("thresholdid"))
        self.threshold = threshold
        now = time.time()
        self.pushed.load(data.get("pushed"), now)
        self.polled.load(data.get("polled"), now)

    async def save(self) -> None:
        if self.path is None:
            return
        now = time.time()
        self.pushed.expire(now)
        self.polled.expire(now)
        data = json.dumps(
            {
                "thresholdid": self.threshold,
                "pushed": self.pushed.dump(),
                "polled": self.polled.dump(),
            },
            separators=(",", ":"),
        ).encode()
        await asyncio.to_thread(_write_atomically, self.path, data)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        self.load()
        self._stopping = False
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"{self.provider.name}-mo-poll")

    async def stop(self, timeout: float = 10.0) -> None:
        """Stop polling. An MO being queued (and its threshold written) is finished first, so a
        restart does not deliver it again; a fetch or the wait between polls is cancelled."""
        task, self._task = self._task, None
        if task is None:
            return
        self._stopping = True
        if self._taking:
            await asyncio.wait({task}, timeout=timeout)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def _run(self) -> None:
        interval = self.provider.config.inbound_poll_interval
        while not self._stopping:
            try:
                await self.poll_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # supervised: a bug or a store error must not end polling
                self._failed("error", error=repr(exc)[:200])
            self.wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), interval)

    def _failed(self, reason: str, **fields: Any) -> None:
        self.provider.ctx.count_event("inbound_poll_failed")
        if not self._failing:  # one line per outage, not one per interval
            self._failing = True
            log.warning(
                "mycoolsms_inbound_poll_failed",
                provider=self.provider.name,
                reason=reason,
                **fields,
            )

    # ------------------------------------------------------------------ one poll
    async def _fetch(
        self, threshold: int, limit: int, order: Literal["ASC", "DESC"]
    ) -> tuple[list[PolledSms], int | None] | None:
        p = self.provider
        username, password = p._credentials()
        request = encode_request(
            p.config.base_url,
            incoming_fields(
                username=username,
                password=password,
                threshold=threshold,
                limit=limit,
                order=order,
                virtual_number=p.config.virtual_number,
            ),
            p.config.request_format,
        )
        try:
            response = await p.call(request)
        except HttpError as exc:
            self._failed("no_answer", detail=exc.reason)
            return None
        if classify_http_status(response.status) is not None:
            self._failed("http_status", status=response.status)
            return None
        try:
            return parse_inbound_poll(response, provider=p.name, received_at=p.ctx.clock())
        except ValueError as exc:
            self._failed("bad_reply", error=str(exc))
            return None

    async def poll_once(self) -> int:
        """Fetch and queue every MO above the threshold; the number queued."""
        p = self.provider
        if p.inbound is None:
            return 0
        if self.threshold is None:
            # First start: begin after what the account already holds.
            got = await self._fetch(0, 1, "DESC")
            if got is None:
                return 0
            entries, maxid = got
            self.threshold = max([maxid or 0, *(e.id for e in entries)])
            async with self._lock:
                await self.save()
            log.info("mycoolsms_inbound_poll_started", provider=p.name, thresholdid=self.threshold)
        queued = 0
        while True:
            got = await self._fetch(self.threshold, MAX_INBOUND_PER_POLL, "ASC")
            if got is None:
                return queued
            entries, _ = got
            if self._failing:
                self._failing = False
                log.info("mycoolsms_inbound_poll_recovered", provider=p.name)
            fresh = [e for e in entries if e.id > self.threshold]
            for entry in fresh:
                if self._stopping:
                    return queued
                self._taking = True
                try:
                    queued += await self._take(entry)
                finally:
                    self._taking = False
            if len(entries) < MAX_INBOUND_PER_POLL or not fresh or self._stopping:
                return queued

    async def _take(self, entry: PolledSms) -> int:
        """Queue one polled MO unless a push brought it already; then move the threshold."""
        p = self.provider
        assert p.inbound is not None and self.threshold is not None
        async with self._lock:
            if entry.message is None:
                log.warning(
                    "mycoolsms_inbound_unusable", provider=p.name, id=entry.id, error=entry.error
                )
                self.threshold = max(self.threshold, entry.id)
                await self.save()
                return 0
            fp = fingerprint(entry.message)
            if self.pushed.take(fp):
                p.ctx.count_event("inbound_duplicate")
                self.threshold = max(self.threshold, entry.id)
                await self.save()
                return 0
            # Queued before it counts as done: a store error raises here, the threshold stays
            # and the next poll fetches it again.
            await p.inbound(entry.message)
            self.polled.add(fp, time.time())
            self.threshold = max(self.threshold, entry.id)
            await self.save()
            return 1

    async def take_push(self, message: InboundMessage) -> bool:
        """A pushed MO: False when polling queued it already (answer 200, queue nothing);
        else queue it and remember it for the poll."""
        p = self.provider
        assert p.inbound is not None
        async with self._lock:
            fp = fingerprint(message)
            if self.polled.take(fp):
                p.ctx.count_event("inbound_duplicate")
                await self.save()
                return False
            await p.inbound(message)
            self.pushed.add(fp, time.time())
            await self.save()
            return True


