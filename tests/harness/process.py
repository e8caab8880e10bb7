"""``smpp-bridge run`` as a real process (``Daemon``) for the tests that kill, restart or signal
it; the ``daemon`` fixture (in the plugin) makes one per test on its own data directory."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import smpplib.exceptions

from tests.harness.daemon import bridge_config
from tests.harness.loop import free_port

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT = 20.0
# Errors an ESME sees when the SMSC dies under it.
LINK_DOWN = (smpplib.exceptions.ConnectionError, OSError, TimeoutError)


class Daemon:
    """``smpp-bridge run`` in a subprocess; output goes to a log file shown when a test fails."""

    def __init__(self, config: Path, data_dir: Path, log: Path) -> None:
        self.config, self.data_dir, self.log_path = config, data_dir, log
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.http_port = 0  # 0: any free port at each start; set it to keep one across restarts
        self.extra_args: list[str] = []  # more command-line arguments (--set …)

    def start(self) -> Daemon:
        self.port = free_port()
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with self.log_path.open("ab") as log:
            log.write(f"--- start on port {self.port}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "bridge", "run", "--config", str(self.config),
                 "--smpp-port", str(self.port), "--data-dir", str(self.data_dir),
                 "--http-port", str(self.http_port), *self.extra_args],
                cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"bridge exited with {self.proc.returncode}:\n{self.output()}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2),
            ):
                return self
            time.sleep(0.05)
        raise RuntimeError(f"bridge did not listen within {START_TIMEOUT}s:\n{self.output()}")

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]


def daemon_factory(tmp_path: Path) -> Iterator[Any]:
    """Factory: ``daemon(**bridge_config options)`` writes the config and returns a Daemon
    (not started). Its log is printed at teardown, which pytest shows for failed tests."""
    made: list[Daemon] = []

    def make(**config: Any) -> Daemon:
        data_dir = tmp_path / "data"
        path = tmp_path / "bridge.toml"
        path.write_text(bridge_config(data_dir, **config))
        d = Daemon(path, data_dir, tmp_path / "bridge.log")
        made.append(d)
        return d

    yield make
    for d in made:
        d.stop()
        print(d.output())


def cli(*args: str, config: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m bridge ARGS --config CONFIG`` (what ``smpp-bridge ARGS`` runs)."""
    argv = [sys.executable, "-m", "bridge", *args]
    if config is not None:
        argv += ["--config", str(config)]
    return subprocess.run(
        argv, cwd=REPO, capture_output=True, text=True, timeout=30, check=False,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )  # fmt: skip


def wait_for_log(d: Any, text: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in d.output():
            return
        time.sleep(0.05)
    raise AssertionError(f"{text!r} not logged:\n{d.output()}")
