"""iSMS.gr (SMPP upstream) adapter. IN PROGRESS (issue 5): only the settings exist so far."""

from __future__ import annotations

from typing import Literal

from bridge.providers.base import Provider, ProviderContext
from bridge.providers.settings import ProviderSettings

__all__ = ["Settings", "create"]


class Settings(ProviderSettings):
    """``[providers.NAME] type = "isms_smpp"``."""

    type: Literal["isms_smpp"]


def create(name: str, settings: Settings, ctx: ProviderContext) -> Provider:
    raise NotImplementedError("isms_smpp adapter not built yet")
