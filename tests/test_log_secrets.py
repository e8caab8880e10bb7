"""No secret in the log from a library, at any level (issue 14, finding 1).

With ``transport = "httpx"`` httpx's own logger printed ``HTTP Request: GET <url>`` at INFO,
and the URL of an smsflatrate send carries the account key, the MSISDN and the message text.
Each test runs a real bridge against the real smsflatrate simulator with the whole process
logging at DEBUG into a buffer (both HTTP transports), sends a message, takes its pushed
report and an inbound push through the callback URL (with its token), and then scans every
line for the key, the token, the number and the text.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
import structlog

from bridge.logs import (
    REDACTED,
    configure_logging,
    get_log_level,
    register_secret,
    scrub_text,
    set_log_level,
)
from bridge.providers.smsflatrate.reports import push_url
from bridge.simulators.smsflatrate import SmsflatrateSimulator
from tests.harness.daemon import StartBridge, toml_value
from tests.harness.esme import Esme, receipt_fields
from tests.harness.sims import StartSimulator

pytestmark = pytest.mark.timeout(60)

KEY = "sf-key-Zq8VwY2r"
MSISDN = "4915112345678"
TEXT = "the vault code is 7781"
MO_TEXT = "reply with the secret word"
MO_SENDER = "4917099887766"


@pytest.fixture
def debug_log() -> Iterator[io.StringIO]:
    """The process logs at DEBUG (structlog and every stdlib logger) into a buffer; the
    previous set-up is restored afterwards."""
    saved = structlog.get_config()
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    previous = get_log_level()
    buffer = io.StringIO()
    configure_logging("debug", "json", stream=buffer)
    structlog.configure(cache_logger_on_first_use=False)
    # The test's own ESME (smpplib) logs PDUs through the stdlib; it is not the bridge.
    quiet = {name: logging.getLogger(name).level for name in ("smpp", "smpplib")}
    for name in quiet:
        logging.getLogger(name).setLevel(logging.WARNING)
    yield buffer
    structlog.configure(**saved)
    root.handlers[:] = handlers
    root.setLevel(level)
    set_log_level(previous)
    for name, old in quiet.items():
        logging.getLogger(name).setLevel(old)


@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
def test_no_key_token_number_or_text_in_the_log_at_debug_with_either_transport(
    transport: str,
    debug_log: io.StringIO,
    start_bridge: StartBridge,
    start_simulator: StartSimulator,
) -> None:
    sim = SmsflatrateSimulator(keys=[KEY], delay=0.05, rate_limit=0)
    sim_thread = start_simulator(sim.app)
    provider: dict[str, Any] = {
        "type": "smsflatrate",
        "base_url": f"{sim_thread.url}/schnittstelle.php",
        "key": KEY,
        "gateway": "auto10or11",
        "timeout": 5.0,
        "transport": transport,
    }
    extra = "[providers.sf]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in provider.items())
    extra += '[[routes]]\nproviders = ["sf"]\n'
    bt = start_bridge(extra=extra, account={"inbound_numbers": ["491624675000"]})
    token = bt.run(lambda: bt.bridge.callback_tokens["sf"])
    report_url = bt.run(lambda: bt.bridge.callback_url("sf", "report"))
    inbound_url = bt.run(lambda: bt.bridge.callback_url("sf", "inbound"))

    def configure() -> None:
        sim.push_url = push_url(report_url)
        sim.inbound_push_url = inbound_url

    sim_thread.run(configure)
    try:
        with Esme(bt.port) as esme:
            esme.bind()
            esme.submit_ok(
                destination_addr=MSISDN, short_message=TEXT.encode(), registered_delivery=1
            )
            [receipt] = esme.receipts(1, timeout=10.0)
            assert receipt_fields(receipt)["stat"] == "DELIVRD"
            sim_thread.call(sim.push_inbound(MO_SENDER, MO_TEXT, "491624675000"))
            delivered = esme.receipts(2, timeout=10.0)
            assert delivered[1].short_message == MO_TEXT.encode()
        # A failing call too: a library's error text often quotes the URL.
        sim_thread.call(sim.close())
        sim_thread.stop()
        assert not bt.call(bt.bridge.providers["sf"].healthy(), timeout=10.0)
    finally:
        sim_thread.stop()

    log = debug_log.getvalue()
    assert "smsflatrate" in log or "sf" in log  # the bridge did log at DEBUG
    if transport == "httpx":
        assert "HTTP Request" in log  # httpx's line is there, without its query string
    for secret in (KEY, token, MSISDN, TEXT, MO_TEXT, MO_SENDER):
        assert secret not in log, f"{secret!r} in the log"


def test_scrub_text_keeps_host_and_path_but_no_query_credentials_or_token() -> None:
    register_secret("a-registered-password")
    line = (
        'HTTP Request: GET https://user:pw@api.example.com/send.php?user=u&pass=p&to=49151 '
        '"HTTP/1.1 200 OK"; "POST /callbacks/sf/Tok3nTok3n/report?id=1 HTTP/1.1" '
        "password a-registered-password"
    )
    out = scrub_text(line)
    assert out == (
        f'HTTP Request: GET https://api.example.com/send.php?{REDACTED} "HTTP/1.1 200 OK"; '
        f'"POST /callbacks/sf/{REDACTED}/report?{REDACTED} HTTP/1.1" password {REDACTED}'
    )


def test_a_library_traceback_quoting_a_url_is_scrubbed_and_stays_in_the_exception_key(
    debug_log: io.StringIO,
) -> None:
    try:
        raise ValueError(f"bad URL http://h/send.php?key={KEY}&to={MSISDN}")
    except ValueError:
        logging.getLogger("aiohttp.client").exception("request to %s failed", f"http://h/?k={KEY}")
    [line] = [json.loads(x) for x in debug_log.getvalue().splitlines() if "aiohttp" in x]
    assert line["event"] == f"request to http://h/?{REDACTED} failed"
    assert "ValueError: bad URL http://h/send.php?" in line["exception"]
    assert KEY not in debug_log.getvalue() and MSISDN not in debug_log.getvalue()
