"""Reassembly of concatenated messages: a sans-IO buffer of received parts, with timeouts.

The SMPP layer decodes each part (UDH IE 0x00 / 0x08 or SAR TLVs) into a :class:`Fragment`, the
caller persists it through the Store (``StoredPart``, keyed by :meth:`PartKey.as_str`), answers
the ESME, and hands the fragment to :meth:`ReassemblyBuffer.add`. No I/O, no clock reads, no
asyncio here: time is passed in (``Fragment.received_at`` and the ``now`` of :meth:`expire`).

Why every way out is reported (at-least-once). Every part already got its own submit_sm_resp
with ESME_ROK and its own message_id, so the ESME expects a receipt for each of those ids. A
message that never becomes whole therefore must not vanish: whatever leaves the buffer without
being assembled — timed out, evicted by the memory bound, superseded by a reused reference —
comes back as an :class:`Incomplete` carrying every part received (including retransmitted
duplicates), and the caller ends it with a failure receipt for every id. Likewise a duplicate
part's earlier id rides along with the :class:`Assembled` message (:attr:`Assembled.extra_ids`)
so that it, too, gets a receipt.

Timeout is measured from the *first* part of a set (as Kannel does), not from the latest one: an
ESME trickling parts cannot keep a set alive forever, and the deadline is fixed when the set
opens, which keeps the pending sets ordered by deadline in plain insertion order (an ordered
dict), so :meth:`ReassemblyBuffer.expire` costs O(expired), and eviction of the oldest set is
O(1). A part that arrives at or after its set's deadline does not join the set: the old set is
ended as timed out and the part opens a new one, so the result does not depend on how often the
caller runs :meth:`~ReassemblyBuffer.expire`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal, Protocol

__all__ = [
    "MAX_PARTS",
    "Assembled",
    "Fragment",
    "Incomplete",
    "IncompleteReason",
    "PartKey",
    "ReassemblyBuffer",
]

MAX_PARTS = 255
"""Most parts one message can have: the total is one octet in both UDH IEs and the SAR TLV."""

IncompleteReason = Literal["timeout", "evicted", "superseded"]


# --------------------------------------------------------------------------------------- keys

_SEP = "|"


def _escape(field: str) -> str:
    # '%' first, so that the '%' introduced for '|' is not escaped again.
    return field.replace("%", "%25").replace("|", "%7C")


def _unescape(field: str, text: str) -> str:
    if "%" not in field:
        return field
    head, *rest = field.split("%")
    out = [head]
    for chunk in rest:
        code = chunk[:2].upper()
        if code == "25":
            out.append("%")
        elif code == "7C":
            out.append("|")
        else:
            raise ValueError(f"bad escape in part key {text!r}")
        out.append(chunk[2:])
    return "".join(out)


@dataclass(frozen=True, slots=True)
class PartKey:
    """What identifies the parts of one concatenated message.

    The reference alone is not enough: it is per ESME (account) and, per 3GPP TS 23.040, per
    originator and recipient; ESMEs reuse references after 256 (or 65 536) messages.
    """

    account: str
    source: str
    destination: str
    reference: int

    def as_str(self) -> str:
        """Stable text form ``account|source|destination|reference`` for ``StoredPart.key``.

        Alphanumeric senders (and in theory any field) may contain ``|``, so ``%`` and ``|``
        inside a field are percent-escaped (``%25``, ``%7C``); keys without them read plainly.
        """
        return (
            f"{_escape(self.account)}{_SEP}{_escape(self.source)}{_SEP}"
            f"{_escape(self.destination)}{_SEP}{self.reference}"
        )

    @classmethod
    def from_str(cls, text: str) -> PartKey:
        """The inverse of :meth:`as_str`; ValueError on text it could not have produced."""
        fields = text.split(_SEP)
        if len(fields) != 4:
            raise ValueError(f"part key needs 4 '|'-separated fields: {text!r}")
        account, source, destination, ref_text = fields
        try:
            reference = int(ref_text)
        except ValueError:
            raise ValueError(f"bad reference in part key {text!r}") from None
        if str(reference) != ref_text:
            raise ValueError(f"bad reference in part key {text!r}")
        return cls(
            _unescape(account, text),
            _unescape(source, text),
            _unescape(destination, text),
            reference,
        )

    def __str__(self) -> str:
        return self.as_str()


# --------------------------------------------------------------------------------------- parts


class _StoredPartLike(Protocol):
    """The fields of ``bridge.core.store.StoredPart`` (core does not import the store)."""

    @property
    def key(self) -> str: ...
    @property
    def seqnum(self) -> int: ...
    @property
    def total(self) -> int: ...
    @property
    def message_id(self) -> str: ...
    @property
    def payload(self) -> bytes: ...
    @property
    def received_at(self) -> float: ...
    @property
    def meta(self) -> bytes: ...


@dataclass(frozen=True, slots=True)
class Fragment:
    """One received part of a concatenated message.

    ``payload`` is the part's user data without the concatenation IE (still encoded);
    ``message_id`` is the id this part got in its submit_sm_resp; ``meta`` is whatever the
    caller needs of the first part (addresses, data_coding, registered_delivery …), serialised
    by the caller and opaque here.
    """

    key: PartKey
    seqnum: int  # 1-based
    total: int
    message_id: str
    payload: bytes
    received_at: float
    meta: bytes = b""

    @classmethod
    def from_stored(cls, part: _StoredPartLike) -> Fragment:
        """A fragment from a ``StoredPart`` (for :meth:`ReassemblyBuffer.restore`)."""
        return cls(
            key=PartKey.from_str(part.key),
            seqnum=part.seqnum,
            total=part.total,
            message_id=part.message_id,
            payload=part.payload,
            received_at=part.received_at,
            meta=part.meta,
        )


class _PartIds:
    """The ids a set of parts was given, shared by :class:`Assembled` and :class:`Incomplete`:
    every one of them must end in a receipt."""

    __slots__ = ()
    fragments: tuple[Fragment, ...]
    replaced: tuple[Fragment, ...]

    @property
    def part_ids(self) -> list[str]:
        """The message_id of each part kept, in part order (``Message.part_ids``)."""
        return [f.message_id for f in self.fragments]

    @property
    def extra_ids(self) -> list[str]:
        """Ids of replaced duplicate parts: each must get a receipt too."""
        return [f.message_id for f in self.replaced]

    @property
    def all_ids(self) -> list[str]:
        """Every id the ESME was given: :attr:`part_ids` + :attr:`extra_ids`."""
        return self.part_ids + self.extra_ids


@dataclass(frozen=True, slots=True)
class Assembled(_PartIds):
    """All parts of a message are present.

    ``fragments`` are ordered by seqnum 1..total (for a retransmitted part, the latest copy).
    ``replaced`` holds the earlier copies of retransmitted parts whose message_id differs from
    the copy kept: the ESME was given those ids too and expects receipts for them.
    """

    key: PartKey
    fragments: tuple[Fragment, ...]
    replaced: tuple[Fragment, ...] = ()

    @property
    def payload(self) -> bytes:
        """The parts' payloads concatenated in part order (still encoded)."""
        return b"".join(f.payload for f in self.fragments)

    @property
    def first(self) -> Fragment:
        """Part 1 (its ``meta`` carries the first-part fields)."""
        return self.fragments[0]

    @property
    def total(self) -> int:
        return len(self.fragments)


@dataclass(frozen=True, slots=True)
class Incomplete(_PartIds):
    """A message that left the buffer without all its parts: it must end in a failure receipt
    for every id in :attr:`all_ids` (never a silent drop).

    ``reason``: ``"timeout"`` (the first part is ``timeout`` seconds old), ``"evicted"`` (the
    buffer held ``max_pending`` sets and this was the oldest) or ``"superseded"`` (a part with
    the same key but a different total arrived: the ESME reused the reference).
    """

    key: PartKey
    fragments: tuple[Fragment, ...]  # the parts received, ordered by seqnum
    total: int
    reason: IncompleteReason
    replaced: tuple[Fragment, ...] = ()  # earlier copies of retransmitted parts, other ids

    @property
    def missing(self) -> list[int]:
        """The seqnums never received."""
        have = {f.seqnum for f in self.fragments}
        return [n for n in range(1, self.total + 1) if n not in have]


# --------------------------------------------------------------------------------------- buffer


class _PendingSet:
    __slots__ = ("deadline", "parts", "replaced", "total")

    def __init__(self, total: int, deadline: float) -> None:
        self.total = total
        self.deadline = deadline
        self.parts: dict[int, Fragment] = {}
        self.replaced: list[Fragment] = []

    def put(self, fragment: Fragment) -> None:
        earlier = self.parts.get(fragment.seqnum)
        if earlier is not None and earlier.message_id != fragment.message_id:
            replaced = self.replaced
            replaced.append(earlier)
            # A copy coming back with an id already set aside: keep each id exactly once.
            self.replaced = [f for f in replaced if f.message_id != fragment.message_id]
        self.parts[fragment.seqnum] = fragment

    def ordered(self) -> tuple[Fragment, ...]:
        parts = self.parts
        return tuple(parts[n] for n in sorted(parts))

    def incomplete(self, key: PartKey, reason: IncompleteReason) -> Incomplete:
        return Incomplete(key, self.ordered(), self.total, reason, tuple(self.replaced))


def _check(fragment: Fragment) -> None:
    total, seqnum = fragment.total, fragment.seqnum
    if not 1 <= total <= MAX_PARTS:
        raise ValueError(f"total parts {total} outside 1..{MAX_PARTS}")
    if not 1 <= seqnum <= total:
        raise ValueError(f"part number {seqnum} outside 1..{total}")


class ReassemblyBuffer:
    """Pending concatenated messages, keyed by :class:`PartKey`.

    ``timeout``: seconds from a set's first part until it is given up (see the module docstring
    for why from the first part). ``max_pending``: most sets held at once; beyond it the oldest
    set is evicted (as an :class:`Incomplete`) — the memory bound against ESMEs that send first
    parts and never the rest.

    Duplicates: a part whose seqnum is already held (an ESME retransmission after a lost
    submit_sm_resp) replaces the earlier copy; if the ids differ, the earlier copy is kept in
    ``replaced`` and reported with the outcome, so every id the ESME got is answered. A part
    arriving after its message was assembled opens a new set, which will time out and earn a
    failure receipt for its id — the ESME is answered either way.

    Reference reuse is detected only through a different ``total``; a reused reference with the
    same total and the old set still pending is indistinguishable from retransmissions.

    Note for the caller that persists parts under ``PartKey.as_str()``: on ``"superseded"`` the
    new part shares the key with the superseded ones, so drop the old parts before storing the
    new one (or store it again after ``drop_parts``).
    """

    __slots__ = ("_fragments", "_max_pending", "_overdue", "_sets", "_timeout")

    def __init__(self, timeout: float = 60.0, max_pending: int = 100_000) -> None:
        if not timeout > 0:
            raise ValueError(f"timeout must be > 0, not {timeout}")
        if max_pending < 1:
            raise ValueError(f"max_pending must be >= 1, not {max_pending}")
        self._timeout = float(timeout)
        self._max_pending = max_pending
        # Insertion order = opening order = deadline order (deadline = first part + timeout).
        self._sets: dict[PartKey, _PendingSet] = {}
        self._fragments = 0  # parts held, one per (set, seqnum)
        # Sets displaced during restore(), which returns only what is complete: handed out by
        # the next expire() so that they too end in receipts.
        self._overdue: list[Incomplete] = []

    @property
    def timeout(self) -> float:
        return self._timeout

    @property
    def max_pending(self) -> int:
        return self._max_pending

    def __len__(self) -> int:
        """Pending (incomplete) sets."""
        return len(self._sets)

    def __contains__(self, key: object) -> bool:
        return key in self._sets

    @property
    def fragment_count(self) -> int:
        """Parts held in pending sets (one per seqnum; replaced duplicates not counted)."""
        return self._fragments

    # ----------------------------------------------------------------------------- adding

    def add(self, fragment: Fragment) -> tuple[Assembled | None, list[Incomplete]]:
        """Take one part.

        Returns the :class:`Assembled` message if this part completed it (else None), and the
        sets this part displaced — superseded by a new ``total`` under the same key, timed out
        (the pending set's deadline had passed at ``fragment.received_at``), or evicted by the
        ``max_pending`` bound — each to be ended with failure receipts.

        Raises ValueError, before changing anything, when ``total`` is outside 1..255 or
        ``seqnum`` outside 1..total (the caller answers the ESME with an error at once).
        """
        _check(fragment)
        displaced: list[Incomplete] = []
        assembled = self._add(fragment, displaced)
        return assembled, displaced

    def _add(self, fragment: Fragment, displaced: list[Incomplete]) -> Assembled | None:
        key = fragment.key
        sets = self._sets
        pending = sets.get(key)
        if pending is not None:
            reason: IncompleteReason | None = None
            if pending.total != fragment.total:
                reason = "superseded"
            elif fragment.received_at >= pending.deadline:
                reason = "timeout"
            if reason is not None:
                del sets[key]
                self._fragments -= len(pending.parts)
                displaced.append(pending.incomplete(key, reason))
                pending = None

        if pending is None:
            if fragment.total == 1:
                return Assembled(key, (fragment,))
            pending = _PendingSet(fragment.total, fragment.received_at + self._timeout)
            pending.put(fragment)
            sets[key] = pending
            self._fragments += 1
            while len(sets) > self._max_pending:
                oldest_key = next(iter(sets))
                oldest = sets.pop(oldest_key)
                self._fragments -= len(oldest.parts)
                displaced.append(oldest.incomplete(oldest_key, "evicted"))
            return None

        held = len(pending.parts)
        pending.put(fragment)
        if len(pending.parts) == held:  # a duplicate: nothing new
            return None
        self._fragments += 1
        if len(pending.parts) < pending.total:
            return None
        del sets[key]
        self._fragments -= pending.total
        return Assembled(key, pending.ordered(), tuple(pending.replaced))

    # ----------------------------------------------------------------------------- time

    def expire(self, now: float) -> list[Incomplete]:
        """Sets whose first part arrived ``timeout`` or more seconds before ``now`` (reason
        ``"timeout"``), oldest first, removed from the buffer; plus anything :meth:`restore`
        displaced. O(number returned).

        The deadline is inclusive (``now >= first + timeout``) so that a caller sleeping until
        :meth:`next_deadline` and then calling ``expire`` gets the set and does not spin.
        Deadlines are kept in arrival order; if the wall clock steps back, a set opened after
        the step waits behind older ones, i.e. at most by the size of the step.
        """
        out = self._overdue
        self._overdue = []
        sets = self._sets
        while sets:
            key = next(iter(sets))
            pending = sets[key]
            if pending.deadline > now:
                break
            del sets[key]
            self._fragments -= len(pending.parts)
            out.append(pending.incomplete(key, "timeout"))
        return out

    def next_deadline(self) -> float | None:
        """When :meth:`expire` will next have something: the oldest set's first part +
        ``timeout``; ``-inf`` when restore left displaced sets to hand out now; None if empty."""
        if self._overdue:
            return -math.inf
        for pending in self._sets.values():
            return pending.deadline
        return None

    # ----------------------------------------------------------------------------- restart

    def restore(self, fragments: Iterable[Fragment]) -> list[Assembled]:
        """Rebuild after a restart from the stored parts (any order).

        The parts are replayed in ``received_at`` order through the same rules as :meth:`add`,
        so deadlines, duplicates and supersession come out as they did before the restart.
        Sets that are already complete (the process died between storing the last part and
        completing the message) are returned for processing. Sets displaced on the way
        (superseded, timed out, evicted) are not dropped: the next :meth:`expire` returns them,
        and sets already past their deadline come out of that call too.

        Invalid parts raise ValueError (they cannot have been stored by :meth:`add`'s caller).
        """
        ordered = sorted(fragments, key=lambda f: f.received_at)
        for fragment in ordered:
            _check(fragment)
        done: list[Assembled] = []
        for fragment in ordered:
            assembled = self._add(fragment, self._overdue)
            if assembled is not None:
                done.append(assembled)
        return done
