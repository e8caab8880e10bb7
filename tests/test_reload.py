"""SIGHUP: accounts and routes are reloaded from the config file without dropping binds."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from typing import Any

import pytest
import smpplib.exceptions
from bridge_harness import Esme
from test_crash_recovery import daemon  # noqa: F401  (the fixture)

OTHER = '''
[[accounts]]
system_id = "other"
password = "otherpw"
'''


def wait_for_log(d: Any, text: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in d.output():
            return
        time.sleep(0.05)
    raise AssertionError(f"{text!r} not logged:\n{d.output()}")


def bind_other(port: int) -> None:
    esme = Esme(port)
    try:
        esme.client.bind_transceiver(system_id="other", password="otherpw")
    finally:
        esme.close()


def test_sighup_adds_an_account_and_keeps_bound_sessions(daemon: Callable[..., Any]) -> None:  # noqa: F811
    d = daemon()
    d.config.write_text(d.config.read_text().replace('level = "warning"', 'level = "info"'))
    d.start()
    with Esme(d.port) as bound:
        bound.bind()
        with pytest.raises(smpplib.exceptions.PDUError):
            bind_other(d.port)
        d.config.write_text(d.config.read_text() + OTHER)
        assert d.proc is not None
        d.proc.send_signal(signal.SIGHUP)
        wait_for_log(d, "config.reloaded")
        bind_other(d.port)  # the new account binds
        assert bound.submit_ok(registered_delivery=0)  # the old session is still bound


def test_sighup_with_a_broken_file_keeps_the_running_config(daemon: Callable[..., Any]) -> None:  # noqa: F811
    d = daemon().start()
    good = d.config.read_text()
    d.config.write_text(good + "\n[smpp]\nprot = 1\n")
    assert d.proc is not None
    d.proc.send_signal(signal.SIGHUP)
    wait_for_log(d, "config.reload_failed")
    with Esme(d.port) as esme:
        esme.bind()
        assert esme.submit_ok(registered_delivery=0)


def test_sighup_applies_the_command_line_sets_again(daemon: Callable[..., Any]) -> None:  # noqa: F811
    """``--set`` overrides the file at start and after every reload, not only at start."""
    d = daemon()
    d.config.write_text(d.config.read_text().replace('level = "warning"', 'level = "info"'))
    d.extra_args = ["--set", "accounts.0.password=setpw"]
    d.start()

    def binds(password: str) -> bool:
        esme = Esme(d.port)
        try:
            esme.client.bind_transceiver(system_id="demo", password=password)
            return True
        except smpplib.exceptions.PDUError:
            return False
        finally:
            esme.close()

    assert binds("setpw") and not binds("demopass")
    d.config.write_text(d.config.read_text() + OTHER)
    assert d.proc is not None
    d.proc.send_signal(signal.SIGHUP)
    wait_for_log(d, "config.reloaded")
    bind_other(d.port)  # the file's change applied ...
    assert binds("setpw") and not binds("demopass")  # ... and the override still holds
