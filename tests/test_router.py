"""Router: rule matching (account, country via phonenumbers, prefix, regex), capability
filtering, and the NoRoute reasons the SMPP layer turns into command_status values."""

from __future__ import annotations

import re
from typing import Any

import pytest

from bridge.core.model import Address, Message
from bridge.core.provider import Capabilities
from bridge.core.router import NoRoute, NoRouteReason, Route, Router, country_of


def msg(dest: str = "4915112345678", account: str = "demo", **kw: Any) -> Message:
    values: dict[str, Any] = {
        "id": "m1",
        "account": account,
        "source": Address("4930123456"),
        "destination": Address(dest),
        "text": "hello",
    }
    values.update(kw)
    return Message(**values)


ALL = Capabilities()


def router(*routes: Route, **caps: Capabilities) -> Router:
    capabilities = caps or {"a": ALL, "b": ALL, "c": ALL, "sandbox": ALL}
    return Router(list(routes), capabilities)


def route(r: Router, message: Message, chars: int = 5, unicode: bool = False) -> list[str]:
    return r.route(message, chars=chars, unicode=unicode)


# --------------------------------------------------------------------------- matching


def test_no_routes_configured_sends_everything_to_the_sandbox() -> None:
    assert route(Router([], {"sandbox": ALL}), msg()) == ["sandbox"]


def test_account_rule() -> None:
    r = router(Route(["a"], accounts=["vip"]), Route(["b"]))
    assert route(r, msg(account="vip")) == ["a"]
    assert route(r, msg(account="demo")) == ["b"]


def test_replaced_routes_apply_to_the_next_message() -> None:
    r = router(Route(["a"]))
    r.replace_routes([Route(["b"], countries=["FR"]), Route(["c"])])
    assert route(r, msg("33612345678")) == ["b"]
    assert route(r, msg()) == ["c"]
    r.replace_routes([])
    assert route(r, msg()) == ["sandbox"]


@pytest.mark.parametrize(
    ("digits", "region"),
    [
        ("4915112345678", "DE"),
        ("+4915112345678", "DE"),
        ("33612345678", "FR"),
        ("447700900123", "GB"),
        ("14165550123", "CA"),  # +1 is shared: the full parse tells Toronto from the US
        ("12025550123", "US"),
        ("80012345678", None),  # non-geographic (international freephone)
        ("999123", None),  # unassigned code
        ("abc", None),
        ("", None),
    ],
)
def test_country_of(digits: str, region: str | None) -> None:
    assert country_of(digits) == region


def test_country_rule_uses_the_destination_country() -> None:
    r = router(Route(["a"], countries=["de", "AT"]), Route(["b"]))
    assert route(r, msg("4915112345678")) == ["a"]
    assert route(r, msg("436641234567")) == ["a"]
    assert route(r, msg("33612345678")) == ["b"]


def test_prefix_rule_ignores_plus() -> None:
    r = router(Route(["a"], prefixes=["+49151", "49160"]), Route(["b"]))
    assert route(r, msg("4915112345678")) == ["a"]
    assert route(r, msg("4916012345678")) == ["a"]
    assert route(r, msg("4917012345678")) == ["b"]


def test_regex_rule_is_searched_in_the_digits() -> None:
    r = router(Route(["a"], regex=r"^49\d{3}0"), Route(["b"], regex="999$"), Route(["c"]))
    assert route(r, msg("4915101234567")) == ["a"]
    assert route(r, msg("4915112345999")) == ["b"]
    assert route(r, msg("4915112345678")) == ["c"]


def test_every_condition_of_a_rule_must_match() -> None:
    r = router(Route(["a"], accounts=["vip"], countries=["DE"]), Route(["b"]))
    assert route(r, msg("4915112345678", account="vip")) == ["a"]
    assert route(r, msg("33612345678", account="vip")) == ["b"]
    assert route(r, msg("4915112345678", account="demo")) == ["b"]


def test_first_matching_rule_wins_and_keeps_failover_order() -> None:
    r = router(Route(["c", "a"], prefixes=["49"]), Route(["b"], prefixes=["49"]))
    assert route(r, msg()) == ["c", "a"]


def test_no_rule_matches() -> None:
    r = router(Route(["a"], countries=["FR"]))
    with pytest.raises(NoRoute) as e:
        route(r, msg())
    assert e.value.reason is NoRouteReason.NO_RULE


def test_bad_regex_fails_at_configuration_time() -> None:
    with pytest.raises(re.error):
        Route(["a"], regex="(")


# --------------------------------------------------------------------------- capabilities


def test_unicode_filters_providers_without_it() -> None:
    r = Router([Route(["gsm", "uni"])], {"gsm": Capabilities(unicode=False), "uni": ALL})
    assert route(r, msg(), unicode=False) == ["gsm", "uni"]
    assert route(r, msg(), unicode=True) == ["uni"]


def test_unicode_not_supported_anywhere() -> None:
    r = Router([Route(["gsm"])], {"gsm": Capabilities(unicode=False)})
    with pytest.raises(NoRoute) as e:
        route(r, msg(), unicode=True)
    assert e.value.reason is NoRouteReason.UNICODE


def test_length_limits_per_alphabet() -> None:
    short = Capabilities(max_gsm7_chars=160, max_ucs2_chars=70)
    r = Router([Route(["short", "long"])], {"short": short, "long": ALL})
    assert route(r, msg(), chars=160) == ["short", "long"]
    assert route(r, msg(), chars=161) == ["long"]
    assert route(r, msg(), chars=70, unicode=True) == ["short", "long"]
    assert route(r, msg(), chars=71, unicode=True) == ["long"]


def test_too_long_for_every_route() -> None:
    r = router(Route(["a", "b"]))
    with pytest.raises(NoRoute) as e:
        route(r, msg(), chars=ALL.max_gsm7_chars + 1)
    assert e.value.reason is NoRouteReason.TOO_LONG
    assert "long" in e.value.reason  # str-compatible for callers that match on text


def test_a_feature_refusal_beats_too_long() -> None:
    r = Router(
        [Route(["gsm", "short"])],
        {"gsm": Capabilities(unicode=False), "short": Capabilities(max_ucs2_chars=70)},
    )
    with pytest.raises(NoRoute) as e:
        route(r, msg(), chars=100, unicode=True)
    assert e.value.reason is NoRouteReason.UNICODE


def test_binary_needs_binary_support_and_counts_octets() -> None:
    r = Router([Route(["text", "bin"])], {"text": ALL, "bin": Capabilities(binary=True)})
    binary = msg(text=None, binary=b"\x00" * 10)
    assert route(r, binary, chars=10) == ["bin"]
    assert route(r, binary, chars=2 * ALL.max_ucs2_chars) == ["bin"]
    with pytest.raises(NoRoute) as e:
        route(Router([Route(["bin"])], {"bin": Capabilities(binary=True)}), binary, chars=1341)
    assert e.value.reason is NoRouteReason.TOO_LONG
    with pytest.raises(NoRoute) as e:
        route(Router([Route(["text"])], {"text": ALL}), binary, chars=10)
    assert e.value.reason is NoRouteReason.BINARY


def test_flash_needs_flash_support() -> None:
    r = Router([Route(["plain", "flashy"])], {"plain": ALL, "flashy": Capabilities(flash=True)})
    assert route(r, msg(flash=True)) == ["flashy"]
    with pytest.raises(NoRoute) as e:
        route(Router([Route(["plain"])], {"plain": ALL}), msg(flash=True))
    assert e.value.reason is NoRouteReason.FLASH


def test_alphanumeric_sender_support_and_length() -> None:
    caps = {
        "numeric": Capabilities(alphanumeric_sender=False),
        "eleven": ALL,
        "six": Capabilities(max_sender_chars=6),
    }
    r = Router([Route(["numeric", "eleven", "six"])], caps)
    assert route(r, msg(source=Address("Shop", ton=5, npi=0))) == ["eleven", "six"]
    assert route(r, msg(source=Address("LongShopNm", ton=5, npi=0))) == ["eleven"]
    # a numeric sender is not held to the alphanumeric length limit
    assert route(r, msg(source=Address("4930123456789"))) == ["numeric", "eleven", "six"]
    with pytest.raises(NoRoute) as e:
        route(r, msg(source=Address("TwelveChars!", ton=5, npi=0)))
    assert e.value.reason is NoRouteReason.ALPHANUMERIC_SENDER  # the first provider's obstacle
    with pytest.raises(NoRoute) as e:
        route(Router([Route(["six"])], caps), msg(source=Address("Seven77", ton=5, npi=0)))
    assert e.value.reason is NoRouteReason.SENDER_TOO_LONG


def test_unconfigured_providers_are_skipped() -> None:
    r = Router([Route(["gone", "a"])], {"a": ALL})
    assert route(r, msg()) == ["a"]
    with pytest.raises(NoRoute) as e:
        route(Router([Route(["gone"])], {"a": ALL}), msg())
    assert e.value.reason is NoRouteReason.NO_PROVIDER
    with pytest.raises(NoRoute) as e:  # the configured one's reason counts
        route(Router([Route(["gone", "a"])], {"a": ALL}), msg(), chars=10_000)
    assert e.value.reason is NoRouteReason.TOO_LONG


def test_every_no_route_reason_becomes_a_reject_reason_that_names_it() -> None:
    """The ESME and the metric learn what stood in the way: a route that cannot carry Unicode
    is not "no_route", and a sender too long is not a message too long (ESME_RINVMSGLEN)."""
    from bridge.core.admission import _NO_ROUTE_REASONS, RejectReason
    from bridge.smpp.pdu import CommandId, Status
    from bridge.smsc import status_for

    assert set(_NO_ROUTE_REASONS) == set(NoRouteReason)
    assert _NO_ROUTE_REASONS[NoRouteReason.NO_RULE] is RejectReason.NO_ROUTE
    assert _NO_ROUTE_REASONS[NoRouteReason.UNICODE] is RejectReason.UNICODE_UNSUPPORTED
    assert _NO_ROUTE_REASONS[NoRouteReason.SENDER_TOO_LONG] is RejectReason.SENDER_TOO_LONG
    sender = status_for(RejectReason.SENDER_TOO_LONG, CommandId.submit_sm)
    assert sender == Status.ESME_RSUBMITFAIL
    too_long = status_for(_NO_ROUTE_REASONS[NoRouteReason.TOO_LONG], CommandId.submit_sm)
    assert too_long == Status.ESME_RINVMSGLEN
