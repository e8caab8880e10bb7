"""The dispatcher's senders: per provider, ``capabilities.concurrency`` loops that take the
next ready message, wait for the rate limiter, a closed circuit and an unpaused provider, send
it — alone, or with the messages queued under the same batch key in one ``send_batch`` — and
hand each outcome on. The hot path of a send; a base class of the dispatcher (see
:mod:`bridge.core.dispatch_queues`), so its calls are what they were in one module.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import structlog

from bridge.core.breaker import BreakerState, CircuitBreaker
from bridge.core.dispatch_outcomes import Outcomes
from bridge.core.dispatch_queues import MAX_SLEEP, Entry
from bridge.core.model import MessageState, Outcome, OutcomeKind
from bridge.core.provider import BatchProvider, Provider
from bridge.core.store import StateChange

__all__ = ["Senders"]

log = structlog.get_logger("bridge.dispatch")


class Senders(Outcomes):
    """Sender loops, circuit breaking, single and bulk sends (a base of the dispatcher)."""

    # ------------------------------------------------------------------ sending

    async def _consume(self, name: str, provider: Provider) -> None:
        """One of ``concurrency`` workers for a provider."""
        queue = self._queues[name]
        limiter = self._limiters.get(name)
        task = asyncio.current_task()
        assert task is not None
        breaker = self.breakers[name]
        while not self._stopping:
            _, _, entry = await queue.get()
            if not self._current(entry, "queued"):
                continue  # cancelled or superseded while queued
            probe = False
            if name in self.paused:
                if await self._fail_over_open_circuit(entry, "paused"):
                    continue
                await self._wait_while_paused(entry)
                if not self._current(entry, "queued") or self._stopping:
                    continue  # cancelled; or stopping: the store keeps it for the next start
                # Resumed, or still paused with its validity over: _attempt expires it.
            if breaker.is_open:
                if await self._fail_over_open_circuit(entry):
                    continue
                probe = await self._wait_for_circuit(entry, breaker)
                if not self._current(entry, "queued"):
                    if probe:
                        breaker.abandon_probe(self._now())
                    continue
            if limiter is not None:
                await limiter.acquire()
                if not self._current(entry, "queued"):
                    continue
            entry.status = "sending"
            self._ready[name].pop(entry.message.id, None)
            if name in self._batchers:
                batch = self._take_batch(entry)
                if len(batch) > 1:
                    await self._send_batch(batch, task, probe)
                    continue
            self._busy.add(task)
            try:
                await self._attempt(entry, provider)
                if probe and breaker.state is BreakerState.HALF_OPEN:
                    breaker.abandon_probe(self._now())  # it expired instead of being sent
            except Exception:
                self._dropped(entry, name)
            finally:
                self._busy.discard(task)

    @staticmethod
    def _now() -> float:
        return asyncio.get_running_loop().time()

    def _record_breaker(self, name: str, outcome: Outcome) -> None:
        breaker = self.breakers[name]
        was_open = breaker.is_open
        if breaker.record(outcome.kind is not OutcomeKind.TRANSIENT, self._now()):
            log.warning(
                "circuit_open",
                provider=name,
                failures=breaker.failures,
                cooldown=breaker.cooldown,
                detail=outcome.detail,
            )
        elif was_open and not breaker.is_open:
            log.info("circuit_closed", provider=name, by="probe")
            self._recovered(name)

    def _recovered(self, name: str) -> None:
        """A provider's circuit closed: reports it pushed while it was unreachable may be lost,
        so its messages awaiting a report are polled now, not after ``push_poll_after``."""
        if name in self._recovery_polls or self._stopping:
            return
        self._recovery_polls.add(name)

        async def poll() -> None:
            try:
                await self.poll_now(everyone=True, only=name)
            except Exception:
                log.exception("dispatch_poll_failed", provider=name)
            finally:
                self._recovery_polls.discard(name)

        self._spawn(poll())

    async def _breaker_watch(self) -> None:
        """Every ``breaker_health_interval``: ask the health check of each provider whose
        circuit is open; a healthy answer closes the circuit at once (senders waiting for it
        go within a second), instead of after a cooldown of up to ``breaker_cooldown_max``."""
        while True:
            await asyncio.sleep(self.breaker_health_interval)
            open_ = [
                name
                for name, b in self.breakers.items()
                if b.is_open and name not in self.paused and _has_health_check(self.providers[name])
            ]
            if not open_:
                continue
            results = await asyncio.gather(
                *(self._healthy(self.providers[name]) for name in open_)
            )
            for name, ok in zip(open_, results, strict=True):
                if ok and self.breakers[name].close():
                    log.info("circuit_closed", provider=name, by="health_check")
                    self._recovered(name)

    async def _healthy(self, provider: Provider) -> bool:
        try:
            async with asyncio.timeout(max(self.breaker_health_interval, 2.0)):
                return bool(await provider.healthy())
        except Exception:
            return False

    async def _fail_over_open_circuit(self, entry: Entry, why: str = "circuit open") -> bool:
        """A message for a provider whose circuit is open (or that is paused) goes to the next
        provider of its route at once, when it has one (no attempt is spent on the dead one)."""
        name = entry.provider
        entry.status = "sending"
        if await self._failover(entry, f"{name}: {why}"):
            self._ready[name].pop(entry.message.id, None)
            if name in self._batchers:
                self._unkey(entry)
            return True
        entry.status = "queued"  # the end of its route: it waits for the circuit
        return False

    async def _wait_while_paused(self, entry: Entry) -> None:
        """Wait until the provider is resumed, the message's validity ends (it is then expired
        on time by _attempt) or the dispatcher stops."""
        resumed = self._resumed[entry.provider]
        while entry.provider in self.paused and not self._stopping:
            remaining = self._deadline(entry.message) - self.clock()
            if remaining <= 0:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(resumed.wait(), min(remaining, MAX_SLEEP))

    async def _wait_for_circuit(self, entry: Entry, breaker: CircuitBreaker) -> bool:
        """Wait until the circuit lets a send through or the message's validity ends (it is
        then expired on time by _attempt). True when this sender is the half-open probe."""
        while True:
            delay = breaker.wait(self._now())
            if delay <= 0:
                return breaker.state is BreakerState.HALF_OPEN
            remaining = self._deadline(entry.message) - self.clock()
            if remaining <= 0 or self._stopping:
                return False
            await asyncio.sleep(min(delay, remaining, 1.0))

    async def _attempt(self, entry: Entry, provider: Provider) -> None:
        message, name = entry.message, entry.provider
        now = self.clock()
        if now >= self._deadline(message):
            # err: the last transient failure's code (e.g. "no credit"), 0 if it was never tried.
            await self._finish(
                entry, MessageState.EXPIRED, message.error_code, "validity ended before dispatch"
            )
            return
        if provider.capabilities.at_most_once and not await self._mark_sending(entry):
            return
        started = time.perf_counter()
        try:
            outcome = await provider.send(message)
        except Exception as exc:  # adapters should return Outcomes; be safe when they do not
            self._metrics[name].request("error", time.perf_counter() - started)
            self._sampled(
                "warning",
                "provider_send_failed",
                name,
                message_id=message.id,
                account=message.account,
                provider=name,
                error=f"{type(exc).__name__}: {exc}"[:200],
            )
            outcome = Outcome(OutcomeKind.TRANSIENT, detail=f"exception {type(exc).__name__}")
        else:
            # OutcomeKind values are the outcome label values (accepted, permanent, transient)
            self._metrics[name].request(outcome.kind.value, time.perf_counter() - started)
        # Per message, hot path: DEBUG only (a filtered call costs ~0.35 µs, a line ~10 µs).
        log.debug(
            "dispatch_outcome",
            message_id=message.id,
            account=message.account,
            provider=name,
            outcome=outcome.kind.value,
            provider_message_id=outcome.provider_message_id,
        )
        self._record_breaker(name, outcome)
        await self._apply_outcome(entry, outcome)

    async def _apply_outcome(self, entry: Entry, outcome: Outcome) -> None:
        """What a send's outcome does to its message, for single and batch sends alike."""
        if outcome.kind is not OutcomeKind.ACCEPTED and entry.message.provider_message_id == "":
            entry.message.provider_message_id = None  # the "sending" mark: not taken after all
        if outcome.kind is OutcomeKind.ACCEPTED:
            self._accepted(entry, outcome)
        elif outcome.kind is OutcomeKind.PERMANENT:
            await self._permanent(entry, outcome)
        else:
            await self._transient(entry, outcome)

    async def _mark_sending(self, entry: Entry) -> bool:
        """At most once: before the send goes out, record durably that it is going out (the
        message counts as taken by the provider, without an id). A bridge killed during the
        send finds the mark at its restart and ends the message UNKNOWN instead of sending it
        a second time (:meth:`_finish_interrupted_sends`). False: not recorded, not sent (the
        message is retried like after a transient failure)."""
        message, name = entry.message, entry.provider
        message.provider, message.provider_message_id = name, ""
        change = StateChange(
            message.id, MessageState.ENROUTE, self.clock(),
            f"sending to {name} (at most once: not sent again if the bridge stops now)",
        )  # fmt: skip
        try:
            await self.store.update_message(message, change)
        except Exception as exc:
            message.provider_message_id = None
            await self._transient(
                entry,
                Outcome(OutcomeKind.TRANSIENT, detail=f"store: {type(exc).__name__}"),
            )
            return False
        return True

    async def _finish_interrupted_sends(self) -> int:
        """At start: a message marked "sending" to an at-most-once provider but never
        recorded as taken was being sent when the bridge stopped. The provider may have it;
        it is not sent again: it ends UNKNOWN (its receipt says so)."""
        interrupted = 0
        async for message in self._scan(self.store.awaiting_report):
            provider = self.providers.get(message.provider or "")
            if (
                message.provider_message_id == ""
                and provider is not None
                and provider.capabilities.at_most_once
            ):
                interrupted += 1
                await self._call_finish(
                    message, MessageState.UNKNOWN, 0,
                    f"the bridge stopped while sending it to {message.provider}; not sent again"
                    " (retry_after_timeout = false)",
                )  # fmt: skip
        if interrupted:
            log.warning("dispatch_interrupted_sends", messages=interrupted, state="UNKNOWN")
        return interrupted

    # ------------------------------------------------------------------ bulk sends

    async def _send_batch(self, batch: list[Entry], task: asyncio.Task[None], probe: bool) -> None:
        """One bulk request for ``batch`` (all marked sending), guarded like a single send."""
        name = batch[0].provider
        breaker = self.breakers[name]
        self._busy.add(task)
        try:
            await self._attempt_batch(batch, self._batchers[name])
            if probe and breaker.state is BreakerState.HALF_OPEN:
                breaker.abandon_probe(self._now())
        except Exception:
            log.exception(
                "dispatch_failed",
                message_id=batch[0].message.id,
                account=batch[0].message.account,
                provider=name,
                batch=len(batch),
            )
            for entry in batch:
                self._release(entry)
        finally:
            self._busy.discard(task)

    async def _attempt_batch(self, batch: list[Entry], provider: BatchProvider) -> None:
        """Send several messages in one request; then each goes on with its own outcome, as
        after a single send (accepted, failed over, retried, expired)."""
        name = batch[0].provider
        now = self.clock()
        live: list[Entry] = []
        for entry in batch:
            if now >= self._deadline(entry.message):
                await self._finish(
                    entry,
                    MessageState.EXPIRED,
                    entry.message.error_code,
                    "validity ended before dispatch",
                )
            else:
                live.append(entry)
        if self.providers[name].capabilities.at_most_once:
            # Each destination marked "sending" before the request, as a single send is.
            live = [entry for entry in live if await self._mark_sending(entry)]
        if not live:
            return
        started = time.perf_counter()
        try:
            outcomes = await provider.send_batch([e.message for e in live])
            if len(outcomes) != len(live):
                raise ValueError(f"{len(outcomes)} outcomes for {len(live)} messages")
        except Exception as exc:
            self._metrics[name].request("error", time.perf_counter() - started)
            self._sampled(
                "warning",
                "provider_send_failed",
                name,
                message_id=live[0].message.id,
                account=live[0].message.account,
                provider=name,
                error=f"{type(exc).__name__}: {exc}"[:200],
            )
            failed = Outcome(OutcomeKind.TRANSIENT, detail=f"exception {type(exc).__name__}")
            outcomes = [failed] * len(live)
        else:
            # One request: one observation (the first destination's outcome names it).
            self._metrics[name].request(outcomes[0].kind.value, time.perf_counter() - started)
        self.metrics.provider_event(name, "bulk_request")
        for _ in live:
            self.metrics.provider_event(name, "bulk_destination")
        # The breaker counts requests: a transient bulk failure is one failure.
        worst = next((o for o in outcomes if o.kind is OutcomeKind.TRANSIENT), outcomes[0])
        self._record_breaker(name, worst)
        for entry, outcome in zip(live, outcomes, strict=True):
            log.debug(
                "dispatch_outcome",
                message_id=entry.message.id,
                account=entry.message.account,
                provider=name,
                outcome=outcome.kind.value,
                provider_message_id=outcome.provider_message_id,
                batch=len(live),
            )
            try:
                await self._apply_outcome(entry, outcome)
            except Exception:
                self._dropped(entry, name)

    def _dropped(self, entry: Entry, provider: str) -> None:
        """A bug or a store failure while sending ``entry`` (called in its ``except``): the
        message stays pending in the store and is resumed by the next start; dropping it here
        keeps the sender alive."""
        log.exception(
            "dispatch_failed",
            message_id=entry.message.id,
            account=entry.message.account,
            provider=provider,
        )
        self._release(entry)


def _has_health_check(provider: Provider) -> bool:
    """Whether ``healthy()`` really asks the provider (``has_health_check``; an adapter without
    a balance or test call, or the sandbox, answers True without asking: that cannot close a
    circuit)."""
    return bool(getattr(provider, "has_health_check", False))

