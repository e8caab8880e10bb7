"""The provider types, in one table: what ``[providers.NAME] type = "…"`` may say, and for each
its settings (the keys of its table), the factory that builds its adapter, the simulator
``smpp-bridge simulate`` runs for it and the page an operator reads about it.

Config validation, the app's wiring and the ``simulate`` command all read this table, so adding
a provider API is one module in ``bridge/providers``, one in ``bridge/simulators``, a docs page
and one line here (and one in :data:`ProviderConfig`, the typed union below, which a test holds
to this table). The sandbox is an entry like the others.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import Discriminator, Tag

from bridge.core.provider import Provider, ProviderContext
from bridge.providers import (
    isms_http,
    isms_smpp,
    mycoolsms,
    phlymail,
    sandbox,
    sms1601,
    smsflatrate,
)
from bridge.providers.settings import ProviderSettings

__all__ = [
    "PROVIDER_TYPES",
    "SIMULATOR_ALIASES",
    "ProviderConfig",
    "ProviderType",
    "build_provider",
    "simulator_modules",
]


@dataclass(frozen=True, slots=True)
class ProviderType:
    """One provider API the bridge speaks."""

    settings: type[ProviderSettings]
    create: Callable[[str, Any, ProviderContext], Provider]
    #: The module of ``bridge/simulators`` that fakes its API (None: it needs none).
    simulator: str | None
    #: Where its behaviour is documented for operators (a path in the repository).
    docs: str


PROVIDER_TYPES: dict[str, ProviderType] = {
    "sandbox": ProviderType(sandbox.Settings, sandbox.create, None, "README.md"),
    "phlymail": ProviderType(
        phlymail.Settings, phlymail.create, "bridge.simulators.phlymail",
        "docs/providers/phlymail.md",
    ),
    "smsflatrate": ProviderType(
        smsflatrate.Settings, smsflatrate.create, "bridge.simulators.smsflatrate",
        "docs/providers/smsflatrate.md",
    ),
    "mycoolsms": ProviderType(
        mycoolsms.Settings, mycoolsms.create, "bridge.simulators.mycoolsms",
        "docs/providers/mycoolsms.md",
    ),
    "sms1601": ProviderType(
        sms1601.Settings, sms1601.create, "bridge.simulators.sms1601",
        "docs/providers/sms1601.md",
    ),
    "isms_http": ProviderType(
        isms_http.Settings, isms_http.create, "bridge.simulators.isms_http",
        "docs/providers/isms_http.md",
    ),
    "isms_smpp": ProviderType(
        isms_smpp.Settings, isms_smpp.create, "bridge.simulators.smpp_upstream",
        "docs/providers/isms_smpp.md",
    ),
}  # fmt: skip



def _provider_type(value: Any) -> str:
    """The union's tag: ``type``, "sandbox" when the table has none."""
    if isinstance(value, dict):
        tag = value.get("type", "sandbox")
        return tag if isinstance(tag, str) else ""
    return str(getattr(value, "type", ""))


#: One ``[providers.NAME]`` table; its ``type`` says which adapter and which keys. Spelled out
#: for the type checker; tests/test_config.py checks it names exactly the table's types.
ProviderConfig = Annotated[
    Annotated[sandbox.Settings, Tag("sandbox")]
    | Annotated[phlymail.Settings, Tag("phlymail")]
    | Annotated[smsflatrate.Settings, Tag("smsflatrate")]
    | Annotated[mycoolsms.Settings, Tag("mycoolsms")]
    | Annotated[sms1601.Settings, Tag("sms1601")]
    | Annotated[isms_http.Settings, Tag("isms_http")]
    | Annotated[isms_smpp.Settings, Tag("isms_smpp")],
    Discriminator(
        _provider_type,
        custom_error_type="provider_type",
        custom_error_message="unknown provider type; one of: " + ", ".join(PROVIDER_TYPES),
    ),
]


def build_provider(name: str, pc: ProviderSettings, ctx: ProviderContext) -> Provider:
    """The adapter a ``[providers.NAME]`` table describes."""
    return PROVIDER_TYPES[pc.type].create(name, pc, ctx)


#: Older names ``smpp-bridge simulate`` still takes.
SIMULATOR_ALIASES = {"isms-http": "isms_http", "smpp-upstream": "isms_smpp"}


def simulator_modules() -> dict[str, str]:
    """``smpp-bridge simulate`` names → simulator modules (every type that has one, and the
    aliases)."""
    modules = {name: t.simulator for name, t in PROVIDER_TYPES.items() if t.simulator}
    modules.update({alias: modules[target] for alias, target in SIMULATOR_ALIASES.items()})
    return modules
