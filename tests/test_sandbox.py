"""Sandbox provider: accepts and reports DELIVRD by default; each opt-in rule produces its
outcome or report; stop() drops pending timers and poll() recovers them."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from bridge.core.model import (
    Address,
    DeliveryReport,
    InboundMessage,
    Message,
    MessageState,
    OutcomeKind,
)
from bridge.core.provider import Capabilities
from bridge.providers.sandbox import (
    CAPABILITIES,
    ID_PREFIX,
    SandboxOutcome,
    SandboxProvider,
    SandboxRule,
)


def msg(dest: str = "4915112345678", id: str = "m1") -> Message:
    return Message(
        id=id, account="demo", source=Address("Bridge", 5, 0), destination=Address(dest), text="hi"
    )


class Sink:
    def __init__(self) -> None:
        self.reports: list[DeliveryReport] = []
        self.arrived = asyncio.Event()

    async def __call__(self, report: DeliveryReport) -> bool:
        self.reports.append(report)
        self.arrived.set()
        return True

    async def wait(self, count: int = 1, timeout: float = 2.0) -> None:
        async with asyncio.timeout(timeout):
            while len(self.reports) < count:
                self.arrived.clear()
                await self.arrived.wait()


async def no_inbound(_: InboundMessage) -> None:
    raise AssertionError("the sandbox has no inbound traffic")


async def started(**kw: Any) -> tuple[SandboxProvider, Sink]:
    kw.setdefault("delay", 0.01)
    kw.setdefault("clock", lambda: 1234.5)
    provider = SandboxProvider(**kw)
    sink = Sink()
    await provider.start(sink, no_inbound)
    return provider, sink


async def test_default_accepts_and_reports_delivered() -> None:
    provider, sink = await started()
    outcome = await provider.send(msg())
    assert outcome.kind is OutcomeKind.ACCEPTED
    assert outcome.provider_message_id is not None
    assert outcome.provider_message_id.startswith(ID_PREFIX)
    await sink.wait()
    [report] = sink.reports
    assert report == DeliveryReport("sandbox", outcome.provider_message_id, MessageState.DELIVERED,
                                    done_at=1234.5)  # fmt: skip
    assert provider.pending_reports == 0
    await provider.stop()


async def test_ids_are_unique_across_instances() -> None:
    a, _ = await started(delay=60)
    b, _ = await started(delay=60)
    ids = {(await p.send(msg(id=str(i)))).provider_message_id for p in (a, b) for i in range(50)}
    assert len(ids) == 100
    await a.stop()
    await b.stop()


@pytest.mark.parametrize(
    ("outcome", "state"),
    [
        ("DELIVRD", MessageState.DELIVERED),
        ("UNDELIV", MessageState.UNDELIVERABLE),
        ("EXPIRED", MessageState.EXPIRED),
        ("REJECTD", MessageState.REJECTED),
    ],
)
async def test_report_rules(outcome: SandboxOutcome, state: MessageState) -> None:
    provider, sink = await started(rules=[SandboxRule("13", outcome, error_code=42)])
    sent = await provider.send(msg("4915100000013"))
    assert sent.kind is OutcomeKind.ACCEPTED
    await sink.wait()
    assert sink.reports[0].state is state
    assert sink.reports[0].error_code == (0 if state is MessageState.DELIVERED else 42)
    await provider.stop()


async def test_permanent_rule_refuses_at_send() -> None:
    provider, sink = await started(rules=[SandboxRule("66", "permanent", error_code=9)])
    outcome = await provider.send(msg("4915100000066"))
    assert outcome.kind is OutcomeKind.PERMANENT
    assert outcome.error_code == 9
    await asyncio.sleep(0.05)
    assert sink.reports == [] and provider.pending_reports == 0


async def test_transient_rule_always_fails() -> None:
    provider, _ = await started(rules=[SandboxRule("77", "transient")])
    for _ in range(3):
        assert (await provider.send(msg("4915100000077"))).kind is OutcomeKind.TRANSIENT
    # other destinations are unaffected
    assert (await provider.send(msg("4915100000078"))).kind is OutcomeKind.ACCEPTED
    await provider.stop()


async def test_transient_then_delivered_rule() -> None:
    provider, sink = await started(rules=[SandboxRule("88", "transient_then_delivrd")])
    first = await provider.send(msg("4915100000088", id="a"))
    other = await provider.send(msg("4915100000088", id="b"))  # per message, not global
    second = await provider.send(msg("4915100000088", id="a"))
    assert first.kind is OutcomeKind.TRANSIENT
    assert other.kind is OutcomeKind.TRANSIENT
    assert second.kind is OutcomeKind.ACCEPTED
    await sink.wait()
    assert sink.reports[0].state is MessageState.DELIVERED
    await provider.stop()


async def test_first_matching_rule_applies() -> None:
    rules = [SandboxRule("123", "UNDELIV"), SandboxRule("3", "REJECTD")]
    provider, sink = await started(rules=rules)
    await provider.send(msg("4915100000123", id="a"))
    await sink.wait()
    await provider.send(msg("4915100000003", id="b"))
    await sink.wait(2)
    assert [r.state for r in sink.reports] == [MessageState.UNDELIVERABLE, MessageState.REJECTED]
    await provider.stop()


async def test_stop_cancels_pending_reports() -> None:
    provider, sink = await started(delay=30)
    await provider.send(msg())
    assert provider.pending_reports == 1
    await provider.stop()
    assert provider.pending_reports == 0
    await asyncio.sleep(0.02)
    assert sink.reports == []


def _taken(message: Message, provider_id: str | None) -> Message:
    message.provider = "sandbox"
    message.provider_message_id = provider_id
    return message


async def test_poll_recovers_reports_after_a_restart() -> None:
    old, _ = await started(delay=30, rules=[SandboxRule("5", "UNDELIV", error_code=3)])
    a = _taken(msg(id="a"), (await old.send(msg(id="a"))).provider_message_id)
    b = _taken(msg("4915100000005", id="b"), (await old.send(msg("4915100000005", id="b")))
               .provider_message_id)  # fmt: skip
    await old.stop()  # the process dies: its timers are gone

    new, sink = await started(delay=30, rules=[SandboxRule("5", "UNDELIV", error_code=3)])
    foreign = _taken(msg(id="c"), "other-provider-id")
    reports = await new.poll([a, b, foreign, _taken(msg(id="d"), None)])
    assert [(r.provider_message_id, r.state, r.error_code) for r in reports] == [
        (a.provider_message_id, MessageState.DELIVERED, 0),
        (b.provider_message_id, MessageState.UNDELIVERABLE, 3),
    ]
    assert all(r.done_at == 1234.5 and r.provider == "sandbox" for r in reports)
    assert sink.reports == []
    await new.stop()


async def test_poll_cancels_the_pending_timer() -> None:
    provider, sink = await started(delay=0.05)
    message = _taken(msg(), (await provider.send(msg())).provider_message_id)
    assert len(await provider.poll([message])) == 1
    assert provider.pending_reports == 0
    await asyncio.sleep(0.1)
    assert sink.reports == []  # not reported twice


async def test_send_before_start_is_accepted_without_report() -> None:
    provider = SandboxProvider(delay=0)
    assert (await provider.send(msg())).kind is OutcomeKind.ACCEPTED
    assert provider.pending_reports == 0
    assert await provider.healthy()


def test_capabilities_allow_everything_and_push_reports() -> None:
    caps = SandboxProvider().capabilities
    assert caps.unicode and caps.binary and caps.flash and caps.alphanumeric_sender
    assert caps.reports == "push"
    assert not caps.scheduling  # the bridge holds scheduled messages


def test_capabilities_can_be_narrowed_per_instance() -> None:
    narrow = Capabilities(requests_per_second=5, concurrency=2)
    assert SandboxProvider(capabilities=narrow).capabilities is narrow
    assert SandboxProvider().capabilities is CAPABILITIES
