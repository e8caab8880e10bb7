"""What a send's outcome does to a message (:mod:`bridge.core.dispatcher` has the rules):
an acceptance recorded with its correlation without holding the sender, a transient failure
retried after full-jitter exponential backoff until the validity runs out, a permanent one
failed over along the route or finished; and the polls that ask providers for the reports of
messages they took. A base class of the dispatcher (see :mod:`bridge.core.dispatch_queues`).
"""

from __future__ import annotations

import asyncio
from collections.abc import (
    Awaitable,
    Coroutine,
    Iterator,
    Sequence,
)

import structlog

from bridge.core.dispatch_queues import DispatchQueues, Entry, Taken
from bridge.core.model import DeliveryReport, Message, MessageState, Outcome
from bridge.core.provider import Provider
from bridge.core.store import StateChange

__all__ = ["Outcomes"]

log = structlog.get_logger("bridge.dispatch")

#: Caps the backoff exponent so ``2 ** n`` stays a sane float.
_MAX_EXPONENT = 62
#: Final states a PERMANENT outcome may carry; anything else ends as REJECTED.
_FAILURE_STATES = frozenset(
    {MessageState.REJECTED, MessageState.UNDELIVERABLE, MessageState.EXPIRED}
)


def _log_failure(future: asyncio.Future[object]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.error("dispatch_followup_failed", error=repr(future.exception())[:200])


class Outcomes(DispatchQueues):
    """Outcomes, retries, failover and polling (a base of the dispatcher)."""

    def _accepted(self, entry: Entry, outcome: Outcome) -> None:
        """The provider took the message: record it (with the correlation its report needs)
        without waiting — the sender goes on to its next message at once; what follows from
        the record (an early report, an intermediate notification, a final outcome) runs in
        :meth:`_taken` once the record is durable."""
        message, name = entry.message, entry.provider
        now = self.clock()
        self._release(entry)
        message.provider = name
        # "" (not None) when the provider gave no id: the message is taken and must not be
        # re-sent after a restart, though no report can be correlated to it.
        message.provider_message_id = outcome.provider_message_id or ""
        message.attempts += 1
        self._note_dispatched()
        self._record_taken(Taken(message, outcome, name, now))

    def _record_taken(self, taken: Taken) -> None:
        """Journal a message's acceptance by a provider. The correlation goes in the same
        record as the message: a crash between two writes would leave a taken message whose
        report (pushed or polled) matches nothing."""
        message, outcome, name, now = taken.message, taken.outcome, taken.provider, taken.at
        self._recording += 1
        try:
            self.store.update_message_nowait(
                message,
                StateChange(message.id, MessageState.ENROUTE, now, f"accepted by {name}"),
                self._taken,
                taken,
                correlation=(name, outcome.provider_message_id, now + self.correlation_ttl)
                if outcome.provider_message_id
                else None,
                other_ids=outcome.other_ids if outcome.provider_message_id else (),
            )
        except Exception as exc:  # a closed store raises at once: same path as a failed write
            self._taken(taken, None, exc)

    def _taken(self, taken: Taken, _result: object, error: BaseException | None) -> None:
        """The acceptance record is durable (``error`` None), or could not be written."""
        self._recording -= 1
        if error is not None:
            # The provider has the message: it must not be forgotten (nor sent again by the
            # next start), so the record is retried until the store takes it (a full disk).
            self.store_retries += 1
            self._sampled(
                "warning",
                "dispatch_store_failed",
                taken.provider,
                message_id=taken.message.id,
                provider=taken.provider,
                error=type(error).__name__,
                retry_in=self.retry_delay,
            )
            self._recording += 1  # still owed: stop() waits for it
            asyncio.get_running_loop().call_later(self.retry_delay, self._retry_taken, taken)
        else:
            self._after_taken(taken)
        if self._recording == 0 and self._recorded is not None:
            self._recorded.set()

    def _retry_taken(self, taken: Taken) -> None:
        self._recording -= 1
        self._record_taken(taken)

    def _after_taken(self, taken: Taken) -> None:
        message, outcome, name, now = taken.message, taken.outcome, taken.provider, taken.at
        if outcome.provider_message_id:
            if message.wants_intermediate and not (outcome.state and outcome.state.is_final):
                # registered_delivery bit 0x10: say "handed to a provider" (an ENROUTE
                # intermediate notification) before any final report.
                self._watch(
                    self.finisher.on_report(
                        DeliveryReport(
                            name, outcome.provider_message_id, MessageState.ENROUTE, 0, now
                        )
                    )
                )
            # Providers may push a report before their send call has returned to us.
            self._watch(self.finisher.correlated(name, outcome.provider_message_id))
            for other in outcome.other_ids:
                self._watch(self.finisher.correlated(name, other))
        if outcome.state is not None and outcome.state.is_final:
            self._watch(
                self.finisher.finish(
                    message,
                    outcome.state,
                    outcome.error_code,
                    outcome.detail or f"final from {name}",
                )
            )

    def _watch(self, work: Awaitable[object] | None) -> None:
        """Let ``work`` (the report handler's future, or a coroutine of a test double) run
        without waiting for it; a failure is logged, never lost silently."""
        if work is None:
            return
        future = asyncio.ensure_future(work)  # a future stays itself: no task is made for it
        future.add_done_callback(_log_failure)

    async def _permanent(self, entry: Entry, outcome: Outcome) -> None:
        detail = f"{entry.provider}: {outcome.detail or 'refused'}"
        if await self._failover(entry, detail):
            return
        state = outcome.state if outcome.state in _FAILURE_STATES else MessageState.REJECTED
        assert state is not None
        await self._finish(entry, state, outcome.error_code, detail)

    async def _transient(self, entry: Entry, outcome: Outcome) -> None:
        message, name = entry.message, entry.provider
        now = self.clock()
        message.attempts += 1
        message.error_code = outcome.error_code  # what an expiry will report
        detail = f"{name}: {outcome.detail or 'temporary failure'}"
        self._sampled(
            "warning",
            "provider_transient_failure",
            name,
            provider=name,
            detail=outcome.detail or "temporary failure",
            message_id=message.id,
            account=message.account,
        )
        if (
            self.failover_after > 0
            and message.attempts >= self.failover_after
            and await self._failover(entry, f"{detail} ({message.attempts} times)")
        ):
            return
        exponent = min(message.attempts - 1, _MAX_EXPONENT)
        delay = self._rng.uniform(0.0, min(self.backoff_max, self.backoff_base * 2**exponent))
        due = now + delay
        if due >= self._deadline(message):
            await self._finish(
                entry, MessageState.EXPIRED, outcome.error_code, f"{detail}; validity ended"
            )
            return
        message.next_attempt_at = due
        self._metrics[name].retries.inc()
        await self._persist(
            message,
            f"{detail}; attempt {message.attempts} failed, next in {delay:.2f}s",
        )
        if self._entries.get(message.id) is entry:
            self._place(message, name)

    async def _failover(self, entry: Entry, detail: str) -> bool:
        """Move the message to the next provider in its route; False at the end of it."""
        message, name = entry.message, entry.provider
        index = message.route.index(name) if name in message.route else len(message.route)
        following = self._next_provider(message, index + 1)
        if following is None:
            return False
        self._metrics[name].failovers.inc()
        self._sampled(
            "info",
            "failover",
            name,
            message_id=message.id,
            account=message.account,
            provider=name,
            to=following,
        )
        message.provider = following
        message.attempts = 0
        message.next_attempt_at = 0.0
        await self._persist(message, f"{detail}; failing over to {following}")
        if self._entries.get(message.id) is entry:
            self._place(message, following)
        return True

    async def _persist(self, message: Message, detail: str) -> None:
        """Record an intermediate step. Best effort: while we run, memory is authoritative, and
        a lost write only means the restart resumes from the previous step."""
        change = StateChange(message.id, MessageState.ENROUTE, self.clock(), detail)
        try:
            await self.store.update_message(message, change)
        except Exception:
            log.exception("dispatch_persist_failed", message_id=message.id, account=message.account)

    def _release(self, entry: Entry) -> None:
        if self._entries.get(entry.message.id) is entry:
            del self._entries[entry.message.id]
        self._ready[entry.provider].pop(entry.message.id, None)
        if entry.key is not None:
            self._unkey(entry)

    async def _finish(
        self, entry: Entry, state: MessageState, error_code: int, detail: str
    ) -> None:
        self._release(entry)
        self._note_dispatched()
        await self._call_finish(entry.message, state, error_code, detail)

    async def _finish_unheld(
        self, message: Message, state: MessageState, error_code: int, detail: str
    ) -> None:
        self._note_dispatched()
        await self._call_finish(message, state, error_code, detail)

    async def _call_finish(
        self, message: Message, state: MessageState, error_code: int, detail: str
    ) -> None:
        try:
            await self.finisher.finish(message, state, error_code, detail)
        except Exception:
            log.exception(
                "dispatch_finish_failed",
                message_id=message.id,
                account=message.account,
                state=state.name,
            )

    def _note_dispatched(self) -> None:
        if self.on_dispatched is not None:
            self.on_dispatched()

    def _spawn(self, coro: Coroutine[object, object, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # ------------------------------------------------------------------ polling

    async def _poll_loop(self) -> None:
        """Once at start for every provider (reports pushed while we were down are lost), then
        every ``poll_interval`` for providers whose reports are polled only."""
        everyone = True
        while True:
            try:
                await self.poll_now(everyone=everyone)
            except Exception:
                log.exception("dispatch_poll_failed")
            everyone = False
            if self.poll_interval <= 0:
                return
            await asyncio.sleep(self.poll_interval)

    async def poll_now(self, *, everyone: bool = False, only: str | None = None) -> int:
        """One sweep over the messages awaiting a report; returns how many reports came back.

        A message is polled when due; each poll that brings no final report doubles its
        interval (``poll_interval`` … ``poll_backoff_max``), so old messages cost little.
        ``everyone`` polls every provider (push ones too) and ignores the schedule. Messages of
        push providers are polled too once ``push_poll_after`` seconds have passed since their
        send without a final report (a safety net for lost pushes), on the same schedule. A message
        with no report within ``correlation_ttl`` of its last attempt can never get one (the
        correlation is gone): it is finished UNKNOWN so nothing stays ENROUTE for ever.
        ``only``: that provider's messages only (its circuit closed).
        """
        now = self.clock()
        batches: dict[str, list[Message]] = {}
        seen: set[str] = set()
        async for message in self._scan(self.store.awaiting_report):
            seen.add(message.id)
            if message.id in self._entries or message.provider is None:
                continue
            if only is not None and message.provider != only:
                continue
            last_try = max(message.created_at, message.schedule_at or 0.0, message.next_attempt_at)
            if now > last_try + self.correlation_ttl:
                await self._call_finish(message, MessageState.UNKNOWN, 0, "no delivery report")
                continue
            provider = self.providers.get(message.provider)
            if provider is None:
                continue
            if not everyone:
                if provider.capabilities.reports != "poll" and not (
                    # A push that never came (lost on the way, or sent while we were down
                    # and not yet final at the start-up sweep): ask, as a safety net.
                    self.push_poll_after > 0 and now - last_try >= self.push_poll_after
                ):
                    continue
                if self._poll_due.get(message.id, (0.0, 0))[0] > now:
                    continue
            batches.setdefault(message.provider, []).append(message)
        for stale in self._poll_due.keys() - seen:
            del self._poll_due[stale]
        received = 0
        for name, messages in batches.items():
            for chunk in _chunks(messages, self.poll_batch):
                received += await self._poll_chunk(name, self.providers[name], chunk, now)
        return received

    async def _poll_chunk(
        self, name: str, provider: Provider, messages: Sequence[Message], now: float
    ) -> int:
        try:
            reports = await provider.poll(messages)
        except Exception as exc:
            log.warning(
                "provider_poll_failed", provider=name, error=f"{type(exc).__name__}: {exc}"[:200]
            )
            reports = []
        answered: set[str] = set()
        for report in reports:
            try:
                await self.finisher.on_report(report)
            except Exception:
                log.exception("dispatch_report_failed", provider=name)
                continue
            if report.state.is_final:
                answered.add(report.provider_message_id)
        for message in messages:
            if message.provider_message_id in answered:
                self._poll_due.pop(message.id, None)
                continue
            polls = self._poll_due.get(message.id, (0.0, 0))[1] + 1
            interval = min(self.poll_backoff_max, self.poll_interval * 2 ** min(polls, 30))
            self._poll_due[message.id] = (now + interval, polls)
        return len(reports)


def _chunks(items: Sequence[Message], size: int) -> Iterator[Sequence[Message]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]
