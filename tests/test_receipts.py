"""The DLR flow: receipt text, registered_delivery rules, the report handler and the at-least-once
delivery queue (against the in-memory store of tests/fakes.py)."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Callable, Iterator, MutableMapping
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest
import structlog
from hypothesis import given
from hypothesis import strategies as st

import bridge.core.reports as reports_module
from bridge.core.delivery import DeliveryQueue
from bridge.core.model import (
    Address,
    DeliveryReport,
    InboundMessage,
    Message,
    MessageState,
    Receipt,
)
from bridge.core.receipts import receipts_for
from bridge.core.reports import ReportHandler
from bridge.core.store import DeliveryItem, StateChange, Store
from bridge.smpp.receipt_text import (
    format_receipt_text,
    parse_receipt_text,
    receipt_id_variants,
    stat_to_state,
)
from tests.harness.fakes import InMemoryStore, StoreError

SUBMITTED = datetime(2026, 11, 22, 10, 15, tzinfo=UTC).timestamp()
DONE = datetime(2026, 11, 22, 10, 17, 42, tzinfo=UTC).timestamp()
ESME = Address("4930123456")
HANDSET = Address("4915112345678")


def receipt(**overrides: Any) -> Receipt:
    values: dict[str, Any] = {
        "account": "demo",
        "message_id": "b7e2c9a0",
        "source": HANDSET,
        "destination": ESME,
        "state": MessageState.DELIVERED,
        "error_code": 0,
        "submitted_at": SUBMITTED,
        "done_at": DONE,
        "text_head": "Hello world",
    }
    values.update(overrides)
    return Receipt(**values)


def message(**overrides: Any) -> Message:
    values: dict[str, Any] = {
        "id": "m1",
        "account": "demo",
        "source": ESME,
        "destination": HANDSET,
        "text": "Your code is 123456. Do not share it.",
        "registered_delivery": 1,
        "part_ids": ["m1"],
        "created_at": SUBMITTED,
    }
    values.update(overrides)
    return Message(**values)


class Clock:
    def __init__(self, now: float = SUBMITTED) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def logs(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[MutableMapping[str, Any]]]:
    """Events logged by bridge.receipts (a fresh logger, so caching elsewhere cannot hide them)."""
    with structlog.testing.capture_logs() as captured:
        monkeypatch.setattr(reports_module, "log", structlog.get_logger("bridge.receipts"))
        yield captured


def test_fake_store_satisfies_the_protocol() -> None:
    store: Store = InMemoryStore()  # checked by mypy
    assert store.delivery_depth() == 0


# =========================================================================== receipt text

STATE_TEXTS = {
    MessageState.DELIVERED: ("DELIVRD", "001"),
    MessageState.EXPIRED: ("EXPIRED", "000"),
    MessageState.DELETED: ("DELETED", "000"),
    MessageState.UNDELIVERABLE: ("UNDELIV", "000"),
    MessageState.ACCEPTED: ("ACCEPTD", "000"),
    MessageState.UNKNOWN: ("UNKNOWN", "000"),
    MessageState.REJECTED: ("REJECTD", "000"),
    MessageState.ENROUTE: ("ENROUTE", "000"),
}


@pytest.mark.parametrize("state", list(MessageState))
def test_receipt_text_for_each_state(state: MessageState) -> None:
    stat, dlvrd = STATE_TEXTS[state]
    assert format_receipt_text(receipt(state=state)) == (
        f"id:b7e2c9a0 sub:001 dlvrd:{dlvrd} submit date:2611221015 done date:2611221017"
        f" stat:{stat} err:000 text:Hello world"
    )


@pytest.mark.parametrize(
    ("code", "err"),
    [
        (0, "000"),
        (5, "005"),
        (42, "042"),
        (999, "999"),
        (1000, "999"),
        (0x1F4F, "999"),
        (-3, "000"),
    ],
)
def test_err_is_three_digits_clamped(code: int, err: str) -> None:
    text = format_receipt_text(receipt(state=MessageState.UNDELIVERABLE, error_code=code))
    assert f" err:{err} text:" in text


def test_dates_are_utc_without_seconds() -> None:
    text = format_receipt_text(receipt(submitted_at=0.0, done_at=951782400.0 + 59.9))
    assert "submit date:7001010000 done date:0002290000" in text


@pytest.mark.parametrize(
    ("head", "shown"),
    [
        ("", ""),
        ("A" * 19 + "BCD", "A" * 19 + "B"),  # first 20 characters only
        ("Grüße aus Köln! 😀 ok", "Gru?e aus Koln! ? ok"),  # accents dropped, others '?'
        ("line1\nline2\ttab", "line1 line2 tab"),  # no control characters in a receipt
        ("a@b $5 x_y {[~]}\\^|`", "a?b ?5 x?y ?????????"),  # differ in GSM vs ASCII
        ("Привет", "??????"),
    ],
)
def test_text_head_is_truncated_and_ascii_safe(head: str, shown: str) -> None:
    text = format_receipt_text(receipt(text_head=head))
    assert text.endswith(" text:" + shown)
    assert text.isascii()


@given(
    message_id=st.text("0123456789abcdefABCDEF-", min_size=1, max_size=64),
    state=st.sampled_from(list(MessageState)),
    err=st.integers(0, 999),
    head=st.text(max_size=40),
    submitted=st.integers(946684800, 4102444000),  # 2000-01-01 .. 2099-12-31
)
def test_format_then_parse_round_trips(
    message_id: str, state: MessageState, err: int, head: str, submitted: int
) -> None:
    r = receipt(
        message_id=message_id,
        state=state,
        error_code=err,
        text_head=head,
        submitted_at=float(submitted),
        done_at=float(submitted + 90),
    )
    parsed = parse_receipt_text(format_receipt_text(r))
    assert parsed is not None
    assert parsed.id == message_id
    assert parsed.state is state
    assert parsed.err == err
    assert parsed.sub == 1
    assert parsed.dlvrd == (1 if state is MessageState.DELIVERED else 0)
    assert parsed.submit_date == submitted - submitted % 60
    assert parsed.done_date == (submitted + 90) - (submitted + 90) % 60
    assert parsed.text is not None and len(parsed.text) == min(len(head), 20)


# =========================================================================== parser


def test_parse_spec_example() -> None:
    parsed = parse_receipt_text(
        "id:IIIIIIIIII sub:001 dlvrd:001 submit date:0610191018 done date:0610191018"
        " stat:DELIVRD err:000 text:..."
    )
    assert parsed is not None
    assert parsed.id == "IIIIIIIIII"
    assert (parsed.sub, parsed.dlvrd) == (1, 1)
    expected = datetime(2006, 10, 19, 10, 18, tzinfo=UTC).timestamp()
    assert parsed.submit_date == parsed.done_date == expected
    assert (parsed.stat, parsed.state, parsed.err, parsed.err_raw) == (
        "DELIVRD",
        MessageState.DELIVERED,
        0,
        "000",
    )
    assert parsed.text == "..."
    assert not parsed.intermediate


def test_parse_twelve_digit_dates() -> None:
    parsed = parse_receipt_text(
        "id:42 sub:001 dlvrd:000 submit date:261122101503 done date:261122101759 stat:UNDELIV"
        " err:001 text:x"
    )
    assert parsed is not None
    assert parsed.submit_date == datetime(2026, 11, 22, 10, 15, 3, tzinfo=UTC).timestamp()
    assert parsed.done_date == datetime(2026, 11, 22, 10, 17, 59, tzinfo=UTC).timestamp()
    assert parsed.state is MessageState.UNDELIVERABLE


def test_parse_hex_id_and_capital_text() -> None:
    parsed = parse_receipt_text(
        "id:0A1B2C3D4E sub:001 dlvrd:001 submit date:2611221015 done date:2611221017"
        " stat:DELIVRD err:000 Text:Hello: world stat:x"
    )
    assert parsed is not None
    assert parsed.id == "0A1B2C3D4E"  # ids are kept as given
    assert parsed.text == "Hello: world stat:x"  # field names inside the text do not count
    assert parsed.state is MessageState.DELIVERED


def test_receipt_id_variants_cover_hex_decimal_and_leading_zeros() -> None:
    assert receipt_id_variants("0A1B") == ["0A1B", "A1B", "2587"]
    assert receipt_id_variants("00255") == ["00255", "255", "ff", "FF", "597"]
    assert receipt_id_variants("msg-1") == ["msg-1"]


def test_parse_missing_text_and_fields() -> None:
    parsed = parse_receipt_text("id:77 stat:EXPIRED err:000")
    assert parsed is not None
    assert (parsed.id, parsed.state, parsed.text) == ("77", MessageState.EXPIRED, None)
    assert parsed.sub is parsed.dlvrd is parsed.submit_date is parsed.done_date is None
    bare, empty = (
        parse_receipt_text("id:77 stat:DELIVRD"),
        parse_receipt_text("id:77 stat:DELIVRD text:"),
    )
    assert bare is not None and empty is not None
    assert (bare.text, empty.text) == (None, "")
    assert replace(bare, text="") == empty


def test_parse_any_order_and_variants() -> None:
    parsed = parse_receipt_text(
        "stat:delivrd ERR:0x1F text:hi there submit_date:2611221015 id:abc Done Date:2611221017"
    )
    assert parsed is not None
    assert parsed.id == "abc"
    assert parsed.state is MessageState.DELIVERED
    assert parsed.err == 31
    assert parsed.text == "hi there"  # stops at a field not seen before it
    assert parsed.submit_date == SUBMITTED


@pytest.mark.parametrize(
    ("err", "value"),
    [("000", 0), ("0012", 12), ("1234", 1234), ("1F", 31), ("0x0B", 11), ("zz", None)],
)
def test_parse_err_forms(err: str, value: int | None) -> None:
    parsed = parse_receipt_text(f"id:1 stat:UNDELIV err:{err}")
    assert parsed is not None and parsed.err == value and parsed.err_raw == err


@pytest.mark.parametrize(
    ("word", "state", "intermediate"),
    [
        ("ACKED", MessageState.ENROUTE, True),
        ("BUFFRED", MessageState.ENROUTE, True),
        ("BUFFERD", MessageState.ENROUTE, True),
        ("ENROUTE", MessageState.ENROUTE, True),
        ("FAILED", MessageState.UNDELIVERABLE, False),
        ("REJECTD", MessageState.REJECTED, False),
        ("ACCEPTD", MessageState.ACCEPTED, False),
        ("WHATEVER", None, False),
    ],
)
def test_vendor_stat_words(word: str, state: MessageState | None, intermediate: bool) -> None:
    assert stat_to_state(word) is state
    assert stat_to_state(word.lower()) is state
    parsed = parse_receipt_text(f"id:9 sub:001 dlvrd:000 stat:{word} err:000 text:")
    assert parsed is not None
    assert parsed.stat == word
    assert parsed.state is state
    assert parsed.intermediate is intermediate


@pytest.mark.parametrize(
    "text", ["", "hello world", "sub:001 dlvrd:000", "identity:5 status:x", "text:id:1"]
)
def test_parse_not_a_receipt(text: str) -> None:
    assert parse_receipt_text(text) is None


def test_parse_bad_dates_are_none() -> None:
    parsed = parse_receipt_text("id:1 submit date:2613321015 done date:26112210 stat:DELIVRD")
    assert parsed is not None
    assert parsed.submit_date is None and parsed.done_date is None


# =========================================================================== which receipts

D, U, E = MessageState.DELIVERED, MessageState.UNDELIVERABLE, MessageState.ENROUTE
RULES = {
    0x00: {D: False, U: False, E: False},
    0x01: {D: True, U: True, E: False},
    0x02: {D: False, U: True, E: False},
    0x10: {D: False, U: False, E: True},
    0x11: {D: True, U: True, E: True},
    0x12: {D: False, U: True, E: True},
    0x1C: {D: False, U: False, E: True},  # SME ack bits do not ask for SMSC receipts
    0x03: {D: False, U: False, E: False},  # reserved
}


@pytest.mark.parametrize(
    ("registered", "state"), [(reg, state) for reg in RULES for state in (D, U, E)]
)
def test_registered_delivery_rules(registered: int, state: MessageState) -> None:
    got = receipts_for(message(registered_delivery=registered), state, done_at=DONE)
    assert bool(got) is RULES[registered][state]
    for r in got:
        assert r.intermediate is (state is E)


@pytest.mark.parametrize(
    ("state", "wanted"),
    [
        (MessageState.ACCEPTED, False),  # taken by a provider that never reports: no failure
        (MessageState.DELIVERED, False),
        (MessageState.UNDELIVERABLE, True),
        (MessageState.EXPIRED, True),
        (MessageState.REJECTED, True),
        (MessageState.DELETED, True),
        (MessageState.UNKNOWN, True),
    ],
)
def test_failure_only_receipts_skip_delivered_and_accepted(
    state: MessageState, wanted: bool
) -> None:
    got = receipts_for(message(registered_delivery=2), state, done_at=DONE)
    assert bool(got) is wanted


def test_accepted_is_intermediate_only_when_told() -> None:
    msg = message(registered_delivery=0x10)
    assert receipts_for(msg, MessageState.ACCEPTED, done_at=DONE) == []
    (r,) = receipts_for(msg, MessageState.ACCEPTED, done_at=DONE, intermediate=True)
    assert r.intermediate
    # a final failure is never silenced by a wrong flag
    (r,) = receipts_for(message(registered_delivery=2), U, done_at=DONE, intermediate=True)
    assert not r.intermediate


def test_one_receipt_per_part_travelling_back() -> None:
    msg = message(id="m7", part_ids=["m7", "m7-2", "m7-3"], text="x" * 300)
    got = receipts_for(msg, U, done_at=DONE, error_code=34, network_error=(3, 34))
    assert [r.message_id for r in got] == ["m7", "m7-2", "m7-3"]
    for r in got:
        assert (r.account, r.source, r.destination) == ("demo", HANDSET, ESME)
        assert (r.state, r.error_code, r.network_error) == (U, 34, (3, 34))
        assert (r.submitted_at, r.done_at, r.text_head) == (SUBMITTED, DONE, "x" * 20)


def test_receipt_ids_default_to_the_message_id_and_binary_has_no_text() -> None:
    (r,) = receipts_for(message(id="solo", part_ids=[], text=None, binary=b"\x01"), D, done_at=DONE)
    assert (r.message_id, r.text_head) == ("solo", "")


# =========================================================================== report handler


class Wakes:
    def __init__(self) -> None:
        self.accounts: list[str] = []

    def __call__(self, account: str) -> None:
        self.accounts.append(account)


async def stored(store: InMemoryStore, **overrides: Any) -> Message:
    msg = message(provider="prov", provider_message_id="p-" + overrides.get("id", "m1"))
    msg = replace(msg, **overrides)
    await store.add_message(msg)
    assert msg.provider_message_id is not None
    await store.correlate("prov", msg.provider_message_id, msg.id, expires_at=SUBMITTED + 86400)
    return msg


def queued(store: InMemoryStore, account: str = "demo") -> list[Receipt | InboundMessage]:
    return [d.item for d in store.pending_deliveries_now(account)]


async def test_report_updates_message_and_queues_receipts() -> None:
    store, clock, wakes = InMemoryStore(), Clock(DONE + 5), Wakes()
    await stored(store, part_ids=["m1", "m1-2"])
    handler = ReportHandler(store, clock, wakes)
    report = DeliveryReport("prov", "p-m1", D, done_at=DONE, network_error=(1, 0))
    assert await handler.on_report(report) is True
    got = store.get_message_now("m1-2")
    assert got is not None
    assert (got.state, got.done_at, got.error_code) == (D, DONE, 0)
    assert store.history_now("m1") == [StateChange("m1", D, DONE + 5, "report from prov")]
    items = queued(store)
    assert [r.message_id for r in items if isinstance(r, Receipt)] == ["m1", "m1-2"]
    assert all(isinstance(r, Receipt) and r.network_error == (1, 0) for r in items)
    assert store.pending_deliveries_now("demo")[0].enqueued_at == DONE + 5
    assert wakes.accounts == ["demo"]


async def test_a_report_that_comes_before_its_correlation_applies_once_correlated() -> None:
    store, clock = InMemoryStore(), Clock(DONE)
    msg = message(provider="prov", provider_message_id="p-m1", registered_delivery=1)
    await store.add_message(msg)
    handler = ReportHandler(store, clock)
    assert await handler.on_report(DeliveryReport("prov", "p-m1", D)) is False
    assert queued(store) == []
    await store.correlate("prov", "p-m1", msg.id, expires_at=DONE + 86400)
    assert await handler.correlated("prov", "p-m1")
    (r,) = queued(store)
    assert isinstance(r, Receipt) and r.state == D
    assert handler.unknown_reports == 0
    assert handler.correlated("prov", "p-m1") is None


async def test_report_failure_carries_error_and_defaults_done_at_to_now() -> None:
    store, clock = InMemoryStore(), Clock(DONE)
    await stored(store, registered_delivery=2)
    handler = ReportHandler(store, clock)
    assert await handler.on_report(DeliveryReport("prov", "p-m1", U, error_code=1103))
    (r,) = queued(store)
    assert isinstance(r, Receipt)
    assert (r.state, r.error_code, r.done_at) == (U, 1103, DONE)
    assert " stat:UNDELIV err:999 " in format_receipt_text(r)
    got = store.get_message_now("m1")
    assert got is not None and got.error_code == 1103


async def test_unknown_report_is_counted_and_logged_once_its_wait_is_over(
    logs: list[MutableMapping[str, Any]],
) -> None:
    store, clock = InMemoryStore(), Clock()
    handler = ReportHandler(store, clock, early_ttl=60)
    assert await handler.on_report(DeliveryReport("prov", "nope", D)) is False
    assert (handler.early_reports, handler.unknown_reports) == (1, 0)
    clock.now += 61
    assert await handler.on_report(DeliveryReport("prov", "other", D)) is False
    assert handler.unknown_reports == 1
    (event,) = [e for e in logs if e["event"] == "report_unknown"]
    assert event["log_level"] == "info"
    assert (event["provider"], event["provider_message_id"]) == ("prov", "nope")
    assert store.delivery_depth() == 0


async def test_report_for_a_deleted_message_is_unknown() -> None:
    store = InMemoryStore()
    await stored(store)
    await store.delete_message("m1")
    handler = ReportHandler(store, Clock())
    assert await handler.on_report(DeliveryReport("prov", "p-m1", D)) is False
    assert handler.unknown_reports == 1


async def test_duplicate_final_report_is_idempotent() -> None:
    store, wakes = InMemoryStore(), Wakes()
    await stored(store)
    handler = ReportHandler(store, Clock(), wakes)
    report = DeliveryReport("prov", "p-m1", D, done_at=DONE)
    assert await handler.on_report(report)
    assert await handler.on_report(report)  # resent: known, nothing changes
    assert await handler.on_report(replace(report, state=U))  # a contradicting late report
    assert len(queued(store)) == 1
    assert len(store.history_now("m1")) == 1
    got = store.get_message_now("m1")
    assert got is not None and got.state is D
    assert handler.duplicate_reports == 2
    assert wakes.accounts == ["demo"]


async def test_concurrent_copies_of_a_report_queue_one_receipt() -> None:
    store = InMemoryStore()
    await stored(store)
    handler = ReportHandler(store, Clock())
    report = DeliveryReport("prov", "p-m1", D)
    results = await asyncio.gather(*(handler.on_report(report) for _ in range(5)))
    assert results == [True] * 5
    assert len(queued(store)) == 1
    assert handler.duplicate_reports == 4


async def test_intermediate_reports() -> None:
    store, wakes = InMemoryStore(), Wakes()
    await stored(store, registered_delivery=0x11)
    handler = ReportHandler(store, Clock(), wakes)
    enroute = DeliveryReport("prov", "p-m1", E)
    assert await handler.on_report(enroute)
    assert await handler.on_report(enroute)  # same progress step again: no second receipt
    got = store.get_message_now("m1")
    assert got is not None and got.state is E and got.done_at is None
    assert await handler.on_report(DeliveryReport("prov", "p-m1", D, done_at=DONE))
    items = queued(store)
    assert [(r.state, r.intermediate) for r in items if isinstance(r, Receipt)] == [
        (E, True),
        (D, False),
    ]
    assert [c.state for c in store.history_now("m1")] == [E, D]


async def test_no_receipt_requested_still_records_the_outcome() -> None:
    store, wakes = InMemoryStore(), Wakes()
    await stored(store, registered_delivery=0)
    handler = ReportHandler(store, Clock(), wakes)
    assert await handler.on_report(DeliveryReport("prov", "p-m1", U, error_code=1))
    got = store.get_message_now("m1")
    assert got is not None and got.state is U
    assert store.delivery_depth() == 0 and wakes.accounts == []


async def test_a_report_whose_write_fails_is_retried_until_stored_and_loses_no_receipt() -> None:
    """A full disk (here: a failing update) must not lose the report: the message is left as it
    was, the work is tried again, and the caller's answer comes once it is on disk."""

    class FailingUpdate(InMemoryStore):
        fail_update = True

        async def update_message(
            self, message: Message, change: StateChange | None = None, **kw: Any
        ) -> None:
            if self.fail_update:
                raise StoreError("disk full")
            await super().update_message(message, change, **kw)

    store = FailingUpdate()
    await stored(store)
    handler = ReportHandler(store, Clock(), retry_delay=0.02)
    pending = handler.on_report(DeliveryReport("prov", "p-m1", D))
    while handler.store_retries < 2:
        await asyncio.sleep(0.005)
    got = store.get_message_now("m1")
    assert got is not None and got.state is E  # not final in memory while not final on disk
    assert not pending.done()
    store.fail_update = False
    assert await asyncio.wait_for(pending, 2.0) is True
    got = store.get_message_now("m1")
    assert got is not None and got.state is D
    assert len(queued(store)) >= 1  # at least once: duplicates allowed, never a loss


async def test_finish_by_the_bridge() -> None:
    store, clock, wakes = InMemoryStore(), Clock(DONE), Wakes()
    msg = message(id="m2", part_ids=["m2"])
    await store.add_message(msg)
    handler = ReportHandler(store, clock, wakes)
    assert await handler.finish(msg, MessageState.EXPIRED, 0x62, "validity passed") is True
    assert (msg.state, msg.error_code, msg.done_at) == (MessageState.EXPIRED, 0x62, DONE)
    got = store.get_message_now("m2")
    assert got is not None and got.state is MessageState.EXPIRED
    assert store.history_now("m2") == [
        StateChange("m2", MessageState.EXPIRED, DONE, "validity passed")
    ]
    (r,) = queued(store)
    assert isinstance(r, Receipt) and r.state is MessageState.EXPIRED and r.error_code == 0x62
    assert wakes.accounts == ["demo"]
    # already final: nothing more
    assert await handler.finish(msg, MessageState.REJECTED) is False
    assert len(queued(store)) == 1


async def test_finish_loses_the_race_to_a_report() -> None:
    store = InMemoryStore()
    msg = await stored(store)
    handler = ReportHandler(store, Clock())
    assert await handler.on_report(DeliveryReport("prov", "p-m1", D))
    assert await handler.finish(msg, MessageState.EXPIRED) is False  # msg is a stale copy
    got = store.get_message_now("m1")
    assert got is not None and got.state is D
    assert len(queued(store)) == 1


async def test_finish_for_an_unstored_incomplete_message_only_queues_receipts() -> None:
    store = InMemoryStore()
    msg = message(id="r1", part_ids=["r1", "r2"], registered_delivery=2)
    handler = ReportHandler(store, Clock())
    assert await handler.finish(msg, MessageState.UNDELIVERABLE, 0x0A, "incomplete")
    assert [r.message_id for r in queued(store) if isinstance(r, Receipt)] == ["r1", "r2"]
    assert store.get_message_now("r1") is None


# =========================================================================== delivery queue


class FakeSender:
    """An ESME side: ``decide(item)`` answers each send (default: acknowledge).

    Records every answer, checks that no item is ever sent twice at once, and tracks the largest
    number of concurrent sends. While ``gate`` is set to an unset Event, sends wait for it.
    """

    def __init__(self, *accounts: str) -> None:
        self.receivers = set(accounts)
        self.decide: Callable[[Receipt | InboundMessage], bool | None] = lambda item: True
        self.answers: list[tuple[str, Receipt | InboundMessage, bool | None]] = []
        self.current: set[int] = set()
        self.max_concurrent = 0
        self.gate: asyncio.Event | None = None
        self.yields = 0  # extra event-loop turns per send (randomised in the stress test)
        self.calls = 0
        self.tasks: set[asyncio.Future[None]] = set()

    def has_receiver(self, account: str) -> bool:
        return account in self.receivers

    async def send(self, account: str, item: Receipt | InboundMessage) -> bool | None:
        self.calls += 1
        key = id(item)
        assert key not in self.current, f"{item} sent twice at once"
        self.current.add(key)
        self.max_concurrent = max(self.max_concurrent, len(self.current))
        try:
            if self.gate is not None:
                await self.gate.wait()
            for _ in range(self.yields):
                await asyncio.sleep(0)
            answer = self.decide(item) if account in self.receivers else None
            self.answers.append((account, item, answer))
            return answer
        finally:
            self.current.discard(key)

    def send_nowait(
        self, account: str, item: Receipt | InboundMessage, done: Any, arg: Any
    ) -> bool:
        """The real sender's shape over :meth:`send` (a task per send is fine in a test)."""

        async def run() -> None:
            try:
                result: bool | BaseException | None = await self.send(account, item)
            except Exception as exc:
                result = exc
            done(arg, result)

        task = asyncio.ensure_future(run())
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return True

    def acked(self) -> list[Receipt | InboundMessage]:
        return [item for _, item, answer in self.answers if answer is True]


def mo(n: int, account: str = "demo") -> InboundMessage:
    return InboundMessage(account, HANDSET, ESME, f"mo {n}", received_at=SUBMITTED)


async def fill(
    store: InMemoryStore, n: int, account: str = "demo", at: float = SUBMITTED
) -> list[InboundMessage]:
    items = [mo(i, account) for i in range(n)]
    await store.enqueue_deliveries([(account, i) for i in items], at=at)
    return items


def make_queue(
    store: InMemoryStore, sender: FakeSender, clock: Clock | None = None, **kw: Any
) -> DeliveryQueue:
    kw.setdefault("retry_delay", 0.01)
    return DeliveryQueue(store, sender, clock or Clock(), **kw)


async def test_delivered_in_order_and_removed_on_ack() -> None:
    store, sender = InMemoryStore(), FakeSender("demo")
    items = await fill(store, 5)
    queue = make_queue(store, sender, window=1)
    queue.start()
    try:
        assert await queue.drain(2.0)
    finally:
        await queue.stop()
    assert sender.acked() == items
    assert queue.acked == 5 and store.delivery_depth() == 0


async def test_removed_only_on_ack_and_retried_on_refusal_and_no_answer() -> None:
    store, sender = InMemoryStore(), FakeSender("demo")
    (item,) = await fill(store, 1)
    answers = iter([False, None, False])
    sender.decide = lambda _: next(answers, True)
    queue = make_queue(store, sender)
    queue.start()
    try:
        while sender.calls < 3:
            await asyncio.sleep(0.001)
        assert store.delivery_depth() == 1  # never dropped while unacknowledged
        assert await queue.drain(2.0)
    finally:
        await queue.stop()
    assert [a for _, _, a in sender.answers] == [False, None, False, True]
    assert (queue.refused, queue.not_sent, queue.acked) == (2, 1, 1)
    assert sender.acked() == [item]


async def test_attempts_are_noted_and_persistent_refusal_is_kept_and_logged(
    logs: list[MutableMapping[str, Any]],
) -> None:
    store, sender = InMemoryStore(), FakeSender("demo")
    await fill(store, 1)
    sender.decide = lambda _: False
    queue = make_queue(store, sender, retry_delay=0.001, warn_after=3)
    queue.start()
    try:
        while queue.refused < 6:
            await asyncio.sleep(0.001)
    finally:
        await queue.stop()
    (pending,) = store.pending_deliveries_now("demo")
    assert pending.attempts >= 6
    warnings = [e for e in logs if e["event"] == "delivery_refused_repeatedly"]
    assert [e["attempts"] for e in warnings][:2] == [3, 6]
    assert all(e["kept"] is True and e["log_level"] == "warning" for e in warnings)


async def test_sender_exception_counts_as_not_sent() -> None:
    store, sender = InMemoryStore(), FakeSender("demo")
    (item,) = await fill(store, 1)
    calls = iter([True])

    def decide(_: object) -> bool:
        if next(calls, False):
            raise ConnectionResetError("boom")
        return True

    sender.decide = decide
    queue = make_queue(store, sender)
    queue.start()
    try:
        assert await queue.drain(2.0)
    finally:
        await queue.stop()
    assert queue.not_sent == 1 and sender.acked() == [item]


async def test_store_error_does_not_lose_the_item() -> None:
    store, sender = InMemoryStore(), FakeSender("demo")
    (item,) = await fill(store, 1)
    sender.decide = lambda _: None if sender.calls == 1 else True
    store.fail_writes = 1  # note_delivery_attempt fails
    queue = make_queue(store, sender, max_age=None)
    queue.start()
    try:
        assert await queue.drain(2.0)
    finally:
        await queue.stop()
    assert sender.acked() == [item]


async def test_held_while_no_receiver_then_delivered_after_wake() -> None:
    store, sender = InMemoryStore(), FakeSender()
    items = await fill(store, 3)
    queue = make_queue(store, sender)
    queue.start()
    try:
        queue.wake("demo")  # nobody bound: nothing happens
        await asyncio.sleep(0.05)
        assert sender.calls == 0 and store.delivery_depth() == 3
        sender.receivers.add("demo")
        queue.wake("demo")  # a receiver bound
        assert await queue.drain(2.0)
    finally:
        await queue.stop()
    assert sender.acked() == items


async def test_receiver_lost_midway_keeps_items_until_rebind() -> None:
    store, sender = InMemoryStore(), FakeSender("demo")
    items = await fill(store, 10)

    def decide(item: Receipt | InboundMessage) -> bool | None:
        if item is items[4]:  # the connection drops while this one is sent
            sender.receivers.discard("demo")
            return None
        return True

    sender.decide = decide
    queue = make_queue(store, sender, window=1)
    queue.start()
    try:
        while sender.calls < 5 or queue.in_flight():
            await asyncio.sleep(0.001)
        await asyncio.sleep(0.03)
        assert sender.calls == 5  # no sends without a receiver
        assert store.delivery_depth() == 6
        sender.decide = lambda _: True
        sender.receivers.add("demo")
        queue.wake("demo")
        assert await queue.drain(2.0)
    finally:
        await queue.stop()
    assert sender.acked() == items


async def test_new_items_after_idle_are_sent_on_wake() -> None:
    store, sender = InMemoryStore(), FakeSender("demo")
    queue = make_queue(store, sender)
    queue.start()
    try:
        first = await fill(store, 2)
        queue.wake("demo")
        assert await queue.drain(2.0)
        second = await fill(store, 2)
        queue.wake("demo")
        assert await queue.drain(2.0)
    finally:
        await queue.stop()
    assert sender.acked() == first + second


async def test_window_is_respected() -> None:
    store, sender = InMemoryStore(), FakeSender("demo")
    await fill(store, 50)
    sender.gate = asyncio.Event()
    queue = make_queue(store, sender, window=8)
    queue.start()
    try:
        while queue.in_flight("demo") < 8:
            await asyncio.sleep(0.001)
        await asyncio.sleep(0.02)
        assert sender.max_concurrent == 8 and queue.in_flight() == 8
        sender.gate.set()
        assert await queue.drain(2.0)
    finally:
        await queue.stop()
    assert sender.max_concurrent == 8
    assert len(sender.acked()) == 50


async def test_accounts_are_independent() -> None:
    store, sender = InMemoryStore(), FakeSender("a")
    a_items = await fill(store, 3, "a")
    await fill(store, 3, "b")
    queue = make_queue(store, sender)
    queue.start()  # resumes both accounts found in the store
    try:
        assert await queue.drain(2.0, "a")
        assert store.delivery_depth("b") == 3
        assert not await queue.drain(0.02)
    finally:
        await queue.stop()
    assert sender.acked() == a_items


async def test_expiry_drops_old_items_and_logs(logs: list[MutableMapping[str, Any]]) -> None:
    store, sender, clock = InMemoryStore(), FakeSender(), Clock(SUBMITTED)
    await fill(store, 2, at=SUBMITTED)
    clock.now = SUBMITTED + 100
    fresh = await fill(store, 1, at=clock.now)
    queue = make_queue(store, sender, clock, max_age=50, expire_interval=0.01)
    queue.start()
    try:
        while queue.expired < 2:
            await asyncio.sleep(0.001)
        assert store.delivery_depth() == 1
        sender.receivers.add("demo")
        queue.wake("demo")
        assert await queue.drain(2.0)
    finally:
        await queue.stop()
    assert sender.acked() == fresh
    assert any(e["event"] == "deliveries_expired" and e["count"] == 2 for e in logs)


async def test_an_expired_item_waiting_for_retry_is_not_resent() -> None:
    store, sender, clock = InMemoryStore(), FakeSender("demo"), Clock(SUBMITTED)
    await fill(store, 1)
    sender.decide = lambda _: False
    queue = make_queue(store, sender, clock, retry_delay=0.05, max_age=60, expire_interval=3600)
    queue.start()
    try:
        while sender.calls < 1 or queue.in_flight():
            await asyncio.sleep(0.001)
        clock.now += 61
        assert await queue.expire_now() == 1
        await asyncio.sleep(0.1)
    finally:
        await queue.stop()
    assert sender.calls == 1


async def test_stop_leaves_in_flight_items_queued() -> None:
    store, sender = InMemoryStore(), FakeSender("demo")
    await fill(store, 3)
    sender.gate = asyncio.Event()
    queue = make_queue(store, sender)
    queue.start()
    while queue.in_flight() < 3:
        await asyncio.sleep(0.001)
    await queue.stop()
    assert store.delivery_depth() == 3 and queue.in_flight() == 0
    queue.wake("demo")  # stopped: ignored
    assert sender.calls == 3


@pytest.mark.parametrize("seed", range(25))
async def test_no_item_lost_or_duplicated_under_random_answers(seed: int) -> None:
    rng = random.Random(seed)
    store, sender = InMemoryStore(), FakeSender("a", "b")
    accounts = ["a", "b"]
    sender.decide = lambda _: rng.choice([True, True, False, None])
    sender.yields = 2
    queue = make_queue(store, sender, window=rng.randint(1, 6), retry_delay=0.0005)
    queue.start()
    expected: Counter[int] = Counter()
    alive: list[InboundMessage] = []  # keeps id() values unique
    try:
        for _round in range(rng.randint(3, 8)):
            account = rng.choice(accounts)
            items = await fill(store, rng.randint(1, 15), account)
            alive.extend(items)
            expected.update(id(i) for i in items)
            queue.wake(account)
            for _ in range(rng.randint(0, 5)):
                await asyncio.sleep(0)
            if rng.random() < 0.4:  # a receiver unbinds, then binds again
                gone = rng.choice(accounts)
                sender.receivers.discard(gone)
                for _ in range(rng.randint(0, 10)):
                    await asyncio.sleep(0)
                sender.receivers.add(gone)
                queue.wake(gone)
        assert await queue.drain(5.0), f"left: {store.delivery_depth()}"
    finally:
        await queue.stop()
    acked = Counter(id(item) for item in sender.acked())
    assert acked == expected  # every item acknowledged exactly once


async def test_a_failed_queue_read_is_retried() -> None:
    class FlakyReads(InMemoryStore):
        failures = 2

        async def pending_deliveries(
            self, account: str, limit: int = 1000, after: int = 0
        ) -> list[DeliveryItem]:
            if self.failures:
                self.failures -= 1
                raise StoreError("database is locked")
            return await super().pending_deliveries(account, limit, after)

    store, sender = FlakyReads(), FakeSender("demo")
    items = await fill(store, 3)
    queue = make_queue(store, sender)
    queue.start()
    try:
        assert await queue.drain(2.0)
    finally:
        await queue.stop()
    assert sender.acked() == items
