"""The code generator: one decoder and one encoder per command, compiled from the layout table.

Why this module: walking the table (:mod:`bridge.smpp.reference`) costs an interpreter loop and a
branch per field. At import time this module writes, from the same table, a Python function per
command: one regular expression matches each run of fixed-shape fields (C-Octet Strings bounded
by their maximum, integer runs, the 0-or-16 time strings), then the values are sliced out
straight into a dict display; encoders check every value and join all fields in one string.
~1.6x the decodes/s of walking the table and ~2.4x the encodes/s (``python -m benchmarks.codec
--against REV`` measures it).

The compiled decoder only has to *recognise* a well-formed PDU. Anything it does not like (no
regex match, sm_length past the end, a bad TLV ...) sends the PDU to the reference decoder, which
names the defect and its command_status. Errors are rare, so that second pass costs nothing in
practice, and the two must agree on every input: the property tests check exactly that (same
Pdu, or same status) on random and mutated PDUs. The encoders have the reference encoder as
their oracle in the same way.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, Final, cast

from bridge.smpp.layouts import DESTS, I1, LAYOUTS, NO_TLVS, SM, TIME_FIELDS, UNSUCC, C, Field
from bridge.smpp.reference import (
    Reject,
    bad_cstring,
    decode_dests,
    decode_unsuccess,
    encode_dests,
    encode_tlvs,
    encode_unsuccess,
)
from bridge.smpp.spec import HEADER, RESPONSE_BIT, TLV_HEADER, TLV_LIMITS, Pdu, command_name

Decoder = Callable[[bytes, int, int, int, int], Pdu]


def _segments(spec: tuple[Field, ...]) -> list[list[Field] | Field]:
    """Split a layout into regex-able runs (C, I1, SM last) and single DESTS/UNSUCC fields."""
    out: list[list[Field] | Field] = []
    run: list[Field] = []
    for f in spec:
        if f.kind in (DESTS, UNSUCC):
            if run:
                out.append(run)
                run = []
            out.append(f)
        elif f.kind in (C, I1, SM):
            run.append(f)
            if f.kind == SM:
                out.append(run)
                run = []
        else:  # pragma: no cover - layouts hold only the kinds above
            raise AssertionError(f.kind)
    if run:
        out.append(run)
    return out


def compile_decoder(command_id: int, spec: tuple[Field, ...]) -> tuple[Decoder, str]:
    """Generate, from the layout, a decoder that accepts exactly what the reference accepts.

    Returns the function and its source (kept for debugging: ``SOURCES``). The function
    raises (``Reject``, ``PduError``, ``IndexError`` ...) on anything it does not recognise;
    :func:`bridge.smpp.pdu.decode` then asks the reference decoder for the precise error.
    """
    ns: dict[str, Any] = {
        "_Pdu": Pdu,
        "Reject": Reject,
        "_tlv_unpack": TLV_HEADER.unpack_from,
        "_tlv_limits": TLV_LIMITS.get,
        "_dests": decode_dests,
        "_unsucc": decode_unsuccess,
    }
    src = ["def _decode(data, length, command_id, status, seq):"]
    if spec and command_id & RESPONSE_BIT:
        # An error response may come header-only; it decodes to fields == {}.
        src += ["    if length == 16:", "        return _Pdu(command_id, seq, status, {}, {})"]
    src.append("    p = 16")
    items: list[str] = []  # "'name': expression" entries of the fields dict
    g = 0  # regex group variables g0, g1 ... across segments
    for k, seg in enumerate(_segments(spec)):
        if isinstance(seg, Field):
            helper = "_dests" if seg.kind == DESTS else "_unsucc"
            src.append(f"    v{k}, p = {helper}(data, p)")
            items.append(f"{seg.name!r}: v{k}")
            continue
        pattern: list[bytes] = []
        first = g
        sm = ""
        ints = 0  # length of the current run of one-octet integers
        for f in seg:
            if f.kind == C:
                if ints:
                    pattern.append(b"(.{%d})" % ints)
                    g, ints = g + 1, 0
                if f.name in TIME_FIELDS:
                    pattern.append(b"((?:[^\\x00]{16})?)\\x00")
                else:
                    pattern.append(b"([^\\x00]{0,%d})\\x00" % (f.size - 1))
                items.append(f'{f.name!r}: (g{g}.decode("latin-1") if g{g} else "")')
                g += 1
            else:  # I1, or SM whose sm_length octet ends the integer run
                octet = f"g{g}[{ints}]"
                if f.kind == SM:
                    sm = octet
                    items.append(f"{f.name!r}: sm")
                else:
                    items.append(f"{f.name!r}: {octet}")
                ints += 1
        if ints:
            pattern.append(b"(.{%d})" % ints)
            g += 1
        names = [f"g{i}" for i in range(first, g)]
        regex = f"_R{k}"
        ns[regex] = re.compile(b"".join(pattern), re.DOTALL)
        src += [
            f"    m = {regex}.match(data, p)",
            "    if m is None:",
            "        raise Reject",
            f"    {', '.join(names)}, = m.groups()",
            "    p = m.end()",
        ]
        if sm:
            src += [
                f"    e = p + {sm}",
                "    if e > length:",
                "        raise Reject",
                "    sm = data[p:e]",
                "    p = e",
            ]
    if command_id in NO_TLVS:
        src += ["    if p != length:", "        raise Reject", "    t = {}"]
    else:
        # The TLV loop of _decode_tlvs, inlined (a call per PDU is ~4% of a submit_sm).
        src += [
            "    t = {}",
            "    while p < length:",
            "        tag, n = _tlv_unpack(data, p)",  # struct.error: truncated TLV header
            "        p += 4",
            "        e = p + n",
            "        if e > length or tag in t:",
            "            raise Reject",
            "        lim = _tlv_limits(tag)",
            "        if lim is not None and not lim[0] <= n <= lim[1]:",
            "            raise Reject",
            "        t[tag] = data[p:e]",
            "        p = e",
        ]
    src.append(f"    return _Pdu(command_id, seq, status, {{{', '.join(items)}}}, t)")
    text = "\n".join(src) + "\n"
    exec(compile(text, f"<smpp decoder {command_name(command_id)}>", "exec"), ns)
    return cast(Decoder, ns["_decode"]), text


Encoder = Callable[[dict[str, Any], dict[int, bytes], int, int, int], bytes]


def compile_encoder(command_id: int, spec: tuple[Field, ...]) -> tuple[Encoder, str]:
    """Generate, from the layout, an encoder with the checks of :func:`encode_reference`.

    Fields are read with ``f[name]`` (a missing one raises KeyError and
    :func:`~bridge.smpp.pdu.encode` retries with the defaults merged in), every value is checked,
    then all mandatory fields become one Latin-1 string (C strings as they are, integers as
    ``chr``) encoded in one call.
    """
    ns: dict[str, Any] = {
        "_header": HEADER.pack,
        "_tlvs": encode_tlvs,
        "_dests": encode_dests,
        "_unsucc": encode_unsuccess,
        "_bad": bad_cstring,
        "_no_tlvs": ValueError(f"{command_name(command_id)} carries no TLVs in SMPP 3.4"),
        "_sm_too_long": ValueError("short_message longer than 254 octets: use message_payload"),
    }
    src = ["def _encode(f, t, command_id, status, seq):"]
    if command_id in NO_TLVS:
        src += ["    if t:", "        raise _no_tlvs"]
    if not spec:
        src.append("    return _header(16, command_id, status, seq)")
    else:
        if command_id & RESPONSE_BIT:
            # An error response without fields is sent header-only.
            src.append("    if not f and not t:")
            src.append("        return _header(16, command_id, status, seq)")
        pieces: list[str] = []
        checks: list[str] = []
        sm = False
        for i, fld in enumerate(spec):
            src.append(f"    v{i} = f[{fld.name!r}]")
            if fld.kind == C:
                if fld.name in TIME_FIELDS:
                    bad = f'(v{i} and len(v{i}) != 16) or "\\0" in v{i}'
                else:
                    bad = f'len(v{i}) > {fld.size - 1} or "\\0" in v{i}'
                checks += [
                    f"    if {bad}:",
                    f"        raise _bad({fld.name!r}, v{i}, {fld.size})",
                ]
                pieces += [f"v{i}", '"\\0"']
            elif fld.kind == I1:
                pieces.append(f"chr(v{i})")
            elif fld.kind == SM:
                assert i == len(spec) - 1, "short_message must end the layout"
                checks += [
                    f"    n = len(v{i})",
                    "    if n > 254:",
                    "        raise _sm_too_long",
                ]
                pieces.append("chr(n)")
                sm = True
            elif fld.kind == DESTS:
                checks.append(f"    v{i} = _dests(v{i})")
                pieces.append(f"v{i}")
            elif fld.kind == UNSUCC:
                checks.append(f"    v{i} = _unsucc(v{i})")
                pieces.append(f"v{i}")
            else:  # pragma: no cover - layouts hold only the kinds above
                raise AssertionError(fld.kind)
        src += checks
        src.append(f'    s = "".join(({", ".join(pieces)},)).encode("latin-1")')
        tail = f"v{len(spec) - 1}" if sm else ""
        if command_id in NO_TLVS:
            size = "16 + len(s)" + (" + n" if sm else "")
            parts = ["_header(" + size + ", command_id, status, seq)", "s"] + ([tail] if sm else [])
        else:
            src.append('    b = _tlvs(t) if t else b""')
            size = "16 + len(s)" + (" + n" if sm else "") + " + len(b)"
            parts = ["_header(" + size + ", command_id, status, seq)", "s"]
            parts += [tail] if sm else []
            parts.append("b")
        src.append(f'    return b"".join(({", ".join(parts)},))')
    text = "\n".join(src) + "\n"
    exec(compile(text, f"<smpp encoder {command_name(command_id)}>", "exec"), ns)
    return cast(Encoder, ns["_encode"]), text


def _default(f: Field) -> Any:
    return {C: "", I1: 0, SM: b"", DESTS: [], UNSUCC: []}[f.kind]


DECODERS: Final[dict[int, Decoder]] = {}
ENCODERS: Final[dict[int, Encoder]] = {}
DEFAULTS: Final[dict[int, dict[str, Any]]] = {}
SOURCES: Final[dict[str, str]] = {}  # generated code by function name, for debugging
for _cid, _spec in LAYOUTS.items():
    DECODERS[_cid], SOURCES[f"decode_{command_name(_cid)}"] = compile_decoder(_cid, _spec)
    ENCODERS[_cid], SOURCES[f"encode_{command_name(_cid)}"] = compile_encoder(_cid, _spec)
    DEFAULTS[_cid] = {f.name: _default(f) for f in _spec}
del _cid, _spec
