"""The provider port: the one small interface every provider adapter implements.

It lives in ``core`` because the domain (dispatcher, router) is what depends on it; the adapters
in :mod:`bridge.providers` implement it (docs/architecture.md, "arrows point down"). Adapters
are translators: a :class:`~bridge.core.model.Message` in, an
:class:`~bridge.core.model.Outcome` out; provider reports become
:class:`~bridge.core.model.DeliveryReport` and inbound SMS
:class:`~bridge.core.model.InboundMessage`, handed to the sinks given at :meth:`Provider.start`.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

from bridge.core.model import DeliveryReport, InboundMessage, Message, Outcome

__all__ = [
    "BatchProvider",
    "CallbackKind",
    "CallbackProvider",
    "CallbackReply",
    "CallbackRequest",
    "Capabilities",
    "InboundSink",
    "Provider",
    "ProviderContext",
    "ProviderStats",
    "ReportSink",
    "StatsProvider",
]

#: Apply a report; True when it concerned one of our messages (False: unknown id, counted and
#: logged by the receiver).
ReportSink = Callable[[DeliveryReport], Awaitable[bool]]
#: Queue an inbound message durably for its account; True once it is stored, False when no
#: account owns the receiving number (logged and counted by the receiver). An adapter leaves
#: ``InboundMessage.account`` empty unless its config names the account: the bridge finds the
#: owner of the destination number (``[[accounts]] inbound_numbers``).
InboundSink = Callable[[InboundMessage], Awaitable[bool]]

CallbackKind = Literal["report", "inbound"]


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
    # At most once (HTTP providers with retry_after_timeout = false): the dispatcher journals
    # "sending" before each send, so a bridge killed during the send does not send it again
    # after the restart; such a message ends UNKNOWN instead (README, "Reliability").
    at_most_once: bool = False
    concurrency: int = 16
    # Destinations one request may carry (a bulk send, see BatchProvider); 1 = no bulk.
    max_batch: int = 1


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


@runtime_checkable
class BatchProvider(Protocol):
    """A provider that can send one text to several destinations in one request (a bulk send).

    The dispatcher uses it when ``capabilities.max_batch`` > 1: messages queued for this
    provider whose :meth:`batch_key` is equal (not None) go together, at most ``max_batch``, in
    one :meth:`send_batch` call that counts as one request against the rate limit. Everything
    else (retries, failover, receipts) stays per message.
    """

    def batch_key(self, message: Message) -> Hashable | None:
        """What must be equal for messages to share a request (text, sender, options), or
        None when this message must go alone (settings, or what the document rules out)."""
        ...

    async def send_batch(self, messages: Sequence[Message]) -> list[Outcome]:
        """Send messages that share a batch key in as few requests as the provider allows
        (usually one); one Outcome per message, in order. Never raises for provider-side
        failures; a refusal that names no destination is every destination's outcome."""
        ...


# --------------------------------------------------------------------------- callbacks


@dataclass(frozen=True, slots=True)
class CallbackRequest:
    """A provider's HTTP push, as the web layer received it (already past the token check).

    ``query`` and ``form`` keep the first value of each name; ``form`` is the parsed
    application/x-www-form-urlencoded body, empty for other bodies (JSON, multipart), whose raw
    bytes are in ``body`` (JSON pushes).
    """

    method: str
    query: Mapping[str, str] = field(default_factory=dict)
    form: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""
    content_type: str = ""
    remote: str = ""

    def param(self, name: str, default: str | None = None) -> str | None:
        """A parameter from the query string or, failing that, the form body."""
        value = self.query.get(name)
        if value is None:
            value = self.form.get(name, default)
        return value


@dataclass(frozen=True, slots=True)
class CallbackReply:
    """What the web layer answers the provider. A 4xx for a forged or malformed push (nothing
    changed); 200 once the report or message is stored, or known to be unknown (a provider that
    got an error would only resend what we cannot use)."""

    status: int = 200
    body: str = "OK"
    content_type: str = "text/plain; charset=utf-8"


@runtime_checkable
class CallbackProvider(Protocol):
    """A provider that takes pushes at ``/callbacks/<name>/<token>/<kind>``."""

    callback_kinds: tuple[CallbackKind, ...]

    async def handle_callback(self, kind: CallbackKind, request: CallbackRequest) -> CallbackReply:
        """Parse the push, hand reports/inbound messages to the sinks given at ``start``, and
        say what to answer. Never raises for bad input: that is a 4xx reply."""
        ...


# --------------------------------------------------------------------------- construction


def _no_callback_url(kind: CallbackKind) -> str | None:
    return None


def _no_balance(value: float) -> None:
    return None


def _no_health_news(healthy: bool) -> None:
    return None


def _no_event(event: str) -> None:
    return None


@dataclass(frozen=True, slots=True)
class ProviderContext:
    """What the wiring (app.py) gives a provider it builds, beside the provider's settings.

    ``callback_url(kind)`` is the absolute URL, token included, at which this bridge takes the
    provider's pushes of that kind (None when the bridge has no HTTP server); it is a function
    because the HTTP port is known only once the server listens. ``set_balance`` feeds the
    ``bridge_provider_balance`` gauge. ``set_healthy`` is for a provider that learns its own
    health as it changes (an SMPP upstream binding or losing its last bind): /readyz and
    ``bridge_provider_up`` follow at once instead of at the next periodic ``healthy()`` check.
    ``state_dir`` is a directory (in the data directory) where the provider may keep small files
    of its own that must survive a restart (the My-Cool-SMS inbound poll's ``thresholdid``);
    None when there is none (tools). ``count_event(name)`` counts an operator-relevant provider
    event (``bridge_provider_events_total{provider,event}``; a small fixed set of names).
    """

    name: str
    clock: Callable[[], float] = time.time
    callback_url: Callable[[CallbackKind], str | None] = _no_callback_url
    set_balance: Callable[[float], None] = _no_balance
    set_healthy: Callable[[bool], None] = _no_health_news
    state_dir: Path | None = None
    count_event: Callable[[str], None] = _no_event


# --------------------------------------------------------------------------- statistics


@dataclass(frozen=True, slots=True)
class ProviderStats:
    """A connection-oriented provider's state for the scrape-time metrics.

    ``binds``: sessions up that take submits (``bridge_upstream_binds``); ``in_flight``:
    requests awaiting their answer (``bridge_upstream_in_flight``); ``events``: monotonic
    counts by event name (``bridge_upstream_events_total``: reconnects, bind refusals,
    throttling, unreadable receipts …). A small fixed set of names: they become label values.
    """

    binds: int
    in_flight: int
    events: Mapping[str, int] = field(default_factory=dict)


@runtime_checkable
class StatsProvider(Protocol):
    """A provider with :class:`ProviderStats` (the SMPP upstream)."""

    def stats(self) -> ProviderStats: ...
