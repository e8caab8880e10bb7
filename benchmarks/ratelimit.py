"""The cost of the providers' rate limiter: the sliding window against aiolimiter's token bucket.

Usage: ``python -m benchmarks.ratelimit [--acquires 200000]``

Both limiters get a limit far above what the loop can ask, so no acquire ever waits: what is
timed is the bookkeeping of one acquire (µs per call, wall clock, one event loop), and the
window's cost is reported as a ratio to the bucket measured in the same run. The window is what
keeps every second at a provider's documented limit (README, "Reliability"); the bucket was what
the dispatcher used before.
"""

from __future__ import annotations

import argparse
import asyncio
import time

from aiolimiter import AsyncLimiter

from bridge.ratelimit import SlidingWindowLimiter


async def _per_acquire(limiter: AsyncLimiter | SlidingWindowLimiter, n: int) -> float:
    started = time.perf_counter()
    for _ in range(n):
        await limiter.acquire()
    return (time.perf_counter() - started) / n * 1e6


async def _run(n: int) -> tuple[float, float]:
    bucket = await _per_acquire(AsyncLimiter(10**12, 1.0), n)
    window = await _per_acquire(SlidingWindowLimiter(n + 1, 1.0), n)
    return bucket, window


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--acquires", type=int, default=200_000)
    args = parser.parse_args()
    bucket, window = asyncio.run(_run(args.acquires))
    print(
        f"token bucket (aiolimiter) {bucket:.2f} µs/acquire; sliding window {window:.2f} "
        f"µs/acquire; ratio {window / bucket:.2f}"
    )


if __name__ == "__main__":
    main()
