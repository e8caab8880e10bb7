"""smsflatrate.net adapter. IN PROGRESS (issue 4): only the settings exist so far."""

from __future__ import annotations

from typing import Literal

from bridge.providers.base import Provider, ProviderContext
from bridge.providers.settings import HttpProviderSettings

__all__ = ["Settings", "create"]


class Settings(HttpProviderSettings):
    """``[providers.NAME] type = "smsflatrate"``."""

    type: Literal["smsflatrate"]
    base_url: str = "https://www.smsflatrate.net/schnittstelle.php"


def create(name: str, settings: Settings, ctx: ProviderContext) -> Provider:
    raise NotImplementedError("smsflatrate adapter not built yet")
