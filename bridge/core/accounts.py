"""ESME accounts: who may bind, from where, how, and how fast.

Pure domain code: no sockets, no clock reads (time is passed in), no config parsing. The config
layer converts ``[[accounts]]`` tables into :class:`Account` values
(``bridge.config.AccountConfig.to_account``) so this module never imports ``bridge.config``.

Status codes are SMPP 3.4 command_status values; they are repeated here rather than imported from
``bridge.smpp`` because ``core/`` must not depend on the wire protocol package.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

from bridge.passwords import is_hashed, verify_password

__all__ = [
    "ESME_RBINDFAIL",
    "ESME_RINVPASWD",
    "ESME_RINVSYSID",
    "ESME_ROK",
    "LOOPBACK_NETWORKS",
    "Account",
    "AccountRegistry",
    "AuthResult",
    "BindLockout",
    "BindThrottle",
    "BindType",
    "IPNetwork",
    "address_key",
    "ip_in_networks",
]

ESME_ROK = 0x00000000
ESME_RBINDFAIL = 0x0000000D
ESME_RINVPASWD = 0x0000000E
ESME_RINVSYSID = 0x0000000F

IPNetwork = IPv4Network | IPv6Network
IPAddress = IPv4Address | IPv6Address

LOOPBACK_NETWORKS: tuple[IPNetwork, ...] = (
    IPv4Network("127.0.0.0/8"),
    IPv6Network("::1/128"),
)


class BindType(StrEnum):
    """The three SMPP bind operations; values match the config file spelling."""

    TRANSMITTER = "transmitter"
    RECEIVER = "receiver"
    TRANSCEIVER = "transceiver"


ALL_BIND_TYPES: frozenset[BindType] = frozenset(BindType)


def _parse_ip(ip: str) -> IPAddress | None:
    """Parse a peer address; unwrap IPv4-mapped IPv6 so one allow-list entry covers both."""
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return None
    if isinstance(addr, IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


@dataclass(frozen=True, slots=True)
class Account:
    """One ESME account. ``password`` is the stored form (plain or hash) and never shown in repr,
    so logging an account (or an :class:`AuthResult`) cannot leak a credential."""

    system_id: str
    password: str = field(repr=False)
    allowed_bind_types: frozenset[BindType] = ALL_BIND_TYPES
    allowed_networks: tuple[IPNetwork, ...] = LOOPBACK_NETWORKS
    max_binds: int = 10
    tps: float = 0.0
    max_outstanding: int = 100
    default_region: str | None = None

    def ip_allowed(self, ip: str) -> bool:
        """True if the peer address ``ip`` is inside one of ``allowed_networks``.

        An empty allow-list admits nobody (fail closed); an unparsable address is refused.
        ``::ffff:a.b.c.d`` matches IPv4 entries (dual-stack listeners report IPv4 peers that way)
        and, for completeness, also IPv6 entries that contain it literally.
        """
        return ip_in_networks(ip, self.allowed_networks)

    def bind_type_allowed(self, bind_type: object) -> bool:
        """``bind_type``: ours or the SMPP layer's enum (both are str enums of the same values)."""
        return str(bind_type) in self.allowed_bind_types


def ip_in_networks(ip: str, networks: Iterable[IPNetwork]) -> bool:
    """True if ``ip`` is inside one of ``networks`` (see :meth:`Account.ip_allowed`)."""
    try:
        raw = ipaddress.ip_address(ip)
    except ValueError:
        return False
    candidates: list[IPAddress] = [raw]
    if isinstance(raw, IPv6Address) and raw.ipv4_mapped is not None:
        candidates.append(raw.ipv4_mapped)
    return any(
        addr.version == net.version and addr in net for net in networks for addr in candidates
    )


@dataclass(frozen=True, slots=True)
class AuthResult:
    """Outcome of a bind attempt. ``reason`` is for logs and never contains the password."""

    status: int
    account: Account | None
    reason: str

    @property
    def ok(self) -> bool:
        return self.status == ESME_ROK


class AccountRegistry:
    """All accounts, looked up by system_id, with bind authentication.

    Verifying a pbkdf2 hash costs tens of milliseconds of CPU. ESMEs rebind often (after every
    network blip, some every few minutes by design), and the check runs on the event loop, so
    successful verifications are cached. The cache stores an HMAC of the given password under a
    per-process random key, never the password itself, so a memory dump does not reveal it and the
    entry is useless in any other process. Failed verifications are cached the same way (at most
    ``max_failed_cache`` fingerprints, oldest dropped first): a guess repeated costs no hashing,
    so a flood of the same wrong password cannot eat the CPU that real binds need (issue 14,
    finding 7; the server's :class:`BindThrottle` and :class:`BindLockout` handle the rest).
    """

    def __init__(self, accounts: Iterable[Account], max_failed_cache: int = 4096) -> None:
        self._cache_key = secrets.token_bytes(32)
        self._accounts: dict[str, Account] = {}
        self._verified: dict[str, bytes] = {}
        self._failed: OrderedDict[tuple[str, bytes], None] = OrderedDict()
        self._max_failed = max_failed_cache
        self.replace(accounts)

    def replace(self, accounts: Iterable[Account]) -> None:
        """Swap in a new account set (config reload). Clears the verification cache, so a changed
        or revoked password takes effect on the next bind."""
        new: dict[str, Account] = {}
        for account in accounts:
            if account.system_id in new:
                raise ValueError(f"duplicate system_id {account.system_id!r}")
            new[account.system_id] = account
        self._accounts = new
        self._verified = {}
        self._failed = OrderedDict()
        self._networks: tuple[IPNetwork, ...] | None = None

    def networks(self) -> tuple[IPNetwork, ...]:
        """The union of every account's allowed_ips: a peer outside it can bind to no account,
        so the listener refuses it at accept (README "Connection admission")."""
        if self._networks is None:
            seen: dict[IPNetwork, None] = {}
            for account in self._accounts.values():
                seen.update(dict.fromkeys(account.allowed_networks))
            self._networks = tuple(seen)
        return self._networks

    def get(self, system_id: str) -> Account | None:
        return self._accounts.get(system_id)

    def __len__(self) -> int:
        return len(self._accounts)

    def __contains__(self, system_id: object) -> bool:
        return system_id in self._accounts

    def accounts(self) -> list[Account]:
        return list(self._accounts.values())

    def _fingerprint(self, password: str) -> bytes:
        return hmac.new(self._cache_key, password.encode("utf-8"), hashlib.sha256).digest()

    def would_block(self, system_id: str, password: str) -> bool:
        """True if :meth:`authenticate` would run a slow hash for this attempt.

        Lets the server hand such attempts to a thread (hashlib releases the GIL) instead of
        stalling every session on the loop; cached and plain-password binds stay inline.
        """
        account = self._accounts.get(system_id)
        if account is None or not is_hashed(account.password):
            return False
        fingerprint = self._fingerprint(password)
        if (system_id, fingerprint) in self._failed:
            return False
        cached = self._verified.get(system_id)
        return cached is None or not hmac.compare_digest(cached, fingerprint)

    def _password_ok(self, account: Account, password: str) -> bool:
        if not is_hashed(account.password):
            return verify_password(account.password, password)
        fingerprint = self._fingerprint(password)
        cached = self._verified.get(account.system_id)
        if cached is not None and hmac.compare_digest(cached, fingerprint):
            return True
        key = (account.system_id, fingerprint)
        if key in self._failed:
            return False
        if not verify_password(account.password, password):
            if self._accounts.get(account.system_id) is account:
                self._failed[key] = None
                while len(self._failed) > self._max_failed:
                    self._failed.popitem(last=False)
            return False
        # Only cache if the account was not replaced while we were hashing (thread use).
        if self._accounts.get(account.system_id) is account:
            self._verified[account.system_id] = fingerprint
        return True

    def authenticate(
        self,
        system_id: str,
        password: str,
        bind_type: BindType,
        peer_ip: str,
        *,
        reveal: bool = True,
    ) -> AuthResult:
        """Decide a bind. Checks, in order:

        1. unknown system_id -> ESME_RINVSYSID
        2. peer IP not allowed -> ESME_RBINDFAIL (before the password, so hosts outside the
           allow-list can neither probe passwords nor make us spend CPU hashing their guesses)
        3. wrong password -> ESME_RINVPASWD
        4. bind type not allowed -> ESME_RBINDFAIL

        ``reveal`` False (``smpp.reveal_bind_errors``): 1 and 2 answer ESME_RINVPASWD too, so
        the answers do not tell which system_ids exist; the reason (for the log) still does.

        ``max_binds`` is left to the caller, which knows the live sessions
        (see :meth:`bind_limit_reached`).
        """
        account = self._accounts.get(system_id)
        if account is None:
            return AuthResult(
                ESME_RINVSYSID if reveal else ESME_RINVPASWD, None, "unknown system_id"
            )
        if not account.ip_allowed(peer_ip):
            return AuthResult(
                ESME_RBINDFAIL if reveal else ESME_RINVPASWD,
                account,
                f"peer address {peer_ip} not allowed",
            )
        if not self._password_ok(account, password):
            return AuthResult(ESME_RINVPASWD, account, "wrong password")
        if bind_type not in account.allowed_bind_types:
            return AuthResult(ESME_RBINDFAIL, account, f"bind type {bind_type.value} not allowed")
        return AuthResult(ESME_ROK, account, "ok")

    def bind_limit_reached(self, system_id: str, current: int) -> bool:
        """True if an account with ``current`` bound sessions may not bind another one.
        Unknown accounts are always at their limit."""
        account = self._accounts.get(system_id)
        return account is None or current >= account.max_binds


def address_key(ip: str) -> str:
    """Group addresses the way an attacker controls them: one IPv4 address, or one IPv6 /64
    (a single host usually owns a whole /64, so per-address counting would be trivial to dodge)."""
    addr = _parse_ip(ip)
    if addr is None:
        return ip
    if isinstance(addr, IPv6Address):
        return str(IPv6Network((addr, 64), strict=False))
    return str(addr)


@dataclass(slots=True)
class _Failures:
    count: int
    last: float
    # failures by system_id: a success forgives only its own account's (issue 14, finding 7)
    by_account: dict[str, int] = field(default_factory=dict)


class BindThrottle:
    """Exponential delay for failed binds per source address, to slow password guessing.

    The n-th consecutive failure from an address is answered after
    ``base_delay * 2**(n-1)`` seconds, capped at ``max_delay``. A success resets the address;
    ``forget_after`` seconds without a failure do too. At most ``max_tracked`` addresses are
    remembered (least recently failing evicted first) so a scan from many addresses cannot grow
    memory without bound. Pure: the caller passes a monotonic ``now``.
    """

    def __init__(
        self,
        base_delay: float,
        max_delay: float,
        forget_after: float = 600.0,
        max_tracked: int = 10000,
    ) -> None:
        if base_delay < 0 or max_delay < 0:
            raise ValueError("delays must be >= 0")
        if max_tracked < 1:
            raise ValueError("max_tracked must be >= 1")
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.forget_after = forget_after
        self.max_tracked = max_tracked
        # Ordered by last failure time (oldest first) because entries move to the end on update.
        self._failures: OrderedDict[str, _Failures] = OrderedDict()

    def __len__(self) -> int:
        return len(self._failures)

    def _expire(self, now: float) -> None:
        while self._failures:
            oldest = next(iter(self._failures.values()))
            if now - oldest.last < self.forget_after:
                break
            self._failures.popitem(last=False)

    def failures(self, ip: str, now: float) -> int:
        """Consecutive failures currently remembered for ``ip``."""
        entry = self._failures.get(address_key(ip))
        if entry is None or now - entry.last >= self.forget_after:
            return 0
        return entry.count

    def delay_for(self, ip: str, now: float) -> float:
        """Seconds to wait before answering the failed bind just recorded for ``ip``
        (0 if none is recorded)."""
        n = self.failures(ip, now)
        if n == 0:
            return 0.0
        # Cap the exponent too: 2**n for a huge n would overflow a float.
        return min(self.base_delay * 2.0 ** min(n - 1, 64), self.max_delay)

    def record_failure(self, ip: str, now: float, system_id: str = "") -> float:
        """Count a failed bind from ``ip``; returns the delay to apply (as :meth:`delay_for`)."""
        self._expire(now)
        key = address_key(ip)
        entry = self._failures.pop(key, None)
        if entry is None:
            entry = _Failures(0, now)
        entry.count += 1
        entry.last = now
        by = entry.by_account
        if system_id in by or len(by) < 32:  # bounded; the rest count under ""
            by[system_id] = by.get(system_id, 0) + 1
        else:
            by[""] = by.get("", 0) + 1
        self._failures[key] = entry
        while len(self._failures) > self.max_tracked:
            self._failures.popitem(last=False)
        return self.delay_for(ip, now)

    def record_success(self, ip: str, system_id: str = "") -> None:
        """A successful bind forgives the address's earlier failures against the same account
        only: guesses against other accounts keep counting (issue 14, finding 7)."""
        key = address_key(ip)
        entry = self._failures.get(key)
        if entry is None:
            return
        entry.count -= entry.by_account.pop(system_id, 0)
        if entry.count <= 0:
            del self._failures[key]


@dataclass(slots=True)
class _Lock:
    failures: int = 0
    until: float = 0.0
    # address keys that bound to this account successfully: not locked out by others' guesses
    known: OrderedDict[str, None] = field(default_factory=OrderedDict)


class BindLockout:
    """Per-account lockout: ``max_failures`` consecutive wrong passwords for an account (from
    any address) lock it for ``duration`` seconds. While locked, binds to it are refused
    without checking the password (no hashing), except from addresses that bound to it
    successfully before (at most ``max_known`` per account, most recent kept): an attacker
    guessing cannot lock the account's own ESMEs out. A success resets the count. 0 failures
    disables it. Pure: the caller passes a monotonic ``now``.
    """

    def __init__(
        self, max_failures: int, duration: float, max_known: int = 64, max_accounts: int = 10000
    ) -> None:
        self.max_failures = max_failures
        self.duration = duration
        self.max_known = max_known
        self.max_accounts = max_accounts
        self._locks: OrderedDict[str, _Lock] = OrderedDict()

    def locked(self, system_id: str, ip: str, now: float) -> bool:
        lock = self._locks.get(system_id)
        if lock is None or lock.until <= now:
            return False
        return address_key(ip) not in lock.known

    def record_failure(self, system_id: str, now: float) -> bool:
        """A wrong password for ``system_id``; True when this failure locks the account."""
        if self.max_failures <= 0:
            return False
        lock = self._locks.get(system_id)
        if lock is None:
            lock = self._locks[system_id] = _Lock()
            while len(self._locks) > self.max_accounts:
                self._locks.popitem(last=False)
        if lock.until and lock.until <= now:  # an expired lock starts a new count
            lock.until = 0.0
            lock.failures = 0
        lock.failures += 1
        if lock.failures >= self.max_failures and lock.until <= now:
            lock.until = now + self.duration
            return True
        return False

    def record_success(self, system_id: str, ip: str) -> None:
        lock = self._locks.get(system_id)
        if lock is None:
            lock = self._locks[system_id] = _Lock()
        lock.failures = 0  # a lock in force stays: the guesser is still locked out
        key = address_key(ip)
        lock.known.pop(key, None)
        lock.known[key] = None
        while len(lock.known) > self.max_known:
            lock.known.popitem(last=False)
