"""What the two stores share, so that one piece of code serves both: the packed form of a message
and of a queued receipt or MO (the embedded store's journal records and snapshots, the Redis
store's values: msgpack arrays in field order), the errors both raise, and ``async with``.

It exists because :mod:`bridge.store.redis` used to import all of this from
:mod:`bridge.store.embedded`, and each store repeated the rest."""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Any, Self

import msgspec

from bridge.core.model import Address, InboundMessage, Message, MessageState, Receipt

__all__ = [
    "DuplicateMessage",
    "OpenClose",
    "StoreUnavailable",
    "ignore",
    "item_from_wire",
    "item_to_wire",
    "message_from_blob",
    "message_to_blob",
]

_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder().decode


class DuplicateMessage(ValueError):
    """A message id (or one of its part ids) is already stored."""


class StoreUnavailable(RuntimeError):
    """The store cannot take writes (closed, or its journal / its server failed)."""


class OpenClose(abc.ABC):
    """``async with store:`` opens the store and closes it."""

    @abc.abstractmethod
    async def open(self) -> None:
        """Make the store ready for reads and writes."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Finish what is queued and release the store."""

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def ignore(arg: Any, result: Any, error: BaseException | None) -> None:
    """The ``done`` callback of a write nobody waits for."""
    return None


# --------------------------------------------------------------------------- codecs


def _text_out(text: str | None) -> str | bytes | None:
    """Text as msgpack can carry it: a lone UTF-16 surrogate (half of a broken UCS2 pair from an
    ESME) is not valid UTF-8, so such text travels as UTF-16-BE bytes (``text`` is never bytes
    otherwise: binary content has ``text`` None)."""
    if text is None or text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-16-be", "surrogatepass")
    return text


def _text_in(value: str | bytes | None) -> str | None:
    if isinstance(value, bytes):
        return value.decode("utf-16-be", "surrogatepass")
    return value


def message_to_blob(m: Message) -> bytes:
    """A message as a msgpack array in field order (addresses as [digits, ton, npi])."""
    s, d = m.source, m.destination
    return _encode(
        (
            m.id, m.account, (s.digits, s.ton, s.npi), (d.digits, d.ton, d.npi),
            _text_out(m.text), m.data_coding, m.binary, m.udh, m.flash, m.registered_delivery,
            m.priority, m.esm_class, m.protocol_id, m.service_type, m.part_ids, m.created_at,
            m.schedule_at, m.expire_at, int(m.state), m.attempts, m.next_attempt_at, m.route,
            m.provider, m.provider_message_id, m.error_code, m.done_at,
        )
    )  # fmt: skip


def message_from_blob(blob: bytes) -> Message:
    t = _decode(blob)
    s, d = t[2], t[3]
    return Message(
        t[0], t[1], Address(s[0], s[1], s[2]), Address(d[0], d[1], d[2]), _text_in(t[4]),
        t[5], t[6], t[7], t[8], t[9], t[10], t[11], t[12], t[13], t[14], t[15], t[16], t[17],
        MessageState(t[18]), t[19], t[20], t[21], t[22], t[23], t[24], t[25],
    )  # fmt: skip


def _address(a: Address) -> tuple[str, int, int]:
    return (a.digits, a.ton, a.npi)


def item_to_wire(item: Receipt | InboundMessage) -> tuple[Any, ...]:
    if isinstance(item, Receipt):
        return (
            "r", item.account, item.message_id, _address(item.source),
            _address(item.destination), int(item.state), item.error_code, item.submitted_at,
            item.done_at, _text_out(item.text_head), item.intermediate, item.network_error,
        )  # fmt: skip
    if isinstance(item, InboundMessage):
        return (
            "m", item.account, _address(item.source), _address(item.destination),
            _text_out(item.text), item.binary, item.received_at, item.provider,
        )  # fmt: skip
    raise TypeError(f"not a Receipt or InboundMessage: {type(item).__name__}")


def item_from_wire(t: Sequence[Any]) -> Receipt | InboundMessage:
    if t[0] == "r":
        ne = t[11]
        return Receipt(
            t[1], t[2], Address(*t[3]), Address(*t[4]), MessageState(t[5]), t[6], t[7], t[8],
            _text_in(t[9]) or "", t[10], (ne[0], ne[1]) if ne else None,
        )  # fmt: skip
    return InboundMessage(
        t[1], Address(*t[2]), Address(*t[3]), _text_in(t[4]), t[5], t[6], t[7]
    )

