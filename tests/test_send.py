"""``smpp-bridge send``: the built-in ESME, run as the installed command against a real bridge.

The bridge runs whole (:class:`harness.daemon.BridgeThread`: SQLite store, sandbox provider whose
rules pick the outcome by the destination's last digits); ``send`` runs as a subprocess, exactly as
an operator types it, and its stdout, stderr and exit status are checked.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from bridge.send import SendRequest, build_submits
from tests.harness.daemon import Rule, StartBridge
from tests.harness.esme import Esme, receipt_id

SMPP_BRIDGE = Path(sys.executable).parent / "smpp-bridge"
DELIVERED_TO = "+491701234567"


def _send(
    port: int, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k != "SMPP_DEMO_PASSWORD"}
    environ.update(env or {})
    return subprocess.run(
        [str(SMPP_BRIDGE), "send", "--port", str(port), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=environ,
    )


def _one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert lines[0].startswith("smpp-bridge send: ")
    return lines[0]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# --------------------------------------------------------------------------- success


def test_send_wait_receipt_prints_the_message_id_and_the_delivrd_receipt(
    start_bridge: StartBridge,
) -> None:
    bt = start_bridge()
    proc = _send(bt.port, "--to", DELIVERED_TO, "--text", "hello", "--wait-receipt")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("bound") and "transceiver" in lines[0]
    assert "ESME_ROK" in lines[1]
    message_id = lines[1].split("id=")[1].strip()
    assert message_id
    assert lines[2].startswith("receipt")
    assert f"id={message_id}" in lines[2] and "stat=DELIVRD" in lines[2] and "err=000" in lines[2]


def test_send_long_text_count_2_every_part_gets_its_own_id_and_receipt(
    start_bridge: StartBridge,
) -> None:
    bt = start_bridge()
    proc = _send(
        bt.port, "--to", DELIVERED_TO, "--text", "x" * 200, "--count", "2", "--wait-receipt"
    )
    assert proc.returncode == 0, proc.stderr
    resps = [ln for ln in proc.stdout.splitlines() if ln.startswith("submit_sm_resp")]
    receipts = [ln for ln in proc.stdout.splitlines() if ln.startswith("receipt")]
    assert len(resps) == 4 and all("ESME_ROK" in r for r in resps)  # 2 messages × 2 parts
    ids = {r.split("id=")[1].strip() for r in resps}
    assert len(ids) == 4
    assert {r.split("id=")[1].split()[0] for r in receipts} == ids
    assert all("stat=DELIVRD" in r for r in receipts)
    assert {"message 1 part 1/2", "message 2 part 2/2"} <= {r.split("  ")[1] for r in resps}


def test_send_without_wait_binds_as_transmitter_and_asks_no_receipt(
    start_bridge: StartBridge,
) -> None:
    bt = start_bridge()
    proc = _send(bt.port, "--to", DELIVERED_TO, "--text", "fire and forget")
    assert proc.returncode == 0, proc.stderr
    assert "transmitter" in proc.stdout.splitlines()[0]
    assert "ESME_ROK" in proc.stdout
    assert "receipt" not in proc.stdout


def test_send_password_comes_from_smpp_demo_password(start_bridge: StartBridge) -> None:
    bt = start_bridge()
    wrong = _send(bt.port, "--to", DELIVERED_TO, "--text", "x", env={"SMPP_DEMO_PASSWORD": "nope"})
    assert "ESME_RINVPASWD" in _one_line_error(wrong)
    right = _send(
        bt.port, "--to", DELIVERED_TO, "--text", "x", env={"SMPP_DEMO_PASSWORD": "demopass"}
    )
    assert right.returncode == 0, right.stderr


# --------------------------------------------------------------------------- failures


def test_send_refused_bind_is_one_line_naming_the_status(start_bridge: StartBridge) -> None:
    bt = start_bridge()
    line = _one_line_error(
        _send(bt.port, "--to", DELIVERED_TO, "--text", "x", "--password", "wrong")
    )
    assert "bind as 'demo' refused" in line and "ESME_RINVPASWD (0x0000000E)" in line
    line = _one_line_error(
        _send(bt.port, "--to", DELIVERED_TO, "--text", "x", "--system-id", "nobody")
    )
    # reveal_bind_errors = false (the default): an unknown system_id looks like a bad password
    assert "ESME_RINVPASWD" in line


def test_send_connection_refused_is_one_line() -> None:
    port = _free_port()  # nothing listens there
    line = _one_line_error(_send(port, "--to", DELIVERED_TO, "--text", "x"))
    assert line == f"smpp-bridge send: cannot connect to 127.0.0.1:{port}: Connection refused"


def test_send_refused_submit_prints_the_status_by_name_and_exits_1(
    start_bridge: StartBridge,
) -> None:
    bt = start_bridge()
    # An alphanumeric sender over 11 characters is ESME_RINVSRCADR.
    proc = _send(bt.port, "--to", DELIVERED_TO, "--text", "x", "--from", "MuchTooLongSender")
    assert "submit_sm_resp  message 1  ESME_RINVSRCADR (0x0000000A)" in proc.stdout
    assert _one_line_error(proc) == "smpp-bridge send: 1 of 1 submit_sm not accepted"


def test_send_rejectd_receipt_is_printed_and_exits_1(start_bridge: StartBridge) -> None:
    bt = start_bridge(rules=[Rule("666", "REJECTD", 201)])
    proc = _send(bt.port, "--to", "+491701234666", "--text", "x", "--wait-receipt")
    receipt = next(ln for ln in proc.stdout.splitlines() if ln.startswith("receipt"))
    assert "stat=REJECTD" in receipt and "err=201" in receipt
    assert _one_line_error(proc) == "smpp-bridge send: 1 of 1 not delivered (REJECTD)"


def test_send_no_receipt_within_timeout_is_one_line_with_the_ids(
    start_bridge: StartBridge,
) -> None:
    bt = start_bridge(rules=[Rule("777", "transient")])  # retried, never reported
    proc = _send(
        bt.port, "--to", "+491701234777", "--text", "x", "--wait-receipt", "--timeout", "1"
    )
    message_id = proc.stdout.split("id=")[1].split()[0]
    line = _one_line_error(proc)
    assert line == (
        f"smpp-bridge send: timed out after 1 s waiting for 1 of 1 receipts (ids {message_id})"
    )


def test_send_leaves_other_receipts_queued_for_the_accounts_receiver(
    start_bridge: StartBridge,
) -> None:
    """A receipt for a message someone else sent is not acknowledged by ``send``: the bridge
    keeps it and hands it to the account's own receiver later."""
    bt = start_bridge(pipeline={"delivery_retry": 0.2})
    with Esme(bt.port) as esme:
        esme.bind("transmitter")
        other_id = esme.submit_ok(destination_addr="491701234000")
    proc = _send(bt.port, "--to", DELIVERED_TO, "--text", "mine", "--wait-receipt")
    assert proc.returncode == 0, proc.stderr
    assert other_id not in proc.stdout
    with Esme(bt.port) as receiver:
        receiver.bind("receiver")
        (receipt,) = receiver.receipts(1, timeout=10)
        assert receipt_id(receipt) == other_id


# --------------------------------------------------------------------------- building PDUs


def test_unicode_flag_sends_ucs2_and_a_long_text_gets_concatenation_udhs() -> None:
    (pdu,) = build_submits(SendRequest(to="+4917012345", text="hello", unicode=True), 7)
    assert pdu["data_coding"] == 0x08 and pdu["short_message"] == "hello".encode("utf-16-be")
    assert pdu["dest_addr_ton"] == 1 and pdu["destination_addr"] == "4917012345"
    assert pdu["source_addr_ton"] == 5
    # 100 × U+263A needs UCS2 (chosen without --unicode too): two parts of at most 67 units.
    parts = build_submits(SendRequest(to="017012345", text="\u263a" * 100, source="+4930"), 9)
    assert len(parts) == 2 and all(p["data_coding"] == 0x08 for p in parts)
    assert all(p["esm_class"] == 0x40 for p in parts)
    assert [p["short_message"][:6] for p in parts] == [bytes([5, 0, 3, 9, 2, n]) for n in (1, 2)]
    assert parts[0]["dest_addr_ton"] == 0 and parts[0]["source_addr_ton"] == 1


@pytest.mark.parametrize("bad", ["", "abc", "+49 170"])
def test_a_destination_that_is_no_number_is_a_usage_error(bad: str) -> None:
    from bridge.send import SendError

    with pytest.raises(SendError):
        build_submits(SendRequest(to=bad, text="x"), 0)


def test_a_malformed_number_is_a_usage_error_exit_2_before_connecting() -> None:
    proc = _send(_free_port(), "--to", "+49 170 1234", "--text", "x")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == (
        "smpp-bridge send: '+49 170 1234' is not a phone number (digits, optionally with a"
        " leading +)"
    )
