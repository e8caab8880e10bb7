"""Where the admin token comes from: ``[admin] token``, else ``admin.token`` in the data dir."""

from __future__ import annotations

from pathlib import Path

from bridge.config import Config
from bridge.passwords import secret_file

__all__ = ["ADMIN_TOKEN_FILE", "admin_token", "admin_token_path"]

ADMIN_TOKEN_FILE = "admin.token"


def admin_token_path(cfg: Config) -> Path:
    return Path(cfg.storage.data_dir) / ADMIN_TOKEN_FILE


def admin_token(cfg: Config, *, create: bool) -> str | None:
    """The token the admin listener requires: ``[admin] token`` (plain or ``env:VAR``), else
    the random one in the data directory's ``admin.token`` (created once, mode 0600, when
    ``create``: the bridge does at start; the CLI only reads it). None when the config allows
    no authentication, or (``create`` false) when the file does not exist yet."""
    if cfg.admin.allow_unauthenticated:
        return None
    if cfg.admin.token is not None:
        return cfg.admin.token.get_secret_value()
    return secret_file(admin_token_path(cfg), create=create)
