"""What the simulators share (bridge/simulators/common.py): options read from a simulator's
constructor, and the Outbox of report timers and pushes."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from bridge.simulators.common import Outbox, read_options


class _Sim:
    def __init__(
        self,
        *,
        username: str = "user",
        rate: float = 1.5,
        reports: bool = True,
        push_url: str | None = None,
        clock: Callable[[], float] = lambda: 0.0,
        max_messages: int = 10,
    ) -> None:
        pass


def test_the_options_are_the_constructors_text_number_and_boolean_parameters() -> None:
    assert read_options({}, _Sim) == {
        "username": "user",
        "rate": 1.5,
        "reports": True,
        "push_url": None,
    }
    given = {"username": "u", "rate": "2", "reports": "off", "push_url": "", "clock": "x"}
    assert read_options(given, _Sim) == {
        "username": "u",
        "rate": 2.0,
        "reports": False,
        "push_url": None,
    }


def test_extra_and_strict_options() -> None:
    values = read_options({"key": "k"}, _Sim, extra={"key": "default"}, strict=True)
    assert values["key"] == "k"
    with pytest.raises(ValueError, match="unknown option"):
        read_options({"max_messages": "3"}, _Sim, strict=True)
    with pytest.raises(ValueError, match="not a number"):
        read_options({"rate": "fast"}, _Sim)


async def test_the_outbox_fires_timers_once_and_close_cancels_what_is_left() -> None:
    outbox = Outbox()
    fired: list[str] = []
    outbox.call_later(0.0, lambda: fired.append("now"))
    outbox.call_later(60.0, lambda: fired.append("later"))
    started = asyncio.Event()

    async def forever() -> None:
        started.set()
        await asyncio.sleep(3600)

    outbox.spawn(forever())
    await started.wait()
    await asyncio.sleep(0.01)
    assert fired == ["now"] and len(outbox.timers) == 1 and len(outbox.tasks) == 1
    await outbox.close()
    assert not outbox.timers and not outbox.tasks and fired == ["now"]


async def test_close_can_let_pushes_under_way_finish() -> None:
    outbox = Outbox()
    done: list[bool] = []

    async def push() -> None:
        await asyncio.sleep(0.01)
        done.append(True)

    outbox.spawn(push())
    await outbox.close(finish_pushes=True)
    assert done == [True]
