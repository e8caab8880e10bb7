"""phlyMail adapter. IN PROGRESS (issue 4): only the settings exist so far."""

from __future__ import annotations

from typing import Literal

from bridge.providers.base import Provider, ProviderContext
from bridge.providers.settings import HttpProviderSettings

__all__ = ["Settings", "create"]


class Settings(HttpProviderSettings):
    """``[providers.NAME] type = "phlymail"``."""

    type: Literal["phlymail"]
    base_url: str = "https://msggw.phlymail.de/http.php"


def create(name: str, settings: Settings, ctx: ProviderContext) -> Provider:
    raise NotImplementedError("phlymail adapter not built yet")
