"""What the bulk-sending adapters share (README "Bulk sends"; :class:`~bridge.core.provider.
BatchProvider`): turning the one reply to a request for several numbers into each
destination's outcome, and remembering the messages that must not go in bulk again.

A bulk reply is one answer for every number of the request. Taken: each destination is taken
(final ``ACCEPTD`` where the provider gives no per-number report). A refusal names no number:
when the refusal is about *a* number (invalid, country not allowed), every destination is
retried on its own, so that only the bad number fails — the adapter remembers those messages in
:class:`AloneIds` and its ``batch_key`` then returns None for them; any other refusal (sender,
text, credentials) or transient answer concerns the request as a whole and is every
destination's outcome.
"""

from __future__ import annotations

from collections.abc import Collection

from bridge.core.model import MessageState, Outcome, OutcomeKind

__all__ = ["MAX_ALONE", "AloneIds", "must_go_alone", "split_outcome"]

#: Message ids remembered as "send alone" (oldest forgotten first).
MAX_ALONE = 100_000


class AloneIds:
    """Message ids that must go in single requests (bounded, insertion-ordered)."""

    def __init__(self, limit: int = MAX_ALONE) -> None:
        self.limit = limit
        self._ids: dict[str, None] = {}

    def __contains__(self, message_id: object) -> bool:
        return message_id in self._ids

    def __len__(self) -> int:
        return len(self._ids)

    def add(self, message_ids: Collection[str]) -> None:
        for message_id in message_ids:
            self._ids[message_id] = None
        while len(self._ids) > self.limit:
            del self._ids[next(iter(self._ids))]


def split_outcome(
    outcome: Outcome, count: int, *, per_number_codes: Collection[int], taken: str
) -> list[Outcome]:
    """Each of ``count`` destinations' outcome from one bulk reply (see the module docstring).
    ``taken`` is the detail of an accepted destination; the cost, if the reply gave one, is
    shared evenly."""
    if outcome.kind is OutcomeKind.PERMANENT and outcome.error_code in per_number_codes:
        retry = Outcome(
            OutcomeKind.TRANSIENT,
            detail=f"bulk request refused ({outcome.detail}): each number goes on its own",
            error_code=outcome.error_code,
        )
        return [retry] * count
    if outcome.kind is not OutcomeKind.ACCEPTED:
        return [outcome] * count
    share = outcome.cost / count if outcome.cost is not None else None
    each = Outcome(
        OutcomeKind.ACCEPTED,
        detail=taken,
        cost=share,
        parts=outcome.parts,
        state=MessageState.ACCEPTED,
    )
    return [each] * count


def must_go_alone(outcomes: list[Outcome], per_number_codes: Collection[int]) -> bool:
    """True when :func:`split_outcome` sent every destination back to be retried alone."""
    first = outcomes[0]
    return first.kind is OutcomeKind.TRANSIENT and first.error_code in per_number_codes
