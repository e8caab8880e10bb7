"""Logging setup (structlog): JSON lines in production, readable lines on a terminal.

The filtering bound logger (:class:`LevelFilteringLogger`) drops calls below the current level
before any formatting work (one comparison with a module global; about 0.35 µs a call), which is
what keeps DEBUG-level per-message events affordable on the hot path. The level is that global,
not a property of the cached logger classes, so :func:`set_log_level` changes it at run time
(the admin API's ``log-level``) for every logger, including those already cached. Secrets
never reach a log call in the first place; as a second line of defence, a :class:`Redactor`
blanks any event key that names one, and message text too (``[logging] redact``). Stdlib
``logging`` (uvicorn, asyncio, httpx, aiohttp) is rendered the same way, after
:class:`ThirdPartyScrubber` took URL credentials, query strings, callback tokens and known
secrets out of it (README, "Reliability").

Why a module of its own: this is set up once per process (by the CLI, a benchmark, a test),
while :mod:`bridge.observability` is what the code paths use to be observed (metrics and the
sampled log); the per-event cost lives there, the configuration here. A leaf like it: it imports
nothing of the bridge.
"""

from __future__ import annotations

import logging
import re
import sys
import traceback
from collections.abc import Callable, Iterable, MutableMapping
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
_STDLIB_HANDLER = "bridge.logs"


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


# --------------------------------------------------------------------------- third-party records

#: Literal secrets (provider credentials, callback tokens, the admin token) that must never
#: appear in a line from a library; registered by the wiring (:func:`register_secret`).
_known_secrets: set[str] = set()
#: An absolute URL: scheme, optional user:password@, host[:port], path, query, fragment.
_URL = re.compile(
    r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?:[^\s/?#@'\"<>]*@)?(?P<host>[^\s/?#'\"<>]*)"
    r"(?P<path>[^\s?#'\"<>]*)(?P<query>\?[^\s#'\"<>]*)?(?:#[^\s'\"<>]*)?"
)
#: A query string outside a full URL (a request line "GET /cb?to=…&text=… HTTP/1.1").
_QUERY = re.compile(r"\?[^\s'\"<>]*=[^\s'\"<>]*")
#: The secret path element of a callback URL (/callbacks/<provider>/<token>/<kind>).
_CALLBACK_TOKEN = re.compile(r"(/callbacks/[^/\s?#'\"<>]+/)[^/\s?#'\"<>]+")
#: httpcore's DEBUG trace lines carry request and response headers: only the event stays.
_EVENT_ONLY_LOGGERS = ("httpcore", "hpack")
#: Libraries whose per-request INFO line ("HTTP Request: GET …") is a DEBUG line for us: the
#: bridge writes nothing per message at INFO.
_PER_REQUEST_LOGGERS = ("httpx",)


def register_secret(value: str | None) -> None:
    """A value (password, key, token) that a library's log line must never show."""
    if value and len(value) >= 4:
        _known_secrets.add(value)


def _scrub_url(match: re.Match[str]) -> str:
    path = _CALLBACK_TOKEN.sub(r"\1" + REDACTED, match["path"])
    return f"{match['scheme']}{match['host']}{path}{'?' + REDACTED if match['query'] else ''}"


def scrub_text(text: str) -> str:
    """``text`` without URL credentials, query strings, callback tokens or known secrets."""
    text = _URL.sub(_scrub_url, text)
    text = _QUERY.sub("?" + REDACTED, text)
    text = _CALLBACK_TOKEN.sub(r"\1" + REDACTED, text)
    for secret in _known_secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


class ThirdPartyScrubber(logging.Filter):
    """The stdlib handler's filter: every record from a library (httpx, httpcore, aiohttp.*,
    uvicorn.*, asyncio …) is rendered and scrubbed before it is formatted — URLs keep scheme,
    host and path (callback tokens blanked), never credentials or a query string (which carry
    provider passwords, numbers and message text); tracebacks are scrubbed the same way;
    httpcore's header traces keep only their event name; httpx's per-request INFO line counts
    as DEBUG. The bridge's own events never come this way (they have their own redaction)."""

    def filter(self, record: logging.LogRecord) -> bool:
        name = record.name
        if name.startswith(_PER_REQUEST_LOGGERS) and record.levelno == logging.INFO:
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            if _min_level > logging.DEBUG:
                return False
        try:
            message = record.getMessage()
        except Exception:  # a library's broken format string: keep the template only
            message = str(record.msg)
        if name.startswith(_EVENT_ONLY_LOGGERS):
            message = message.split(" ", 1)[0]
        if record.exc_info or record.stack_info:
            trace = ""
            if record.exc_info:
                trace = "".join(traceback.format_exception(*record.exc_info)).rstrip()
            if record.stack_info:
                trace = f"{trace}\n{record.stack_info}".strip()
            # Rendered by _scrubbed_exception as the line's "exception" key.
            record.scrubbed_exception = scrub_text(trace)
            record.exc_info = record.exc_text = record.stack_info = None
        record.msg = scrub_text(message)
        record.args = None
        return True


def _scrubbed_exception(
    _logger: Any, _method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    record = event.get("_record")
    trace = getattr(record, "scrubbed_exception", None)
    if trace:
        event["exception"] = trace
    return event


#: The current minimum level of the bridge's own events (see :class:`LevelFilteringLogger`).
_min_level = logging.INFO


def _filtered(level: int) -> Callable[..., Any]:
    name = logging.getLevelName(level).lower()

    def method(
        self: structlog.BoundLoggerBase, event: str | None = None, *args: Any, **kw: Any
    ) -> Any:
        if level < _min_level:
            return None
        if args:
            event = event % args if event is not None else event
        return self._proxy_to_logger(name, event, **kw)

    method.__name__ = name
    return method


class LevelFilteringLogger(structlog.BoundLoggerBase):
    """structlog's filtering bound logger, with the threshold read at each call from the module
    global ``_min_level`` instead of baked into a class, so it can change at run time."""

    debug = _filtered(logging.DEBUG)
    info = msg = _filtered(logging.INFO)
    warning = warn = _filtered(logging.WARNING)
    error = _filtered(logging.ERROR)
    critical = fatal = _filtered(logging.CRITICAL)

    def exception(self, event: str | None = None, *args: Any, **kw: Any) -> Any:
        if _min_level > logging.ERROR:
            return None
        kw.setdefault("exc_info", True)
        if args:
            event = event % args if event is not None else event
        return self._proxy_to_logger("error", event, **kw)

    def log(self, level: int, event: str | None = None, *args: Any, **kw: Any) -> Any:
        if level < _min_level:
            return None
        if args:
            event = event % args if event is not None else event
        return self._proxy_to_logger(logging.getLevelName(level).lower(), event, **kw)

    def is_enabled_for(self, level: int) -> bool:
        return level >= _min_level

    def get_effective_level(self) -> int:
        return _min_level


LOG_LEVELS = tuple(_LEVELS)


def get_log_level() -> str:
    """The current level's name ("debug", "info", "warning", "error")."""
    return next((name for name, n in _LEVELS.items() if n == _min_level), "info")


def set_log_level(level: str) -> str:
    """Change the level of every logger (structlog and stdlib) at once; returns the previous
    level. Raises ValueError for a name not in :data:`LOG_LEVELS`."""
    global _min_level
    numeric = _LEVELS.get(level.lower())
    if numeric is None:
        raise ValueError(f"unknown log level {level!r}; one of: {', '.join(LOG_LEVELS)}")
    previous = get_log_level()
    _min_level = numeric
    logging.getLogger().setLevel(numeric)
    return previous


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
    global _min_level
    out = sys.stderr if stream is None else stream
    numeric = _LEVELS.get(level.lower(), logging.INFO)
    _min_level = numeric
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
        wrapper_class=LevelFilteringLogger,
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(out)
    handler.set_name(_STDLIB_HANDLER)
    handler.addFilter(ThirdPartyScrubber())
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[
                structlog.stdlib.add_log_level,
                structlog.stdlib.add_logger_name,
                timestamper,
                _scrubbed_exception,
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
