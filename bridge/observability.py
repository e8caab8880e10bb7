"""Logging setup (structlog): JSON lines in production, readable lines on a terminal.

The filtering bound logger drops calls below the configured level before any formatting work
(about 0.35 µs a call, measured in DESIGN.md), which is what keeps DEBUG-level per-message events
affordable on the hot path. Secrets never reach a log call in the first place; as a second line of
defence, a :class:`Redactor` blanks any event key that names one, and message text too
(``[logging] redact``). Stdlib ``logging`` (uvicorn, asyncio) is rendered the same way.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, MutableMapping
from typing import Any, TextIO

import structlog

#: Event keys whose values never reach a log line (they become ``"***"``): secrets, and message
#: content — what a subscriber wrote is not the operator's business, and a log is copied to
#: more places than the store. ``[logging] redact`` replaces this list.
DEFAULT_REDACT_KEYS: tuple[str, ...] = (
    "password",
    "passwd",
    "secret",
    "token",
    "api_key",
    "apikey",
    "key",
    "authorization",
    "text",
    "short_message",
    "message_payload",
)
REDACTED = "***"
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR}
#: The root handler :func:`configure_logging` installs, found by this name when it runs again.
_STDLIB_HANDLER = "bridge.observability"


class Redactor:
    """structlog processor: the value of every key named in ``keys`` becomes ``"***"``.

    Keys match case-insensitively, at the top level of the event and inside nested dicts
    (``headers={"Authorization": …}``); nested dicts are copied, never changed in place, as
    they may belong to the caller. It runs only for lines that are emitted (the filtering
    bound logger drops the rest first), so its cost is beside that of rendering the line.
    """

    __slots__ = ("keys",)

    def __init__(self, keys: Iterable[str] = DEFAULT_REDACT_KEYS) -> None:
        self.keys = frozenset(k.lower() for k in keys)

    def __call__(
        self, _logger: Any, _method: str, event: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        return self._redact(event)

    def _redact(self, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        keys = self.keys
        for key, value in event.items():
            if isinstance(key, str) and key.lower() in keys:
                event[key] = REDACTED
            elif isinstance(value, dict):
                event[key] = self._redact(dict(value))
        return event


#: The default redaction, as a plain processor (for code that builds its own chain).
redact_secrets = Redactor()


def configure_logging(
    level: str = "info",
    fmt: str = "auto",
    *,
    redact: Iterable[str] | None = None,
    stream: TextIO | None = None,
) -> None:
    """Configure structlog, and the stdlib ``logging`` root, once for the process.

    ``fmt``: "json", "console", or "auto" (console when ``stream`` is a TTY, JSON otherwise).
    ``redact``: event keys to blank (default :data:`DEFAULT_REDACT_KEYS`). ``stream``: where
    lines go (default stderr).

    Libraries that log through the stdlib (uvicorn, asyncio's "exception was never
    retrieved") get a root handler that renders their records with the same renderer, level
    and redaction, so the output stays one format — a JSON reader does not choke on a plain
    traceback. The bridge's own events keep the faster path: the filtering bound logger and a
    print logger, without the stdlib's record machinery.

    Loggers are cached on first use, so call this before the bridge logs anything.
    """
    out = sys.stderr if stream is None else stream
    numeric = _LEVELS.get(level.lower(), logging.INFO)
    tty = out.isatty()
    use_console = fmt == "console" or (fmt == "auto" and tty)
    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=tty)
        if use_console
        else structlog.processors.JSONRenderer()
    )
    redactor = Redactor(DEFAULT_REDACT_KEYS if redact is None else redact)
    timestamper = structlog.processors.TimeStamper(fmt="iso", utc=True)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            timestamper,
            redactor,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(out)
    handler.set_name(_STDLIB_HANDLER)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[
                structlog.stdlib.add_log_level,
                structlog.stdlib.add_logger_name,
                timestamper,
            ],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                redactor,
                structlog.processors.format_exc_info,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _STDLIB_HANDLER]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(numeric)
