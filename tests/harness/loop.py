"""An asyncio event loop on a background thread, for tests that drive blocking ESME libraries
(smpplib) from the test thread against a server living in that loop; and the one bounded wait
every blocking test helper uses."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

T = TypeVar("T")

#: Every blocking socket operation or wait in the tests gives up after this long.
IO_TIMEOUT = 5.0


def wait_until(predicate: Callable[[], bool], timeout: float = IO_TIMEOUT) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` passes; returns whether it became true."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)


def free_port() -> int:
    """A TCP port nothing listens on now (for a server that must be told its port first)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LoopThread:
    """Starts a loop on a daemon thread; ``call`` / ``run`` execute work inside it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def submit(self, coro: Any) -> Future[Any]:
        """Start a coroutine in the loop without waiting for it."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def call(self, coro: Any, timeout: float = 10.0) -> Any:
        """Run a coroutine in the loop and wait for its result.

        A call that times out says where the loop's tasks were waiting, so that a hang seen
        once in a full run can be read from its log instead of reproduced."""
        try:
            return self.submit(coro).result(timeout)
        except TimeoutError as exc:
            raise TimeoutError(f"no result within {timeout} s; {self.task_stacks()}") from exc

    def task_stacks(self) -> str:
        """Where each task of the loop is suspended (read from this thread: best effort)."""
        lines: list[str] = []
        try:
            tasks = list(asyncio.all_tasks(self.loop))
        except RuntimeError:  # the task set changed while being read
            return "task stacks unavailable"
        for task in tasks:
            frames = task.get_stack(limit=8)
            where = " <- ".join(
                f"{f.f_code.co_name} ({f.f_code.co_filename.rsplit('/', 2)[-1]}:{f.f_lineno})"
                for f in reversed(frames)
            )
            lines.append(f"{task.get_name()}: {where or 'not started'}")
        return "tasks still pending:\n" + "\n".join(sorted(lines))

    def run(self, fn: Callable[[], T]) -> T:
        """Run a plain function in the loop (to read its state safely)."""

        async def wrapper() -> T:
            return fn()

        return self.call(wrapper())  # type: ignore[no-any-return]

    def close_loop(self) -> None:
        """Stop the loop and join the thread; close the loop once the thread has ended."""
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        if not self.thread.is_alive():
            self.loop.close()
