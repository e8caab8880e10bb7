"""The iSMS.gr HTTP adapter (``bridge/providers/isms_http/``) and its simulator.

First the pure translation, built from the provider document's own examples (quoted), then the
adapter against the simulator over real loopback HTTP: sends, every send error, HTTP 500 and a
timeout, ``query.php`` polling, ``dlr-url`` pushes and the ``credits.php`` balance.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from bridge.config import load_config
from bridge.core.model import Address, DeliveryReport, Message, MessageState, OutcomeKind
from bridge.core.provider import CallbackReply, CallbackRequest, ProviderContext
from bridge.providers.http_provider import Unsendable
from bridge.providers.isms_http import IsmsHttpProvider, create
from bridge.providers.isms_http.api import ERR_UNRECOGNISED
from bridge.providers.isms_http.reports import (
    ERR_FAILED,
    ERR_NO_SUCH_MESSAGE,
    build_query_request,
    parse_query_reply,
    parse_report_push,
    status_to_state,
)
from bridge.providers.isms_http.send import (
    build_credits_request,
    build_send_request,
    choose_coding,
    count_parts,
    format_destination,
    format_sender,
    parse_credits_reply,
    parse_send_reply,
    schedule_value,
)
from bridge.providers.isms_http.settings import DEFAULT_BASE_URL, Settings
from bridge.simulators.isms_http import IsmsHttpSimulator, parse_schedule
from bridge.web.server import HttpServer

pytestmark = pytest.mark.timeout(30)

ROOT = Path(__file__).resolve().parent.parent
GREEK_MOBILE = "306912345678"  # the document's example recipient


def message(
    text: str | None = "Hello",
    *,
    to: str = GREEK_MOBILE,
    sender: str = "myself",
    ton: int = 5,
    registered_delivery: int = 1,
    **fields: object,
) -> Message:
    return Message(
        id="m1",
        account="demo",
        source=Address(sender, ton, 0 if ton == 5 else 1),
        destination=Address(to, 1, 1),
        text=text,
        registered_delivery=registered_delivery,
        part_ids=["m1"],
        **fields,  # type: ignore[arg-type]
    )


def send_params(msg: Message, **kwargs: object) -> dict[str, str]:
    request = build_send_request(
        msg,
        base_url=DEFAULT_BASE_URL,
        username="xxx",
        password="xxx",
        **kwargs,  # type: ignore[arg-type]
    )
    return dict(request.params)


# =========================================================================== send.php request


def test_the_documents_example_request_is_what_we_send_for_one_recipient() -> None:
    # "http://cp.isms.gr/api/http/send.php?username=xxx&password=xxx&from=myself
    #  &message=text+at+utf8+format&to=306912345678,306998765432" (one recipient per request)
    request = build_send_request(
        message("text at utf8 format"),
        base_url=DEFAULT_BASE_URL,
        username="xxx",
        password="xxx",
        dlr_url=None,
    )
    assert request.method == "GET"
    url = request.full_url()
    assert url.startswith("http://cp.isms.gr/api/http/send.php?")
    assert "username=xxx&password=xxx&from=myself&to=306912345678" in url
    assert "message=text+at+utf8+format" in url
    assert url.endswith("&coding=GSM")
    assert request.charset == "utf-8"


def test_base_url_is_the_scripts_directory_and_a_script_url_is_taken_as_its_directory() -> None:
    assert Settings(type="isms_http", username="u", password="p").base_url == DEFAULT_BASE_URL
    old_style = Settings(
        type="isms_http",
        username="u",
        password="p",
        base_url="http://cp.isms.gr/api/http/send.php",
    )
    assert old_style.base_url == "http://cp.isms.gr/api/http/"
    no_slash = Settings(
        type="isms_http", username="u", password="p", base_url="http://127.0.0.1:9/x"
    )
    assert no_slash.base_url == "http://127.0.0.1:9/x/"
    with pytest.raises(ValidationError):
        Settings(type="isms_http", username="u", password="p", base_url="cp.isms.gr")


def test_the_password_is_a_secret_that_no_repr_shows() -> None:
    settings = Settings(type="isms_http", username="u", password="hunter2")
    assert "hunter2" not in repr(settings)
    assert settings.password.get_secret_value() == "hunter2"


def test_coding_is_gsm_when_every_character_is_in_gsm_03_38() -> None:
    assert choose_coding("Hello, world!") == "GSM"
    assert choose_coding("price: 5€ [ok] {x} ~^|\\") == "GSM"  # extension table
    # GSM 03.38 has the Greek capitals that differ from Latin ones.
    assert choose_coding("ΔΦΓΛΩΠΨΣΘΞ") == "GSM"


def test_coding_is_utf8_for_text_gsm_cannot_carry() -> None:
    assert choose_coding("Καλημέρα") == "UTF-8"
    assert choose_coding("مرحبا") == "UTF-8"
    assert choose_coding("ok 👍") == "UTF-8"
    params = send_params(message("Καλημέρα κόσμε"))
    assert params["coding"] == "UTF-8"
    assert params["message"] == "Καλημέρα κόσμε"


def test_greek_text_is_percent_encoded_in_utf8() -> None:
    request = build_send_request(
        message("Γειά"), base_url=DEFAULT_BASE_URL, username="u", password="p"
    )
    assert "message=%CE%93%CE%B5%CE%B9%CE%AC" in request.full_url()


def test_flash_is_sent_as_flash_1_and_left_out_otherwise() -> None:
    assert send_params(message(flash=True))["flash"] == "1"
    assert "flash" not in send_params(message())


def test_dlr_url_is_sent_only_when_given() -> None:
    url = "http://bridge:8080/callbacks/isms/tok/report"
    assert send_params(message(), dlr_url=url)["dlr-url"] == url
    assert "dlr-url" not in send_params(message(), dlr_url=None)


def test_schedule_is_the_documented_relative_form_in_seconds() -> None:
    # "+1 week 2 days 4 hours 2 seconds" is one of the document's examples.
    assert schedule_value(1000.0 + 3600, 1000.0) == "+3600 seconds"
    assert schedule_value(1000.4, 1000.0) == "+1 seconds"
    assert schedule_value(999.0, 1000.0) is None  # due: send now
    assert schedule_value(None, 1000.0) is None
    params = send_params(message(schedule_at=5000.0), now=1400.0)
    assert params["schedule"] == "+3600 seconds"
    assert "schedule" not in send_params(
        message(schedule_at=5000.0), now=1400.0, native_schedule=False
    )


def test_sender_alphanumeric_numeric_and_default() -> None:
    assert format_sender(Address("myself", 5, 0)) == "myself"
    assert format_sender(Address("306912345678", 1, 1)) == "306912345678"
    assert format_sender(Address("", 5, 0), "Company") == "Company"
    assert (
        format_sender(Address("12345", 5, 0)) == "12345"
    )  # alphanumeric that happens to be digits


@pytest.mark.parametrize(
    "sender",
    [
        Address("", 5, 0),
        Address("TwelveLetter", 5, 0),
        Address("Καλημέρα", 5, 0),
        Address("12345678901234567", 1, 1),
    ],
    ids=["empty", "12-chars", "non-ascii", "17-digits"],
)
def test_senders_iSMS_would_refuse_are_unsendable_with_err_13(sender: Address) -> None:
    with pytest.raises(Unsendable) as info:
        format_sender(sender)
    assert info.value.error_code == 13


def test_destination_is_international_digits_without_plus() -> None:
    assert format_destination(Address("306912345678")) == "306912345678"
    assert format_destination(Address("+306912345678")) == "306912345678"
    with pytest.raises(Unsendable) as info:
        format_destination(Address("69abc"))
    assert info.value.error_code == 12


def test_binary_and_udh_messages_are_unsendable() -> None:
    with pytest.raises(Unsendable):
        send_params(message(None, binary=b"\x01\x02"))
    with pytest.raises(Unsendable):
        send_params(message("port addressed", udh=b"\x05\x04\x0b\x84\x23\xf0"))


def test_parts_count_like_the_handset_does() -> None:
    assert count_parts("x" * 160, "GSM") == 1
    assert count_parts("x" * 161, "GSM") == 2
    assert count_parts("€" * 80, "GSM") == 1  # 160 septets
    assert count_parts("x" * 459, "GSM") == 3
    assert count_parts("ά" * 70, "UTF-8") == 1
    assert count_parts("ά" * 71, "UTF-8") == 2


# =========================================================================== send.php reply


def test_reply_id_is_accepted_with_the_providers_id() -> None:
    # "π.χ. ID:I7I5R4HTAA Το αναγνωριστικό του μηνύματος αυτού"
    outcome = parse_send_reply(200, "ID:I7I5R4HTAA", wants_report=True, parts=2)
    assert outcome.kind is OutcomeKind.ACCEPTED
    assert outcome.provider_message_id == "I7I5R4HTAA"
    assert outcome.parts == 2
    assert outcome.state is None  # a report follows


def test_reply_id_without_a_receipt_request_finishes_accepted_at_once() -> None:
    outcome = parse_send_reply(200, "ID:I7I5R4HTAA\n", wants_report=False)
    assert outcome.kind is OutcomeKind.ACCEPTED
    assert outcome.provider_message_id == "I7I5R4HTAA"
    assert outcome.state is MessageState.ACCEPTED


def test_error_authentication_error_is_a_permanent_failure_with_err_11() -> None:
    outcome = parse_send_reply(200, "Error: Authentication error.", wants_report=True)
    assert (outcome.kind, outcome.error_code) == (OutcomeKind.PERMANENT, 11)


def test_error_no_recipients_is_a_permanent_failure_with_err_12() -> None:
    outcome = parse_send_reply(200, "Error: No recipients.", wants_report=True)
    assert (outcome.kind, outcome.error_code) == (OutcomeKind.PERMANENT, 12)


def test_error_invalid_sender_identity_is_a_permanent_failure_with_err_13() -> None:
    outcome = parse_send_reply(200, "Error: Invalid sender identity.", wants_report=True)
    assert (outcome.kind, outcome.error_code) == (OutcomeKind.PERMANENT, 13)


def test_error_insufficient_credits_is_a_transient_failure_with_err_14() -> None:
    outcome = parse_send_reply(200, "Error: Insufficient credits.", wants_report=True)
    assert (outcome.kind, outcome.error_code) == (OutcomeKind.TRANSIENT, 14)


def test_error_invalid_scheduling_date_is_a_permanent_failure_with_err_15() -> None:
    outcome = parse_send_reply(200, "Error: Invalid scheduling date.", wants_report=True)
    assert (outcome.kind, outcome.error_code) == (OutcomeKind.PERMANENT, 15)


def test_error_texts_are_matched_without_regard_to_case_spaces_or_the_stop() -> None:
    outcome = parse_send_reply(200, "  error:   no recipients \r\n", wants_report=True)
    assert outcome.error_code == 12


def test_an_error_text_the_document_does_not_list_is_permanent_with_err_10() -> None:
    outcome = parse_send_reply(200, "Error: Something new.", wants_report=True)
    assert (outcome.kind, outcome.error_code) == (OutcomeKind.PERMANENT, ERR_UNRECOGNISED)
    assert "something new" in outcome.detail


def test_an_http_4xx_is_permanent_with_err_10() -> None:
    outcome = parse_send_reply(404, "<html>Not Found</html>", wants_report=True)
    assert (outcome.kind, outcome.error_code) == (OutcomeKind.PERMANENT, ERR_UNRECOGNISED)


def test_a_2xx_reply_iSMS_never_gives_is_transient() -> None:
    outcome = parse_send_reply(200, "<html>maintenance</html>", wants_report=True)
    assert outcome.kind is OutcomeKind.TRANSIENT


# =========================================================================== query.php, credits.php


def test_the_documents_query_request() -> None:
    # "query.php?username=xxx&password=xxx&mid=0008FABD&mobile=306912345678"
    request = build_query_request(
        base_url=DEFAULT_BASE_URL,
        username="xxx",
        password="xxx",
        mid="0008FABD",
        mobile="306912345678",
    )
    assert request.full_url() == (
        "http://cp.isms.gr/api/http/query.php?username=xxx&password=xxx&mid=0008FABD"
        "&mobile=306912345678"
    )


@pytest.mark.parametrize(
    ("reply", "state", "err"),
    [
        ("Status: Queued", MessageState.ENROUTE, 0),
        ("Status: Pending", MessageState.ENROUTE, 0),
        ("Status: Delivered", MessageState.DELIVERED, 0),
        ("Status: Failed", MessageState.UNDELIVERABLE, ERR_FAILED),
        ("Error: No such message or recipient.", MessageState.UNKNOWN, ERR_NO_SUCH_MESSAGE),
    ],
)
def test_query_replies_map_to_states(reply: str, state: MessageState, err: int) -> None:
    result = parse_query_reply(reply)
    assert (result.state, result.error_code) == (state, err)


@pytest.mark.parametrize(
    "reply",
    [
        "Error: Authentication error.",
        "Error: No message ID defined.",
        "Error: No mobile defined.",
        "Status: Exploded",
        "",
    ],
)
def test_query_errors_give_no_state(reply: str) -> None:
    result = parse_query_reply(reply)
    assert result.state is None
    assert result.error


def test_status_words_queued_and_pending_are_intermediate() -> None:
    assert status_to_state("Queued") == (MessageState.ENROUTE, 0)
    assert status_to_state("pending") == (MessageState.ENROUTE, 0)
    assert not MessageState.ENROUTE.is_final
    assert status_to_state("Undelivered") is None


def test_the_documents_credits_request_and_reply() -> None:
    # "credits.php?username=YourUSERNAME&password=YourPASSWORD" → "Credits:3948.47"
    request = build_credits_request(
        base_url=DEFAULT_BASE_URL, username="YourUSERNAME", password="YourPASSWORD"
    )
    assert request.full_url() == (
        "http://cp.isms.gr/api/http/credits.php?username=YourUSERNAME&password=YourPASSWORD"
    )
    assert parse_credits_reply("Credits:3948.47") == (True, 3948.47)
    assert parse_credits_reply("Error: Authentication error.") == (False, None)
    assert parse_credits_reply("<html>") == (False, None)


# =========================================================================== dlr-url pushes


def test_a_push_with_mid_mobile_and_status_is_read() -> None:
    push = parse_report_push(
        CallbackRequest(
            "GET", query={"mid": "I7I5R4HTAA", "mobile": GREEK_MOBILE, "status": "Delivered"}
        )
    )
    assert (push.mid, push.mobile, push.state, push.error_code) == (
        "I7I5R4HTAA",
        GREEK_MOBILE,
        MessageState.DELIVERED,
        0,
    )
    failed = parse_report_push(CallbackRequest("POST", form={"id": "X1", "status": "Failed"}))
    assert (failed.mid, failed.state, failed.error_code) == (
        "X1",
        MessageState.UNDELIVERABLE,
        ERR_FAILED,
    )


def test_a_push_without_a_known_status_but_with_a_mobile_asks_query_php() -> None:
    push = parse_report_push(CallbackRequest("GET", query={"mid": "X1", "mobile": GREEK_MOBILE}))
    assert push.state is None
    assert push.mobile == GREEK_MOBILE


@pytest.mark.parametrize(
    "query",
    [
        {},
        {"status": "Delivered"},
        {"mid": "X1"},
        {"mid": "X1", "status": "Exploded"},
        {"mid": "x" * 65, "status": "Delivered"},
        {"mid": "X1", "mobile": "not-a-number"},
    ],
    ids=["empty", "no-mid", "no-status-no-mobile", "unknown-status", "long-mid", "bad-mobile"],
)
def test_malformed_pushes_are_refused(query: dict[str, str]) -> None:
    with pytest.raises(ValueError):
        parse_report_push(CallbackRequest("GET", query=query))


# =========================================================================== the simulator alone


def test_the_simulator_reads_every_schedule_example_of_the_document() -> None:
    now = time.time()
    for value in (
        "2017-07-17",
        "2017-05-11 14:40",
        "2017-04-22 17:47:55",
        "11 June 2017 11:00:00",
        "+1 day",
        "+1 week",
        "+1 week 2 days 4 hours 2 seconds",
        "next Thursday",
        "last Monday",
    ):
        assert parse_schedule(value, now) is not None, value
    assert (
        parse_schedule("+1 week 2 days 4 hours 2 seconds", now)
        == now + 7 * 86400 + 2 * 86400 + 4 * 3600 + 2
    )
    assert parse_schedule("+3600 seconds", now) == now + 3600
    for bad in ("tomorrow-ish", "2017-13-45", "+1 parsec", ""):
        assert parse_schedule(bad, now) is None, bad


# =========================================================================== against the simulator


@dataclass
class Harness:
    sim: IsmsHttpSimulator
    url: str
    reports: list[DeliveryReport] = field(default_factory=list)
    balances: list[float] = field(default_factory=list)
    providers: list[IsmsHttpProvider] = field(default_factory=list)
    callback: str | None = None

    async def provider(self, **settings: object) -> IsmsHttpProvider:
        values: dict[str, object] = {
            "type": "isms_http",
            "base_url": self.url + "/",
            "username": "test",
            "password": "test",
            "timeout": 2.0,
        }
        values.update(settings)
        ctx = ProviderContext(
            name="isms",
            callback_url=lambda kind: self.callback,
            set_balance=self.balances.append,
        )
        provider = create("isms", Settings.model_validate(values), ctx)
        assert isinstance(provider, IsmsHttpProvider)

        async def sink(report: DeliveryReport) -> bool:
            self.reports.append(report)
            return True

        async def no_inbound(_: object) -> bool:
            return False

        await provider.start(sink, no_inbound)
        self.providers.append(provider)
        return provider


async def _serve(app: Starlette) -> HttpServer:
    server = HttpServer("127.0.0.1", 0, app, shutdown_timeout=1.0)
    await server.start()
    return server


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    sim = IsmsHttpSimulator(delay=0.05, hang=1.0)
    server = await _serve(sim.app)
    h = Harness(sim, f"http://127.0.0.1:{server.port}")
    try:
        yield h
    finally:
        for provider in h.providers:
            await provider.stop()
        await server.stop()
        await sim.close()


async def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def test_a_gsm_message_is_accepted_with_the_simulators_id(harness: Harness) -> None:
    provider = await harness.provider()
    outcome = await provider.send(message("Hello from the bridge", registered_delivery=0))
    assert outcome.kind is OutcomeKind.ACCEPTED
    mid = outcome.provider_message_id
    assert mid is not None and mid in harness.sim.messages
    sent = harness.sim.messages[mid]
    assert (sent.sender, sent.text, sent.coding, sent.flash) == (
        "myself",
        "Hello from the bridge",
        "GSM",
        False,
    )
    assert sent.dlr_url is None  # no receipt asked for
    assert outcome.state is MessageState.ACCEPTED
    assert harness.sim.credits == 999.0


async def test_greek_text_goes_as_utf8_and_arrives_intact(harness: Harness) -> None:
    provider = await harness.provider()
    outcome = await provider.send(message("Καλημέρα από τη γέφυρα", flash=True))
    assert outcome.kind is OutcomeKind.ACCEPTED
    assert outcome.provider_message_id is not None
    sent = harness.sim.messages[outcome.provider_message_id]
    assert (sent.text, sent.coding, sent.flash) == ("Καλημέρα από τη γέφυρα", "UTF-8", True)


async def test_a_long_message_is_one_request_and_costs_its_parts(harness: Harness) -> None:
    provider = await harness.provider()
    outcome = await provider.send(message("y" * 400))
    assert outcome.kind is OutcomeKind.ACCEPTED
    assert outcome.parts == 3
    assert [r["script"] for r in harness.sim.requests] == ["send.php"]
    assert harness.sim.credits == 997.0


@pytest.mark.parametrize(
    ("to", "kind", "err"),
    [
        ("306912345691", OutcomeKind.PERMANENT, 12),
        ("306912345692", OutcomeKind.PERMANENT, 13),
        ("306912345693", OutcomeKind.TRANSIENT, 14),
        ("306912345694", OutcomeKind.PERMANENT, 15),
        ("306912345695", OutcomeKind.PERMANENT, 11),
    ],
    ids=["no-recipients", "invalid-sender", "insufficient-credits", "bad-schedule", "auth"],
)
async def test_every_send_error_of_the_simulator_becomes_its_outcome(
    harness: Harness, to: str, kind: OutcomeKind, err: int
) -> None:
    provider = await harness.provider()
    outcome = await provider.send(message(to=to))
    assert (outcome.kind, outcome.error_code) == (kind, err)
    assert harness.sim.credits == 1000.0


async def test_wrong_password_is_an_authentication_error(harness: Harness) -> None:
    provider = await harness.provider(password="wrong")
    outcome = await provider.send(message())
    assert (outcome.kind, outcome.error_code) == (OutcomeKind.PERMANENT, 11)
    assert "wrong" not in outcome.detail


async def test_empty_credit_balance_is_transient(harness: Harness) -> None:
    harness.sim.credits = 0.5
    provider = await harness.provider()
    outcome = await provider.send(message())
    assert (outcome.kind, outcome.error_code) == (OutcomeKind.TRANSIENT, 14)


async def test_a_schedule_is_passed_natively(harness: Harness) -> None:
    provider = await harness.provider()
    assert provider.capabilities.scheduling
    due = time.time() + 3600
    outcome = await provider.send(message(schedule_at=due))
    assert outcome.provider_message_id is not None
    sent = harness.sim.messages[outcome.provider_message_id]
    assert sent.schedule_at is not None and abs(sent.schedule_at - due) < 2
    assert harness.sim.requests[-1]["schedule"].endswith(" seconds")


async def test_http_500_is_transient(harness: Harness) -> None:
    provider = await harness.provider()
    outcome = await provider.send(message(to="306912345696"))
    assert outcome.kind is OutcomeKind.TRANSIENT
    assert "500" in outcome.detail


async def test_a_timeout_is_transient(harness: Harness) -> None:
    provider = await harness.provider(timeout=0.3)
    outcome = await provider.send(message(to="306912345698"))
    assert outcome.kind is OutcomeKind.TRANSIENT
    assert "timeout" in outcome.detail


async def test_health_reads_the_credit_balance(harness: Harness) -> None:
    provider = await harness.provider()
    assert await provider.healthy()
    assert harness.balances == [1000.0]
    await provider.send(message())
    assert await provider.healthy()
    assert harness.balances[-1] == 999.0


async def test_health_fails_with_wrong_credentials(harness: Harness) -> None:
    provider = await harness.provider(password="wrong")
    assert not await provider.healthy()
    assert harness.balances == []


async def test_poll_mode_sends_no_dlr_url_and_query_php_gives_the_states(
    harness: Harness,
) -> None:
    harness.callback = "http://127.0.0.1:1/never"
    harness.sim.delay = 0.5  # the first poll comes before the reports are due
    provider = await harness.provider(reports="poll")
    assert provider.capabilities.reports == "poll"
    delivered = message(to="306912345600")
    failed = replace(message(to="306912345601"), id="m2")
    sent = []
    for msg in (delivered, failed):
        outcome = await provider.send(msg)
        assert outcome.kind is OutcomeKind.ACCEPTED and outcome.state is None
        msg.provider_message_id = outcome.provider_message_id
        sent.append(msg)
    assert all(m.dlr_url is None for m in harness.sim.messages.values())
    queued = await provider.poll(sent)
    assert {r.state for r in queued} == {MessageState.ENROUTE}
    await wait_for(
        lambda: all(
            s != "Queued" for m in harness.sim.messages.values() for s in m.statuses.values()
        )
    )
    reports = {r.provider_message_id: r for r in await provider.poll(sent)}
    assert reports[str(delivered.provider_message_id)].state is MessageState.DELIVERED
    assert (
        reports[str(failed.provider_message_id)].state,
        reports[str(failed.provider_message_id)].error_code,
    ) == (MessageState.UNDELIVERABLE, ERR_FAILED)


async def test_poll_of_a_message_iSMS_does_not_know_finishes_it_unknown(harness: Harness) -> None:
    provider = await harness.provider()
    msg = message()
    msg.provider_message_id = "NOSUCHID"
    [report] = await provider.poll([msg])
    assert (report.state, report.error_code) == (MessageState.UNKNOWN, ERR_NO_SUCH_MESSAGE)


async def test_poll_with_wrong_credentials_gives_no_reports(harness: Harness) -> None:
    provider = await harness.provider(password="wrong")
    msg = message()
    msg.provider_message_id = "X"
    assert await provider.poll([msg]) == []


class CallbackRelay:
    """Stands in for the bridge's web layer: turns a push into a CallbackRequest for the
    provider, answers with its CallbackReply."""

    def __init__(self) -> None:
        self.provider: IsmsHttpProvider | None = None
        self.replies: list[CallbackReply] = []
        self.app = Starlette(routes=[Route("/cb/report", self.report, methods=["GET", "POST"])])

    async def report(self, request: Request) -> Response:
        assert self.provider is not None
        reply = await self.provider.handle_callback(
            "report", CallbackRequest(request.method, query=dict(request.query_params))
        )
        self.replies.append(reply)
        return PlainTextResponse(reply.body, reply.status)


async def test_reports_are_pushed_to_the_dlr_url_and_become_delivery_reports(
    harness: Harness,
) -> None:
    relay = CallbackRelay()
    server = await _serve(relay.app)
    try:
        harness.callback = f"http://127.0.0.1:{server.port}/cb/report"
        provider = await harness.provider()
        relay.provider = provider
        outcomes = {}
        for to in ("306912345600", "306912345601", "306912345603"):
            outcome = await provider.send(message(to=to))
            assert outcome.provider_message_id is not None
            outcomes[to] = outcome.provider_message_id
        request = harness.sim.requests[0]
        assert request["dlr-url"] == harness.callback
        await wait_for(lambda: len(harness.reports) == 4)
        by_id: dict[str, list[tuple[MessageState, int]]] = {}
        for r in harness.reports:
            by_id.setdefault(r.provider_message_id, []).append((r.state, r.error_code))
        assert by_id[outcomes["306912345600"]] == [(MessageState.DELIVERED, 0)]
        assert by_id[outcomes["306912345601"]] == [(MessageState.UNDELIVERABLE, ERR_FAILED)]
        assert by_id[outcomes["306912345603"]] == [
            (MessageState.ENROUTE, 0),
            (MessageState.DELIVERED, 0),
        ]
        pushed = harness.sim.pushes[0][0]
        assert set(pushed) == {"mid", "mobile", "status"}
        assert all(status == 200 for _, status in harness.sim.pushes)
    finally:
        await server.stop()


async def test_a_push_without_status_is_resolved_through_query_php(harness: Harness) -> None:
    provider = await harness.provider()
    outcome = await provider.send(message(to="306912345604"))  # delivered, never pushed
    mid = str(outcome.provider_message_id)
    await wait_for(lambda: harness.sim.messages[mid].statuses["306912345604"] != "Queued")
    reply = await provider.handle_callback(
        "report", CallbackRequest("GET", query={"mid": mid, "mobile": "306912345604"})
    )
    assert reply.status == 200
    assert [(r.provider_message_id, r.state) for r in harness.reports] == [
        (mid, MessageState.DELIVERED)
    ]


async def test_forged_or_malformed_pushes_get_a_4xx_and_change_nothing(harness: Harness) -> None:
    provider = await harness.provider()
    for query in ({}, {"status": "Delivered"}, {"mid": "X", "status": "Teleported"}):
        reply = await provider.handle_callback("report", CallbackRequest("GET", query=query))
        assert 400 <= reply.status < 500
    reply = await provider.handle_callback("inbound", CallbackRequest("GET", query={}))
    assert reply.status == 404
    assert harness.reports == []


async def test_a_push_before_start_is_refused_for_a_resend(harness: Harness) -> None:
    settings = Settings(type="isms_http", username="u", password="p")
    provider = IsmsHttpProvider("isms", settings, ProviderContext(name="isms"))
    reply = await provider.handle_callback(
        "report", CallbackRequest("GET", query={"mid": "X", "status": "Delivered"})
    )
    assert reply.status == 503


async def test_the_simulator_serves_the_documented_paths_too(harness: Harness) -> None:
    provider = await harness.provider(base_url=harness.url + "/api/http/")
    assert await provider.healthy()
    outcome = await provider.send(message())
    assert outcome.kind is OutcomeKind.ACCEPTED


async def test_the_simulators_query_php_errors(harness: Harness) -> None:
    provider = await harness.provider()
    assert (await provider.query("", GREEK_MOBILE)).error == "no message id defined"
    assert (await provider.query("X", "")).error == "no mobile defined"


# =========================================================================== config example


def test_the_config_example_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    path = ROOT / "config" / "examples" / "isms_http.toml"
    env = {"ISMS_USERNAME": "demo", "ISMS_PASSWORD": "secret", "SMPP_DEMO_PASSWORD": "demopass"}
    cfg = load_config(path, env=env)
    settings = cfg.providers["isms"]
    assert isinstance(settings, Settings)
    assert settings.username == "demo"
    assert settings.password.get_secret_value() == "secret"
    assert settings.base_url == DEFAULT_BASE_URL
    assert settings.reports == "push"
