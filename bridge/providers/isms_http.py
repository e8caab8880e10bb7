"""iSMS.gr (HTTP) adapter. IN PROGRESS (issue 4): only the settings exist so far."""

from __future__ import annotations

from typing import Literal

from bridge.providers.base import Provider, ProviderContext
from bridge.providers.settings import HttpProviderSettings

__all__ = ["Settings", "create"]


class Settings(HttpProviderSettings):
    """``[providers.NAME] type = "isms_http"``."""

    type: Literal["isms_http"]
    base_url: str = "http://cp.isms.gr/api/http/send.php"


def create(name: str, settings: Settings, ctx: ProviderContext) -> Provider:
    raise NotImplementedError("isms_http adapter not built yet")
