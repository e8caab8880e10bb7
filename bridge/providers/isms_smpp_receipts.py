"""iSMS over SMPP, receipts: upstream deliver_sm read, and the parts of a long message correlated.

Why this module: a receipt from the upstream goes through two steps that know nothing of the
connection — reading what the deliver_sm says (TLVs, then the Appendix B text) and, for a message
sent in several parts, turning the parts' receipts into the one report the bridge wants. The
adapter (:mod:`bridge.providers.isms_smpp`) only feeds them.

Receipts from the upstream (deliver_sm / data_sm with esm_class 0x04, 0x08 or 0x20)
    The TLVs first (receipted_message_id, message_state, network_error_code), then the Appendix
    B text (:func:`bridge.smpp.receipt_text.parse_receipt_text`: any field order, 10/12-digit dates,
    ``ACKED``/``BUFFRED``… as intermediate). Ids written in another base than in the
    submit_sm_resp are matched through ``receipt_id_format`` (restart-proof) and, with the
    default ``"same"``, through :func:`~bridge.smpp.receipt_text.receipt_id_variants` against the
    ids awaiting a receipt. ``err`` is the text's err (decimal, or hex with letters), else the
    network_error_code's code, capped at 999. The deliver_sm_resp goes back only after the
    report was handed to the bridge (which stores it); an unparseable receipt or one for an
    unknown id is answered ESME_ROK (it will never become matchable: refusing it would only make
    the SMSC resend it for ever), logged and counted by the bridge.

Long messages: correlation and partial sends
    The dispatcher stores one provider id per message: ours is the first part's upstream id.
    The other parts' ids map to it in memory (:class:`PartCorrelator`), and the message's report
    is *aggregated*: the first failure of any part ends it (with that part's stat and err); it
    is DELIVRD only when every part reported DELIVRD (ACCEPTD when some said ACCEPTD); the first
    intermediate report goes through once. The aggregation lives as long as the process
    (bounded); every part's id is also correlated durably (``Outcome.other_ids``), so after a
    restart a receipt for any part still finds the message, and the first final one decides.
    A part refused permanently after earlier parts were taken cannot be recalled: the message
    ends UNDELIV with that part's status as ``err`` (no failover, which would deliver the first
    parts twice). A part that fails transiently leaves the parts already taken recorded, and
    the dispatcher's retry sends only the remaining ones (with the same reference).
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from dataclasses import dataclass, field

from bridge.core.model import DeliveryReport, MessageState
from bridge.smpp.pdu import Pdu
from bridge.smpp.receipt_text import ERR_MAX, parse_receipt_text, receipt_id_variants
from bridge.smpp.text import TextError
from bridge.smpp.udh import parse_udh

__all__ = [
    "RECEIPT_ESM_TYPES",
    "PartCorrelator",
    "UpstreamReceipt",
    "is_receipt",
    "parse_receipt",
    "user_data",
]

#: esm_class message types (bits 5–2) that carry a delivery report: SMSC delivery receipt,
#: SME delivery acknowledgement, intermediate delivery notification.
RECEIPT_ESM_TYPES = frozenset({0x04, 0x08, 0x20})


def is_receipt(pdu: Pdu) -> bool:
    return (pdu.get("esm_class", 0) & 0x3C) in RECEIPT_ESM_TYPES


@dataclass(frozen=True, slots=True)
class UpstreamReceipt:
    """What a receipt deliver_sm said: the upstream id (as written), state, err, time."""

    id: str
    state: MessageState
    error_code: int = 0
    done_at: float | None = None
    network_error: tuple[int, int] | None = None


def user_data(pdu: Pdu) -> bytes:
    """A deliver_sm's user data: short_message or, when that is empty, message_payload."""
    data = pdu.get("short_message", b"") or pdu.tlv("message_payload", b"")
    return bytes(data)


def parse_receipt(pdu: Pdu) -> UpstreamReceipt | None:
    """Read a receipt deliver_sm/data_sm: TLVs first, then the Appendix B text; None when it
    names no id or no state we understand."""
    data = user_data(pdu)
    if pdu.get("esm_class", 0) & 0x40 and data:
        with contextlib.suppress(TextError):
            data = parse_udh(data)[1]
    parsed = parse_receipt_text(data.decode("latin-1")) if data else None
    rid = pdu.tlv("receipted_message_id") or (parsed.id if parsed is not None else None)
    if not rid:
        return None
    state: MessageState | None = None
    tlv_state = pdu.tlv("message_state")
    if tlv_state is not None and 1 <= tlv_state <= 8:
        state = MessageState(tlv_state)
    elif parsed is not None and parsed.state is not None:
        state = parsed.state
    elif pdu.get("esm_class", 0) & 0x3C == 0x20:
        state = MessageState.ENROUTE  # an intermediate notification without a readable state
    if state is None:
        return None
    network_error: tuple[int, int] | None = None
    raw_net = pdu.tlv("network_error_code")
    if isinstance(raw_net, bytes) and len(raw_net) == 3:
        network_error = (raw_net[0], int.from_bytes(raw_net[1:], "big"))
    err = parsed.err if parsed is not None and parsed.err is not None else None
    if err is None:
        err = network_error[1] if network_error is not None else 0
    return UpstreamReceipt(
        id=str(rid).strip(),
        state=state,
        error_code=min(max(err, 0), ERR_MAX),
        done_at=parsed.done_date if parsed is not None else None,
        network_error=network_error,
    )


_SUCCESS = frozenset({MessageState.DELIVERED, MessageState.ACCEPTED})


@dataclass(slots=True)
class PartGroup:
    """The parts of one message that asked for receipts, and what each part reported."""

    message_id: str
    total: int
    first_id: str = ""
    part_ids: list[str] = field(default_factory=list)
    finals: dict[int, UpstreamReceipt] = field(default_factory=dict)
    intermediate_sent: bool = False
    done: bool = False


def _norm(upstream_id: str) -> str:
    """The index key of an id: leading zeros and letter case do not tell ids apart."""
    return upstream_id.lstrip("0").upper() or "0"


class PartCorrelator:
    """Upstream part ids awaiting a receipt → their message (the first part's id) and the
    aggregation of the parts' receipts into one report (see the module docstring).

    Ids are indexed without leading zeros and case (:func:`_norm`), so that a receipt id in
    another base is found through :func:`~bridge.smpp.receipt_text.receipt_id_variants`. Bounded:
    at most ``max_ids`` ids are kept; beyond, the oldest go (their receipts then pass through
    under their own id, which the bridge counts as unknown unless it is a first part).
    """

    def __init__(self, provider: str, max_ids: int = 500_000) -> None:
        self.provider = provider
        self.max_ids = max_ids
        self._ids: OrderedDict[str, tuple[PartGroup, int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._ids)

    def group(self, message_id: str, total: int) -> PartGroup:
        return PartGroup(message_id, total)

    def add(self, group: PartGroup, index: int, upstream_id: str) -> None:
        """Part ``index`` (0-based) was taken under ``upstream_id`` (canonical form)."""
        if index == 0:
            group.first_id = upstream_id
        group.part_ids.append(upstream_id)
        if not upstream_id or group.done:
            return
        self._ids[_norm(upstream_id)] = (group, index)
        while len(self._ids) > self.max_ids:
            self._ids.popitem(last=False)

    def close(self, group: PartGroup) -> None:
        """No report for this message is wanted any more (final, or ended by the send). The
        ids of parts whose receipt is still to come stay until it comes, so that it is
        swallowed here rather than counted as unknown by the bridge."""
        group.done = True
        for index, uid in enumerate(group.part_ids):
            if index in group.finals:
                self._forget(group, uid)

    def _forget(self, group: PartGroup, uid: str) -> None:
        key = _norm(uid)
        entry = self._ids.get(key)
        if entry is not None and entry[0] is group:
            del self._ids[key]

    def find(self, receipt_id: str, *, variants: bool) -> tuple[PartGroup, int] | None:
        entry = self._ids.get(_norm(receipt_id))
        if entry is None and variants:
            for v in receipt_id_variants(receipt_id)[1:]:
                entry = self._ids.get(_norm(v))
                if entry is not None:
                    break
        return entry

    def on_receipt(
        self, receipt: UpstreamReceipt, canonical: str, *, variants: bool
    ) -> DeliveryReport | None:
        """The report to hand to the bridge for this receipt, or None (nothing to say yet)."""
        entry = self.find(canonical, variants=variants)
        if entry is None:
            # Not awaited here (a restart, a message that asked for no receipt): as it is.
            return DeliveryReport(
                self.provider,
                canonical,
                receipt.state,
                receipt.error_code,
                receipt.done_at,
                receipt.network_error,
            )
        group, index = entry
        if group.done:
            if receipt.state.is_final:
                self._forget(group, group.part_ids[index])
            return None
        if not receipt.state.is_final:
            if group.intermediate_sent or not group.first_id:
                return None
            group.intermediate_sent = True
            return DeliveryReport(
                self.provider, group.first_id, receipt.state, 0, receipt.done_at, None
            )
        group.finals[index] = receipt
        if receipt.state not in _SUCCESS:
            self.close(group)
            return DeliveryReport(
                self.provider,
                group.first_id,
                receipt.state,
                receipt.error_code,
                receipt.done_at,
                receipt.network_error,
            )
        if len(group.finals) < group.total:
            return None
        self.close(group)
        finals = list(group.finals.values())
        delivered = all(r.state is MessageState.DELIVERED for r in finals)
        times = [r.done_at for r in finals if r.done_at is not None]
        return DeliveryReport(
            self.provider,
            group.first_id,
            MessageState.DELIVERED if delivered else MessageState.ACCEPTED,
            0,
            max(times) if times else None,
            None,
        )
