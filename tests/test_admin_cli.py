"""The operator's CLI commands (``status``, ``trace``, ``route``, ``queue``, ``provider``,
``log-level``) as subprocesses, against a real running bridge found through its config file."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from bridge.logs import get_log_level, set_log_level
from tests.harness.daemon import StartBridge, running
from tests.harness.esme import Esme
from tests.harness.loop import free_port, wait_until
from tests.harness.process import cli

pytestmark = pytest.mark.timeout(90)


BACKUP = """
[providers.backup]
delay = 0.05

[[routes]]
name = "german mobiles"
prefixes = ["4915", "4917"]
providers = ["sandbox", "backup"]
"""


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    return result.stdout


def test_status_prints_binds_queues_providers_and_throughput(
    start_bridge: StartBridge, tmp_path: Path
) -> None:
    bt, config = running(start_bridge, tmp_path, extra=BACKUP)
    with Esme(bt.port) as esme:
        esme.bind("transceiver")
        esme.submit_ok()
        esme.receipts(1)
        out = ok(cli("status", config=config))
    assert "BINDS" in out and "PROVIDERS" in out and "THROUGHPUT" in out
    lines = out.splitlines()
    bind_line = next(line for line in lines if line.startswith("demo ") and "127.0.0.1:" in line)
    assert "transceiver" in bind_line
    provider_lines = [line.split() for line in lines if line.startswith(("sandbox ", "backup "))]
    assert [p[0] for p in provider_lines] == ["sandbox", "backup"]
    assert all(p[2] == "healthy" and p[3] == "closed" and p[4] == "sending" for p in provider_lines)
    accepted = next(line for line in out.splitlines() if line.startswith("accepted"))
    assert accepted.split()[1] == "1"
    data = json.loads(ok(cli("status", "--json", config=config)))
    assert data["accounts"][0]["system_id"] == "demo"


def test_trace_prints_state_times_and_history(start_bridge: StartBridge, tmp_path: Path) -> None:
    bt, config = running(start_bridge, tmp_path)
    with Esme(bt.port) as esme:
        esme.bind("transceiver")
        mid = esme.submit_ok()
        esme.receipts(1)
    out = ok(cli("trace", mid, config=config))
    assert f"message id     {mid}" in out
    assert "DELIVERED (stat:DELIVRD err:000)" in out
    assert "HISTORY" in out and "ENROUTE" in out
    provider_id = json.loads(ok(cli("trace", mid, "--json", config=config)))[
        "provider_message_id"
    ]
    assert "found by       provider message id" in ok(cli("trace", provider_id, config=config))
    missing = cli("trace", "does-not-exist", config=config)
    assert missing.returncode == 1 and "Traceback" not in missing.stderr
    assert "no message 'does-not-exist'" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1


def test_route_names_the_rule_and_the_providers_in_order(
    start_bridge: StartBridge, tmp_path: Path
) -> None:
    _, config = running(start_bridge, tmp_path, extra=BACKUP)
    out = ok(cli("route", "+4915112345678", "--account", "demo", config=config))
    assert "+4915112345678 from demo: rule german mobiles (routes[0]; prefixes=4915,4917)" in out
    rows = [line.split() for line in out.splitlines()[2:]]
    assert [(r[0], r[1], r[2]) for r in rows] == [("1", "sandbox", "yes"), ("2", "backup", "yes")]
    out = ok(cli("route", "+33612345678", config=config))
    assert "no rule matches" in out
    bad = cli("route", "not-a-number", config=config)
    assert bad.returncode == 1 and "is not a phone number" in bad.stderr


def test_queue_ls_and_purge(start_bridge: StartBridge, tmp_path: Path) -> None:
    bt, config = running(start_bridge, tmp_path)
    with Esme(bt.port) as esme:
        esme.bind("transmitter")  # no receiver: the receipts wait
        mids = [esme.submit_ok() for _ in range(2)]
        assert wait_until(lambda: bt.run(lambda: bt.bridge.store.delivery_depth("demo")) == 2)
    out = ok(cli("queue", "ls", "demo", config=config))
    assert "demo: 2 waiting (NO receiver bound); showing 2" in out
    for mid in mids:
        assert any(line.split()[2] == mid and "DELIVRD" in line for line in out.splitlines()[2:])
    assert "removed 2 item(s) from demo's delivery queue" in ok(
        cli("queue", "purge", "demo", config=config)
    )
    assert "demo: 0 waiting" in ok(cli("queue", "ls", "demo", config=config))
    unknown = cli("queue", "ls", "ghost", config=config)
    assert unknown.returncode == 1 and "no account 'ghost'" in unknown.stderr


def test_provider_pause_and_resume(start_bridge: StartBridge, tmp_path: Path) -> None:
    bt, config = running(start_bridge, tmp_path)
    assert "provider sandbox: paused" in ok(cli("provider", "pause", "sandbox", config=config))
    assert bt.run(lambda: "sandbox" in bt.bridge.dispatcher.paused)
    with Esme(bt.port) as esme:
        esme.bind("transceiver")
        esme.submit_ok()
        esme.pump(0.3)
        assert esme.delivered == []  # the sandbox would have answered within 0.05 s
        status = ok(cli("status", config=config))
        assert any(line.startswith("sandbox") and "PAUSED" in line for line in status.splitlines())
        resumed = ok(cli("provider", "resume", "sandbox", config=config))
        assert "provider sandbox: sending" in resumed
        esme.receipts(1)
    unknown = cli("provider", "pause", "ghost", config=config)
    assert unknown.returncode == 1 and "no provider 'ghost'" in unknown.stderr


def test_log_level(start_bridge: StartBridge, tmp_path: Path) -> None:
    _, config = running(start_bridge, tmp_path)
    before = get_log_level()
    try:
        assert f"log level: {before}" in ok(cli("log-level", config=config))
        assert f"log level: debug (was {before})" in ok(cli("log-level", "DEBUG", config=config))
        assert get_log_level() == "debug"  # the bridge runs in this process
    finally:
        set_log_level(before)
    bad = cli("log-level", "loud", config=config)
    assert bad.returncode == 2 and "invalid choice" in bad.stderr


def test_a_bridge_that_is_not_running_is_one_clear_line(tmp_path: Path) -> None:
    from tests.harness.daemon import bridge_config

    port = free_port()
    config = tmp_path / "bridge.toml"
    config.write_text(
        bridge_config(tmp_path / "data", admin={"port": port, "token": "0123456789abcdef"})
    )
    result = cli("status", config=config)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip() == (
        f"smpp-bridge status: cannot reach the bridge's admin listener at http://127.0.0.1:{port} "
        f"(Connection refused): is the bridge running, with [admin] host/port as in {config}?"
    )


def test_no_token_file_yet_is_one_clear_line(tmp_path: Path) -> None:
    from tests.harness.daemon import bridge_config

    config = tmp_path / "bridge.toml"
    config.write_text(bridge_config(tmp_path / "never-started", admin={"port": free_port()}))
    result = cli("status", config=config)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "no admin token:" in result.stderr and "admin.token does not exist" in result.stderr


def test_a_refused_token_is_one_clear_line(start_bridge: StartBridge, tmp_path: Path) -> None:
    bt, _ = running(start_bridge, tmp_path)
    other = tmp_path / "other.toml"
    wrong = '[admin]\ntoken = "not-the-right-token"\n'
    other.write_text(bt.config_text.replace("[admin]\n", wrong))
    result = cli("status", config=other)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "refused the admin token" in result.stderr
    assert "not-the-right-token" not in result.stderr


def test_a_bad_config_names_file_line_and_key(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('[admin]\nprot = 1\n[[accounts]]\nsystem_id = "a"\npassword = "b"\n')
    result = cli("status", config=config)
    assert result.returncode == 2
    assert f"{config}:2: admin.prot: unknown key; did you mean 'port'?" in result.stderr
