"""The status page, rendered by a real headless Chromium (Debian's ``chromium`` package, driven
by Playwright; ``.ci/run`` installs the package), against a running bridge.

The browser logs in the way an operator's does, with HTTP basic auth (the admin token as the
password), reads the binds, queues and providers tables, and uses the trace search form.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness.daemon import BridgeThread, StartBridge
from tests.harness.esme import Esme

pytestmark = pytest.mark.timeout(120)

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

sync_api = pytest.importorskip("playwright.sync_api", reason="pip install -e '.[dev]'")


def _chromium() -> str:
    path = CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium")
    if path is None:
        pytest.skip(
            "chromium is not installed (Debian package 'chromium'; .ci/run installs it)"
        )
    return path


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    """A launcher of Chromium contexts, each with a fresh profile directory."""
    executable = _chromium()
    with sync_api.sync_playwright() as pw:
        contexts: list[Any] = []

        def open_context(**options: Any) -> Any:
            context = pw.chromium.launch_persistent_context(
                str(tmp_path / f"profile{len(contexts)}"),
                executable_path=executable,
                headless=True,
                args=CHROMIUM_ARGS,
                **options,
            )
            contexts.append(context)
            return context

        yield open_context
        for context in contexts:
            context.close()


def _page_url(bt: BridgeThread) -> str:
    return f"http://127.0.0.1:{bt.bridge.admin_http.port}/status"


def test_status_page_renders_in_headless_chromium(
    start_bridge: StartBridge, browser: Any
) -> None:
    bt = start_bridge()
    with Esme(bt.port) as esme:
        esme.bind("transceiver")
        mid = esme.submit_ok()
        esme.receipts(1)

        context = browser(http_credentials={"username": "ops", "password": bt.bridge.admin_token})
        page = context.new_page()
        problems: list[str] = []
        page.on("console", lambda msg: problems.append(msg.text) if msg.type == "error" else None)
        page.on("pageerror", lambda exc: problems.append(str(exc)))
        response = page.goto(_page_url(bt))
        assert response is not None and response.status == 200
        assert page.title().startswith("smpp-bridge status")
        assert page.locator("h1").inner_text() == "smpp-bridge status"

        binds = page.locator("#binds tbody tr")
        assert binds.count() == 1
        cells = binds.first.locator("td").all_inner_texts()
        assert cells[0] == "demo" and cells[1] == "transceiver"
        assert cells[2].startswith("127.0.0.1:")

    providers = page.locator("#providers tbody tr").first.locator("td").all_inner_texts()
    assert providers[:5] == ["sandbox", "sandbox", "healthy", "closed", "sending"]
    queue_rows = page.locator("#queues tbody tr")
    assert queue_rows.count() == 4
    assert page.locator("#delivery-queues tbody tr td").first.inner_text() == "demo"
    accepted = page.locator("#throughput tbody tr").first.locator("td").all_inner_texts()
    assert accepted[:2] == ["accepted", "1"]

    # The trace search form: type an id, press the button, read the answer.
    page.fill("#trace-form input[name=trace]", mid)
    page.click("#trace-form button")
    page.wait_for_selector("#history")
    trace_text = page.locator("#trace").inner_text()
    assert mid in trace_text and "DELIVERED (DELIVRD)" in trace_text
    history = page.locator("#history tbody tr td:nth-child(2)").all_inner_texts()
    assert history[0] == "ENROUTE" and history[-1] == "DELIVERED"
    assert page.url.endswith(f"/status?trace={mid}")

    page.fill("#trace-form input[name=trace]", "<b>nope</b>")
    page.click("#trace-form button")
    page.wait_for_selector("#trace-error")
    error = page.locator("#trace-error").inner_text()
    assert "no message '<b>nope</b>'" in error  # shown as text, not markup
    assert page.locator("#trace-error b").count() == 0
    assert problems == []


def test_status_page_without_credentials_is_refused(
    start_bridge: StartBridge, browser: Any
) -> None:
    bt = start_bridge()
    context = browser()
    # The browser gets the basic-auth challenge and, having nothing to answer, gives up.
    with pytest.raises(sync_api.Error, match="ERR_INVALID_AUTH_CREDENTIALS"):
        context.new_page().goto(_page_url(bt))
    response = context.request.get(_page_url(bt))
    assert response.status == 401
    assert response.headers["www-authenticate"].startswith("Basic ")
    assert "demo" not in response.text()
    wrong = browser(http_credentials={"username": "ops", "password": "wrong-token"}).new_page()
    response = wrong.goto(_page_url(bt))
    assert response is not None and response.status == 401
    assert wrong.locator("#binds").count() == 0


def test_status_page_shows_a_paused_provider_and_a_waiting_queue(
    start_bridge: StartBridge, browser: Any
) -> None:
    bt = start_bridge()
    bt.run(lambda: bt.bridge.dispatcher.pause("sandbox"))
    with Esme(bt.port) as esme:
        esme.bind("transmitter")
        esme.submit_ok()
    page = browser(
        http_credentials={"username": "ops", "password": bt.bridge.admin_token}
    ).new_page()
    page.goto(_page_url(bt))
    providers = page.locator("#providers tbody tr").first.locator("td")
    assert providers.nth(4).inner_text() == "paused"
    assert "bad" in (providers.nth(4).get_attribute("class") or "")
    assert providers.nth(5).inner_text() == "1"  # queued for it
