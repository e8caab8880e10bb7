"""iSMS.gr HTTP: what the three scripts' calls and answers share.

Every call is a GET of ``send.php``, ``query.php`` or ``credits.php`` in one directory, and every
answer one line of text, an ``Error: …`` line for a refusal; the send and report modules read
those through this one module.
"""

from __future__ import annotations

__all__ = ["ERR_UNRECOGNISED", "error_key", "reply_line", "script_url"]

# iSMS gives its errors as text only; the bridge numbers them (receipt err:), here and in
# :mod:`.reports`.

#: An ``Error:`` text the document does not list, or an HTTP 4xx answer.
ERR_UNRECOGNISED = 10



def script_url(base_url: str, script: str) -> str:
    """``base_url`` (a directory) joined with ``send.php`` / ``query.php`` / ``credits.php``."""
    return (base_url if base_url.endswith("/") else base_url + "/") + script


def reply_line(text: str) -> str:
    """The answer's one line (surrounding blanks and a byte-order mark dropped)."""
    return text.strip().lstrip("\ufeff").strip()


def error_key(line: str) -> str | None:
    """``Error: Authentication error.`` → ``authentication error``; None if no ``Error:``."""
    head, sep, rest = line.partition(":")
    if not sep or head.strip().lower() != "error":
        return None
    return rest.strip().rstrip(".").strip().lower()


