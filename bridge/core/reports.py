"""Delivery reports in: a provider's report (pushed, polled, or from an upstream SMSC) or an
outcome the bridge decided itself becomes the message's new state and the receipts it asked for,
durably queued — applied in batches, once per loop pass (docs/architecture.md, the engine).
"""

from __future__ import annotations

import asyncio
import functools
import itertools
from collections.abc import Awaitable, Callable

import structlog

from bridge.core.model import DeliveryReport, Message, MessageState, Receipt, same_number
from bridge.core.receipts import receipts_for
from bridge.core.store import StateChange, Store
from bridge.observability import Metrics, SampledLog

__all__ = ["ReportHandler"]

log = structlog.get_logger("bridge.receipts")


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
