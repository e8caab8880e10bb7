"""The whole daemon for end-to-end tests.

:class:`BridgeThread` runs a real :class:`bridge.app.Bridge` (SQLite store in a temporary
directory, sandbox provider with a short delay, SMPP on a free loopback port) in an event loop
of its own thread, like :class:`~tests.harness.server.ServerThread`, so the blocking smpplib
client (:class:`~tests.harness.esme.Esme`) can drive it from the test thread.
:func:`bridge_config` writes the TOML it is built from, which the crash test also hands to a
``smpp-bridge run`` subprocess.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bridge.app import Bridge
from bridge.config import load_config_text
from tests.harness.esme import PASSWORD, SYSTEM_ID
from tests.harness.loop import LoopThread, free_port

# --------------------------------------------------------------------------- config


def toml_value(value: object) -> str:
    """A Python value as a TOML value (strings escaped; lists and inline tables too)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"no TOML for {value!r}")


def _table(header: str, values: Mapping[str, object]) -> str:
    lines = [header]
    lines += [f"{key} = {toml_value(value)}" for key, value in values.items()]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True, slots=True)
class Rule:
    """A sandbox rule: destinations ending in ``suffix`` get ``outcome``."""

    suffix: str
    outcome: str
    error_code: int = 0


def bridge_config(
    data_dir: Path,
    *,
    port: int = 0,
    http_port: int = 0,
    delay: float = 0.05,
    rules: Iterable[Rule] = (),
    account: Mapping[str, object] | None = None,
    pipeline: Mapping[str, object] | None = None,
    provider: Mapping[str, object] | None = None,
    admin: Mapping[str, object] | None = None,
    storage: Mapping[str, object] | None = None,
    http: Mapping[str, object] | None = None,
    extra: str = "",
) -> str:
    """TOML for one sandbox provider and the ``demo`` account (loopback, all bind types).

    ``account``, ``pipeline``, ``provider``, ``http`` and ``admin`` add or override keys of those
    tables; ``extra`` is appended as is (``[[routes]]`` tables, more providers).
    """
    smpp = {
        "host": "127.0.0.1",
        "port": port,
        "bind_failure_delay": 0.0,
        "bind_failure_delay_max": 0.0,
        "shutdown_timeout": 2.0,
    }
    acct: dict[str, object] = {"system_id": SYSTEM_ID, "password": PASSWORD, "max_binds": 10}
    acct.update(account or {})
    pipe: dict[str, object] = {"delivery_retry": 0.5, "retry_base": 0.05, "retry_max": 0.2}
    pipe.update(pipeline or {})
    prov: dict[str, object] = {"delay": delay}
    prov.update(provider or {})
    text = _table("[smpp]", smpp)
    text += _table("[http]", {"host": "127.0.0.1", "port": http_port, **(http or {})})
    text += _table("[admin]", {"host": "127.0.0.1", "port": 0, **(admin or {})})
    text += _table("[storage]", {"data_dir": str(data_dir), **(storage or {})})
    text += _table("[logging]", {"level": "warning", "format": "console"})
    text += _table("[pipeline]", pipe)
    text += _table("[[accounts]]", acct)
    text += _table("[providers.sandbox]", prov)
    for rule in rules:
        text += _table(
            "[[providers.sandbox.rules]]",
            {"suffix": rule.suffix, "outcome": rule.outcome, "error_code": rule.error_code},
        )
    return text + extra


# --------------------------------------------------------------------------- the daemon


class BridgeThread(LoopThread):
    """A :class:`Bridge` built from :func:`bridge_config` text, running in a background loop.

    ``Bridge.start()`` runs inside that loop (it creates tasks and the listener there).
    """

    def __init__(self, data_dir: Path, **config: Any) -> None:
        self.data_dir = data_dir
        self.config_text = bridge_config(data_dir, **config)
        super().__init__()
        self._stopped = False
        try:
            self.bridge: Bridge = self.call(self._start(), timeout=15.0)
        except BaseException:
            self.close_loop()
            raise
        self.port: int = self.bridge.smpp.ports["smpp"]

    async def _start(self) -> Bridge:
        bridge = Bridge(load_config_text(self.config_text))
        await bridge.start()
        return bridge

    def stored(self, message_id: str) -> Any:
        """The message as the store has it (read in the bridge's loop)."""
        return self.run(lambda: self.bridge.store.get_message_now(message_id))

    def has_receiver(self, system_id: str = SYSTEM_ID) -> bool:
        return self.run(lambda: self.bridge.smpp.has_receiver(system_id))

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        try:
            self.call(self.bridge.stop(), timeout=15.0)
        finally:
            self.close_loop()


StartBridge = Callable[..., BridgeThread]


def running(
    start_bridge: StartBridge, tmp_path: Path, **options: object
) -> tuple[BridgeThread, Path]:
    """A bridge on a fixed admin port, and the config file it runs with."""
    bt = start_bridge(admin={"port": free_port()}, **options)
    config = tmp_path / "bridge.toml"
    config.write_text(bt.config_text)
    return bt, config
