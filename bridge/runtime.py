"""Process-wide settings for a long-running bridge (``smpp-bridge run`` and the benchmarks).

**The cyclic garbage collector.** The bridge holds many long-lived objects (the store's live
messages and their indexes, queued receipts, sessions) and allocates several containers per
message. With CPython's default thresholds (a young collection every 700 net allocations, and
full collections that walk every tracked object) the collector cost as much as all the work of
accepting a submit_sm: ``python -m benchmarks.budget`` measured the accept path at 26–30 µs of
loop CPU per message with the defaults, 17 µs with a young-generation threshold of 10,000 and
15 µs with the collector off. :func:`tune_gc` keeps the collector (asyncio makes reference
cycles through exceptions and tracebacks, and they must still be freed) but runs it less often,
and freezes what start-up loaded (the store's state, imported modules) into the permanent
generation, so no collection walks it again.
"""

from __future__ import annotations

import gc

__all__ = ["GC_THRESHOLDS", "tune_gc"]

#: Young-generation threshold 10,000 (default 700); the older generations' defaults.
GC_THRESHOLDS = (10_000, 10, 10)


def tune_gc() -> None:
    """Call once the bridge has started (its state is loaded)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
