"""Records for store tests: a message, a receipt, a stored part and a message with every field
set, each with defaults a test overrides by keyword. The store contract, the embedded and Redis
stores and the legacy import all build their data with these."""

from __future__ import annotations

from typing import Any

from bridge.core.model import Address, Message, MessageState, Receipt
from bridge.core.store import StoredPart

SENDER = Address("Bridge", 5, 0)
HANDSET = Address("4915112345678")


def msg(message_id: str, **kw: Any) -> Message:
    values: dict[str, Any] = {
        "id": message_id,
        "account": "demo",
        "source": SENDER,
        "destination": HANDSET,
        "text": f"hello {message_id}",
        "part_ids": [message_id],
        "created_at": 1000.0,
    }
    values.update(kw)
    return Message(**values)


def receipt(message_id: str, account: str = "demo", **kw: Any) -> Receipt:
    values: dict[str, Any] = {
        "account": account,
        "message_id": message_id,
        "source": HANDSET,
        "destination": SENDER,
        "state": MessageState.DELIVERED,
        "error_code": 0,
        "submitted_at": 1000.0,
        "done_at": 1010.0,
        "text_head": "hello",
    }
    values.update(kw)
    return Receipt(**values)


def part(key: str, seqnum: int, total: int = 3, **kw: Any) -> StoredPart:
    values: dict[str, Any] = {
        "key": key,
        "seqnum": seqnum,
        "total": total,
        "message_id": f"{key}-p{seqnum}",
        "payload": bytes([seqnum]) * 10,
        "received_at": 1000.0 + seqnum,
        "meta": b"\x00meta\xff",
    }
    values.update(kw)
    return StoredPart(**values)


def full_message() -> Message:
    """Every field set to something other than its default."""
    return Message(
        id="full-1",
        account="acct",
        source=Address("4930123456", 1, 1),
        destination=Address("ALPHA", 5, 0),
        text="Grüße € 😀 \ud83d",  # emoji and a lone surrogate from a broken UCS2 pair
        data_coding=8,
        binary=b"\x00\xff\x10bin",
        udh=b"\x05\x04\x0b\x84\x23\xf0",
        flash=True,
        registered_delivery=0x11,
        priority=2,
        esm_class=0x40,
        protocol_id=0x7F,
        service_type="CMT",
        part_ids=["full-1", "full-2"],
        created_at=1700000000.123456,
        schedule_at=1700000100.5,
        expire_at=1700086400.25,
        state=MessageState.UNDELIVERABLE,
        attempts=3,
        next_attempt_at=1700000200.75,
        route=["phlymail", "smsflatrate"],
        provider="phlymail",
        provider_message_id="PX-9",
        error_code=42,
        done_at=1700000300.0,
    )
