"""Where in a TOML file a key is, and what to tell its author: the line of a key path, the
wording of a validation error, the ``--set dotted.key=value`` overrides.

Why a module of its own: ``tomllib`` gives no positions for valid TOML, yet every problem
:mod:`bridge.config` reports is ``FILE:LINE: key.path: message``; :class:`LineIndex` scans the
text to map a key path such as ``("accounts", 1, "tps")`` to the line of ``tps`` inside the
second ``[[accounts]]`` table. That is text handling, apart from what the keys mean
(:mod:`bridge.config_sections`). Values are never echoed in a message: they may be passwords.
"""

from __future__ import annotations

import difflib
import re
import tomllib
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel

__all__ = [
    "LineIndex",
    "Loc",
    "SetError",
    "apply_set",
    "duplicate_system_ids",
    "format_loc",
    "message",
    "syntax_error",
    "unknown_route_providers",
]

# --------------------------------------------------------------------------------------------
# Line numbers

_KEY = r"""(?:[A-Za-z0-9_-]+|"(?:[^"\\]|\\.)*"|'[^']*')"""
_DOTTED = rf"{_KEY}(?:\s*\.\s*{_KEY})*"
_TABLE_RE = re.compile(rf"^\s*\[\s*({_DOTTED})\s*\]\s*(?:#.*)?$")
_ARRAY_RE = re.compile(rf"^\s*\[\[\s*({_DOTTED})\s*\]\]\s*(?:#.*)?$")
_KEYVAL_RE = re.compile(rf"^\s*({_DOTTED})\s*=")
_KEY_PART_RE = re.compile(_KEY)

Loc = tuple[str | int, ...]


def split_dotted(dotted: str) -> list[str]:
    """A dotted key's parts, quotes taken off."""
    parts = []
    for raw in _KEY_PART_RE.findall(dotted):
        if raw[:1] in "\"'":
            raw = raw[1:-1]
        parts.append(raw)
    return parts


class LineIndex:
    """Maps key paths to 1-based line numbers by scanning TOML text (which must have parsed).

    Handles ``[table]``, ``[[array.of.tables]]`` (counting elements so ``accounts[1]`` is the
    second ``[[accounts]]``), dotted keys, and skips multi-line strings. Keys inside inline
    tables map to the inline table's key, which is close enough to find the problem.
    """

    def __init__(self, text: str) -> None:
        self.lines = text.splitlines()
        self.where: dict[Loc, int] = {}
        self._key_lines: list[int] = []  # lines that start a key or header, for range ends
        arrays: dict[Loc, int] = {}
        table: Loc = ()
        in_multiline: str | None = None

        def resolve(parts: list[str]) -> Loc:
            out: list[str | int] = []
            for part in parts:
                out.append(part)
                count = arrays.get(tuple(out))
                if count:
                    out.append(count - 1)
            return tuple(out)

        for number, line in enumerate(self.lines, start=1):
            if in_multiline is not None:
                if line.count(in_multiline) % 2 == 1:
                    in_multiline = None
                continue
            if m := _ARRAY_RE.match(line):
                parts = split_dotted(m.group(1))
                array = (*resolve(parts[:-1]), parts[-1])
                arrays[array] = arrays.get(array, 0) + 1
                table = (*array, arrays[array] - 1)
                self.where.setdefault(table, number)
                self.where.setdefault(array, number)
                self._key_lines.append(number)
            elif m := _TABLE_RE.match(line):
                table = resolve(split_dotted(m.group(1)))
                self.where.setdefault(table, number)
                self._key_lines.append(number)
            elif m := _KEYVAL_RE.match(line):
                parts = split_dotted(m.group(1))
                for i in range(1, len(parts) + 1):
                    self.where.setdefault((*table, *parts[:i]), number)
                self._key_lines.append(number)
                rest = line[m.end() :]
                for quote in ('"""', "'''"):
                    if rest.count(quote) % 2 == 1:
                        in_multiline = quote
                        break

    def line_of(self, loc: Loc, value: object = None) -> int | None:
        """Line of the deepest known prefix of ``loc``; for an array element whose string
        value is known, the line inside a multi-line array that holds it."""
        for end in range(len(loc), 0, -1):
            prefix = loc[:end]
            line = self.where.get(prefix)
            if line is None:
                continue
            if end == len(loc) - 1 and isinstance(loc[-1], int) and isinstance(value, str):
                return self._element_line(line, value) or line
            return line
        return None

    def _element_line(self, key_line: int, value: str) -> int | None:
        stop = next((n for n in self._key_lines if n > key_line), len(self.lines) + 1)
        needles = (f'"{value}"', f"'{value}'")
        for number in range(key_line, stop):
            if any(n in self.lines[number - 1] for n in needles):
                return number
        return None


# --------------------------------------------------------------------------------------------
# Turning pydantic errors into problems

_TYPE_WORDS = {
    "int_type": "must be an integer",
    "int_from_float": "must be an integer",
    "float_type": "must be a number",
    "string_type": "must be a string",
    "bool_type": "must be true or false",
    "list_type": "must be an array",
    "model_type": "must be a table",
    "model_attributes_type": "must be a table",
    "dict_type": "must be a table",
    "path_type": "must be a string (a file path)",
}


#: TOML's type names, most specific first (a bool is an int to isinstance).
_TOML_TYPES: tuple[tuple[type, str], ...] = (
    (bool, "a boolean"),
    (int, "an integer"),
    (float, "a float"),
    (str, "a string"),
    (list, "an array"),
    (dict, "a table"),
)


def _toml_type(value: object) -> str:
    # Only the type is shown, never the value: the value might be a password.
    return next(
        (word for kind, word in _TOML_TYPES if isinstance(value, kind)),
        f"a {type(value).__name__}",
    )


def format_loc(loc: Loc) -> str:
    """``("accounts", 1, "tps")`` -> ``accounts[1].tps``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out


def message(
    error: Mapping[str, Any],
    models: Mapping[tuple[str, ...], type[BaseModel]],
    internal: Mapping[tuple[str, ...], set[str]],
) -> str:
    """A pydantic error in the file's words; an unknown key gets a "did you mean" from the
    keys of the model at its table (``models``, by key path without indices), except the
    ``internal`` ones the file may not set."""
    kind: str = error["type"]
    loc: Loc = tuple(error["loc"])
    if loc == ("accounts",) and kind in ("missing", "too_short"):
        return "at least one [[accounts]] table is required"
    if kind == "missing":
        return "required key is missing"
    if kind == "extra_forbidden":
        parent = tuple(p for p in loc[:-1] if isinstance(p, str))
        model = models.get(parent)
        hint = ""
        if model is not None and isinstance(loc[-1], str):
            known = set(model.model_fields) - internal.get(parent, set())
            close = difflib.get_close_matches(loc[-1], sorted(known), n=1)
            if close:
                hint = f"; did you mean {close[0]!r}?"
        return f"unknown key{hint}"
    if kind in _TYPE_WORDS:
        return f"{_TYPE_WORDS[kind]}, got {_toml_type(error.get('input'))}"
    msg: str = error["msg"]
    msg = msg.removeprefix("Value error, ")
    if msg.startswith("Input should be "):
        msg = "must be " + msg.removeprefix("Input should be ")
    return msg


def duplicate_system_ids(raw: Mapping[str, Any]) -> list[tuple[Loc, str]]:
    accounts = raw.get("accounts")
    if not isinstance(accounts, list):
        return []
    first: dict[str, int] = {}
    found: list[tuple[Loc, str]] = []
    for i, table in enumerate(accounts):
        if not isinstance(table, dict):
            continue
        sid = table.get("system_id")
        if not isinstance(sid, str):
            continue
        if sid in first:
            found.append(
                (
                    ("accounts", i, "system_id"),
                    f"duplicate system_id, already used by accounts[{first[sid]}]",
                )
            )
        else:
            first[sid] = i
    return found


def unknown_route_providers(raw: Mapping[str, Any]) -> list[tuple[Loc, str, object]]:
    """Routes naming a provider that is not configured, found in the same pass as every other
    problem (a model validator would only run once everything else is valid, and could not
    point at the line)."""
    providers = raw.get("providers", {"sandbox": {}})
    routes = raw.get("routes", [])
    if not isinstance(providers, dict) or not isinstance(routes, list):
        return []  # the type error is reported by validation
    known = sorted(providers)
    found: list[tuple[Loc, str, object]] = []
    for i, route in enumerate(routes):
        names = route.get("providers") if isinstance(route, dict) else None
        if not isinstance(names, list):
            continue
        for j, name in enumerate(names):
            if not isinstance(name, str) or name in providers:
                continue
            msg = f"unknown provider {name!r} (configured: {', '.join(known) or 'none'})"
            close = difflib.get_close_matches(name, known, n=1)
            if close:
                msg += f"; did you mean {close[0]!r}?"
            found.append((("routes", i, "providers", j), msg, name))
    return found


def syntax_error(exc: tomllib.TOMLDecodeError, text: str) -> tuple[str, int | None]:
    """The message and line of a TOML syntax error ("(at line N, column M)" becomes the line
    and "(column M)")."""
    msg = str(exc)
    line = None
    if m := re.search(r"\(at line (\d+), column (\d+)\)", msg):
        line = int(m.group(1))
        msg = msg.replace(m.group(0), f"(column {m.group(2)})")
    elif m := re.search(r"\(at end of document\)", msg):
        line = max(1, len(text.splitlines()))
    return f"invalid TOML: {msg}", line


class SetError(ValueError):
    """A ``--set`` that cannot be applied; ``loc`` is as far as its key got."""

    def __init__(self, loc: Loc, message: str) -> None:
        super().__init__(message)
        self.loc = loc


def apply_set(raw: dict[str, Any], item: str) -> Loc:
    """Apply one ``dotted.key=value`` to the parsed file; returns the key's location."""
    key, sep, text = item.partition("=")
    if not sep or not re.fullmatch(_DOTTED, key.strip()):
        raise SetError((), "wants dotted.key=value")
    parts = split_dotted(key.strip())
    try:
        value: Any = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        value = text  # not a TOML value: a bare string, such as a URL
    node: Any = raw
    loc: list[str | int] = []
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise SetError(tuple(loc), f"wants an index below {len(node)}, not {part!r}")
            loc.append(int(part))
            if last:
                raise SetError(tuple(loc), "cannot replace a whole table")
            node = node[int(part)]
            continue
        if not isinstance(node, dict):
            raise SetError(tuple(loc), "is not a table")
        loc.append(part)
        if last:
            node[part] = value
        else:
            node = node.setdefault(part, {})
    return tuple(loc)
