"""The test harness's own promises: a hang in a bridge's loop fails with where it hangs."""

from __future__ import annotations

import asyncio

import pytest

from tests.harness.loop import LoopThread


def test_a_call_that_times_out_names_where_the_loop_s_tasks_wait() -> None:
    lt = LoopThread()

    async def stuck() -> None:
        await asyncio.sleep(30)

    try:
        with pytest.raises(TimeoutError, match=r"stuck \(test_harness_loop.py:\d+\)"):
            lt.call(stuck(), timeout=0.2)
    finally:
        for task in asyncio.all_tasks(lt.loop):
            lt.loop.call_soon_threadsafe(task.cancel)
        lt.close_loop()
