"""Delivery reports in, receipts out: the report and receipt steps of docs/architecture.md.

Three parts, from pure to stateful:

* Pure functions for the Appendix B receipt text (:func:`format_receipt_text`,
  :func:`parse_receipt_text`, :func:`stat_to_state`) and for the registered_delivery rules that
  decide which receipts an ESME asked for (:func:`receipts_for`).
* :class:`ReportHandler` turns a provider's :class:`~bridge.core.model.DeliveryReport` (or an
  outcome the bridge decided itself) into a state change of the message plus durably queued
  receipts.
* :class:`DeliveryQueue` sends queued receipts and MO messages to bound ESMEs, at least once: an
  item leaves the store only when the ESME answered deliver_sm_resp ESME_ROK.

Nothing here knows SMPP bytes: building the deliver_sm (esm_class 0x04 / 0x20, TLVs) from a
:class:`~bridge.core.model.Receipt` is the SMPP side's job, behind :class:`ReceiptSender`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import heapq
import itertools
import re
import time
import unicodedata
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Protocol

import structlog

from bridge.core.model import (
    DeliveryReport,
    InboundMessage,
    Message,
    MessageState,
    Receipt,
    same_number,
)
from bridge.core.store import DeliveryItem, StateChange, Store
from bridge.observability import Metrics, SampledLog

__all__ = [
    "DeliveryQueue",
    "ParsedReceipt",
    "ReceiptSender",
    "ReportHandler",
    "format_receipt_text",
    "parse_receipt_text",
    "receipt_id_variants",
    "receipts_for",
    "stat_to_state",
]

log = structlog.get_logger("bridge.receipts")

TEXT_HEAD_LENGTH = 20
"""Appendix B: the receipt repeats the first 20 characters of the original message."""

ERR_MAX = 999
"""Largest ``err:`` value we write. The field is 3 characters by convention and strict ESME
parsers read exactly three digits, so larger codes are clamped to 999 ("see the
network_error_code TLV / our logs") rather than widening the field."""


# --------------------------------------------------------------------------- receipt text

# Characters whose code is the same in ASCII/IA5 and in the GSM 03.38 default alphabet (unpacked):
# the receipt is sent with data_coding 0, which ESMEs read as either, so only these survive as
# themselves. '@', '$', '_' and the GSM extension characters differ between the two and are
# replaced, as is everything outside ASCII.
_SAFE_CHARS = frozenset(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789 !\"#%&'()*+,-./:;<=>?"
)
_REPLACEMENT = "?"


def _safe_char(ch: str) -> str:
    if ch in _SAFE_CHARS:
        return ch
    if ch.isspace():  # a newline inside a receipt breaks line-oriented parsers and logs
        return " "
    base = unicodedata.normalize("NFKD", ch)[:1]  # é -> e, Å -> A: keeps the head readable
    return base if base in _SAFE_CHARS else _REPLACEMENT


def _safe_text(text: str) -> str:
    """One output character per input character, so the head stays exactly 20 long."""
    return "".join(_safe_char(ch) for ch in text[:TEXT_HEAD_LENGTH])


def _receipt_date(t: float) -> str:
    """YYMMDDhhmm in UTC (Appendix B gives no zone; UTC is the only unambiguous choice)."""
    return time.strftime("%y%m%d%H%M", time.gmtime(t))


def format_receipt_text(r: Receipt) -> str:
    """The Appendix B receipt text for ``r``.

    ``sub`` is always 001: each receipt concerns one submit_sm (one part id). ``dlvrd`` is 001
    only for DELIVERED. ``err`` is 3 digits, clamped to 0–999 (see :data:`ERR_MAX`). The text head
    is made ASCII/GSM-safe character by character (accents dropped, anything else → ``?``).
    """
    dlvrd = "001" if r.state is MessageState.DELIVERED else "000"
    err = min(max(r.error_code, 0), ERR_MAX)
    return (
        f"id:{r.message_id} sub:001 dlvrd:{dlvrd}"
        f" submit date:{_receipt_date(r.submitted_at)} done date:{_receipt_date(r.done_at)}"
        f" stat:{r.state.stat_word} err:{err:03d} text:{_safe_text(r.text_head)}"
    )


_STAT_MAP: dict[str, MessageState] = {
    # SMPP 3.4 words (§6) and their long forms
    "ENROUTE": MessageState.ENROUTE,
    "DELIVRD": MessageState.DELIVERED,
    "DELIVERED": MessageState.DELIVERED,
    "EXPIRED": MessageState.EXPIRED,
    "DELETED": MessageState.DELETED,
    "UNDELIV": MessageState.UNDELIVERABLE,
    "UNDELIVERABLE": MessageState.UNDELIVERABLE,
    "ACCEPTD": MessageState.ACCEPTED,
    "ACCEPTED": MessageState.ACCEPTED,
    "UNKNOWN": MessageState.UNKNOWN,
    "REJECTD": MessageState.REJECTED,
    "REJECTED": MessageState.REJECTED,
    # vendor words: Kannel treats ACKED/BUFFRED as intermediate, so do we
    "ACKED": MessageState.ENROUTE,
    "BUFFRED": MessageState.ENROUTE,
    "BUFFERD": MessageState.ENROUTE,
    "BUFFERED": MessageState.ENROUTE,
    "FAILED": MessageState.UNDELIVERABLE,
    # SMPP 5.0 states some SMSCs already send
    "SCHEDULED": MessageState.ENROUTE,
    "SKIPPED": MessageState.UNDELIVERABLE,
}


def stat_to_state(word: str) -> MessageState | None:
    """The message state for a receipt ``stat:`` word (case-insensitive), None if unknown.

    Intermediate vendor words (ACKED, BUFFRED/BUFFERD) map to ENROUTE, which is not final; FAILED
    maps to UNDELIVERABLE.
    """
    return _STAT_MAP.get(word.strip().upper())


@dataclass(frozen=True, slots=True)
class ParsedReceipt:
    """What :func:`parse_receipt_text` could read; every field is None when absent or unreadable.

    ``stat`` is the raw word (upper case), ``state`` its mapping (None for an unknown word).
    Dates are Unix times, read as UTC. ``err`` is decimal when all digits, else hex; ``err_raw``
    keeps the original for logs.
    """

    id: str | None = None
    sub: int | None = None
    dlvrd: int | None = None
    submit_date: float | None = None
    done_date: float | None = None
    stat: str | None = None
    state: MessageState | None = None
    err: int | None = None
    err_raw: str | None = None
    text: str | None = None

    @property
    def intermediate(self) -> bool:
        """A progress report (ENROUTE, ACKED, BUFFRED …) rather than a final outcome."""
        return self.state is not None and not self.state.is_final


# A field name at the start or after whitespace, then ':' (spaces tolerated, '_' for ' ').
_FIELD_RE = re.compile(
    r"(?<!\S)(id|sub|dlvrd|submit[ _]?date|done[ _]?date|stat|err|text)\s*:", re.IGNORECASE
)


def _field_name(m: re.Match[str]) -> str:
    return re.sub(r"[ _]", "", m.group(1).lower())


def _parse_int(value: str | None) -> int | None:
    return int(value) if value is not None and value.isdigit() else None


def _parse_date(value: str | None) -> float | None:
    """YYMMDDhhmm or YYMMDDhhmmss (years 2000–2099), UTC."""
    if value is None or not value.isdigit() or len(value) not in (10, 12):
        return None
    try:
        dt = datetime(
            2000 + int(value[0:2]),
            int(value[2:4]),
            int(value[4:6]),
            int(value[6:8]),
            int(value[8:10]),
            int(value[10:12]) if len(value) == 12 else 0,
            tzinfo=UTC,
        )
    except ValueError:
        return None
    return dt.timestamp()


def _parse_err(value: str | None) -> int | None:
    if not value:
        return None
    if value.isdigit():
        return int(value)
    digits = value[2:] if value[:2].lower() == "0x" else value
    try:
        return int(digits, 16)
    except ValueError:
        return None


def parse_receipt_text(text: str) -> ParsedReceipt | None:
    """Read an upstream SMSC's receipt text, tolerantly; None when it is not a receipt at all
    (neither ``id:`` nor ``stat:``).

    Fields may come in any order and any may be missing; names are case-insensitive (``Text:``),
    ``submit_date`` works like ``submit date``. Dates may have 10 or 12 digits. The text field
    runs to the end, except that it stops at a field name not seen before it (so a vendor that
    puts ``text:`` in the middle still gives us its later fields, while a message text that
    happens to contain ``stat:`` does not override the real one).
    """
    matches = list(_FIELD_RE.finditer(text))
    values: dict[str, str] = {}
    i = 0
    while i < len(matches):
        m = matches[i]
        name = _field_name(m)
        if name == "text":
            seen = set(values)
            j = i + 1
            while j < len(matches) and _field_name(matches[j]) in seen | {"text"}:
                j += 1
            if j < len(matches):
                values.setdefault("text", text[m.end() : matches[j].start()].rstrip())
            else:
                values.setdefault("text", text[m.end() :].rstrip("\x00"))
            i = j
            continue
        end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
        words = text[m.end() : end].split()
        values.setdefault(name, words[0] if words else "")
        i += 1
    if not values.get("id") and not values.get("stat"):
        return None
    stat = values.get("stat")
    stat = stat.upper() if stat else None
    return ParsedReceipt(
        id=values.get("id") or None,
        sub=_parse_int(values.get("sub")),
        dlvrd=_parse_int(values.get("dlvrd")),
        submit_date=_parse_date(values.get("submitdate")),
        done_date=_parse_date(values.get("donedate")),
        stat=stat,
        state=stat_to_state(stat) if stat else None,
        err=_parse_err(values.get("err")),
        err_raw=values.get("err") or None,
        text=values.get("text"),
    )


def receipt_id_variants(receipt_id: str) -> list[str]:
    """Forms under which an upstream SMSC's receipt id may match the id from its submit_sm_resp.

    Some carriers answer submit_sm with a hex id and put the decimal form in the receipt (or the
    reverse), or drop leading zeros. Try these in order for the correlation lookup; the first is
    always the id as given.
    """
    out = [receipt_id]

    def add(v: str) -> None:
        if v and v not in out:
            out.append(v)

    stripped = receipt_id.lstrip("0") or "0"
    add(stripped)
    if receipt_id.isdigit():
        n = int(receipt_id)
        add(format(n, "x"))
        add(format(n, "X"))
    try:
        n = int(receipt_id, 16)
    except ValueError:
        return out
    add(str(n))
    return out


# --------------------------------------------------------------------------- which receipts


_NOT_FAILURES = frozenset({MessageState.DELIVERED, MessageState.ACCEPTED})


def receipts_for(
    message: Message,
    state: MessageState,
    *,
    done_at: float,
    error_code: int = 0,
    intermediate: bool = False,
    network_error: tuple[int, int] | None = None,
) -> list[Receipt]:
    """The receipts the ESME asked for (registered_delivery, §8) when ``message`` reaches
    ``state``: one per part id, or none.

    * final outcome: sent when bits 1..0 are 01 (always) or 10 and the state is a failure
      (failure only: not DELIVERED, and not ACCEPTED, which a provider without delivery
      reports ends with once it took the message — that is not a delivery failure);
    * intermediate notification: sent only when bit 4 (0x10) is set. ENROUTE is always
      intermediate; ACCEPTED is intermediate when ``intermediate`` says so (§6: final, but often a
      progress step). For any other state ``intermediate`` is ignored: a final outcome is never
      silenced by a caller's mistake.
    """
    is_intermediate = state is MessageState.ENROUTE or (
        intermediate and state is MessageState.ACCEPTED
    )
    reg = message.registered_delivery
    if is_intermediate:
        wanted = bool(reg & 0x10)
    else:
        mode = reg & 0x03
        wanted = mode == 1 or (mode == 2 and state not in _NOT_FAILURES)
    if not wanted:
        return []
    head = message.text[:TEXT_HEAD_LENGTH] if message.text is not None else ""
    return [
        Receipt(
            account=message.account,
            message_id=part_id,
            source=message.destination,
            destination=message.source,
            state=state,
            error_code=error_code,
            submitted_at=message.created_at,
            done_at=done_at,
            text_head=head,
            intermediate=is_intermediate,
            network_error=network_error,
        )
        for part_id in (message.part_ids or [message.id])
    ]


# --------------------------------------------------------------------------- report handler


class _Work:
    """One report (or one outcome the bridge decided) waiting for the next batch."""

    __slots__ = ("detail", "error_code", "future", "message", "report", "state")

    def __init__(
        self,
        future: asyncio.Future[bool],
        report: DeliveryReport | None = None,
        message: Message | None = None,
        state: MessageState = MessageState.UNKNOWN,
        error_code: int = 0,
        detail: str = "",
    ) -> None:
        self.future = future
        self.report = report
        self.message = message
        self.state = state
        self.error_code = error_code
        self.detail = detail


class ReportHandler:
    """Applies delivery reports (and the bridge's own final outcomes) to messages and queues the
    receipts the ESME asked for.

    Batches, not a task each (see docs/architecture.md, "the engine"): :meth:`on_report` and
    :meth:`finish` queue their work and return a future; once per event-loop pass every queued
    report is applied from the store's memory (no await, no lock) and its two records — the
    receipts for the account's delivery queue, then the message's new state — are appended to
    the journal together, so they are made durable by the same write. The future resolves when
    they are on disk (a provider callback answers 200 only then). If the write fails (a full
    disk), the message is left as it was and the work is tried again a second later: a report is
    never dropped while the bridge runs.

    Order of writes, for at-least-once: receipts before the final state, in one write — a crash
    can lose both (the provider's resent report, a poll or the expiry sweep makes them again) but
    never the receipts alone.

    Reports for a message already in a final state are ignored (providers resend). While one
    report's records are on their way to disk, later work for the same message waits for it, so
    two copies of the same report cannot both pass that check. ACCEPTED is final (§6); adapters
    map "accepted by the carrier / buffered" to ENROUTE.

    A report can arrive before the provider's answer to the send has been recorded (a fast
    push, or the sandbox with no delay): such an *early* report is parked for ``early_ttl``
    seconds and applied when :meth:`correlated` says the id is known; only a report still
    unmatched after that counts as unknown.

    Counters (for metrics): ``reports``, ``unknown_reports``, ``duplicate_reports``,
    ``early_reports``, ``store_retries``.
    """

    def __init__(
        self,
        store: Store,
        clock: Callable[[], float],
        on_receipts: Callable[[str], None] | None = None,
        *,
        early_ttl: float = 120.0,
        max_early: int = 100_000,
        retry_delay: float = 1.0,
        metrics: Metrics | None = None,
    ) -> None:
        self._store = store
        self._clock = clock
        self._on_receipts = on_receipts
        self.metrics = metrics if metrics is not None else Metrics()
        self.reports = 0
        self.unknown_reports = 0
        self.duplicate_reports = 0
        self.early_reports = 0
        self.store_retries = 0
        self.early_ttl = early_ttl
        self.max_early = max_early
        self.retry_delay = retry_delay
        self._early: dict[tuple[str, str], tuple[DeliveryReport, float]] = {}
        self._queue: list[_Work] = []
        self._scheduled = False
        # message id -> work that arrived while that message's records were on their way to disk
        self._busy: dict[str, list[_Work]] = {}
        self._sampled = SampledLog(log)
        # A networked store (Redis) answers the local reads only for what it holds: it offers
        # prefetch(), awaited once per batch when something is missing (see Store.prefetch).
        # The embedded store has none, and its path is unchanged.
        self._prefetch: Callable[..., Awaitable[None] | None] | None = getattr(
            store, "prefetch", None
        )
        self._fetching = False

    # ------------------------------------------------------------------ the surface

    def on_report(self, report: DeliveryReport) -> asyncio.Future[bool]:
        """Apply a provider's report. The future says True when it concerned one of our
        messages (including a duplicate that changed nothing), False when the provider's id is
        unknown (or expired) — once the change is durable. Callers that need no answer (a
        timer, an upstream session) may drop the future: no task is made."""
        return self._submit(_Work(self._future(), report=report))

    def finish(
        self, message: Message, state: MessageState, error_code: int = 0, detail: str = ""
    ) -> asyncio.Future[bool]:
        """End ``message`` with an outcome the bridge decided (rejected by every route, expired,
        incomplete reassembly): same path as a provider's report.

        ``message`` is updated and persisted when the store knows it (an incomplete concatenated
        message was never stored as a message: only its receipts are queued). The future says
        False, having done nothing, when the message is already final (a report won the race).
        """
        work = _Work(self._future(), message=message, state=state, error_code=error_code)
        work.detail = detail
        return self._submit(work)

    def correlated(self, provider: str, provider_message_id: str) -> asyncio.Future[bool] | None:
        """The dispatcher stored the correlation for this id: apply a report that came early.
        None (at once, no future made) when none was waiting — the common case."""
        if not self._early:
            return None
        parked = self._early.pop((provider, provider_message_id), None)
        if parked is None:
            return None
        return self.on_report(parked[0])

    # ------------------------------------------------------------------ batching

    @staticmethod
    def _future() -> asyncio.Future[bool]:
        return asyncio.get_running_loop().create_future()

    def _submit(self, work: _Work) -> asyncio.Future[bool]:
        self._queue.append(work)
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._drain)
        return work.future

    def _drain(self) -> None:
        self._scheduled = False
        if self._fetching:
            return  # drained again when the fetch is back (work keeps its order)
        batch, self._queue = self._queue, []
        if self._prefetch is not None and batch:
            pending = self._prefetch(
                [
                    (w.report.provider, w.report.provider_message_id)
                    for w in batch
                    if w.report is not None
                ],
                [w.message.id for w in batch if w.message is not None],
            )
            if pending is not None:
                self._fetching = True
                fetch = asyncio.ensure_future(pending)  # one per batch, not per report
                fetch.add_done_callback(functools.partial(self._fetched, batch))
                return
        self._run_batch(batch)

    def _fetched(self, batch: list[_Work], fetch: asyncio.Future[None]) -> None:
        self._fetching = False
        error = None if fetch.cancelled() else fetch.exception()
        if fetch.cancelled() or error is not None:
            self.store_retries += 1
            self._sampled(
                "warning",
                "report_prefetch_failed",
                "store",
                reports=len(batch),
                error=f"{type(error).__name__}: {error}"[:200],
                retry_in=self.retry_delay,
            )
            asyncio.get_running_loop().call_later(self.retry_delay, self._requeue, batch)
        else:
            self._run_batch(batch)
        if self._queue and not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._drain)

    def _run_batch(self, batch: list[_Work]) -> None:
        for work in batch:
            try:
                self._run(work)
            except Exception as exc:  # a bug must not strand the rest of the batch
                log.exception("report_apply_failed")
                _resolve(work.future, exc)

    def _run(self, work: _Work) -> None:
        report = work.report
        if report is not None:
            retry = work.detail is _RETRY
            if not retry:
                self.reports += 1
            message_id = self._store.lookup_now(report.provider, report.provider_message_id)
            if message_id is None:
                _resolve(work.future, self._park(report, keep=retry))
                return
            if retry:
                self._early.pop((report.provider, report.provider_message_id), None)
        else:
            assert work.message is not None
            message_id = work.message.id
        busy = self._busy.get(message_id)
        if busy is not None:
            busy.append(work)  # after the records under way for this message
            if report is not None:
                self.reports -= 1  # counted again when it runs
            return
        if report is not None:
            self._apply_report(work, report, message_id)
        else:
            self._apply_finish(work)

    def _apply_report(self, work: _Work, report: DeliveryReport, message_id: str) -> None:
        message = self._store.get_message_now(message_id)
        if message is None:
            _resolve(work.future, self._unknown(report))
            return
        if report.destination is not None and not same_number(
            report.destination, message.destination.digits
        ):
            # The right token and id but another number: forged, or not ours (README,
            # "Reliability"). Nothing changes; one sampled WARNING per provider.
            self.metrics.report(report.provider, "mismatch")
            self._sampled(
                "warning", "report_number_mismatch", report.provider,
                provider=report.provider, message_id=message.id, account=message.account,
            )  # fmt: skip
            _resolve(work.future, False)
            return
        if message.state.is_final:
            self._duplicate(message, report.state, report.provider)
            self.metrics.report(report.provider, "duplicate")
            _resolve(work.future, True)
            return
        intermediate = not report.state.is_final
        detail = f"{'intermediate ' if intermediate else ''}report from {report.provider}"
        if intermediate and self._repeats_last(message.id, report.state, detail):
            self._duplicate(message, report.state, report.provider)
            self.metrics.report(report.provider, "duplicate")
            _resolve(work.future, True)
            return
        self.metrics.report(report.provider, "matched")
        done_at = report.done_at if report.done_at is not None else self._clock()
        self._write(
            work, message, report.state, report.error_code, done_at, detail,
            report.network_error, persist=True,
        )  # fmt: skip

    def _apply_finish(self, work: _Work) -> None:
        message = work.message
        assert message is not None
        stored = self._store.get_message_now(message.id)
        if message.state.is_final or (stored is not None and stored.state.is_final):
            self._duplicate(message, work.state, "bridge")
            _resolve(work.future, False)
            return
        self._write(
            work, message, work.state, work.error_code, self._clock(), work.detail, None,
            persist=stored is not None,
        )  # fmt: skip

    def _write(
        self,
        work: _Work,
        message: Message,
        state: MessageState,
        error_code: int,
        done_at: float,
        detail: str,
        network_error: tuple[int, int] | None,
        *,
        persist: bool,
    ) -> None:
        """Receipts and the new state in one journal write; the message object changes only
        once that write is durable (a failed write leaves it as it was, for the retry)."""
        now = self._clock()
        receipts = receipts_for(
            message,
            state,
            done_at=done_at,
            error_code=error_code,
            intermediate=not state.is_final,
            network_error=network_error,
        )
        ctx = (work, message, state, error_code, done_at, receipts)
        self._busy[message.id] = []
        try:
            if receipts:
                self._store.enqueue_deliveries_nowait(
                    [(r.account, r) for r in receipts], now, _ignore_result, None
                )
            if persist:
                before = (message.state, message.error_code, message.done_at)
                if state.is_final:
                    message.state, message.error_code, message.done_at = (
                        state, error_code, done_at,
                    )  # fmt: skip
                try:
                    self._store.update_message_nowait(
                        message, StateChange(message.id, state, now, detail), self._written, ctx
                    )
                finally:
                    # the record holds the new state; the object gets it when it is durable
                    message.state, message.error_code, message.done_at = before
            elif receipts:
                self._store.enqueue_deliveries_nowait([], now, self._written, ctx)
            else:
                self._written(ctx, None, None)
        except Exception as exc:  # the store refused at once (closed): as a failed write
            self._written(ctx, None, exc)

    def _written(
        self,
        ctx: tuple[_Work, Message, MessageState, int, float, list[Receipt]],
        result: object,
        error: BaseException | None,
    ) -> None:
        work, message, state, error_code, done_at, receipts = ctx
        waiting = self._busy.pop(message.id, [])
        if error is not None:
            self.store_retries += 1
            self._sampled(
                "warning",
                "report_not_stored",
                "store",
                message_id=message.id,
                account=message.account,
                error=f"{type(error).__name__}: {error}"[:200],
                retry_in=self.retry_delay,
            )
            # Not on disk: the same work again later (a report must not be lost to a full disk).
            asyncio.get_running_loop().call_later(self.retry_delay, self._requeue, [work])
            self._requeue(waiting)
            return
        if state.is_final:
            message.state, message.error_code, message.done_at = state, error_code, done_at
        if receipts:
            self.metrics.receipts_queued(state.stat_word, len(receipts))
            if self._on_receipts is not None:
                try:
                    self._on_receipts(message.account)
                except Exception:  # the receipts are queued; a failed wake must not undo them
                    log.exception(
                        "receipt_wake_failed", message_id=message.id, account=message.account
                    )
        _resolve(work.future, True)
        self._requeue(waiting)

    def _requeue(self, works: list[_Work]) -> None:
        for work in works:
            self._submit(work)

    # ------------------------------------------------------------------ helpers

    def retry_early(self, limit: int = 1000) -> int:
        """Look again for up to ``limit`` parked reports, the newest first (cluster mode: another
        node may have stored their correlation meanwhile — only this node's dispatcher calls
        :meth:`correlated`). A report still unmatched stays parked as it was."""
        keys = list(itertools.islice(reversed(self._early), limit))
        for key in keys:
            work = _Work(self._future(), report=self._early[key][0])
            work.detail = _RETRY
            self._submit(work)
        return len(keys)

    def _park(self, report: DeliveryReport, *, keep: bool = False) -> bool:
        """Keep an unmatched report a while: its correlation may be about to be written."""
        now = self._clock()
        self._expire_early(now)
        key = (report.provider, report.provider_message_id)
        if keep:  # a retry (retry_early): parked as it was, or expired meanwhile
            return False
        if key not in self._early:
            if len(self._early) >= self.max_early:
                oldest = next(iter(self._early))
                self._unknown(self._early.pop(oldest)[0])
            self.early_reports += 1
            self.metrics.report(report.provider, "early")
        self._early[key] = (report, now)
        return False

    def _expire_early(self, now: float) -> None:
        while self._early:
            key, (report, at) = next(iter(self._early.items()))
            if now - at < self.early_ttl:
                break
            del self._early[key]
            self._unknown(report)

    def _unknown(self, report: DeliveryReport) -> bool:
        self.unknown_reports += 1
        self.metrics.report(report.provider, "unknown")
        log.info(
            "report_unknown",
            provider=report.provider,
            provider_message_id=report.provider_message_id,
            state=report.state.name,
        )
        return False

    def _duplicate(self, message: Message, state: MessageState, source: str) -> None:
        self.duplicate_reports += 1
        log.debug(
            "report_ignored",
            message_id=message.id,
            account=message.account,
            current=message.state.name,
            reported=state.name,
            source=source,
        )

    def _repeats_last(self, message_id: str, state: MessageState, detail: str) -> bool:
        """An intermediate report equal to the last one recorded (providers resend those too)."""
        history = self._store.history_now(message_id)
        return bool(history) and history[-1].state is state and history[-1].detail == detail


#: The ``detail`` of a parked report looked at again (retry_early), compared by identity.
_RETRY = "\x00retry"


def _resolve(future: asyncio.Future[bool], outcome: bool | BaseException) -> None:
    if future.done():
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)


def _ignore_result(arg: object, result: object, error: BaseException | None) -> None:
    return None


# --------------------------------------------------------------------------- delivery queue


_DELIVERY_RESULT = {True: "acked", False: "refused", None: "unsent"}


def _message_id(item: DeliveryItem) -> str | None:
    """The message a queued delivery is about, for its log lines: a receipt's message id; an
    MO message has none (its delivery_id names it)."""
    return item.item.message_id if isinstance(item.item, Receipt) else None


class ReceiptSender(Protocol):
    """The SMPP side as the delivery queue sees it."""

    def has_receiver(self, account: str) -> bool:
        """A receiver or transceiver of ``account`` is bound."""
        ...

    def send_nowait(
        self,
        account: str,
        item: Receipt | InboundMessage,
        done: Callable[[Any, bool | BaseException | None], None],
        arg: Any,
    ) -> bool:
        """Send one deliver_sm now; False (nothing sent) when no bound session of ``account``
        has room in its window. Later ``done(arg, result)``: True acknowledged (deliver_sm_resp
        ESME_ROK), False refused by the ESME (error status), None not answered (timeout,
        connection lost), or the exception that stopped the send."""
        ...


@dataclass(eq=False)
class _Lane:
    """One account's worker state; lives only while the account has work and a receiver."""

    account: str
    event: asyncio.Event = field(default_factory=asyncio.Event)
    last_taken: int = 0  # highest queue id read from the store
    inflight: dict[int, DeliveryItem] = field(default_factory=dict)  # sent, not yet answered
    blocked: bool = False  # the last fill found no session with room in its window
    retry: list[tuple[float, int, DeliveryItem]] = field(default_factory=list)  # heap by due
    task: asyncio.Task[None] | None = None


class DeliveryQueue:
    """At-least-once delivery of receipts and MO messages to bound ESMEs.

    Per account, one worker reads the store's queue in order (``pending_deliveries`` after the
    last id it took) and keeps up to ``window`` sends in flight. An item is removed from the store
    only when the ESME acknowledged it; on a refusal (False) or no answer (None) the attempt is
    noted and the item retried after ``retry_delay``, for as long as it is queued. An item the
    ESME keeps refusing is *never* dropped by this class — an ESME bug must not lose receipts;
    ``refused`` counts refusals and a warning is logged every ``warn_after`` attempts of one item.
    Only ``max_age`` expiry (``store.expire_deliveries``, run every ``expire_interval`` and
    logged) removes unacknowledged items; ``max_age=None`` keeps them forever.

    Ordering per account is best effort: sends overlap (window > 1) and a retried item goes out
    after later ones. With ``window=1`` and no retries the order is the queue order.

    No item is ever sent twice at once: an item is owned by exactly one in-flight task or the
    worker's retry heap, and a worker ends (dropping its memory; the store still holds every
    unacknowledged item) only when nothing is in flight, so its successor starts clean from the
    store. Workers start on :meth:`wake` — call it when items are queued *and* when a receiver
    binds — and end when the queue is empty or no receiver is bound.

    Counters (for metrics): ``acked``, ``refused``, ``not_sent``, ``expired``.
    """

    def __init__(
        self,
        store: Store,
        sender: ReceiptSender,
        clock: Callable[[], float],
        *,
        window: int = 64,
        retry_delay: float = 5.0,
        max_age: float | None = 3 * 86400,
        expire_interval: float = 60.0,
        warn_after: int = 10,
        metrics: Metrics | None = None,
    ) -> None:
        if window < 1:
            raise ValueError("window must be at least 1")
        self._store = store
        self._sender = sender
        self._clock = clock
        self._window = window
        self._retry_delay = retry_delay
        self._max_age = max_age
        self._expire_interval = expire_interval
        self._warn_after = max(warn_after, 1)
        self._lanes: dict[str, _Lane] = {}
        self._running = False
        self._expirer: asyncio.Task[None] | None = None
        self._resume: asyncio.Task[None] | None = None
        self.acked = 0
        self.refused = 0
        self.not_sent = 0
        self.expired = 0
        self.metrics = metrics if metrics is not None else Metrics()

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Start expiry and a worker for every account with queued items (resume after restart).
        Needs a running event loop."""
        if self._running:
            return
        self._running = True
        if self._max_age is not None:
            self._expirer = asyncio.create_task(self._expire_loop(), name="deliveries:expire")
        self._resume = asyncio.create_task(self._wake_stored(), name="deliveries:resume")

    async def _wake_stored(self) -> None:
        for account in await self._store.delivery_accounts():
            self.wake(account)

    async def stop(self) -> None:
        """Stop all workers. Sends in flight are cancelled; their items stay queued in the store
        and are sent again after the next start (at-least-once)."""
        self._running = False
        tasks: list[asyncio.Task[None]] = []
        if self._expirer is not None:
            tasks.append(self._expirer)
            self._expirer = None
        if self._resume is not None:
            tasks.append(self._resume)
            self._resume = None
        for lane in list(self._lanes.values()):
            lane.inflight.clear()  # their answers are ignored: the store keeps the items
            if lane.task is not None:
                tasks.append(lane.task)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._lanes.clear()

    def wake(self, account: str) -> None:
        """Something changed for ``account``: new items queued, or a receiver bound."""
        if not self._running:
            return
        lane = self._lanes.get(account)
        if lane is not None:
            lane.event.set()
            return
        if not self._sender.has_receiver(account):
            return  # nothing to do until a receiver binds (which wakes us again)
        lane = _Lane(account)
        self._lanes[account] = lane
        lane.task = asyncio.create_task(self._run(lane), name=f"deliveries:{account}")

    # ------------------------------------------------------------------ introspection

    def in_flight(self, account: str | None = None) -> int:
        """Sends currently awaiting the ESME's answer (for one account or all)."""
        if account is not None:
            lane = self._lanes.get(account)
            return len(lane.inflight) if lane else 0
        return sum(len(lane.inflight) for lane in self._lanes.values())

    async def drain(self, timeout: float, account: str | None = None) -> bool:
        """Wait until the queue (of ``account``, or of every account) is empty and nothing is in
        flight; False on timeout. For tests and graceful shutdown."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            if self._store.delivery_depth(account) == 0 and self.in_flight(account) == 0:
                return True
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(0.005)

    async def expire_now(self) -> int:
        """Drop items older than ``max_age`` (a no-op without one); returns how many."""
        if self._max_age is None:
            return 0
        count = await self._store.expire_deliveries(self._clock() - self._max_age)
        if count:
            self.expired += count
            self.metrics.deliveries_expired.inc(count)
            log.warning("deliveries_expired", count=count, max_age=self._max_age)
        return count

    # ------------------------------------------------------------------ workers

    async def _expire_loop(self) -> None:
        while True:
            try:
                await self.expire_now()
            except Exception:
                log.exception("deliveries_expire_failed")
            await asyncio.sleep(self._expire_interval)

    async def _run(self, lane: _Lane) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._running:
                lane.event.clear()  # no await until the wait below: no wake can slip through
                receiver = self._sender.has_receiver(lane.account)
                read_failed = False
                if receiver:
                    try:
                        await self._fill(lane, loop.time())
                    except Exception:  # a store read failed: keep the lane, try again later
                        log.exception("delivery_read_failed", account=lane.account)
                        read_failed = True
                if not lane.inflight and not read_failed and (not receiver or not lane.retry):
                    return  # empty, or nobody to send to: the store keeps the rest
                timeout = None
                if read_failed:
                    timeout = self._retry_delay
                elif receiver and lane.blocked and not lane.inflight:
                    timeout = 0.05  # windows held by other requests (enquire_link): look again
                elif receiver and lane.retry and len(lane.inflight) < self._window:
                    timeout = max(lane.retry[0][0] - loop.time(), 0.0)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(timeout):
                        await lane.event.wait()
        finally:
            if self._lanes.get(lane.account) is lane:
                del self._lanes[lane.account]

    async def _fill(self, lane: _Lane, now: float) -> None:
        """Start sends up to the window: due retries first (they are older), then new items.
        Stops early when no bound session has room in its window (``lane.blocked``)."""
        lane.blocked = False
        while len(lane.inflight) < self._window:
            if lane.retry and lane.retry[0][0] <= now:
                due, order, item = heapq.heappop(lane.retry)
                if not await self._still_queued(item):
                    continue  # expired meanwhile
                if not self._start_send(lane, item):
                    heapq.heappush(lane.retry, (due, order, item))
                    return
                continue
            fresh = await self._store.pending_deliveries(
                lane.account, limit=self._window - len(lane.inflight), after=lane.last_taken
            )
            if not fresh:
                return
            for item in fresh:
                if not self._start_send(lane, item):
                    return
                lane.last_taken = item.id

    async def _still_queued(self, item: DeliveryItem) -> bool:
        found = await self._store.pending_deliveries(item.account, limit=1, after=item.id - 1)
        return bool(found) and found[0].id == item.id

    def _start_send(self, lane: _Lane, item: DeliveryItem) -> bool:
        """Hand one item to the SMPP side — no task: :meth:`_sent` runs when the ESME answers.
        False (nothing sent) when no bound session has room."""
        try:
            sent = self._sender.send_nowait(lane.account, item.item, self._sent, (lane, item))
        except Exception as exc:
            lane.inflight[item.id] = item
            self._sent((lane, item), exc)
            return True
        if not sent:
            lane.blocked = True
            return False
        lane.inflight[item.id] = item
        return True

    def _sent(self, ctx: tuple[_Lane, DeliveryItem], result: bool | BaseException | None) -> None:
        """The ESME's answer to one deliver_sm (or None: no answer / connection lost)."""
        lane, item = ctx
        if lane.inflight.pop(item.id, None) is None:
            return  # stopped meanwhile: the store still holds the item
        if isinstance(result, BaseException):
            log.error(
                "delivery_send_failed",
                message_id=_message_id(item),
                account=lane.account,
                delivery_id=item.id,
                error=repr(result),
            )
            result = None
        # Per receipt, hot path: DEBUG only.
        log.debug(
            "delivery_attempt",
            message_id=_message_id(item),
            account=lane.account,
            delivery_id=item.id,
            result=_DELIVERY_RESULT[result],
        )
        lane.event.set()
        if result is True:
            self.acked += 1
            self.metrics.delivered("acked")
            receipt = item.item
            if isinstance(receipt, Receipt) and not receipt.intermediate:
                latency = max(0.0, self._clock() - receipt.submitted_at)
                self.metrics.receipt_delivery.observe(latency)
            # Journaled lazily: losing this record repeats a receipt, never loses one.
            self._store.remove_delivery_nowait(item.id)
            return
        if result is False:
            self.refused += 1
            self.metrics.delivered("refused")
        else:
            self.not_sent += 1
            self.metrics.delivered("unsent")
        self._store.note_delivery_attempt_nowait(item.id)
        item = replace(item, attempts=item.attempts + 1)
        if result is False and item.attempts % self._warn_after == 0:
            log.warning(
                "delivery_refused_repeatedly",
                message_id=_message_id(item),
                account=lane.account,
                delivery_id=item.id,
                attempts=item.attempts,
                kept=True,
            )
        loop = asyncio.get_running_loop()
        heapq.heappush(lane.retry, (loop.time() + self._retry_delay, item.id, item))
