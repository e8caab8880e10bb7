"""The one small interface every provider adapter implements.

Adapters are translators (DESIGN.md): a :class:`~bridge.core.model.Message` in, an
:class:`~bridge.core.model.Outcome` out; provider reports become
:class:`~bridge.core.model.DeliveryReport` and inbound SMS
:class:`~bridge.core.model.InboundMessage`, handed to the sinks given at :meth:`Provider.start`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from bridge.core.model import DeliveryReport, InboundMessage, Message, Outcome

__all__ = ["Capabilities", "InboundSink", "Provider", "ReportSink"]

ReportSink = Callable[[DeliveryReport], Awaitable[bool]]
InboundSink = Callable[[InboundMessage], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a provider can carry; the router refuses at submit time what no route can."""

    max_gsm7_chars: int = 1530  # 10 parts of 153
    max_ucs2_chars: int = 670
    unicode: bool = True
    binary: bool = False
    flash: bool = False
    scheduling: bool = False  # the provider schedules natively (else the bridge holds the message)
    alphanumeric_sender: bool = True
    max_sender_chars: int = 11
    reports: Literal["push", "poll", "none"] = "push"
    requests_per_second: float = 0.0  # 0 = unlimited
    concurrency: int = 16


class Provider(Protocol):
    name: str
    capabilities: Capabilities

    async def start(self, reports: ReportSink, inbound: InboundSink) -> None:
        """Open pools, start timers; reports and inbound messages go to the sinks."""
        ...

    async def stop(self) -> None: ...

    async def send(self, message: Message) -> Outcome:
        """Hand one message to the provider. Never raises for provider-side failures: those are
        Outcomes (TRANSIENT for 5xx, timeouts and throttling; PERMANENT for refusals)."""
        ...

    async def poll(self, messages: Sequence[Message]) -> list[DeliveryReport]:
        """Ask for the state of messages it took (providers without push); [] if not supported."""
        ...

    async def healthy(self) -> bool:
        """Connection test / balance call for /readyz."""
        ...
