"""What the admin API answers, as plain JSON-ready data, computed from a running Bridge.

Kept apart from the HTTP layer (:mod:`bridge.admin.web`) so the answers can be tested and read
without a request, and apart from the store (:mod:`bridge.admin.store_view`). Times are ISO 8601
UTC strings, states their names (``DELIVERED``) with the receipt's ``stat:`` word beside them;
message text is never shown (as in the logs, it is not the operator's business).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import socket
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import structlog
from prometheus_client import Counter

from bridge import __version__
from bridge.admin.store_view import StoreView
from bridge.core.admission import AccountPolicy, Rejected, normalise_destination
from bridge.core.model import Address, InboundMessage, Message, Receipt
from bridge.logs import LOG_LEVELS, get_log_level, set_log_level

if TYPE_CHECKING:
    from bridge.app import Bridge

__all__ = ["AdminError", "AdminService", "iso"]

log = structlog.get_logger("bridge.admin")

#: Throughput is sampled this often; rates are over the last THROUGHPUT_WINDOW seconds.
SAMPLE_INTERVAL = 5.0
THROUGHPUT_WINDOW = 60.0
#: Largest page of a delivery queue listing.
MAX_QUEUE_LIST = 1000


class AdminError(Exception):
    """A request the API refuses: ``status`` is the HTTP status, the message says why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def iso(t: float | None) -> str | None:
    """Epoch seconds as ISO 8601 UTC with milliseconds (None stays None)."""
    if t is None or t == 0:
        return None
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z"
    )


def _total(counter: Counter, by: str | None = None) -> dict[str, float]:
    """A counter's ``_total`` samples summed, by the label ``by`` (or all under "")."""
    sums: dict[str, float] = {}
    for family in counter.collect():
        for sample in family.samples:
            if not sample.name.endswith("_total"):
                continue
            key = sample.labels.get(by, "") if by else ""
            sums[key] = sums.get(key, 0.0) + sample.value
    return sums


class AdminService:
    """The admin API's operations on one :class:`~bridge.app.Bridge`."""

    def __init__(self, bridge: Bridge, *, clock: Any = time.time) -> None:
        self.bridge = bridge
        self.store = StoreView(bridge.store)
        self.clock = clock
        self.node = socket.gethostname()
        self.started_at = clock()
        self._samples: collections.deque[tuple[float, dict[str, float]]] = collections.deque(
            maxlen=int(THROUGHPUT_WINDOW / SAMPLE_INTERVAL) + 1
        )
        self._sampler: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self.started_at = self.clock()
        self._sampler = asyncio.create_task(self._sample_loop(), name="admin-throughput")

    async def stop(self) -> None:
        if self._sampler is not None:
            self._sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sampler
            self._sampler = None

    async def _sample_loop(self) -> None:
        while True:
            self._samples.append((time.monotonic(), self._counts()))
            await asyncio.sleep(SAMPLE_INTERVAL)

    def _counts(self) -> dict[str, float]:
        m = self.bridge.metrics
        sent = _total(m.provider_requests, "outcome")
        delivered = _total(m.deliver_sm, "result")
        return {
            "accepted": sum(_total(m.messages_accepted).values()),
            "rejected": sum(_total(m.messages_rejected).values()),
            "sent": sent.get("accepted", 0.0),
            "send_failed": sum(v for k, v in sent.items() if k != "accepted"),
            "receipts_queued": sum(_total(m.receipts).values()),
            "deliver_sm_acked": delivered.get("acked", 0.0),
            "inbound": sum(_total(m.inbound_messages).values()),
        }

    # ------------------------------------------------------------------ status

    async def status(self) -> dict[str, Any]:
        b = self.bridge
        now = self.clock()
        binds: dict[str, list[dict[str, Any]]] = {a.system_id: [] for a in b.accounts.accounts()}
        for info in b.smpp.bound_sessions():
            assert info.system_id is not None and info.bind_type is not None
            binds.setdefault(info.system_id, []).append(
                {
                    "session": info.id,
                    "bind_type": info.bind_type.value,
                    "peer": f"{info.peer_ip}:{info.peer_port}",
                    "tls": info.tls,
                }
            )
        depths = await self.store.delivery_depths(binds)
        accounts = [
            {
                "system_id": name,
                "binds": sessions,
                "delivery_queue": depths.get(name, 0),
                "delivery_in_flight": b.deliveries.in_flight(name),
            }
            for name, sessions in sorted(binds.items())
        ]
        health = await b.provider_checks.check()
        providers = []
        for name in b.providers:
            breaker = b.dispatcher.breakers[name]
            providers.append(
                {
                    "name": name,
                    "type": b.cfg.providers[name].type,
                    "healthy": health.get(name),
                    "circuit": breaker.state.name.lower(),
                    "paused": name in b.dispatcher.paused,
                    "queued": b.dispatcher.queue_depth(name),
                    "oldest_queued_seconds": round(b.dispatcher.oldest_age(name, now), 3),
                    "balance": b.balances.get(name),
                    "routed": name in b.routed_providers,
                }
            )
        counts = self._counts()
        return {
            "version": __version__,
            "node": self.node,
            "started_at": iso(self.started_at),
            "uptime_seconds": round(now - self.started_at, 1),
            "log_level": get_log_level(),
            "listeners": b.listeners(),
            "accounts": accounts,
            "queues": {
                "pending_dispatch": await self.store.pending_count(),
                "held_by_dispatcher": b.dispatcher.held,
                "reassembly_pending": len(b.pipeline.reassembly),
                "deliveries": sum(depths.values()),
            },
            "providers": providers,
            "throughput": {"totals": counts, "per_second": self._rates(counts)},
        }

    def _rates(self, counts: dict[str, float]) -> dict[str, float]:
        """Per-second rates over the sampling window (since the oldest kept sample)."""
        if not self._samples:
            return {key: 0.0 for key in counts}
        t0, first = self._samples[0]
        span = time.monotonic() - t0
        if span <= 0:
            return {key: 0.0 for key in counts}
        return {key: round((counts[key] - first.get(key, 0.0)) / span, 2) for key in counts}

    # ------------------------------------------------------------------ trace

    async def trace(self, any_id: str) -> dict[str, Any]:
        """A message by our id, a part id or a provider's id, with its history."""
        any_id = any_id.strip()
        if not any_id:
            raise AdminError(400, "give a message id")
        message = await self.store.message(any_id)
        matched = "message id"
        if message is not None and message.id != any_id:
            matched = "part id"
        if message is None:
            message = await self.store.by_provider_id(self.bridge.providers, any_id)
            matched = "provider message id"
        if message is None:
            raise AdminError(
                404,
                f"no message {any_id!r} (not our id, a part id or a provider's id; "
                "final messages are purged after [storage] retention)",
            )
        history = await self.store.history(message.id)
        where = self.bridge.dispatcher.where(message.id)
        return {
            "query": any_id,
            "matched_by": matched,
            **_message_json(message),
            "dispatcher": None if where is None else {"status": where[0], "provider": where[1]},
            "history": [
                {
                    "at": iso(change.at),
                    "state": change.state.name,
                    "stat": change.state.stat_word,
                    "detail": change.detail,
                }
                for change in history
            ],
        }

    # ------------------------------------------------------------------ route test

    async def route(
        self, number: str, account: str | None = None, *, unicode: bool = False
    ) -> dict[str, Any]:
        """Which rule a message to ``number`` (from ``account``) matches, and which of its
        providers could carry a short text, in failover order."""
        b = self.bridge
        policy = b.policies.get(account) if account else None
        if account and policy is None:
            raise AdminError(404, f"no account {account!r}")
        raw = number.strip().replace(" ", "")
        try:
            destination = normalise_destination(
                Address(raw, 1 if raw.startswith("+") else 0, 1),
                policy or AccountPolicy(account or ""),
            )
        except Rejected:
            raise AdminError(400, f"{number!r} is not a phone number") from None
        probe = Message(
            id="route-test",
            account=account or "",
            source=Address("1"),
            destination=destination,
            text="x",
            data_coding=8 if unicode else 0,
        )
        rule, verdicts = b.router.explain(probe, chars=1, unicode=unicode)
        providers = [
            {
                "name": name,
                "can_carry": refusal is None,
                "reason": None if refusal is None else refusal.value,
                "paused": name in b.dispatcher.paused,
                "circuit": b.dispatcher.breakers[name].state.name.lower()
                if name in b.dispatcher.breakers
                else None,
            }
            for name, refusal in verdicts
        ]
        index = b.router.routes.index(rule) if rule is not None else None
        return {
            "number": destination.digits,
            "account": account,
            "unicode": unicode,
            "rule": None
            if rule is None
            else {
                "index": index,
                "name": rule.name or f"routes[{index}]",
                "accounts": rule.accounts,
                "countries": rule.countries,
                "prefixes": rule.prefixes,
                "regex": rule.regex,
            },
            "providers": providers,
            "routable": any(p["can_carry"] for p in providers),
        }

    # ------------------------------------------------------------------ delivery queues

    def _known_account(self, account: str) -> None:
        if self.bridge.accounts.get(account) is None:
            raise AdminError(404, f"no account {account!r}")

    async def queue(self, account: str, limit: int = 100) -> dict[str, Any]:
        """The receipts and MO waiting for ``account``'s receiver, oldest first."""
        self._known_account(account)
        limit = max(1, min(limit, MAX_QUEUE_LIST))
        items, depth = await self.store.deliveries(account, limit)
        return {
            "account": account,
            "depth": depth,
            "receiver_bound": self.bridge.smpp.has_receiver(account),
            "items": [_delivery_json(item.id, item.item, item.enqueued_at, item.attempts)
                      for item in items],
        }

    async def purge(self, account: str) -> dict[str, Any]:
        """Drop everything queued for ``account`` (receipts and MO it will never get)."""
        self._known_account(account)
        removed = await self.store.purge_deliveries(account)
        log.warning("admin.queue_purged", account=account, removed=removed)
        return {"account": account, "removed": removed}

    # ------------------------------------------------------------------ providers, logging

    def _known_provider(self, name: str) -> None:
        if name not in self.bridge.providers:
            known = ", ".join(self.bridge.providers)
            raise AdminError(404, f"no provider {name!r} (configured: {known})")

    def pause(self, name: str) -> dict[str, Any]:
        return self._set_paused(name, True)

    def resume(self, name: str) -> dict[str, Any]:
        return self._set_paused(name, False)

    def _set_paused(self, name: str, paused: bool) -> dict[str, Any]:
        self._known_provider(name)
        dispatcher = self.bridge.dispatcher
        changed = dispatcher.pause(name) if paused else dispatcher.resume(name)
        if changed:
            event = "admin.provider_paused" if paused else "admin.provider_resumed"
            log.warning(event, provider=name)
        return {"provider": name, "paused": paused, "changed": changed}

    def kick(self, target: str) -> dict[str, Any]:
        """Unbind and close a session (by its id, as ``status`` lists it) or every session of
        an account (README "Revocation")."""
        kicked = self.bridge.smpp.kick(target)
        if not kicked:
            raise AdminError(404, f"no bound session or account {target!r}")
        log.warning("admin.sessions_kicked", target=target, sessions=kicked)
        return {"target": target, "sessions": kicked}

    def log_level(self, level: str | None = None) -> dict[str, Any]:
        if level is None:
            return {"level": get_log_level()}
        try:
            previous = set_log_level(level)
        except ValueError:
            raise AdminError(
                400, f"unknown level {level!r}; one of: {', '.join(LOG_LEVELS)}"
            ) from None
        # WARNING, so the change is on record whatever the new level hides.
        log.warning("admin.log_level_changed", new_level=level.lower(), previous=previous)
        return {"level": level.lower(), "previous": previous}


def _address(a: Address) -> str:
    return a.digits if a.ton == 5 else f"+{a.digits}"


def _message_json(m: Message) -> dict[str, Any]:
    return {
        "id": m.id,
        "account": m.account,
        "source": _address(m.source),
        "destination": _address(m.destination),
        "state": m.state.name,
        "stat": m.state.stat_word,
        "error_code": m.error_code,
        "created_at": iso(m.created_at),
        "scheduled_for": iso(m.schedule_at),
        "expires_at": iso(m.expire_at),
        "done_at": iso(m.done_at),
        "route": list(m.route),
        "provider": m.provider,
        "provider_message_id": m.provider_message_id,
        "attempts": m.attempts,
        "next_attempt_at": iso(m.next_attempt_at) if not m.state.is_final else None,
        "part_ids": list(m.part_ids),
        "registered_delivery": m.registered_delivery,
    }


def _delivery_json(
    delivery_id: int, item: Receipt | InboundMessage, enqueued_at: float, attempts: int
) -> dict[str, Any]:
    common = {"id": delivery_id, "enqueued_at": iso(enqueued_at), "attempts": attempts}
    if isinstance(item, Receipt):
        return {
            **common,
            "kind": "receipt",
            "message_id": item.message_id,
            "stat": item.state.stat_word,
            "error_code": item.error_code,
            "to": _address(item.destination),
        }
    return {
        **common,
        "kind": "mo",
        "from": _address(item.source),
        "to": _address(item.destination),
        "provider": item.provider,
    }
