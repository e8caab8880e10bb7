"""The typed ``[providers.NAME]`` tables every provider's settings build on.

Each provider module declares its own ``Settings`` (a subclass of :class:`ProviderSettings` or
:class:`HttpProviderSettings` with ``type: Literal["<type>"]``); ``bridge.config`` puts them in
one union discriminated by ``type``. Same rules as the rest of the config: unknown keys are
errors, types are strict, and secrets are :class:`~pydantic.SecretStr` that may be given as
``"env:VAR"`` (resolved at load time, so a missing variable fails ``check-config``, and never
echoed in an error).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationInfo,
)

__all__ = [
    "HttpProviderSettings",
    "NonNegFloat",
    "PosFloat",
    "ProviderSettings",
    "Secret",
    "TimeZoneName",
    "resolve_env",
]

NonNegFloat = Annotated[float, Field(ge=0, allow_inf_nan=False)]  # finite only
PosFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]


def resolve_env(value: Any, info: ValidationInfo) -> Any:
    """``"env:VAR"`` → the variable's value (ValueError naming the variable, never a value)."""
    if isinstance(value, str) and value.startswith("env:"):
        var = value[4:]
        if not var:
            raise ValueError('"env:" must be followed by an environment variable name')
        env: Mapping[str, str] = (info.context or {}).get("env", os.environ)
        if var not in env:
            raise ValueError(f"environment variable {var} is not set")
        return env[var]
    return value


def _non_empty_secret(value: Any, info: ValidationInfo) -> Any:
    value = resolve_env(value, info)
    if isinstance(value, str) and not value:
        raise ValueError("must not be empty")
    return value


#: A credential: plain text in the file, or ``"env:VAR"``. Held as SecretStr, shown as ``**``.
Secret = Annotated[SecretStr, BeforeValidator(_non_empty_secret)]


def _known_zone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {value!r} (an IANA name like Europe/Berlin)") from None
    return value


#: An IANA time zone name (``Europe/Berlin``), checked when the config loads: the zone a
#: provider reads and writes its local times in.
TimeZoneName = Annotated[str, AfterValidator(_known_zone)]


class ProviderSettings(BaseModel):
    """Keys every provider has: the dispatcher's limits for it."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    type: str
    requests_per_second: NonNegFloat = 0.0  # 0 = unlimited
    concurrency: Annotated[int, Field(ge=1)] = 16  # sends in flight at once


class HttpProviderSettings(ProviderSettings):
    """Keys of every HTTP provider: where it is, how the calls are made, the callback token.

    ``base_url`` defaults (in each subclass) to the provider's documented endpoint; point it at a
    ``smpp-bridge simulate`` instance to try a config without an account. ``callback_token`` is the
    secret path element of this provider's callback URLs; by default it is derived from the
    bridge's callback secret (``[http] callback_secret``, else a random one kept in the data
    directory), which is stable across restarts.
    """

    base_url: str
    transport: Literal["aiohttp", "httpx"] = "aiohttp"
    timeout: PosFloat = 15.0  # whole request, seconds; a timeout is a transient failure
    connect_timeout: PosFloat = 5.0
    # A send that got no answer after its request went out (a timeout, a connection lost
    # mid-reply) may have been taken: true sends it again (at least once: a possible duplicate
    # SMS), false finishes it UNKNOWN (at most once: never a duplicate, maybe never sent). None
    # of the documented HTTP APIs can be asked whether a send with our reference arrived.
    retry_after_timeout: bool = True
    callback_token: Secret | None = None
