"""Logs: redaction, one format for structlog and stdlib records, and what a message leaves behind.

The promises under test (the logging issue): JSON in production, readable on a TTY; every line
about a message carries its ``message_id`` and ``account``; no password, token or message text
in a line (configurable redaction); per-message events only at DEBUG, so a bridge at INFO
writes nothing per message on the submit / dispatch / deliver path.

Each test configures logging into a buffer of its own and restores the previous structlog and
root-logger setup afterwards (other tests rely on the conftest's stdlib routing). Logger caching
is turned off while a test runs, so no module-level logger keeps the test's buffer.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import structlog

from bridge.config import ConfigError, load_config_text
from bridge.logs import DEFAULT_REDACT_KEYS, REDACTED, Redactor, configure_logging
from tests.harness.daemon import StartBridge
from tests.harness.esme import PASSWORD, Esme

pytestmark = pytest.mark.timeout(60)

Configure = Callable[..., io.StringIO]

#: Events the bridge emits once per message (or receipt) on its hot path.
PER_MESSAGE_EVENTS = {"pipeline.accepted", "dispatch_outcome", "delivery_attempt"}
SECRET_TEXT = "meet me at the usual place"


@pytest.fixture
def log_to_buffer() -> Iterator[Configure]:
    """``log_to_buffer(level="info", fmt="json", **configure_logging kwargs)`` -> the buffer."""
    saved = structlog.get_config()
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    quiet = {name: logging.getLogger(name).level for name in ("smpp", "smpplib")}

    def configure(level: str = "info", fmt: str = "json", **kw: Any) -> io.StringIO:
        buffer = io.StringIO()
        configure_logging(level, fmt, stream=buffer, **kw)
        structlog.configure(cache_logger_on_first_use=False)
        # The test's ESME (smpplib) logs PDUs through the stdlib; it is not the bridge.
        for name in quiet:
            logging.getLogger(name).setLevel(logging.WARNING)
        return buffer

    yield configure
    structlog.configure(**saved)
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, old in quiet.items():
        logging.getLogger(name).setLevel(old)


def lines(buffer: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in buffer.getvalue().splitlines() if line.strip()]


# --------------------------------------------------------------------------- redaction


def test_json_lines_redact_secrets_and_text(log_to_buffer: Configure) -> None:
    buffer = log_to_buffer()
    structlog.get_logger("t").info(
        "something",
        password="hunter2",
        api_key="k-123",
        Token="t-456",  # keys match case-insensitively
        text=SECRET_TEXT,
        short_message=b"raw bytes",
        headers={"Authorization": "Bearer abc", "Accept": "*/*"},
        message_id="m1",
        account="demo",
    )
    (line,) = lines(buffer)
    assert line["event"] == "something"
    assert line["level"] == "info"
    assert "timestamp" in line
    for key in ("password", "api_key", "Token", "text", "short_message"):
        assert line[key] == REDACTED
    assert line["headers"] == {"Authorization": REDACTED, "Accept": "*/*"}
    assert line["message_id"] == "m1" and line["account"] == "demo"
    raw = buffer.getvalue()
    for secret in ("hunter2", "k-123", "t-456", SECRET_TEXT, "Bearer abc"):
        assert secret not in raw


def test_nested_dicts_of_the_caller_are_not_changed(log_to_buffer: Configure) -> None:
    log_to_buffer()
    headers = {"authorization": "Bearer abc"}
    structlog.get_logger("t").info("request", headers=headers)
    assert headers == {"authorization": "Bearer abc"}


def test_redaction_list_is_configurable(log_to_buffer: Configure) -> None:
    buffer = log_to_buffer(redact=["msisdn"])
    structlog.get_logger("t").info("e", msisdn="4915112345678", text="visible while debugging")
    (line,) = lines(buffer)
    assert line["msisdn"] == REDACTED
    assert line["text"] == "visible while debugging"


def test_redactor_defaults() -> None:
    event = dict.fromkeys(DEFAULT_REDACT_KEYS, "x") | {"account": "demo"}
    out = Redactor()(None, "info", event)
    assert {k for k, v in out.items() if v == REDACTED} == set(DEFAULT_REDACT_KEYS)
    assert out["account"] == "demo"


def test_config_redact_default_and_override() -> None:
    base = '[[accounts]]\nsystem_id = "demo"\npassword = "demopass"\n'
    assert load_config_text(base).logging.redact == list(DEFAULT_REDACT_KEYS)
    cfg = load_config_text('[logging]\nredact = ["password", "text"]\n' + base)
    assert cfg.logging.redact == ["password", "text"]
    with pytest.raises(ConfigError, match=r"logging\.redact"):
        load_config_text('[logging]\nredact = [""]\n' + base)


# --------------------------------------------------------------------------- formats and levels


def test_level_filters_before_rendering(log_to_buffer: Configure) -> None:
    buffer = log_to_buffer("info")
    log = structlog.get_logger("t")
    log.debug("dropped", message_id="m1", account="demo")
    log.info("kept")
    assert [line["event"] for line in lines(buffer)] == ["kept"]


def test_console_format_is_readable_and_redacted(log_to_buffer: Configure) -> None:
    buffer = log_to_buffer(fmt="console")
    structlog.get_logger("t").info("smpp.bound", account="demo", password="hunter2")
    out = buffer.getvalue()
    assert not out.startswith("{")
    assert "smpp.bound" in out and "account=demo" in out
    assert "hunter2" not in out


def test_stdlib_records_share_the_format_level_and_redaction(log_to_buffer: Configure) -> None:
    buffer = log_to_buffer("info")
    library = logging.getLogger("some.library")  # as uvicorn's or aiohttp's loggers do
    library.info("Started server process [%d]", 42)
    library.debug("not at info")
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logging.getLogger("asyncio").exception("Task exception was never retrieved")
    first, second = lines(buffer)
    assert first == {
        "event": "Started server process [42]",
        "level": "info",
        "logger": "some.library",
        "timestamp": first["timestamp"],
    }
    assert second["level"] == "error" and second["logger"] == "asyncio"
    assert "RuntimeError: boom" in second["exception"]


def test_configure_twice_keeps_one_stdlib_handler(log_to_buffer: Configure) -> None:
    log_to_buffer()
    buffer = log_to_buffer()
    logging.getLogger("some.library").warning("once")
    assert [line["event"] for line in lines(buffer)] == ["once"]


# --------------------------------------------------------------------------- a real bridge


def _traffic(start_bridge: StartBridge, count: int = 3) -> None:
    """Submit ``count`` messages and wait for their receipts, then stop the bridge."""
    bt = start_bridge()
    with Esme(bt.port) as esme:
        esme.bind()
        for _ in range(count):
            esme.submit_ok(short_message=SECRET_TEXT.encode())
        esme.receipts(count)
        esme.unbind()
    bt.stop()


def test_no_per_message_lines_at_info(log_to_buffer: Configure, start_bridge: StartBridge) -> None:
    buffer = log_to_buffer("info")
    _traffic(start_bridge)
    records = lines(buffer)
    assert any(r["event"] == "smpp.bound" for r in records)  # the bridge did log
    about_messages = [r for r in records if "message_id" in r or r["event"] in PER_MESSAGE_EVENTS]
    assert about_messages == []
    raw = buffer.getvalue()
    assert SECRET_TEXT not in raw
    assert PASSWORD not in raw


def test_per_message_lines_at_debug_carry_id_and_account(
    log_to_buffer: Configure, start_bridge: StartBridge
) -> None:
    buffer = log_to_buffer("debug")
    _traffic(start_bridge, count=2)
    records = [r for r in lines(buffer) if not r.get("logger", "").startswith("smpp")]
    events = {r["event"] for r in records}
    assert events >= PER_MESSAGE_EVENTS, events
    for record in records:
        if record["event"] in PER_MESSAGE_EVENTS or "message_id" in record:
            assert record.get("message_id"), record
            assert record.get("account") == "demo", record
    raw = buffer.getvalue()
    assert SECRET_TEXT not in raw
    assert PASSWORD not in raw


def test_sampled_log_writes_the_first_line_then_one_per_interval_with_a_count() -> None:
    from bridge.observability import SampledLog

    now = [0.0]
    lines: list[tuple[str, dict[str, object]]] = []

    class Sink:
        def warning(self, event: str, **fields: object) -> None:
            lines.append((event, fields))

    sampled = SampledLog(Sink(), interval=10.0, clock=lambda: now[0])
    assert sampled("warning", "provider_down", "p1", message_id="m1") is True
    for i in range(5):
        now[0] += 1
        assert sampled("warning", "provider_down", "p1", message_id=f"x{i}") is False
    assert sampled("warning", "provider_down", "p2", message_id="m2") is True  # another key
    now[0] = 10.5
    assert sampled("warning", "provider_down", "p1", message_id="m3") is True
    assert [(e, f["message_id"], f["suppressed"]) for e, f in lines] == [
        ("provider_down", "m1", 0),
        ("provider_down", "m2", 0),
        ("provider_down", "m3", 5),
    ]
