"""Moved to :mod:`bridge.core.store` (the store port belongs to the domain that uses it;
docs/architecture.md). This name stays until every importer has moved."""

from bridge.core.store import *  # noqa: F403
from bridge.core.store import __all__  # noqa: F401
