"""SIGHUP: accounts and routes are reloaded from the config file without dropping binds."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import smpplib.exceptions

from tests.harness.daemon import bridge_config
from tests.harness.esme import Esme
from tests.harness.process import wait_for_log

OTHER = '''
[[accounts]]
system_id = "other"
password = "otherpw"
'''


def bind_other(port: int) -> None:
    esme = Esme(port)
    try:
        esme.client.bind_transceiver(system_id="other", password="otherpw")
    finally:
        esme.close()


def test_sighup_adds_an_account_and_keeps_bound_sessions(daemon: Callable[..., Any]) -> None:
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


def test_sighup_with_a_broken_file_keeps_the_running_config(daemon: Callable[..., Any]) -> None:
    d = daemon().start()
    good = d.config.read_text()
    d.config.write_text(good + "\n[smpp]\nprot = 1\n")
    assert d.proc is not None
    d.proc.send_signal(signal.SIGHUP)
    wait_for_log(d, "config.reload_failed")
    with Esme(d.port) as esme:
        esme.bind()
        assert esme.submit_ok(registered_delivery=0)


def test_sighup_applies_the_command_line_sets_again(daemon: Callable[..., Any]) -> None:
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


BAD_ROUTE = '''
[[routes]]
providers = ["sandbox"]
regex = "^49(1[5-7"
'''


def test_sighup_with_a_bad_route_regex_applies_nothing_of_the_file(
    daemon: Callable[..., Any],
) -> None:
    """Issue 14, finding 11: the new accounts were applied before the routes raised
    ("Exception in callback Bridge.reload"). Now the file is refused as a whole."""
    d = daemon().start()
    d.config.write_text(d.config.read_text() + OTHER + BAD_ROUTE)
    assert d.proc is not None
    d.proc.send_signal(signal.SIGHUP)
    wait_for_log(d, "config.reload_failed")
    assert "not a valid regular expression" in d.output()
    assert "Traceback" not in d.output() and "Exception in callback" not in d.output()
    with pytest.raises(smpplib.exceptions.PDUError):
        bind_other(d.port)  # the file's new account was not applied
    with Esme(d.port) as esme:
        esme.bind()
        assert esme.submit_ok(registered_delivery=0)


def test_check_config_and_run_refuse_a_bad_route_regex_with_file_line_and_key(
    tmp_path: Path,
) -> None:
    config = tmp_path / "bridge.toml"
    config.write_text(bridge_config(tmp_path / "data") + BAD_ROUTE)
    line = config.read_text().splitlines().index('regex = "^49(1[5-7"') + 1
    for command in ("check-config", "run"):
        proc = subprocess.run(
            [sys.executable, "-m", "bridge", command, "--config", str(config)],
            capture_output=True, text=True, timeout=30,
        )
        output = proc.stdout + proc.stderr
        assert proc.returncode != 0, output
        assert f"bridge.toml:{line}: routes[0].regex: not a valid regular expression" in output
        assert "Traceback" not in output
