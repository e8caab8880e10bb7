"""Dispatcher: outcomes (accept, failover, reject, retry, expiry), limits (rate, concurrency),
scheduling, restart recovery, polling, cancel — with real asyncio, the in-memory store and
scripted fake providers. Backoffs are a few milliseconds, so no test sleeps for long; nothing
asserts exact timings."""

from __future__ import annotations

import asyncio
import random
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import pytest
import structlog

from bridge.core.dispatcher import Dispatcher
from bridge.core.model import (
    Address,
    DeliveryReport,
    Message,
    MessageState,
    Outcome,
    OutcomeKind,
)
from bridge.core.provider import Capabilities
from bridge.core.reports import ReportHandler
from bridge.core.store import StateChange
from bridge.providers.sandbox import SandboxProvider
from tests.harness.fakes import InMemoryStore

ACCEPT = Outcome(OutcomeKind.ACCEPTED)
TRANSIENT = Outcome(OutcomeKind.TRANSIENT, detail="503")
PERMANENT = Outcome(OutcomeKind.PERMANENT, detail="invalid number", error_code=11)


class FakeProvider:
    """Answers from a script (then ACCEPTED with ``<name>-<n>`` ids); an Exception in the
    script is raised. ``gate`` (when set) holds every send until opened."""

    def __init__(
        self,
        name: str,
        script: Sequence[Outcome | Exception] = (),
        *,
        caps: Capabilities | None = None,
        repeat: Outcome | None = None,
        send_time: float = 0.0,
    ) -> None:
        self.name = name
        self.capabilities = caps or Capabilities()
        self.script: deque[Outcome | Exception] = deque(script)
        self.repeat = repeat
        self.send_time = send_time
        self.gate: asyncio.Event | None = None
        self.sent: list[tuple[str, float]] = []  # (message id, wall time)
        self.in_flight = 0
        self.max_in_flight = 0
        self.polled: list[list[str]] = []
        self.poll_answers: dict[str, deque[DeliveryReport | None]] = {}
        self._ids = 0

    async def start(self, reports: Any, inbound: Any) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def healthy(self) -> bool:
        return True

    async def send(self, message: Message) -> Outcome:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.gate is not None:
                await self.gate.wait()
            if self.send_time:
                await asyncio.sleep(self.send_time)
            self.sent.append((message.id, time.time()))
            if self.script:
                item = self.script.popleft()
            elif self.repeat is not None:
                item = self.repeat
            else:
                item = ACCEPT
            if isinstance(item, Exception):
                raise item
            if item.kind is OutcomeKind.ACCEPTED and item.provider_message_id is None:
                self._ids += 1
                return Outcome(OutcomeKind.ACCEPTED, f"{self.name}-{self._ids}", state=item.state)
            return item
        finally:
            self.in_flight -= 1

    async def poll(self, messages: Sequence[Message]) -> list[DeliveryReport]:
        self.polled.append([m.id for m in messages])
        out: list[DeliveryReport] = []
        for m in messages:
            answers = self.poll_answers.get(m.provider_message_id or "")
            report = answers.popleft() if answers else None
            if report is not None:
                out.append(report)
        return out

    def sent_ids(self) -> list[str]:
        return [mid for mid, _ in self.sent]


class RecordingFinisher:
    """Records finish() and on_report() and applies them to the store, like ReportHandler."""

    def __init__(self, store: InMemoryStore) -> None:
        self.store = store
        self.finished: dict[str, tuple[MessageState, int, str]] = {}
        self.reports: list[DeliveryReport] = []

    async def finish(
        self, message: Message, state: MessageState, error_code: int = 0, detail: str = ""
    ) -> bool:
        message.state, message.error_code = state, error_code
        await self.store.update_message(message, StateChange(message.id, state, 0.0, detail))
        self.finished[message.id] = (state, error_code, detail)
        return True

    def correlated(self, provider: str, provider_message_id: str) -> None:
        return None

    async def on_report(self, report: DeliveryReport) -> bool:
        self.reports.append(report)
        message_id = self.store.lookup_now(report.provider, report.provider_message_id)
        message = self.store.get_message_now(message_id) if message_id else None
        if message is None:
            return False
        if report.state.is_final:
            await self.finish(message, report.state, report.error_code, "report")
        return True


def make_message(id: str = "m1", route: Sequence[str] = ("p1",), **kw: Any) -> Message:
    values: dict[str, Any] = {
        "id": id,
        "account": "demo",
        "source": Address("Bridge", 5, 0),
        "destination": Address("4915112345678"),
        "text": "the secret text",
        "created_at": time.time(),
        "route": list(route),
    }
    values.update(kw)
    return Message(**values)


async def until(predicate: Callable[[], bool], timeout: float = 3.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.002)


class Rig:
    def __init__(self) -> None:
        self.store = InMemoryStore()
        self.finisher = RecordingFinisher(self.store)
        self.dispatchers: list[Dispatcher] = []
        self.dispatched = 0

    def dispatcher(self, *providers: Any, **kw: Any) -> Dispatcher:
        values: dict[str, Any] = {
            "backoff_base": 0.005,
            "backoff_max": 0.02,
            "poll_interval": 0,
            "rng": random.Random(1),
            "on_dispatched": self.note,
        }
        values.update(kw)
        finisher = values.pop("finisher", self.finisher)
        d = Dispatcher(self.store, {p.name: p for p in providers}, finisher, **values)
        self.dispatchers.append(d)
        return d

    def note(self) -> None:
        self.dispatched += 1

    async def add(self, d: Dispatcher, message: Message) -> Message:
        await self.store.add_message(message)
        d.submit(message)
        return message

    def stored(self, message_id: str = "m1") -> Message:
        message = self.store.get_message_now(message_id)
        assert message is not None
        return message

    def details(self, message_id: str = "m1") -> list[str]:
        return [c.detail for c in self.store.history_now(message_id)]


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    r = Rig()
    yield r
    for d in r.dispatchers:
        await d.stop(timeout=1.0)


# --------------------------------------------------------------------------- outcomes


async def test_accepted_stores_provider_id_and_correlation(rig: Rig) -> None:
    p1 = FakeProvider("p1")
    d = rig.dispatcher(p1)
    await d.start()
    await rig.add(d, make_message())
    await until(lambda: rig.store.lookup_now("p1", "p1-1") == "m1")
    stored = rig.stored()
    assert (stored.provider, stored.provider_message_id, stored.state) == (
        "p1",
        "p1-1",
        MessageState.ENROUTE,
    )
    assert rig.store.awaiting_report_now() and not rig.store.pending_messages_now()
    assert rig.finisher.finished == {}
    assert rig.dispatched == 1 and d.held == 0
    assert "accepted by p1" in rig.details()


async def test_an_acceptance_the_store_refuses_is_retried_until_stored_never_resent(
    rig: Rig,
) -> None:
    # A full disk while the provider takes the message: the provider has it, so the record of
    # that (with the correlation its report needs) is written again until the store takes it,
    # and the message is never handed to the provider a second time.
    p1 = FakeProvider("p1")
    d = rig.dispatcher(p1, retry_delay=0.01)
    await d.start()
    await rig.add(d, make_message())
    rig.store.fail_writes = 3
    await until(lambda: rig.store.lookup_now("p1", "p1-1") == "m1")
    assert d.store_retries == 3
    assert len(p1.sent) == 1
    assert rig.stored().provider_message_id == "p1-1"
    assert rig.store.awaiting_report_now() and not rig.store.pending_messages_now()


async def test_stop_waits_for_acceptances_still_on_their_way_to_the_store(rig: Rig) -> None:
    p1 = FakeProvider("p1")
    d = rig.dispatcher(p1, retry_delay=0.05)
    await d.start()
    rig.store.fail_writes = 0
    await rig.add(d, make_message())
    rig.store.fail_writes = 2
    await until(lambda: len(p1.sent) == 1)
    await d.stop(timeout=2.0)
    assert rig.store.lookup_now("p1", "p1-1") == "m1"


async def test_an_at_most_once_send_cut_off_by_a_stop_is_not_sent_again_and_ends_unknown(
    rig: Rig,
) -> None:
    # retry_after_timeout = false: the bridge dies while the request is out. The provider may
    # have the message, so the next start must not send it again: it ends UNKNOWN.
    p1 = FakeProvider("p1", caps=Capabilities(at_most_once=True))
    p1.gate = asyncio.Event()  # the send never returns
    d = rig.dispatcher(p1)
    await d.start()
    await rig.add(d, make_message())
    await until(lambda: p1.in_flight == 1)
    assert any("sending to p1" in detail for detail in rig.details())
    await d.stop(timeout=0.05)  # the send is cut off, as by kill -9

    again = FakeProvider("p1", caps=Capabilities(at_most_once=True))
    d2 = rig.dispatcher(again)
    await d2.start()
    await until(lambda: "m1" in rig.finisher.finished)
    assert rig.finisher.finished["m1"][0] is MessageState.UNKNOWN
    assert again.sent == [] and len(p1.sent) == 0


async def test_an_at_most_once_send_that_failed_transiently_is_queued_and_sent_again(
    rig: Rig,
) -> None:
    transient = Outcome(OutcomeKind.TRANSIENT, detail="connect failed")
    p1 = FakeProvider("p1", [transient], caps=Capabilities(at_most_once=True))
    d = rig.dispatcher(p1)
    await d.start()
    await rig.add(d, make_message())
    await until(lambda: rig.store.lookup_now("p1", "p1-1") == "m1")
    assert p1.sent_ids() == ["m1", "m1"]  # the failed one never reached the provider
    assert sum("sending to p1" in detail for detail in rig.details()) == 2


async def test_accepted_parts_ids_are_all_correlated_with_the_message(rig: Rig) -> None:
    accepted = Outcome(OutcomeKind.ACCEPTED, provider_message_id="U1", other_ids=("U2", "U3"))
    d = rig.dispatcher(FakeProvider("p1", [accepted]))
    await d.start()
    await rig.add(d, make_message())
    await until(lambda: rig.store.lookup_now("p1", "U1") == "m1")
    assert rig.store.lookup_now("p1", "U2") == "m1" and rig.store.lookup_now("p1", "U3") == "m1"


async def test_accepted_with_final_state_finishes_at_once(rig: Rig) -> None:
    p1 = FakeProvider("p1", [Outcome(OutcomeKind.ACCEPTED, state=MessageState.DELIVERED)])
    d = rig.dispatcher(p1)
    await d.start()
    await rig.add(d, make_message())
    await until(lambda: "m1" in rig.finisher.finished)
    assert rig.finisher.finished["m1"][0] is MessageState.DELIVERED
    assert rig.store.lookup_now("p1", "p1-1") == "m1"


async def test_permanent_fails_over_to_the_next_provider(rig: Rig) -> None:
    p1, p2 = FakeProvider("p1", [PERMANENT]), FakeProvider("p2")
    d = rig.dispatcher(p1, p2)
    await d.start()
    await rig.add(d, make_message(route=["p1", "p2"]))
    await until(lambda: rig.store.lookup_now("p2", "p2-1") == "m1")
    assert p1.sent_ids() == ["m1"] and p2.sent_ids() == ["m1"]
    assert rig.stored().provider == "p2"
    assert any("failing over to p2" in detail for detail in rig.details())
    assert rig.finisher.finished == {}


async def test_all_permanent_finishes_rejected_with_the_error_code(rig: Rig) -> None:
    p1, p2 = FakeProvider("p1", [PERMANENT]), FakeProvider("p2", [PERMANENT])
    d = rig.dispatcher(p1, p2)
    await d.start()
    await rig.add(d, make_message(route=["p1", "p2"]))
    await until(lambda: "m1" in rig.finisher.finished)
    state, code, detail = rig.finisher.finished["m1"]
    assert (state, code) == (MessageState.REJECTED, 11)
    assert "p2" in detail and "invalid number" in detail
    assert rig.dispatched == 1 and d.held == 0


async def test_permanent_outcome_may_say_undeliverable(rig: Rig) -> None:
    undeliverable = Outcome(OutcomeKind.PERMANENT, error_code=5, state=MessageState.UNDELIVERABLE)
    d = rig.dispatcher(FakeProvider("p1", [undeliverable]))
    await d.start()
    await rig.add(d, make_message())
    await until(lambda: "m1" in rig.finisher.finished)
    assert rig.finisher.finished["m1"][:2] == (MessageState.UNDELIVERABLE, 5)


async def test_transient_then_success(rig: Rig) -> None:
    p1 = FakeProvider("p1", [TRANSIENT, TRANSIENT])
    d = rig.dispatcher(p1)
    await d.start()
    await rig.add(d, make_message())
    await until(lambda: rig.store.lookup_now("p1", "p1-1") == "m1")
    assert p1.sent_ids() == ["m1"] * 3
    stored = rig.stored()
    assert stored.attempts == 3 and stored.next_attempt_at > 0
    retries = [detail for detail in rig.details() if "failed, next in" in detail]
    assert len(retries) == 2 and "503" in retries[0]


async def test_provider_exception_is_transient_and_logged_without_text(rig: Rig) -> None:
    p1 = FakeProvider("p1", [ConnectionResetError("peer reset")])
    d = rig.dispatcher(p1)
    await d.start()
    with structlog.testing.capture_logs() as logs:
        await rig.add(d, make_message())
        await until(lambda: rig.store.lookup_now("p1", "p1-1") == "m1")
    [warning] = [e for e in logs if e["event"] == "provider_send_failed"]
    assert warning["log_level"] == "warning"
    assert warning["message_id"] == "m1" and warning["provider"] == "p1"
    assert "ConnectionResetError" in warning["error"]
    assert not any("secret" in str(value) for entry in logs for value in entry.values())


async def test_transient_until_expiry_finishes_expired(rig: Rig) -> None:
    p1 = FakeProvider("p1", repeat=Outcome(OutcomeKind.TRANSIENT, error_code=8))
    # With the rig's seeded rng the retries are due at ~0.013 s and ~0.18 s, and the third
    # backoff (~0.31 s) ends past the validity: > 0.1 s from the deadline each time, so the
    # expiry is found after a transient outcome (its error code 8), never by a retry that
    # wakes a few ms late at the deadline (error code 0). Short backoffs made that a race.
    d = rig.dispatcher(p1, backoff_base=0.1, backoff_max=1.0)
    await d.start()
    await rig.add(d, make_message(expire_at=time.time() + 0.3))
    await until(lambda: "m1" in rig.finisher.finished)
    assert rig.finisher.finished["m1"][:2] == (MessageState.EXPIRED, 8)
    assert len(p1.sent) >= 2
    sends = len(p1.sent)
    await asyncio.sleep(0.05)
    assert len(p1.sent) == sends and d.held == 0


async def test_expiry_found_by_a_late_retry_keeps_the_last_error_code(rig: Rig) -> None:
    # Tiny backoffs: the validity usually ends while a retry is waiting, and the retry that
    # wakes at the deadline finds the message expired "before dispatch"; the receipt still
    # says why it was never sent (the last transient failure's code), not err:000.
    p1 = FakeProvider("p1", repeat=Outcome(OutcomeKind.TRANSIENT, error_code=8))
    d = rig.dispatcher(p1, backoff_base=0.001, backoff_max=0.01)
    await d.start()
    await rig.add(d, make_message(expire_at=time.time() + 0.2))
    await until(lambda: "m1" in rig.finisher.finished)
    assert rig.finisher.finished["m1"][:2] == (MessageState.EXPIRED, 8)


async def test_default_validity_applies_without_expire_at(rig: Rig) -> None:
    p1 = FakeProvider("p1", repeat=TRANSIENT)
    d = rig.dispatcher(p1, default_validity=0.2)
    await d.start()
    await rig.add(d, make_message())
    await until(lambda: "m1" in rig.finisher.finished)
    assert rig.finisher.finished["m1"][0] is MessageState.EXPIRED


async def test_already_expired_message_is_not_sent(rig: Rig) -> None:
    p1 = FakeProvider("p1")
    d = rig.dispatcher(p1)
    await d.start()
    await rig.add(d, make_message(expire_at=time.time() - 1))
    await until(lambda: "m1" in rig.finisher.finished)
    assert rig.finisher.finished["m1"][0] is MessageState.EXPIRED and p1.sent == []


async def test_failover_after_repeated_transient_failures(rig: Rig) -> None:
    p1, p2 = FakeProvider("p1", repeat=TRANSIENT), FakeProvider("p2")
    d = rig.dispatcher(p1, p2, failover_after=3)
    await d.start()
    await rig.add(d, make_message(route=["p1", "p2"]))
    await until(lambda: rig.store.lookup_now("p2", "p2-1") == "m1")
    assert len(p1.sent) == 3 and rig.stored().attempts == 1


async def test_unconfigured_providers_in_the_route_are_skipped(rig: Rig) -> None:
    p1 = FakeProvider("p1")
    d = rig.dispatcher(p1)
    await d.start()
    await rig.add(d, make_message("a", route=["gone", "p1"]))
    await rig.add(d, make_message("b", route=["gone"]))
    await until(lambda: rig.store.lookup_now("p1", "p1-1") == "a" and "b" in rig.finisher.finished)
    assert rig.finisher.finished["b"][0] is MessageState.REJECTED


# --------------------------------------------------------------------------- limits


async def test_rate_limit_is_respected(rig: Rig) -> None:
    rate = 20.0
    p1 = FakeProvider("p1", caps=Capabilities(requests_per_second=rate, concurrency=8))
    d = rig.dispatcher(p1)
    await d.start()
    began = time.monotonic()
    for i in range(60):
        await rig.add(d, make_message(f"m{i:02}"))
    await asyncio.sleep(0.5)
    elapsed = time.monotonic() - began
    # a burst of `rate` at first, then `rate` per second; generous margin for slow machines
    assert rate <= len(p1.sent) <= rate + rate * elapsed + 3
    assert len(p1.sent) < 60


async def test_slow_rate_below_one_per_second(rig: Rig) -> None:
    p1 = FakeProvider("p1", caps=Capabilities(requests_per_second=0.5))
    d = rig.dispatcher(p1)
    await d.start()
    for i in range(3):
        await rig.add(d, make_message(f"m{i}"))
    await until(lambda: len(p1.sent) == 1)
    await asyncio.sleep(0.2)
    assert len(p1.sent) == 1  # the next slot is two seconds away


async def test_concurrency_limit_is_never_exceeded(rig: Rig) -> None:
    p1 = FakeProvider("p1", caps=Capabilities(concurrency=3), send_time=0.01)
    d = rig.dispatcher(p1)
    await d.start()
    for i in range(20):
        await rig.add(d, make_message(f"m{i:02}"))
    await until(lambda: len(p1.sent) == 20)
    assert p1.max_in_flight == 3


async def test_higher_priority_goes_first(rig: Rig) -> None:
    p1 = FakeProvider("p1", caps=Capabilities(concurrency=1))
    p1.gate = asyncio.Event()
    d = rig.dispatcher(p1)
    await d.start()
    await rig.add(d, make_message("first"))
    await until(lambda: p1.in_flight == 1)
    await rig.add(d, make_message("low"))
    await rig.add(d, make_message("high", priority=3))
    p1.gate.set()
    await until(lambda: len(p1.sent) == 3)
    assert p1.sent_ids() == ["first", "high", "low"]


async def test_queue_depth_and_oldest_age(rig: Rig) -> None:
    p1 = FakeProvider("p1", caps=Capabilities(concurrency=1))
    p1.gate = asyncio.Event()
    d = rig.dispatcher(p1)
    await d.start()
    for i in range(3):
        await rig.add(d, make_message(f"m{i}"))
    await until(lambda: p1.in_flight == 1)
    assert d.queue_depth("p1") == 2 and d.held == 3
    assert d.oldest_age("p1", time.time() + 10) >= 10
    assert d.queue_depth("other") == 0 and d.oldest_age("other", time.time()) == 0.0
    p1.gate.set()
    await until(lambda: len(p1.sent) == 3)
    assert d.queue_depth("p1") == 0 and d.oldest_age("p1", time.time()) == 0.0


# --------------------------------------------------------------------------- scheduling


async def test_scheduled_message_is_not_sent_before_it_is_due(rig: Rig) -> None:
    p1 = FakeProvider("p1")
    d = rig.dispatcher(p1)
    await d.start()
    due = time.time() + 0.3
    await rig.add(d, make_message(schedule_at=due))
    await asyncio.sleep(0.1)
    assert p1.sent == [] and d.queue_depth("p1") == 0 and d.held == 1
    await until(lambda: len(p1.sent) == 1)
    assert p1.sent[0][1] >= due


async def test_provider_that_schedules_natively_gets_it_at_once(rig: Rig) -> None:
    p1 = FakeProvider("p1", caps=Capabilities(scheduling=True))
    d = rig.dispatcher(p1)
    await d.start()
    await rig.add(d, make_message(schedule_at=time.time() + 3600))
    await until(lambda: len(p1.sent) == 1)


async def test_scheduled_beyond_default_validity_is_not_born_expired(rig: Rig) -> None:
    p1 = FakeProvider("p1")
    d = rig.dispatcher(p1, default_validity=0.1)
    await d.start()
    await rig.add(d, make_message(schedule_at=time.time() + 0.2))
    await until(lambda: len(p1.sent) == 1)
    assert rig.finisher.finished == {}


# --------------------------------------------------------------------------- cancel


async def test_cancel_before_dispatch(rig: Rig) -> None:
    p1 = FakeProvider("p1", caps=Capabilities(concurrency=1))
    p1.gate = asyncio.Event()
    d = rig.dispatcher(p1)
    await d.start()
    await rig.add(d, make_message("busy"))
    await until(lambda: p1.in_flight == 1)
    await rig.add(d, make_message("queued"))
    await rig.add(d, make_message("later", schedule_at=time.time() + 0.05))
    assert d.cancel("queued") is True
    assert d.cancel("later") is True
    assert d.cancel("busy") is False  # in flight
    assert d.cancel("unknown") is False
    assert d.cancel("queued") is False  # already gone
    assert d.queue_depth("p1") == 0
    p1.gate.set()
    await asyncio.sleep(0.15)
    assert p1.sent_ids() == ["busy"]
    assert d.cancel("busy") is False  # taken by the provider


async def test_cancelled_then_resubmitted_is_sent_once(rig: Rig) -> None:
    """replace_sm: cancel, change, submit again."""
    p1 = FakeProvider("p1")
    d = rig.dispatcher(p1)
    message = await rig.add(d, make_message(schedule_at=time.time() + 60))
    assert d.cancel("m1")
    message.schedule_at = None
    d.submit(message)
    await d.start()
    await until(lambda: len(p1.sent) == 1)
    await asyncio.sleep(0.05)
    assert len(p1.sent) == 1


async def test_cancel_during_backoff(rig: Rig) -> None:
    p1 = FakeProvider("p1", repeat=TRANSIENT)
    d = rig.dispatcher(p1, backoff_base=10, backoff_max=10, rng=random.Random(3))
    await d.start()
    await rig.add(d, make_message())
    await until(lambda: len(p1.sent) == 1 and d.queue_depth("p1") == 0 and p1.in_flight == 0)
    await until(lambda: any("next in" in detail for detail in rig.details()))
    assert d.cancel("m1") is True and d.held == 0


# --------------------------------------------------------------------------- restart


async def test_restart_resumes_pending_and_polls_awaiting(rig: Rig) -> None:
    # state left behind by the previous process
    pending = make_message("a", route=["p1", "p2"], provider="p2")  # p1 had already refused
    awaiting = make_message("b", provider="p1", provider_message_id="p1-old")
    done = make_message("c", state=MessageState.DELIVERED)
    for m in (pending, awaiting, done):
        await rig.store.add_message(m)
    await rig.store.correlate("p1", "p1-old", "b", time.time() + 60)

    p1, p2 = FakeProvider("p1"), FakeProvider("p2")
    p1.poll_answers["p1-old"] = deque([DeliveryReport("p1", "p1-old", MessageState.DELIVERED)])
    d = rig.dispatcher(p1, p2, page_size=1)  # paging through the store listings
    await d.start()
    await until(lambda: rig.store.lookup_now("p2", "p2-1") == "a" and "b" in rig.finisher.finished)
    assert p1.sent == [] and p2.sent_ids() == ["a"]
    assert p1.polled == [["b"]] and p2.polled == []
    assert rig.finisher.finished["b"][0] is MessageState.DELIVERED
    assert rig.finisher.reports[0].provider_message_id == "p1-old"


async def test_restart_keeps_backoff_of_a_retrying_message(rig: Rig) -> None:
    await rig.store.add_message(make_message(attempts=2, next_attempt_at=time.time() + 0.2))
    p1 = FakeProvider("p1")
    d = rig.dispatcher(p1)
    await d.start()
    await asyncio.sleep(0.05)
    assert p1.sent == []
    await until(lambda: len(p1.sent) == 1)


async def test_poll_only_provider_is_polled_periodically_with_backoff(rig: Rig) -> None:
    p1 = FakeProvider("p1", caps=Capabilities(reports="poll"))
    p1.poll_answers["p1-1"] = deque(
        [None, None, DeliveryReport("p1", "p1-1", MessageState.UNDELIVERABLE, error_code=4)]
    )
    d = rig.dispatcher(p1, poll_interval=0.02, poll_backoff_max=0.04)
    await d.start()
    await rig.add(d, make_message())
    await until(lambda: "m1" in rig.finisher.finished)
    assert rig.finisher.finished["m1"][:2] == (MessageState.UNDELIVERABLE, 4)
    assert len(p1.polled) >= 3


async def test_push_provider_is_polled_at_start_then_only_when_a_report_is_late(
    rig: Rig,
) -> None:
    await rig.store.add_message(
        make_message(provider="p1", provider_message_id="p1-old", created_at=time.time())
    )
    p1 = FakeProvider("p1")  # reports="push", answers nothing
    d = rig.dispatcher(p1, poll_interval=0.01, push_poll_after=3600)
    await d.start()
    await until(lambda: len(p1.polled) == 1)
    await asyncio.sleep(0.08)
    assert p1.polled == [["m1"]]  # its push may still come: not asked again yet


async def test_push_provider_whose_push_never_came_is_polled_as_a_safety_net(
    rig: Rig,
) -> None:
    await rig.store.add_message(
        make_message(provider="p1", provider_message_id="p1-old", created_at=time.time() - 60)
    )
    await rig.store.correlate("p1", "p1-old", "m1", time.time() + 3600)
    p1 = FakeProvider("p1")  # reports="push"
    p1.poll_answers["p1-old"] = deque(
        [None, DeliveryReport("p1", "p1-old", MessageState.DELIVERED)]
    )
    d = rig.dispatcher(p1, poll_interval=0.01, poll_backoff_max=0.02, push_poll_after=30)
    await d.start()
    await until(lambda: "m1" in rig.finisher.finished)  # the start-up sweep, then the net
    assert rig.finisher.finished["m1"][0] is MessageState.DELIVERED
    assert len(p1.polled) == 2


async def test_failing_poll_is_survived(rig: Rig) -> None:
    class Broken(FakeProvider):
        async def poll(self, messages: Sequence[Message]) -> list[DeliveryReport]:
            self.polled.append([m.id for m in messages])
            raise TimeoutError("provider down")

    p1 = Broken("p1", caps=Capabilities(reports="poll"))
    await rig.store.add_message(make_message(provider="p1", provider_message_id="x"))
    d = rig.dispatcher(p1, poll_interval=0.01, poll_backoff_max=0.02)
    await d.start()
    await until(lambda: len(p1.polled) >= 3)


async def test_message_without_report_for_correlation_ttl_ends_unknown(rig: Rig) -> None:
    long_ago = time.time() - 100
    await rig.store.add_message(
        make_message(provider="p1", provider_message_id="p1-x", created_at=long_ago)
    )
    await rig.store.add_message(make_message("fresh", provider="p1", provider_message_id="p1-y"))
    d = rig.dispatcher(FakeProvider("p1"), correlation_ttl=50)
    assert await d.poll_now() == 0
    assert rig.finisher.finished["m1"][0] is MessageState.UNKNOWN
    assert "fresh" not in rig.finisher.finished


# --------------------------------------------------------------------------- stop


async def test_stop_lets_in_flight_sends_finish(rig: Rig) -> None:
    p1 = FakeProvider("p1", caps=Capabilities(concurrency=2))
    p1.gate = asyncio.Event()
    d = rig.dispatcher(p1)
    await d.start()
    await rig.add(d, make_message("a"))
    await until(lambda: p1.in_flight == 1)
    stopping = asyncio.create_task(d.stop())
    await asyncio.sleep(0.02)
    assert not stopping.done()
    p1.gate.set()
    await stopping
    assert rig.store.lookup_now("p1", "p1-1") == "a"
    await rig.add(d, make_message("b"))  # queued after stop: kept for the next start
    await asyncio.sleep(0.02)
    assert p1.sent_ids() == ["a"]
    assert [m.id for m in rig.store.pending_messages_now()] == ["b"]


# --------------------------------------------------------------------------- end to end


async def test_sandbox_and_report_handler_end_to_end(rig: Rig) -> None:
    sandbox = SandboxProvider(delay=0.01)
    handler = ReportHandler(rig.store, time.time)
    await sandbox.start(handler.on_report, _no_inbound)
    d = rig.dispatcher(sandbox, finisher=handler)
    await d.start()
    await rig.add(d, make_message(route=["sandbox"], registered_delivery=1))
    await until(lambda: rig.stored().state is MessageState.DELIVERED)
    assert rig.store.delivery_depth("demo") == 1
    await sandbox.stop()


async def test_sandbox_message_is_resolved_after_a_restart(rig: Rig) -> None:
    old = SandboxProvider(delay=30)
    await old.start(_drop, _no_inbound)
    handler = ReportHandler(rig.store, time.time)
    d = rig.dispatcher(old, finisher=handler)
    await d.start()
    await rig.add(d, make_message(route=["sandbox"], registered_delivery=1))
    await until(lambda: rig.stored().provider_message_id is not None)
    await d.stop()
    await old.stop()  # the report timer dies with the process

    new = SandboxProvider(delay=30)
    await new.start(handler.on_report, _no_inbound)
    d2 = rig.dispatcher(new, finisher=handler)
    await d2.start()
    await until(lambda: rig.stored().state is MessageState.DELIVERED)
    await new.stop()


async def _drop(_: DeliveryReport) -> bool:
    return False


async def _no_inbound(_: Any) -> None:
    pass


# --------------------------------------------------------------------------- circuit breaker


async def test_circuit_opens_after_repeated_transient_failures_and_holds_messages(rig: Rig) -> None:
    p1 = FakeProvider("p1", repeat=TRANSIENT)
    d = rig.dispatcher(p1, breaker_failures=3, breaker_cooldown=0.5)
    await d.start()
    for i in range(5):
        await rig.add(d, make_message(id=f"m{i}"))
    await until(lambda: d.breakers["p1"].is_open)
    await asyncio.sleep(0.2)  # well inside the cooldown: nothing more goes to p1
    sent = len(p1.sent)
    await asyncio.sleep(0.2)
    assert len(p1.sent) == sent
    p1.repeat = None  # the provider is back: the probe succeeds, the circuit closes
    await until(lambda: all(rig.store.lookup_now("p1", f"p1-{n}") for n in range(1, 6)))
    assert not d.breakers["p1"].is_open
    assert rig.finisher.finished == {}


async def test_messages_for_an_open_circuit_fail_over_at_once(rig: Rig) -> None:
    p1, p2 = FakeProvider("p1", repeat=TRANSIENT), FakeProvider("p2")
    d = rig.dispatcher(p1, p2, breaker_failures=2, breaker_cooldown=60)
    await d.start()
    await rig.add(d, make_message(id="a"))
    await rig.add(d, make_message(id="b"))
    await until(lambda: d.breakers["p1"].is_open)
    tried = len(p1.sent)
    await rig.add(d, make_message(id="c", route=["p1", "p2"]))
    await until(lambda: rig.store.lookup_now("p2", "p2-1") == "c")
    assert len(p1.sent) == tried  # not one attempt spent on the dead provider
    assert any("circuit open; failing over to p2" in detail for detail in rig.details("c"))


async def test_a_message_waiting_on_an_open_circuit_still_expires_on_time(rig: Rig) -> None:
    p1 = FakeProvider("p1", repeat=TRANSIENT)
    d = rig.dispatcher(p1, breaker_failures=1, breaker_cooldown=60)
    await d.start()
    await rig.add(d, make_message(id="a"))
    await until(lambda: d.breakers["p1"].is_open)
    started = time.monotonic()
    await rig.add(d, make_message(id="b", expire_at=time.time() + 0.3))
    await until(lambda: "b" in rig.finisher.finished)
    assert rig.finisher.finished["b"][0] is MessageState.EXPIRED
    assert time.monotonic() - started < 30  # the validity, not the 60 s cooldown, ended it
    assert d.breakers["p1"].state.value == "open"  # no probe was spent on it


# --------------------------------------------------------------------------- operator pause


async def test_a_paused_provider_gets_no_sends_until_resumed(rig: Rig) -> None:
    p1 = FakeProvider("p1")
    d = rig.dispatcher(p1)
    await d.start()
    assert d.pause("p1") and not d.pause("p1")  # the second one changes nothing
    await rig.add(d, make_message(id="a"))
    await asyncio.sleep(0.2)
    assert p1.sent == []
    assert d.where("a") == ("queued", "p1")
    assert d.resume("p1") and not d.resume("p1")
    await until(lambda: rig.store.lookup_now("p1", "p1-1") == "a")


async def test_a_paused_provider_fails_over_at_once(rig: Rig) -> None:
    p1, p2 = FakeProvider("p1"), FakeProvider("p2")
    d = rig.dispatcher(p1, p2)
    await d.start()
    d.pause("p1")
    await rig.add(d, make_message(id="a", route=["p1", "p2"]))
    await until(lambda: rig.store.lookup_now("p2", "p2-1") == "a")
    assert p1.sent == []
    assert any("p1: paused; failing over to p2" in detail for detail in rig.details("a"))


async def test_a_message_waiting_on_a_paused_provider_still_expires_on_time(rig: Rig) -> None:
    p1 = FakeProvider("p1")
    d = rig.dispatcher(p1)
    await d.start()
    d.pause("p1")
    await rig.add(d, make_message(id="a", expire_at=time.time() + 0.3))
    await until(lambda: "a" in rig.finisher.finished)
    assert rig.finisher.finished["a"][0] is MessageState.EXPIRED
    assert p1.sent == []


# --------------------------------------------------------------------------- bulk sends


class BulkProvider(FakeProvider):
    """A FakeProvider that also sends in bulk: messages with the same text share a request;
    ``batch_outcomes`` scripts whole requests (one outcome for every destination)."""

    def __init__(self, name: str, *, max_batch: int = 3, **kw: Any) -> None:
        super().__init__(name, caps=Capabilities(max_batch=max_batch, concurrency=1), **kw)
        self.batches: list[list[str]] = []
        self.batch_outcomes: deque[Outcome] = deque()

    def batch_key(self, message: Message) -> Any:
        return message.text

    async def send_batch(self, messages: Sequence[Message]) -> list[Outcome]:
        if self.gate is not None:
            await self.gate.wait()
        self.batches.append([m.id for m in messages])
        if self.batch_outcomes:
            outcome = self.batch_outcomes.popleft()
            return [outcome] * len(messages)
        self._ids += 1
        return [
            Outcome(OutcomeKind.ACCEPTED, f"{self.name}-b{self._ids}-{i}")
            for i in range(len(messages))
        ]


async def test_queued_messages_with_the_same_batch_key_share_one_request_of_at_most_max_batch(
    rig: Rig,
) -> None:
    p1 = BulkProvider("p1", max_batch=3)
    p1.gate = asyncio.Event()
    d = rig.dispatcher(p1)
    await d.start()
    await rig.add(d, make_message("first", text="one"))
    await until(lambda: d.where("first") == ("sending", "p1"))  # held at the gate
    for i in range(4):
        await rig.add(d, make_message(f"same{i}", text="same"))
    await rig.add(d, make_message("other", text="another"))
    p1.gate.set()
    await until(lambda: d.held == 0 and len(p1.sent) == 3)
    await until(lambda: rig.store.lookup_now("p1", "p1-b2-2") is not None)
    assert p1.batches == [["same0", "same1", "same2"]]  # max_batch 3; "first" went alone
    assert sorted(p1.sent_ids()) == ["first", "other", "same3"]
    for i in range(3):
        assert rig.store.lookup_now("p1", f"p1-b2-{i}") == f"same{i}"


async def test_a_transient_bulk_failure_retries_every_destination_on_its_own(rig: Rig) -> None:
    p1 = BulkProvider("p1", max_batch=10)
    p1.batch_outcomes.append(TRANSIENT)
    d = rig.dispatcher(p1)
    await d.start()
    d.pause("p1")  # they queue together
    for i in range(3):
        await rig.add(d, make_message(f"m{i}", text="same"))
    d.resume("p1")
    await until(lambda: d.held == 0)
    assert p1.batches[0] == ["m0", "m1", "m2"]
    assert all(rig.stored(f"m{i}").provider_message_id for i in range(3))
    assert all(rig.stored(f"m{i}").attempts >= 2 for i in range(3))
    assert d.breakers["p1"].failures == 0  # one failure, then successes


async def test_a_permanent_bulk_refusal_fails_each_destination_over(rig: Rig) -> None:
    p1 = BulkProvider("p1", max_batch=10)
    p1.batch_outcomes.append(PERMANENT)
    p1.gate = asyncio.Event()
    p2 = FakeProvider("p2")
    d = rig.dispatcher(p1, p2)
    await d.start()
    await rig.add(d, make_message("blocker", text="alone"))  # holds the one sender
    await until(lambda: d.where("blocker") == ("sending", "p1"))
    for i in range(3):
        await rig.add(d, make_message(f"m{i}", text="same", route=("p1", "p2")))
    p1.gate.set()
    await until(lambda: d.held == 0)
    assert p1.batches == [["m0", "m1", "m2"]]
    assert sorted(p2.sent_ids()) == ["m0", "m1", "m2"]
