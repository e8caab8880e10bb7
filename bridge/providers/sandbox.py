"""The sandbox provider: accepts everything, reports DELIVRD a little later, sends nothing.

It is what the shipped config routes to, so that the bridge runs end to end (submit → receipt)
without any provider account, and it is the tool for trying an ESME's failure handling: opt-in
rules keyed on the destination's last digits make it answer with each failure the real providers
produce (a final UNDELIV/EXPIRED/REJECTD report, a refusal at send time, a transient error).

Reports are pushed after ``delay`` seconds from a loop timer. Pending timers die with the process
(or :meth:`SandboxProvider.stop`); :meth:`SandboxProvider.poll` therefore answers for any sandbox
id it is asked about, so the dispatcher's poll after a restart resolves every message the sandbox
took and none stays ENROUTE for ever.
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from bridge.core.model import DeliveryReport, Message, MessageState, Outcome, OutcomeKind
from bridge.core.provider import Capabilities, InboundSink, Provider, ProviderContext, ReportSink
from bridge.providers.settings import NonNegFloat, ProviderSettings

__all__ = [
    "CAPABILITIES",
    "ID_PREFIX",
    "RuleSettings",
    "SandboxOutcome",
    "SandboxProvider",
    "SandboxRule",
    "Settings",
    "create",
]

ID_PREFIX = "sbx-"

SandboxOutcome = Literal[
    "DELIVRD",
    "UNDELIV",
    "EXPIRED",
    "REJECTD",
    "transient_then_delivrd",
    "permanent",
    "transient",
]

#: Everything allowed; reports pushed. Config may narrow them (rate, concurrency) per instance.
CAPABILITIES = Capabilities(
    unicode=True,
    binary=True,
    flash=True,
    scheduling=False,  # the bridge holds scheduled messages
    alphanumeric_sender=True,
    reports="push",
)



class RuleSettings(BaseModel):
    """``[[providers.NAME.rules]]``: an outcome by destination suffix, to exercise every
    receipt path."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    suffix: Annotated[str, Field(pattern=r"^[0-9]+$")]
    outcome: SandboxOutcome
    error_code: Annotated[int, Field(ge=0, le=999)] = 0


class Settings(ProviderSettings):
    """``[providers.NAME] type = "sandbox"`` (the default type): no network."""

    type: Literal["sandbox"] = "sandbox"
    delay: NonNegFloat = 1.0  # seconds before the sandbox reports
    rules: list[RuleSettings] = Field(default_factory=list)


_REPORT_STATES: dict[str, MessageState] = {
    "DELIVRD": MessageState.DELIVERED,
    "UNDELIV": MessageState.UNDELIVERABLE,
    "EXPIRED": MessageState.EXPIRED,
    "REJECTD": MessageState.REJECTED,
    "transient_then_delivrd": MessageState.DELIVERED,
}


@dataclass(frozen=True, slots=True)
class SandboxRule:
    """Answer ``outcome`` for destinations ending in ``suffix``.

    - DELIVRD / UNDELIV / EXPIRED / REJECTD: accepted, then a report with that state and
      ``error_code``;
    - ``permanent``: refused at send (Outcome PERMANENT with ``error_code``);
    - ``transient``: every send fails transiently (Outcome TRANSIENT);
    - ``transient_then_delivrd``: the first send of each message fails transiently, the next
      is accepted and delivered.
    """

    suffix: str
    outcome: SandboxOutcome
    error_code: int = 0


class SandboxProvider:
    """A :class:`~bridge.core.provider.Provider` that needs no network (see module docstring).

    Rules are tried in order; the first whose suffix ends the destination digits applies.
    ``clock`` stamps the reports' ``done_at``; ``capabilities`` lets a config narrow the
    defaults (to try rate limits or length refusals without a real provider).
    """

    def __init__(
        self,
        name: str = "sandbox",
        *,
        delay: float = 1.0,
        rules: Sequence[SandboxRule] = (),
        clock: Callable[[], float] = time.time,
        capabilities: Capabilities = CAPABILITIES,
    ) -> None:
        self.name = name
        self.capabilities = capabilities
        self.delay = delay
        self.rules = list(rules)
        self.clock = clock
        self._reports: ReportSink | None = None
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._deliveries: set[asyncio.Task[bool]] = set()
        self._failed_once: set[str] = set()
        # A per-process token plus a counter: ids are unique across restarts (so a poll after a
        # restart never confuses an old id with a new one) and cheap to make.
        self._id_prefix = f"{ID_PREFIX}{uuid.uuid4().hex[:12]}-"
        self._counter = itertools.count(1)
        self.sent = 0  # accepted sends, for tests and demos

    # ------------------------------------------------------------------ lifecycle
    async def start(self, reports: ReportSink, inbound: InboundSink) -> None:
        """Remember the report sink; the sandbox has no inbound traffic."""
        self._reports = reports

    async def stop(self) -> None:
        """Cancel the pending report timers (those reports are lost; :meth:`poll` recovers
        them) and let report deliveries already under way finish."""
        for handle in self._timers.values():
            handle.cancel()
        self._timers.clear()
        if self._deliveries:
            await asyncio.gather(*self._deliveries, return_exceptions=True)
        self._reports = None

    async def healthy(self) -> bool:
        return True

    # ------------------------------------------------------------------ sending
    def rule_for(self, message: Message) -> SandboxRule | None:
        """The first rule whose suffix ends the destination digits, or None."""
        digits = message.destination.digits
        for rule in self.rules:
            if digits.endswith(rule.suffix):
                return rule
        return None

    async def send(self, message: Message) -> Outcome:
        rule = self.rule_for(message)
        if rule is not None:
            if rule.outcome == "permanent":
                return Outcome(
                    OutcomeKind.PERMANENT,
                    detail="sandbox rule: permanent failure",
                    error_code=rule.error_code,
                )
            if rule.outcome == "transient":
                return Outcome(
                    OutcomeKind.TRANSIENT,
                    detail="sandbox rule: transient failure",
                    error_code=rule.error_code,
                )
            if rule.outcome == "transient_then_delivrd" and message.id not in self._failed_once:
                self._failed_once.add(message.id)
                return Outcome(OutcomeKind.TRANSIENT, detail="sandbox rule: first attempt fails")
        self._failed_once.discard(message.id)
        provider_id = f"{self._id_prefix}{next(self._counter)}"
        self.sent += 1
        if self._reports is not None:
            report = self._report(provider_id, rule)
            loop = asyncio.get_running_loop()
            self._timers[provider_id] = loop.call_later(self.delay, self._fire, report)
        return Outcome(OutcomeKind.ACCEPTED, provider_message_id=provider_id)

    def _report(self, provider_id: str, rule: SandboxRule | None) -> DeliveryReport:
        """The report a message under ``rule`` ends with (DELIVRD without a rule)."""
        state = MessageState.DELIVERED
        error_code = 0
        if rule is not None and rule.outcome in _REPORT_STATES:
            state = _REPORT_STATES[rule.outcome]
            error_code = 0 if state is MessageState.DELIVERED else rule.error_code
        return DeliveryReport(
            provider=self.name,
            provider_message_id=provider_id,
            state=state,
            error_code=error_code,
        )

    def _fire(self, report: DeliveryReport) -> None:
        """Timer callback: push the report through the sink in a task of its own."""
        self._timers.pop(report.provider_message_id, None)
        sink = self._reports
        if sink is None:
            return
        task = asyncio.ensure_future(sink(replace(report, done_at=self.clock())))
        self._deliveries.add(task)
        task.add_done_callback(self._deliveries.discard)

    # ------------------------------------------------------------------ reports
    async def poll(self, messages: Sequence[Message]) -> list[DeliveryReport]:
        """The final report for every sandbox message asked about (ours by id prefix).

        A pending timer for a polled id is cancelled, so the report is not delivered twice.
        """
        reports: list[DeliveryReport] = []
        for message in messages:
            provider_id = message.provider_message_id
            if not provider_id or not provider_id.startswith(ID_PREFIX):
                continue
            handle = self._timers.pop(provider_id, None)
            if handle is not None:
                handle.cancel()
            report = self._report(provider_id, self.rule_for(message))
            reports.append(replace(report, done_at=self.clock()))
        return reports

    @property
    def pending_reports(self) -> int:
        """Reports scheduled but not yet pushed."""
        return len(self._timers)


def create(name: str, settings: Settings, ctx: ProviderContext) -> Provider:
    """The registry's factory (bridge.providers.registry)."""
    return SandboxProvider(
        name,
        delay=settings.delay,
        rules=[SandboxRule(r.suffix, r.outcome, r.error_code) for r in settings.rules],
        clock=ctx.clock,
    )
