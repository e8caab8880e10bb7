"""Inbound SMS (MO) from providers: which account owns a receiving number, and the sink every
provider hands its MO to.

Why a module of its own: who gets an MO is a domain decision (an account's
``inbound_numbers``, the longest prefix wins) that knows nothing of sockets, HTTP or config
files, so it lives in ``core`` beside the delivery queue it feeds; the wiring (``bridge.app``)
only builds it and passes :meth:`InboundRouter.deliver` to each provider's ``start``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping

import structlog

from bridge.core.accounts import AccountRegistry
from bridge.core.delivery import DeliveryQueue
from bridge.core.model import InboundMessage
from bridge.core.store import Store
from bridge.observability import Metrics

__all__ = ["InboundRouter", "inbound_owners", "owner_of"]

log = structlog.get_logger("bridge.app")


def inbound_owners(accounts: Iterable[tuple[str, Iterable[str]]]) -> dict[str, str]:
    """(system_id, ``inbound_numbers``) pairs → number → account; prefixes keep their
    trailing ``*``; the first account naming a number keeps it."""
    owners: dict[str, str] = {}
    for system_id, numbers in accounts:
        for number in numbers:
            owners.setdefault(number.lstrip("+"), system_id)
    return owners


def owner_of(owners: Mapping[str, str], number: str) -> str | None:
    """The account whose number matches ``number`` exactly, else the longest ``prefix*``."""
    digits = number.lstrip("+")
    if digits in owners:
        return owners[digits]
    for end in range(len(digits), 0, -1):
        owner = owners.get(digits[:end] + "*")
        if owner is not None:
            return owner
    return None


class InboundRouter:
    """The providers' inbound sink: queue each MO durably for the account that owns it."""

    def __init__(
        self,
        owners: Mapping[str, str],
        accounts: AccountRegistry,
        store: Store,
        deliveries: DeliveryQueue,
        clock: Callable[[], float],
        metrics: Metrics,
    ) -> None:
        #: number → account (see :func:`inbound_owners`); replaced whole on a config reload.
        self.owners = owners
        self._accounts = accounts
        self._store = store
        self._deliveries = deliveries
        self._clock = clock
        self._metrics = metrics

    def owner_of(self, number: str) -> str | None:
        """The account whose ``inbound_numbers`` match ``number`` (exact, else the longest
        ``prefix*``), or None."""
        return owner_of(self.owners, number)

    async def deliver(self, message: InboundMessage) -> bool:
        """Queue the MO durably for its account (the one the adapter named, else the owner of
        the receiving number); False (logged, counted, dropped) when no account owns it."""
        account = message.account or self.owner_of(message.destination.digits)
        if account is None or self._accounts.get(account) is None:
            log.warning(
                "inbound_unowned",
                provider=message.provider,
                destination=message.destination.digits,
                account=account,
            )
            self._metrics.inbound(message.provider, "unowned")
            return False
        if account != message.account:
            message = dataclasses.replace(message, account=account)
        await self._store.enqueue_delivery(account, message, self._clock())
        self._metrics.inbound(message.provider, "queued")
        self._deliveries.wake(account)
        return True
