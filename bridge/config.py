"""Typed configuration: a TOML file (stdlib ``tomllib``) validated by pydantic v2 into a
:class:`Config`, every problem reported at once, each as ``FILE:LINE: key.path: message``.

This module is the entry: :func:`load_config`, :func:`load_config_text`, :func:`apply_overrides`
and the whole-file model. What each section's keys mean is :mod:`bridge.config_sections`; the
``[providers.NAME]`` tables are :data:`bridge.providers.registry.ProviderConfig`; finding the line
of a key, wording pydantic's errors and applying ``--set`` is :mod:`bridge.config_toml`.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, Field, ValidationError, model_validator

from bridge.config_sections import (
    AccountConfig,
    AdminConfig,
    ClusterConfig,
    HttpConfig,
    LoggingConfig,
    PathField,
    PipelineConfig,
    RouteConfig,
    Section,
    SmppConfig,
    StorageConfig,
    TlsConfig,
    check_node_id,
    check_store_url,
)
from bridge.config_toml import (
    LineIndex,
    Loc,
    SetError,
    apply_set,
    duplicate_system_ids,
    format_loc,
    message,
    syntax_error,
    unknown_route_providers,
)
from bridge.core.accounts import Account
from bridge.providers import sandbox
from bridge.providers.registry import PROVIDER_TYPES as _REGISTRY
from bridge.providers.registry import ProviderConfig

__all__ = [
    "Config",
    "ConfigError",
    "ConfigProblem",
    "apply_overrides",
    "load_config",
    "load_config_text",
]

#: The ``type`` values of ``[providers.NAME]``, from the one registry (bridge.providers.registry).
PROVIDER_TYPES = tuple(_REGISTRY)


# --------------------------------------------------------------------------------------------
# Errors


@dataclass(frozen=True, slots=True)
class ConfigProblem:
    """One thing wrong with a config file. ``path`` is like ``accounts[1].tps`` ("" for syntax
    errors); ``line`` is 1-based, or None when the key does not appear in the text."""

    path: str
    message: str
    line: int | None = None

    def format(self, source: str) -> str:
        where = source if self.line is None else f"{source}:{self.line}"
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class ConfigError(Exception):
    """The config cannot be used. ``str(e)`` lists every problem, one per line."""

    def __init__(self, errors: list[ConfigProblem], source: str = "<string>") -> None:
        self.errors = errors
        self.source = source
        super().__init__("\n".join(p.format(source) for p in errors))


# --------------------------------------------------------------------------------------------
# The whole file


def _default_providers() -> dict[str, ProviderConfig]:
    return {"sandbox": sandbox.Settings()}


_SECTIONS = ("smpp", "http", "admin", "storage", "logging", "pipeline", "cluster")


class Config(Section):
    """The whole configuration. ``source_path`` is the file it came from (None for text)."""

    smpp: SmppConfig
    http: HttpConfig
    admin: AdminConfig
    storage: StorageConfig
    cluster: ClusterConfig
    logging: LoggingConfig
    pipeline: PipelineConfig
    accounts: Annotated[list[AccountConfig], Field(min_length=1)]
    providers: dict[str, ProviderConfig] = Field(
        default_factory=lambda: _default_providers()
    )
    routes: list[RouteConfig] = Field(default_factory=list)
    source_path: PathField | None = None
    # ``--set KEY=VALUE`` overrides it was loaded with, so that SIGHUP re-applies them.
    command_line_sets: tuple[str, ...] = ()

    @model_validator(mode="before")
    @classmethod
    def _sections_default_to_empty_tables(cls, data: Any) -> Any:
        # Validate absent sections as {} (not via a default instance) so validators that need
        # the context, such as path resolution, still run for their defaults.
        if isinstance(data, dict):
            data = {**{name: {} for name in _SECTIONS}, **data}
        return data

    def to_accounts(self) -> list[Account]:
        return [a.to_account() for a in self.accounts]

    @model_validator(mode="after")
    def _routes_name_known_providers(self) -> Config:
        for i, route in enumerate(self.routes):
            for name in route.providers:
                if name not in self.providers:
                    raise ValueError(
                        f"routes[{i}].providers: unknown provider {name!r} "
                        f"(configured: {', '.join(sorted(self.providers)) or 'none'})"
                    )
        return self


# Which model describes the table at a key path (list indices dropped): for "did you mean".
_MODEL_AT: dict[tuple[str, ...], type[BaseModel]] = {
    (): Config,
    ("smpp",): SmppConfig,
    ("smpp", "tls"): TlsConfig,
    ("http",): HttpConfig,
    ("admin",): AdminConfig,
    ("storage",): StorageConfig,
    ("cluster",): ClusterConfig,
    ("logging",): LoggingConfig,
    ("accounts",): AccountConfig,
    ("pipeline",): PipelineConfig,
    ("routes",): RouteConfig,
}
# Keys that exist on the models but must not be set from the file.
_INTERNAL_KEYS: dict[tuple[str, ...], set[str]] = {(): {"source_path", "command_line_sets"}}


# --------------------------------------------------------------------------------------------
# Loading


def _load(
    text: str,
    *,
    source: str,
    base_dir: Path | None,
    env: Mapping[str, str] | None,
    source_path: Path | None,
    sets: Sequence[str] = (),
) -> Config:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        msg, line = syntax_error(exc, text)
        raise ConfigError([ConfigProblem("", msg, line)], source) from None

    index = LineIndex(text)
    found: list[tuple[Loc, str, object]] = []

    for internal in _INTERNAL_KEYS[()]:
        if internal in raw:
            found.append(((internal,), "unknown key", None))
            del raw[internal]
    overridden: list[Loc] = []
    set_problems: list[ConfigProblem] = []
    for item in sets:
        try:
            overridden.append(apply_set(raw, item))
        except SetError as e:
            set_problems.append(ConfigProblem(format_loc(e.loc), f"--set {item}: {e}"))
    found.extend((loc, msg, None) for loc, msg in duplicate_system_ids(raw))
    found.extend(unknown_route_providers(raw))

    context = {
        "base_dir": base_dir if base_dir is not None else Path.cwd(),
        "env": env if env is not None else os.environ,
    }
    config: Config | None = None
    try:
        config = Config.model_validate(
            {**raw, "source_path": source_path, "command_line_sets": tuple(sets)},
            context=context,
        )
    except ValidationError as exc:
        for error in exc.errors(include_url=False, include_context=False):
            loc = tuple(error["loc"])
            if len(loc) > 3 and loc[0] == "providers" and loc[2] in PROVIDER_TYPES:
                loc = loc[:2] + loc[3:]  # the union's tag is not a key of the file
            found.append((loc, message(error, _MODEL_AT, _INTERNAL_KEYS), error.get("input")))

    if found or set_problems or config is None:
        problems = list(set_problems)
        for loc, msg, value in found:
            if any(loc[: len(key)] == key for key in overridden):
                problems.append(ConfigProblem(format_loc(loc), f"{msg} (set by --set)"))
            else:
                problems.append(ConfigProblem(format_loc(loc), msg, index.line_of(loc, value)))
        problems.sort(key=lambda p: (p.line is None, p.line or 0))
        raise ConfigError(problems, source)
    return config


def load_config_text(
    text: str,
    *,
    source: str = "<string>",
    base_dir: Path | None = None,
    env: Mapping[str, str] | None = None,
    sets: Sequence[str] = (),
) -> Config:
    """Parse and validate config text. Relative paths resolve against ``base_dir`` (default: the
    current directory); ``env:`` passwords are looked up in ``env`` (default: ``os.environ``).
    ``sets`` are ``dotted.key=value`` overrides (see :func:`load_config`).
    Raises :class:`ConfigError` listing every problem."""
    return _load(text, source=source, base_dir=base_dir, env=env, source_path=None, sets=sets)


def load_config(
    path: str | Path, *, env: Mapping[str, str] | None = None, sets: Sequence[str] = ()
) -> Config:
    """Load a config file; relative paths inside it resolve against its directory.

    ``sets``: ``dotted.key=value`` overrides from the command line (``--set``), applied to the
    parsed file before validation, so they are checked exactly like the file's own values (and
    a relative path in one resolves against the file's directory too). The value is read as a
    TOML value when it is one (``2790``, ``true``, ``["a", "b"]``, ``"quoted"``), else as a
    string (``http://127.0.0.1:9500/``). A number in the key indexes an array of tables
    (``accounts.0.password``). Problems in an overridden key name the key, not a line.
    """
    path = Path(path).absolute()
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise ConfigError(
            [ConfigProblem("", f"cannot read config file: {exc.strerror or exc}")], str(path)
        ) from None
    except UnicodeDecodeError:
        raise ConfigError(
            [ConfigProblem("", "config file is not valid UTF-8")], str(path)
        ) from None
    return _load(
        text, source=str(path), base_dir=path.parent, env=env, source_path=path, sets=sets
    )


def apply_overrides(
    cfg: Config,
    *,
    smpp_port: int | None = None,
    http_port: int | None = None,
    admin_port: int | None = None,
    data_dir: str | Path | None = None,
    store_url: str | None = None,
    node_id: str | None = None,
) -> Config:
    """Apply command-line overrides. A relative ``data_dir`` here resolves against the current
    directory, as command-line paths do."""
    problems = [
        ConfigProblem(name, "must be 0..65535")
        for name, port in (
            ("smpp.port", smpp_port),
            ("http.port", http_port),
            ("admin.port", admin_port),
        )
        if port is not None and not 0 <= port <= 65535
    ]
    for name, check, value in (
        ("--store-url", check_store_url, store_url),
        ("--node-id", check_node_id, node_id),
    ):
        if value is not None:
            try:
                check(value)
            except ValueError as exc:
                problems.append(ConfigProblem(name, str(exc)))
    if problems:
        raise ConfigError(problems, "command line")
    update: dict[str, Any] = {}
    if smpp_port is not None:
        update["smpp"] = cfg.smpp.model_copy(update={"port": smpp_port})
    if http_port is not None:
        update["http"] = cfg.http.model_copy(update={"port": http_port})
    if admin_port is not None:
        update["admin"] = cfg.admin.model_copy(update={"port": admin_port})
    storage: dict[str, Any] = {}
    if data_dir is not None:
        storage["data_dir"] = Path(os.path.normpath(Path(data_dir).absolute()))
    if store_url is not None:
        storage["url"] = store_url
    if storage:
        update["storage"] = cfg.storage.model_copy(update=storage)
    if node_id is not None:
        update["cluster"] = cfg.cluster.model_copy(update={"node_id": node_id})
    return cfg.model_copy(update=update)
