"""Which receipts an ESME asked for (registered_delivery, SMPP 3.4 §5.2.17), as a pure rule.

The flow around it (docs/architecture.md, "One message, socket to receipt", steps 5 and 6):
:mod:`bridge.core.reports` applies providers' reports and queues the receipts this rule asks
for; :mod:`bridge.core.delivery` sends them to bound ESMEs; the Appendix B text they carry is
:mod:`bridge.smpp.receipt_text`.
"""

from __future__ import annotations

from bridge.core.model import Message, MessageState, Receipt

__all__ = ["TEXT_HEAD_LENGTH", "receipts_for"]

TEXT_HEAD_LENGTH = 20
"""Appendix B: the receipt repeats the first 20 characters of the original message."""


# --------------------------------------------------------------------------- which receipts


_NOT_FAILURES = frozenset({MessageState.DELIVERED, MessageState.ACCEPTED})


def receipts_for(
    message: Message,
    state: MessageState,
    *,
    done_at: float,
    error_code: int = 0,
    intermediate: bool = False,
    network_error: tuple[int, int] | None = None,
) -> list[Receipt]:
    """The receipts the ESME asked for (registered_delivery, §8) when ``message`` reaches
    ``state``: one per part id, or none.

    * final outcome: sent when bits 1..0 are 01 (always) or 10 and the state is a failure
      (failure only: not DELIVERED, and not ACCEPTED, which a provider without delivery
      reports ends with once it took the message — that is not a delivery failure);
    * intermediate notification: sent only when bit 4 (0x10) is set. ENROUTE is always
      intermediate; ACCEPTED is intermediate when ``intermediate`` says so (§6: final, but often a
      progress step). For any other state ``intermediate`` is ignored: a final outcome is never
      silenced by a caller's mistake.
    """
    is_intermediate = state is MessageState.ENROUTE or (
        intermediate and state is MessageState.ACCEPTED
    )
    reg = message.registered_delivery
    if is_intermediate:
        wanted = bool(reg & 0x10)
    else:
        mode = reg & 0x03
        wanted = mode == 1 or (mode == 2 and state not in _NOT_FAILURES)
    if not wanted:
        return []
    head = message.text[:TEXT_HEAD_LENGTH] if message.text is not None else ""
    return [
        Receipt(
            account=message.account,
            message_id=part_id,
            source=message.destination,
            destination=message.source,
            state=state,
            error_code=error_code,
            submitted_at=message.created_at,
            done_at=done_at,
            text_head=head,
            intermediate=is_intermediate,
            network_error=network_error,
        )
        for part_id in (message.part_ids or [message.id])
    ]
