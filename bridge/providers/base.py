"""Moved to :mod:`bridge.core.provider` (the provider port belongs to the domain that uses it;
docs/architecture.md). This name stays until every importer has moved."""

from bridge.core.provider import *  # noqa: F403
from bridge.core.provider import __all__  # noqa: F401
