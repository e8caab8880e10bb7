"""1601SMS adapter. IN PROGRESS (issue 4): only the settings exist so far."""

from __future__ import annotations

from typing import Literal

from bridge.providers.base import Provider, ProviderContext
from bridge.providers.settings import HttpProviderSettings

__all__ = ["Settings", "create"]


class Settings(HttpProviderSettings):
    """``[providers.NAME] type = "sms1601"``."""

    type: Literal["sms1601"]
    base_url: str = "http://217.19.227.48/module/gateway.php"


def create(name: str, settings: Settings, ctx: ProviderContext) -> Provider:
    raise NotImplementedError("sms1601 adapter not built yet")
