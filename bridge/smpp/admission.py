"""Connection admission for the SMPP listener: who may hold a connection before binding.

Issue 14, finding 3: ``max_connections`` used to count connections that never bind, so one host
with 1,000 idle connections kept every ESME out. The rules (README "Connection admission"):

* a peer outside every account's ``allowed_ips`` (or the listener's own ``smpp.allowed_ips``)
  can bind to nothing: refused at accept;
* one address (an IPv4 address, an IPv6 /64) holds at most ``max_unbound_per_address``
  connections that have not bound yet;
* unbound connections together use at most ``max_connections - bind_reserve`` of the budget:
  the reserve is for bound sessions only. When that share is full, a newcomer from an address
  holding fewer unbound connections than the heaviest one takes the place of that address's
  oldest unbound connection (which gets its refusal answer); otherwise the newcomer is refused;
* bound sessions count toward ``max_connections`` (a bind is never refused for the budget: the
  connection already holds its place).

Pure bookkeeping: no sockets, no clock. The listener asks :meth:`Admission.admit` at accept and
tells :meth:`bound` and :meth:`closed`; refusing (with an SMPP answer, not a reset) is its job.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

from bridge.core.accounts import IPNetwork, address_key, ip_in_networks

__all__ = ["Admission", "AdmissionConfig", "Decision"]

C = TypeVar("C", bound=Hashable)


@dataclass(frozen=True, slots=True)
class AdmissionConfig:
    max_connections: int = 1000
    max_unbound_per_address: int = 10
    bind_reserve: int = 100

    @property
    def unbound_budget(self) -> int:
        """How many connections may be open without a bind at once (at least one)."""
        return max(1, self.max_connections - self.bind_reserve)


@dataclass(frozen=True, slots=True)
class Decision(Generic[C]):
    """``refused``: the reason (a metric label) or None; ``evict``: an unbound connection that
    must give up its place to this one."""

    refused: str | None = None
    evict: C | None = None


_ADMIT: Decision[object] = Decision()


class Admission(Generic[C]):
    def __init__(
        self,
        config: AdmissionConfig,
        networks: Callable[[], tuple[IPNetwork, ...]],
    ) -> None:
        self.config = config
        self._networks = networks  # re-read at every accept: a SIGHUP may change it
        self._bound: set[C] = set()
        # unbound connections per address key, oldest first (dicts keep insertion order)
        self._unbound: dict[str, dict[C, None]] = {}
        self._key: dict[C, str] = {}
        self.unbound_count = 0

    @property
    def total(self) -> int:
        return len(self._bound) + self.unbound_count

    def admit(self, conn: C, ip: str) -> Decision[C]:
        """Decide a new connection from ``ip``; when admitted, it is counted as unbound."""
        cfg = self.config
        if not ip_in_networks(ip, self._networks()):
            return Decision("not_allowed")
        key = address_key(ip)
        mine = self._unbound.get(key)
        have = len(mine) if mine is not None else 0
        if have >= cfg.max_unbound_per_address:
            return Decision("per_address")
        evict: C | None = None
        if self.total >= cfg.max_connections or self.unbound_count >= cfg.unbound_budget:
            evict = self._victim(have)
            if evict is None:
                full = self.total >= cfg.max_connections and self.unbound_count == 0
                return Decision("max_connections" if full else "unbound_budget")
            self.closed(evict)
        self._key[conn] = key
        if mine is None:
            mine = self._unbound[key] = {}
        mine[conn] = None
        self.unbound_count += 1
        return Decision(None, evict) if evict is not None else _ADMIT  # type: ignore[return-value]

    def _victim(self, have: int) -> C | None:
        """The oldest unbound connection of the address holding the most, when it holds more
        than the newcomer's address would after admitting it."""
        if not self._unbound:
            return None
        heaviest = max(self._unbound.values(), key=len)
        if len(heaviest) <= have + 1:
            return None
        return next(iter(heaviest))

    def bound(self, conn: C) -> None:
        """The connection bound: it leaves the unbound share (it keeps its budget place)."""
        if self._forget_unbound(conn):
            self._bound.add(conn)

    def closed(self, conn: C) -> None:
        if not self._forget_unbound(conn):
            self._bound.discard(conn)

    def _forget_unbound(self, conn: C) -> bool:
        key = self._key.pop(conn, None)
        if key is None:
            return False
        conns = self._unbound[key]
        del conns[conn]
        if not conns:
            del self._unbound[key]
        self.unbound_count -= 1
        return True

    def unbound_from(self, ip: str) -> int:
        conns = self._unbound.get(address_key(ip))
        return len(conns) if conns is not None else 0
