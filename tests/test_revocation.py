"""Issue 14, finding 10: a SIGHUP that removes an account or changes its password unbinds its
sessions; an operator can kick a session (admin API, ``smpp-bridge kick``)."""

from __future__ import annotations

import json
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bridge.smpp.pdu import CommandId, Status
from tests.harness.daemon import StartBridge, running
from tests.harness.esme import RawEsme
from tests.harness.process import cli, wait_for_log

pytestmark = pytest.mark.timeout(90)

OTHER = '''
[[accounts]]
system_id = "other"
password = "otherpw"
'''


def expect_unbind_then_close(esme: RawEsme) -> None:
    """The server sends unbind; we answer it; the server closes the connection."""
    pdu = esme.recv()
    assert pdu.command_id == CommandId.unbind
    esme.send(pdu.response())
    assert esme.recv_until_closed() == []


def still_bound(esme: RawEsme) -> bool:
    seq = esme.submit()
    resp = esme.recv()
    return resp.sequence_number == seq and resp.command_status == Status.ESME_ROK


def test_sighup_unbinds_the_sessions_of_a_removed_account_and_a_changed_password(
    daemon: Callable[..., Any],
) -> None:
    d = daemon(extra=OTHER)
    d.config.write_text(d.config.read_text().replace('level = "warning"', 'level = "info"'))
    d.start()
    with RawEsme(d.port) as demo, RawEsme(d.port) as other:
        assert demo.bind().command_status == 0
        assert other.bind(system_id="other", password="otherpw").command_status == 0
        d.config.write_text(d.config.read_text().replace(OTHER, ""))
        assert d.proc is not None
        d.proc.send_signal(signal.SIGHUP)
        expect_unbind_then_close(other)
        wait_for_log(d, "config.reloaded")
        assert "sessions_revoked=1" in d.output()
        assert still_bound(demo)  # unchanged account: its session stays

        d.config.write_text(d.config.read_text().replace('"demopass"', '"newpass"'))
        d.proc.send_signal(signal.SIGHUP)
        expect_unbind_then_close(demo)
    with RawEsme(d.port) as again:
        assert again.bind(password="newpass").command_status == 0
    assert "password changed" in d.output()


def test_kick_unbinds_a_session_by_its_number_or_every_session_of_an_account(
    start_bridge: StartBridge, tmp_path: Path
) -> None:
    bt, config = running(start_bridge, tmp_path)
    with RawEsme(bt.port) as first, RawEsme(bt.port) as second, RawEsme(bt.port) as third:
        for esme in (first, second, third):
            assert esme.bind().command_status == 0
        status = cli("status", "--json", config=config)
        assert status.returncode == 0, status.stderr
        sessions = [b["session"] for a in json.loads(status.stdout)["accounts"] for b in a["binds"]]
        assert len(sessions) == 3
        kicked = cli("kick", str(min(sessions)), config=config)
        assert kicked.returncode == 0, kicked.stderr
        assert f"unbinding session(s) {min(sessions)}" in kicked.stdout
        expect_unbind_then_close(first)
        assert still_bound(second)
        kicked = cli("kick", "demo", config=config)
        assert kicked.returncode == 0, kicked.stderr
        expect_unbind_then_close(second)
        expect_unbind_then_close(third)
    missing = cli("kick", "nobody", config=config)
    assert missing.returncode != 0
    assert "no bound session or account 'nobody'" in missing.stderr
