"""The providers' callback URLs: the secret their tokens derive from, each provider's token, and
the URL (``/callbacks/{provider}/{token}/{kind}``, the route :mod:`bridge.web.server` serves)
a provider is told to push to.

Why a module of its own: both the running bridge (which hands the URLs to its providers and
checks the tokens on the public listener) and ``smpp-bridge callback-urls`` (which prints them
for a provider's web interface, with no bridge running) must derive the very same URLs from a
config, so the derivation lives in one place beside the route it names.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from pathlib import Path

from bridge.config import Config
from bridge.core.provider import CallbackProvider, ProviderContext
from bridge.passwords import secret_file
from bridge.providers.registry import ProviderConfig, build_provider
from bridge.web.server import CALLBACK_PREFIX

__all__ = [
    "CALLBACK_SECRET_FILE",
    "callback_base",
    "callback_secret",
    "callback_token",
    "callback_url",
    "callback_urls",
]

CALLBACK_SECRET_FILE = "callback.secret"


def callback_secret(cfg: Config) -> bytes:
    """``[http] callback_secret``, else a random secret kept in the data directory (created
    once, mode 0600), so callback URLs handed to providers survive restarts."""
    if cfg.http.callback_secret is not None:
        return cfg.http.callback_secret.get_secret_value().encode()
    value = secret_file(Path(cfg.storage.data_dir) / CALLBACK_SECRET_FILE)
    assert value is not None  # created when missing
    return value.encode()


def callback_token(secret: bytes, name: str, pc: ProviderConfig) -> str:
    """The provider's ``callback_token``, else HMAC-SHA256(secret, name): unguessable without
    the secret, stable across restarts, different per provider."""
    token = getattr(pc, "callback_token", None)
    if token is not None:
        return str(token.get_secret_value())
    return hmac.new(secret, f"callback:{name}".encode(), hashlib.sha256).hexdigest()[:40]


def callback_base(cfg: Config, port: int) -> str:
    """``[http] public_url``, else this server's own address on ``port`` (a wildcard listen
    address becomes loopback: right for local simulators; production sets public_url)."""
    if cfg.http.public_url is not None:
        return cfg.http.public_url
    host = cfg.http.host
    if host in ("", "0.0.0.0", "::"):
        host = "127.0.0.1"
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{port}"


def callback_url(base: str, provider: str, token: str, kind: str) -> str:
    return f"{base}{CALLBACK_PREFIX}{provider}/{token}/{kind}"


def callback_urls(cfg: Config) -> dict[str, dict[str, str]]:
    """Each push-capable provider's callback URLs by kind, as a running bridge on ``cfg`` would
    hand them out (``smpp-bridge callback-urls``): for provider web interfaces that want the URL
    typed in (an account-level push URL). Uses the same secret as the bridge (the data
    directory's ``callback.secret`` is created if it does not exist yet)."""
    secret = callback_secret(cfg)
    base = callback_base(cfg, cfg.http.port)
    urls: dict[str, dict[str, str]] = {}
    for name, pc in cfg.providers.items():
        provider = build_provider(name, pc, ProviderContext(name=name))
        if isinstance(provider, CallbackProvider):
            token = callback_token(secret, name, pc)
            # A provider whose account-level URL must carry placeholders says which.
            suffixes: Mapping[str, str] = getattr(provider, "callback_url_suffixes", {})
            urls[name] = {
                kind: callback_url(base, name, token, kind) + suffixes.get(kind, "")
                for kind in provider.callback_kinds
            }
    return urls
