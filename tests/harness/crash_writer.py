"""Helper for the crash test: write to an EmbeddedStore forever, acknowledging each write on stdout.

Usage: ``python tests/harness/crash_writer.py STORE_DIR [PRODUCERS]``

Each producer adds messages (every fifth one through ``add_messages`` as a pair, like a
submit_multi) and queues a receipt now and then. A line is printed — and flushed — only AFTER
the awaited write returned, i.e. after the store said it is durable:

* ``m <message id>`` for each message,
* ``d <delivery id>`` for each queued receipt.

The test kills this process with SIGKILL at a random moment and checks that everything it
printed is in the store after it is opened again (journal replay).
"""

from __future__ import annotations

import asyncio
import itertools
import sys

from bridge.core.model import Address, Message, MessageState, Receipt
from bridge.store.embedded import EmbeddedStore


def _message(message_id: str) -> Message:
    return Message(
        id=message_id,
        account="crash",
        source=Address("Bridge", 5, 0),
        destination=Address("4915112345678"),
        text="crash test " + message_id,
        part_ids=[message_id],
        registered_delivery=1,
        route=["sandbox"],
    )


async def main(path: str, producers: int) -> None:
    store = EmbeddedStore(path, segment_bytes=256 * 1024)  # snapshots happen mid-run too
    await store.open()
    counter = itertools.count()
    out = sys.stdout

    def ack(line: str) -> None:
        out.write(line + "\n")
        out.flush()

    async def produce(worker: int) -> None:
        while True:
            n = next(counter)
            if n % 5 == 0:
                first, second = f"w{worker}-{n}a", f"w{worker}-{n}b"
                await store.add_messages([_message(first), _message(second)])
                ack(f"m {first}")
                ack(f"m {second}")
            else:
                message_id = f"w{worker}-{n}"
                await store.add_message(_message(message_id))
                ack(f"m {message_id}")
            if n % 7 == 0:
                receipt = Receipt(
                    account="crash",
                    message_id=f"w{worker}-{n}",
                    source=Address("4915112345678"),
                    destination=Address("Bridge", 5, 0),
                    state=MessageState.DELIVERED,
                    error_code=0,
                    submitted_at=0.0,
                    done_at=0.0,
                    text_head="crash test",
                )
                ack(f"d {await store.enqueue_delivery('crash', receipt, 0.0)}")

    await asyncio.gather(*(produce(w) for w in range(producers)))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 50))
