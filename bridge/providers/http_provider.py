"""What every HTTP provider adapter has in common: the Provider protocol over pure translators.

A concrete adapter subclasses :class:`HttpProvider` and supplies plain functions (adapters are
pure translators, docs/architecture.md): :meth:`HttpProvider.build_send` (Message →
HttpRequest) and :meth:`HttpProvider.parse_send` (HttpResponse → Outcome), optionally
``build_health``/``parse_health``, ``poll`` and ``handle_callback``. This class owns the parts
that must behave the same for all of them:

* no answer (timeout, refused or reset connection) and HTTP 5xx/408/429 are TRANSIENT outcomes,
  so the dispatcher retries with backoff and fails over; the adapter's parser sees only real
  answers;
* a message the adapter cannot express for this provider (a character outside its charset, a
  sender it refuses) is raised by ``build_send`` as :class:`Unsendable` and becomes a PERMANENT
  outcome: the next route may be able to carry it;
* the connection test / balance call feeds ``/readyz`` and ``bridge_provider_balance``.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable, Sequence

import structlog

from bridge.core.model import DeliveryReport, Message, MessageState, Outcome, OutcomeKind
from bridge.core.provider import (
    CallbackKind,
    Capabilities,
    InboundSink,
    ProviderContext,
    ReportSink,
)
from bridge.observability import SampledLog
from bridge.providers.http import HttpClient, HttpError, HttpRequest, HttpResponse, create_client
from bridge.providers.settings import HttpProviderSettings
from bridge.ratelimit import limiter_for_rate

__all__ = ["HttpProvider", "Unsendable", "classify_http_status"]

log = structlog.get_logger("bridge.providers")
#: One line per provider every 10 s for per-message failures that come in floods.
_sampled = SampledLog(log)

#: err: value of receipts for messages no route could express (bridge-defined, see README).
ERR_UNSENDABLE = 1


class Unsendable(ValueError):
    """``build_send`` cannot express this message for this provider (permanent, fail over)."""

    def __init__(self, detail: str, error_code: int = ERR_UNSENDABLE) -> None:
        super().__init__(detail)
        self.detail = detail
        self.error_code = error_code


def classify_http_status(status: int) -> OutcomeKind | None:
    """TRANSIENT for statuses that say "not now" (5xx, 408 timeout, 429 too many requests);
    None for the rest, which the adapter's parser reads."""
    if status >= 500 or status in (408, 429):
        return OutcomeKind.TRANSIENT
    return None


class HttpProvider(abc.ABC):
    """Base of the HTTP adapters (see the module docstring). Not a provider by itself: an
    adapter that forgets ``build_send`` or ``parse_send`` cannot be instantiated."""

    callback_kinds: tuple[CallbackKind, ...] = ()

    def __init__(
        self,
        name: str,
        settings: HttpProviderSettings,
        ctx: ProviderContext,
        capabilities: Capabilities,
    ) -> None:
        self.name = name
        self.settings = settings
        self.ctx = ctx
        # The table's limits, in one place for every adapter: the limiter below (shared by
        # sends, polls and balance checks) is built from them.
        capabilities = dataclasses.replace(
            capabilities,
            requests_per_second=settings.requests_per_second,
            concurrency=settings.concurrency,
            at_most_once=capabilities.at_most_once or not settings.retry_after_timeout,
        )
        self.capabilities = capabilities
        self.client: HttpClient | None = None
        self.reports: ReportSink | None = None
        self.inbound: InboundSink | None = None
        #: The documented request limit, shared by sends (the dispatcher acquires it), polls
        #: and balance checks (:meth:`paced_call`): no second may hold more calls than it.
        self.limiter = limiter_for_rate(capabilities.requests_per_second)

    # ------------------------------------------------------------------ lifecycle
    async def start(self, reports: ReportSink, inbound: InboundSink) -> None:
        self.reports = reports
        self.inbound = inbound
        if self.client is None:
            s = self.settings
            self.client = create_client(
                s.transport,
                timeout=s.timeout,
                connect_timeout=s.connect_timeout,
                # Polls and balance calls share the pool with sends: a little headroom.
                pool_size=s.concurrency + 4,
            )

    async def stop(self) -> None:
        if self.client is not None:
            await self.client.close()
            self.client = None

    async def call(self, request: HttpRequest) -> HttpResponse:
        """One request through the pool (raises :class:`HttpError` when there is no answer)."""
        if self.client is None:
            raise HttpError("connect", "provider not started")
        return await self.client.request(request)

    async def paced_call(self, request: HttpRequest) -> HttpResponse:
        """:meth:`call` after the provider's rate limiter (polls and balance checks; sends are
        paced by the dispatcher, which acquires the same limiter)."""
        if self.limiter is not None:
            await self.limiter.acquire()
        return await self.call(request)

    # ------------------------------------------------------------------ sending
    async def send(self, message: Message) -> Outcome:
        try:
            request = self.build_send(message)
        except Unsendable as exc:
            return Outcome(OutcomeKind.PERMANENT, detail=exc.detail, error_code=exc.error_code)
        try:
            response = await self.call(request)
        except HttpError as exc:
            if exc.reason != "connect" and not self.settings.retry_after_timeout:
                return self._maybe_taken(message, exc.reason)
            return Outcome(OutcomeKind.TRANSIENT, detail=f"no answer ({exc.reason})")
        kind = classify_http_status(response.status)
        if kind is not None:
            return Outcome(kind, detail=f"HTTP {response.status}")
        return self.parse_send(message, response)

    def _maybe_taken(self, message: Message, reason: str) -> Outcome:
        """``retry_after_timeout = false``: the request went out and no answer came, so the
        provider may have the message. It is not sent again (no duplicate SMS): it counts as
        taken without an id and ends UNKNOWN (README, "Reliability")."""
        _sampled(
            "warning",
            "provider_send_unanswered",
            self.name,
            provider=self.name,
            message_id=message.id,
            account=message.account,
            reason=reason,
        )
        return Outcome(
            OutcomeKind.ACCEPTED,
            None,
            detail=f"no answer ({reason}); not sent again (retry_after_timeout = false)",
            state=MessageState.UNKNOWN,
        )

    def unanswered(self, messages: Sequence[Message], reason: str) -> list[Outcome]:
        """Each message's outcome when the one request carrying them (a bulk send) got no
        answer: what :meth:`send` decides for a single message (retried, or with
        ``retry_after_timeout = false`` after a timeout taken-and-UNKNOWN, never sent twice)."""
        if reason != "connect" and not self.settings.retry_after_timeout:
            return [self._maybe_taken(m, reason) for m in messages]
        return [Outcome(OutcomeKind.TRANSIENT, detail=f"no answer ({reason})")] * len(messages)

    async def send_chunks(
        self,
        messages: Sequence[Message],
        size: int,
        build: Callable[[Sequence[Message]], HttpRequest],
        split: Callable[[Sequence[Message], Outcome], list[Outcome]],
        parse: Callable[[Sequence[Message], HttpResponse], Outcome] | None = None,
    ) -> list[Outcome]:
        """What every bulk adapter's ``send_batch`` does around its own request and reply:
        ``size`` numbers per request (a lone message goes as a single :meth:`send`), a chunk
        the provider cannot take (:class:`Unsendable`) refused for each destination, no answer
        decided as for a single send (:meth:`unanswered`), an HTTP status classified as for a
        single send, else the reply read by ``parse`` (default: :meth:`parse_send` of the first
        message) and ``split`` into each destination's outcome."""
        outcomes: list[Outcome] = []
        for start in range(0, len(messages), size):
            chunk = messages[start : start + size]
            if len(chunk) == 1:
                outcomes.append(await self.send(chunk[0]))
                continue
            try:
                request = build(chunk)
            except Unsendable as exc:
                refused = Outcome(
                    OutcomeKind.PERMANENT, detail=exc.detail, error_code=exc.error_code
                )
                outcomes += [refused] * len(chunk)
                continue
            try:
                response = await self.call(request)
            except HttpError as exc:
                outcomes += self.unanswered(chunk, exc.reason)
                continue
            kind = classify_http_status(response.status)
            if kind is not None:
                outcome = Outcome(kind, detail=f"HTTP {response.status}")
            elif parse is not None:
                outcome = parse(chunk, response)
            else:
                outcome = self.parse_send(chunk[0], response)
            outcomes += split(chunk, outcome)
        return outcomes

    @abc.abstractmethod
    def build_send(self, message: Message) -> HttpRequest:
        """The request that sends ``message`` (raise :class:`Unsendable` if it cannot)."""

    @abc.abstractmethod
    def parse_send(self, message: Message, response: HttpResponse) -> Outcome:
        """The outcome of a send that got an HTTP answer (not 5xx/408/429)."""

    # ------------------------------------------------------------------ reports
    async def poll(self, messages: Sequence[Message]) -> list[DeliveryReport]:
        """Providers without polling return nothing (the dispatcher then waits for pushes)."""
        return []

    # ------------------------------------------------------------------ health
    def build_health(self) -> HttpRequest | None:
        """The connection-test / balance request, or None when the provider has none."""
        return None

    def parse_health(self, response: HttpResponse) -> tuple[bool, float | None]:
        """(reachable with valid credentials, balance or None)."""
        return 200 <= response.status < 300, None

    @property
    def has_health_check(self) -> bool:
        """``healthy()`` asks the provider (the dispatcher lets it close an open circuit)."""
        return self.build_health() is not None

    async def healthy(self) -> bool:
        request = self.build_health()
        if request is None:
            return True
        try:
            response = await self.paced_call(request)
        except HttpError as exc:
            self._health_failed(reason=exc.reason)
            return False
        if classify_http_status(response.status) is not None:
            self._health_failed(status=response.status)
            return False
        ok, balance = self.parse_health(response)
        if balance is not None:
            self.ctx.set_balance(balance)
        if not ok:
            self._health_failed(status=response.status)
        return ok

    def _health_failed(self, **why: object) -> None:
        # Asked every breaker_health_interval while a circuit is open, and by /readyz: one
        # line per provider every 10 s, not one per check.
        _sampled("warning", "provider_health_failed", self.name, provider=self.name, **why)
