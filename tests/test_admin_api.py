"""The admin API on its own listener: token required, status, trace, route test, delivery
queues, provider pause/resume, log level — against a whole running Bridge over real HTTP."""

from __future__ import annotations

import base64
import http.client
import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from bridge.config import ConfigError, load_config_text
from bridge.logs import get_log_level, set_log_level
from tests.harness.daemon import BridgeThread, StartBridge
from tests.harness.esme import PASSWORD, Esme
from tests.harness.loop import wait_until

pytestmark = pytest.mark.timeout(60)

TWO_PROVIDERS = """
[providers.backup]
delay = 0.05

[[routes]]
name = "german mobiles"
prefixes = ["4915", "4917"]
providers = ["sandbox", "backup"]

[[routes]]
name = "rest"
providers = ["backup"]
"""


def call(
    port: int,
    method: str,
    path: str,
    *,
    token: str | None = None,
    headers: dict[str, str] | None = None,
    body: object = None,
) -> tuple[int, dict[str, str], Any]:
    """One request; (status, lower-cased headers, JSON body or text)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5.0)
    h = dict(headers or {})
    if token is not None:
        h["Authorization"] = f"Bearer {token}"
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        h["Content-Type"] = "application/json"
    try:
        conn.request(method, path, body=data, headers=h)
        resp = conn.getresponse()
        raw = resp.read()
        head = {k.lower(): v for k, v in resp.getheaders()}
    finally:
        conn.close()
    if head.get("content-type", "").startswith("application/json"):
        return resp.status, head, json.loads(raw)
    return resp.status, head, raw.decode("utf-8", "replace")


class Admin:
    """The admin API of one BridgeThread, with its token."""

    def __init__(self, bt: BridgeThread) -> None:
        self.port = bt.bridge.admin_http.port
        self.token = bt.bridge.admin_token

    def get(self, path: str) -> Any:
        status, _, body = call(self.port, "GET", path, token=self.token)
        assert status == 200, (path, status, body)
        return body

    def post(self, path: str, body: object = None) -> Any:
        status, _, data = call(self.port, "POST", path, token=self.token, body=body)
        assert status == 200, (path, status, data)
        return data


API_PATHS = [
    ("GET", "/api/status"),
    ("GET", "/api/trace?id=1"),
    ("GET", "/api/route?number=%2B4915112345678"),
    ("GET", "/api/queues/demo"),
    ("POST", "/api/queues/demo/purge"),
    ("POST", "/api/providers/sandbox/pause"),
    ("POST", "/api/providers/sandbox/resume"),
    ("GET", "/api/log-level"),
    ("POST", "/api/log-level"),
    ("GET", "/status"),
    ("GET", "/metrics"),
]


# --------------------------------------------------------------------------- authentication


def test_admin_api_refuses_requests_without_the_token(start_bridge: StartBridge) -> None:
    bt = start_bridge()
    port, token = bt.bridge.admin_http.port, bt.bridge.admin_token
    assert token and len(token) >= 32
    wrong = "x" * len(token)
    for method, path in API_PATHS:
        for headers in (
            {},
            {"Authorization": f"Bearer {wrong}"},
            {"Authorization": f"Bearer {token[:-1]}"},
            {"Authorization": token},  # no scheme
            {"Authorization": "Basic " + base64.b64encode(f"admin:{wrong}".encode()).decode()},
        ):
            status, head, body = call(port, method, path, headers=headers)
            assert status == 401, (method, path, headers, status)
            assert "www-authenticate" in head
            assert token not in json.dumps(body)
    # Nothing happened: the provider is not paused. Every refusal was counted.
    assert "sandbox" not in bt.run(lambda: set(bt.bridge.dispatcher.paused))
    metrics = call(port, "GET", "/metrics", token=token)[2]
    assert f"bridge_admin_requests_refused_total {5.0 * len(API_PATHS)}" in metrics


def test_basic_auth_is_accepted_for_reads_but_not_for_changes(start_bridge: StartBridge) -> None:
    bt = start_bridge()
    port, token = bt.bridge.admin_http.port, bt.bridge.admin_token
    basic = {"Authorization": "Basic " + base64.b64encode(f"ops:{token}".encode()).decode()}
    assert call(port, "GET", "/api/status", headers=basic)[0] == 200
    assert call(port, "GET", "/status", headers=basic)[0] == 200
    # A browser resends basic credentials on its own; changes need the bearer header (CSRF).
    assert call(port, "POST", "/api/providers/sandbox/pause", headers=basic)[0] == 401
    assert call(port, "POST", "/api/providers/sandbox/pause", token=token)[0] == 200


def test_status_page_asks_a_browser_for_basic_auth(start_bridge: StartBridge) -> None:
    bt = start_bridge()
    status, head, _ = call(bt.bridge.admin_http.port, "GET", "/status")
    assert status == 401
    assert head["www-authenticate"].startswith("Basic ")


def test_health_probes_need_no_token_and_metrics_do(start_bridge: StartBridge) -> None:
    bt = start_bridge()
    port = bt.bridge.admin_http.port
    assert call(port, "GET", "/healthz")[0] == 200
    assert call(port, "GET", "/readyz")[0] == 200
    assert call(port, "GET", "/metrics")[0] == 401
    status, _, body = call(port, "GET", "/metrics", token=bt.bridge.admin_token)
    assert status == 200 and "bridge_messages_accepted_total" in body


def test_metrics_auth_false_opens_metrics_only(start_bridge: StartBridge) -> None:
    bt = start_bridge(admin={"metrics_auth": False})
    port = bt.bridge.admin_http.port
    assert call(port, "GET", "/metrics")[0] == 200
    assert call(port, "GET", "/api/status")[0] == 401


def test_token_is_created_once_in_the_data_dir_with_mode_0600(
    start_bridge: StartBridge, tmp_path: Path
) -> None:
    data = tmp_path / "kept"
    bt = start_bridge(data_dir=data)
    token = bt.bridge.admin_token
    path = data / "admin.token"
    assert path.read_text().strip() == token
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    bt.stop()
    again = start_bridge(data_dir=data)
    assert again.bridge.admin_token == token  # the CLI's copy stays valid across restarts


def test_configured_token_from_the_environment(
    start_bridge: StartBridge, tmp_path: Path, monkeypatch: Any
) -> None:
    monkeypatch.setenv("ADMIN_TOKEN_FOR_TEST", "s3cret-admin-token-0123")
    bt = start_bridge(data_dir=tmp_path / "d", admin={"token": "env:ADMIN_TOKEN_FOR_TEST"})
    port = bt.bridge.admin_http.port
    assert call(port, "GET", "/api/status", token="s3cret-admin-token-0123")[0] == 200
    assert call(port, "GET", "/api/status")[0] == 401
    assert not (tmp_path / "d" / "admin.token").exists()


def test_no_auth_needs_a_loopback_listener_and_is_named_by_line() -> None:
    base = '[[accounts]]\nsystem_id = "demo"\npassword = "pw"\n'
    with pytest.raises(ConfigError) as e:
        load_config_text('[admin]\nhost = "0.0.0.0"\nallow_unauthenticated = true\n' + base)
    assert "<string>:3: admin.allow_unauthenticated: only allowed when admin.host" in str(e.value)
    cfg = load_config_text('[admin]\nallow_unauthenticated = true\n' + base)
    assert cfg.admin.allow_unauthenticated and cfg.admin.host == "127.0.0.1"
    with pytest.raises(ConfigError) as e:
        load_config_text('[admin]\ntoken = "short"\n' + base)
    assert "<string>:2: admin.token: must be at least 16 characters" in str(e.value)


def test_unauthenticated_loopback_admin(start_bridge: StartBridge) -> None:
    bt = start_bridge(admin={"allow_unauthenticated": True})
    assert bt.bridge.admin_token is None
    assert call(bt.bridge.admin_http.port, "GET", "/api/status")[0] == 200


# --------------------------------------------------------------------------- status


def test_status_shows_binds_queues_providers_and_throughput(start_bridge: StartBridge) -> None:
    bt = start_bridge(extra=TWO_PROVIDERS)
    admin = Admin(bt)
    with Esme(bt.port) as esme:
        esme.bind("transceiver")
        esme.submit_ok()
        esme.receipts(1)
        # The ack's removal from the queue is committed just after the deliver_sm_resp.
        assert wait_until(lambda: bt.run(lambda: bt.bridge.store.delivery_depth("demo")) == 0)
        status = admin.get("/api/status")
    (demo,) = status["accounts"]
    assert demo["system_id"] == "demo"
    (bind,) = demo["binds"]
    assert bind["bind_type"] == "transceiver"
    assert bind["peer"].startswith("127.0.0.1:")
    assert demo["delivery_queue"] == 0
    names = [p["name"] for p in status["providers"]]
    assert names == ["sandbox", "backup"]
    sandbox = status["providers"][0]
    assert sandbox["type"] == "sandbox"
    assert sandbox["circuit"] == "closed" and sandbox["paused"] is False
    assert sandbox["healthy"] is True
    assert status["throughput"]["totals"]["accepted"] == 1
    assert status["throughput"]["totals"]["sent"] == 1
    assert set(status["queues"]) >= {"pending_dispatch", "deliveries"}
    assert status["listeners"]["admin"].endswith(f":{admin.port}")
    assert PASSWORD not in json.dumps(status)


# --------------------------------------------------------------------------- trace


def test_trace_by_our_id_part_id_and_provider_id(start_bridge: StartBridge) -> None:
    bt = start_bridge()
    admin = Admin(bt)
    with Esme(bt.port) as esme:
        esme.bind("transceiver")
        mid = esme.submit_ok()
        esme.receipts(1)
    trace = admin.get(f"/api/trace?id={mid}")
    assert trace["id"] == mid and trace["matched_by"] == "message id"
    assert trace["state"] == "DELIVERED" and trace["stat"] == "DELIVRD"
    assert trace["created_at"].endswith("Z") and "T" in trace["created_at"]
    states = [h["state"] for h in trace["history"]]
    assert states[0] == "ENROUTE" and states[-1] == "DELIVERED"
    assert all(h["at"].endswith("Z") for h in trace["history"])
    assert "text" not in trace and "hello" not in json.dumps(trace)  # content stays private
    by_provider = admin.get(f"/api/trace?id={trace['provider_message_id']}")
    assert by_provider["id"] == mid and by_provider["matched_by"] == "provider message id"


def test_trace_of_a_concatenated_message_by_a_part_id(start_bridge: StartBridge) -> None:
    bt = start_bridge()
    admin = Admin(bt)
    with Esme(bt.port) as esme:
        esme.bind("transceiver")
        ids = []
        for seq in (1, 2):
            udh = bytes([0x05, 0x00, 0x03, 0x42, 0x02, seq])
            ids.append(esme.submit_ok(esm_class=0x40, short_message=udh + b"part"))
        esme.receipts(2)
    for part_id in ids:
        trace = admin.get(f"/api/trace?id={part_id}")
        assert trace["part_ids"] == ids
    assert admin.get(f"/api/trace?id={ids[1]}")["matched_by"] == "part id"


def test_trace_of_an_unknown_id_is_a_404_with_a_reason(start_bridge: StartBridge) -> None:
    bt = start_bridge()
    status, _, body = call(
        bt.bridge.admin_http.port, "GET", "/api/trace?id=nope", token=bt.bridge.admin_token
    )
    assert status == 404 and "no message 'nope'" in body["error"]


# --------------------------------------------------------------------------- route test


def test_route_test_names_the_rule_and_providers_in_order(start_bridge: StartBridge) -> None:
    bt = start_bridge(extra=TWO_PROVIDERS)
    admin = Admin(bt)
    route = admin.get("/api/route?number=%2B4915112345678&account=demo")
    assert route["number"] == "4915112345678"
    assert route["rule"]["name"] == "german mobiles" and route["rule"]["index"] == 0
    assert [p["name"] for p in route["providers"]] == ["sandbox", "backup"]
    assert all(p["can_carry"] for p in route["providers"])
    assert route["routable"] is True
    other = admin.get("/api/route?number=%2B33612345678")
    assert other["rule"]["name"] == "rest"
    assert [p["name"] for p in other["providers"]] == ["backup"]
    # Not a number at all: a clear 400.
    status, _, body = call(admin.port, "GET", "/api/route?number=abc", token=admin.token)
    assert status == 400 and "not a phone number" in body["error"]
    status, _, body = call(
        admin.port, "GET", "/api/route?number=%2B4915112345678&account=ghost", token=admin.token
    )
    assert status == 404 and "no account 'ghost'" in body["error"]


# --------------------------------------------------------------------------- delivery queues


def test_queue_list_and_purge_for_an_account_without_a_receiver(
    start_bridge: StartBridge,
) -> None:
    bt = start_bridge()
    admin = Admin(bt)
    with Esme(bt.port) as esme:
        esme.bind("transmitter")  # no receiver: receipts wait in the queue
        mids = [esme.submit_ok() for _ in range(3)]
        assert wait_until(lambda: bt.run(lambda: bt.bridge.store.delivery_depth("demo")) == 3)
    queue = admin.get("/api/queues/demo")
    assert queue["depth"] == 3 and queue["receiver_bound"] is False
    assert [item["message_id"] for item in queue["items"]] == mids
    assert {item["stat"] for item in queue["items"]} == {"DELIVRD"}
    assert admin.get("/api/queues/demo?limit=2")["items"][-1]["message_id"] == mids[1]
    assert admin.get("/api/status")["accounts"][0]["delivery_queue"] == 3
    assert admin.post("/api/queues/demo/purge") == {"account": "demo", "removed": 3}
    assert admin.get("/api/queues/demo")["depth"] == 0
    status, _, body = call(admin.port, "GET", "/api/queues/ghost", token=admin.token)
    assert status == 404 and "no account 'ghost'" in body["error"]


# --------------------------------------------------------------------------- pause / resume


def test_a_paused_provider_gets_no_sends_and_its_messages_wait(start_bridge: StartBridge) -> None:
    bt = start_bridge()
    admin = Admin(bt)
    assert admin.post("/api/providers/sandbox/pause")["changed"] is True
    with Esme(bt.port) as esme:
        esme.bind("transceiver")
        mid = esme.submit_ok()
        esme.pump(0.5)  # the sandbox would have reported within 0.05 s
        assert esme.delivered == []
        trace = admin.get(f"/api/trace?id={mid}")
        assert trace["state"] == "ENROUTE" and trace["provider_message_id"] is None
        assert trace["dispatcher"]["status"] == "queued"
        (sandbox,) = admin.get("/api/status")["providers"]
        assert sandbox["paused"] is True and sandbox["queued"] == 1
        metrics = call(admin.port, "GET", "/metrics", token=admin.token)[2]
        assert 'bridge_provider_paused{provider="sandbox"} 1.0' in metrics
        assert admin.post("/api/providers/sandbox/resume")["changed"] is True
        (receipt,) = esme.receipts(1)
        assert b"stat:DELIVRD" in receipt.short_message
    metrics = call(admin.port, "GET", "/metrics", token=admin.token)[2]
    assert 'bridge_provider_paused{provider="sandbox"} 0.0' in metrics
    status, _, body = call(admin.port, "POST", "/api/providers/ghost/pause", token=admin.token)
    assert status == 404 and "configured: sandbox" in body["error"]


def test_a_paused_provider_fails_over_like_an_open_circuit(start_bridge: StartBridge) -> None:
    bt = start_bridge(extra=TWO_PROVIDERS)
    admin = Admin(bt)
    admin.post("/api/providers/sandbox/pause")
    with Esme(bt.port) as esme:
        esme.bind("transceiver")
        mid = esme.submit_ok()
        esme.receipts(1)
    trace = admin.get(f"/api/trace?id={mid}")
    assert trace["provider"] == "backup" and trace["state"] == "DELIVERED"
    assert any("sandbox: paused" in h["detail"] for h in trace["history"])


# --------------------------------------------------------------------------- log level


def test_log_level_changes_at_runtime(start_bridge: StartBridge) -> None:
    bt = start_bridge()
    admin = Admin(bt)
    before = get_log_level()
    try:
        assert admin.get("/api/log-level") == {"level": before}
        assert admin.post("/api/log-level", {"level": "DEBUG"}) == {
            "level": "debug",
            "previous": before,
        }
        assert get_log_level() == "debug"
        assert admin.get("/api/status")["log_level"] == "debug"
        status, _, body = call(
            admin.port, "POST", "/api/log-level", token=admin.token, body={"level": "loud"}
        )
        assert status == 400 and "one of: debug, info, warning, error" in body["error"]
        assert get_log_level() == "debug"
    finally:
        set_log_level(before)
