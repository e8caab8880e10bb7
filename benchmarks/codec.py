"""Decode and encode throughput of :mod:`bridge.smpp.pdu`, against a same-run baseline.

Usage: ``python -m benchmarks.codec [--seconds 0.15] [--repeats 7] [--against REV] [--json]``
(or ``python benchmarks/codec.py ...``).

* **cases** — a typical submit_sm with one TLV (user_message_reference), a submit_sm_resp, and
  a deliver_sm delivery receipt with its three receipt TLVs; each decoded from bytes to a
  :class:`~bridge.smpp.pdu.Pdu` and encoded back.
* **baseline** — a minimal hand-written ``struct`` codec for submit_sm alone, right here: header
  unpack, ``bytes.index`` for each C-Octet String, indexing for integers, a plain TLV loop, the
  fields into a dict (decode); one ``struct.pack`` plus joins (encode). It checks nothing, so it
  is roughly the ceiling of a pure-Python codec — what a 150-line baseline codec measured.
* ``--against REV`` also measures ``bridge.smpp.pdu`` (and the codec modules below it) as it was
  at git revision ``REV``, in the same run, for before/after comparisons of codec changes.

The machines are shared and noisy, so every figure is printed as a ratio to the baseline
measured in the same run (rounds interleave all candidates; the best round of each counts).
Compare ratios across runs, not the absolute rates.
"""

from __future__ import annotations

import argparse
import importlib
import json
import platform
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bridge.smpp import pdu as current

# --------------------------------------------------------------------------- the baseline

_HEADER = struct.Struct(">IIII")
_TLV = struct.Struct(">HH")

# command_id, command_status, sequence_number, fields, tlvs
Decoded = tuple[int, int, int, dict[str, Any], dict[int, bytes]]


def baseline_decode_submit_sm(data: bytes) -> Decoded:
    """submit_sm to (command_id, status, sequence, fields, tlvs), trusting the input."""
    _length, command_id, status, seq = _HEADER.unpack_from(data)
    index = data.index
    end = index(0, 16)
    service_type = data[16:end].decode("latin-1")
    p = end + 1
    source_addr_ton, source_addr_npi = data[p], data[p + 1]
    end = index(0, p + 2)
    source_addr = data[p + 2 : end].decode("latin-1")
    p = end + 1
    dest_addr_ton, dest_addr_npi = data[p], data[p + 1]
    end = index(0, p + 2)
    destination_addr = data[p + 2 : end].decode("latin-1")
    p = end + 1
    esm_class, protocol_id, priority_flag = data[p], data[p + 1], data[p + 2]
    end = index(0, p + 3)
    schedule_delivery_time = data[p + 3 : end].decode("latin-1")
    p = end + 1
    end = index(0, p)
    validity_period = data[p:end].decode("latin-1")
    p = end + 1
    registered_delivery, replace_if_present_flag = data[p], data[p + 1]
    data_coding, sm_default_msg_id, sm_length = data[p + 2], data[p + 3], data[p + 4]
    p += 5
    short_message = data[p : p + sm_length]
    p += sm_length
    tlvs: dict[int, bytes] = {}
    while p < len(data):
        tag, n = _TLV.unpack_from(data, p)
        tlvs[tag] = data[p + 4 : p + 4 + n]
        p += 4 + n
    fields = {
        "service_type": service_type,
        "source_addr_ton": source_addr_ton,
        "source_addr_npi": source_addr_npi,
        "source_addr": source_addr,
        "dest_addr_ton": dest_addr_ton,
        "dest_addr_npi": dest_addr_npi,
        "destination_addr": destination_addr,
        "esm_class": esm_class,
        "protocol_id": protocol_id,
        "priority_flag": priority_flag,
        "schedule_delivery_time": schedule_delivery_time,
        "validity_period": validity_period,
        "registered_delivery": registered_delivery,
        "replace_if_present_flag": replace_if_present_flag,
        "data_coding": data_coding,
        "sm_default_msg_id": sm_default_msg_id,
        "short_message": short_message,
    }
    return command_id, status, seq, fields, tlvs


def baseline_encode_submit_sm(
    command_id: int, status: int, seq: int, f: dict[str, Any], tlvs: dict[int, bytes]
) -> bytes:
    """The inverse of :func:`baseline_decode_submit_sm`, checking nothing."""
    sm = f["short_message"]
    body = b"".join(
        (
            f["service_type"].encode("latin-1"),
            b"\0",
            bytes((f["source_addr_ton"], f["source_addr_npi"])),
            f["source_addr"].encode("latin-1"),
            b"\0",
            bytes((f["dest_addr_ton"], f["dest_addr_npi"])),
            f["destination_addr"].encode("latin-1"),
            b"\0",
            bytes((f["esm_class"], f["protocol_id"], f["priority_flag"])),
            f["schedule_delivery_time"].encode("latin-1"),
            b"\0",
            f["validity_period"].encode("latin-1"),
            b"\0",
            bytes(
                (
                    f["registered_delivery"],
                    f["replace_if_present_flag"],
                    f["data_coding"],
                    f["sm_default_msg_id"],
                    len(sm),
                )
            ),
            sm,
            *(_TLV.pack(tag, len(raw)) + raw for tag, raw in tlvs.items()),
        )
    )
    return _HEADER.pack(16 + len(body), command_id, status, seq) + body


# --------------------------------------------------------------------------- the cases


def cases(codec: ModuleType) -> dict[str, Any]:
    """The benchmark PDUs, built with ``codec``'s own classes."""
    Pdu, CommandId = codec.Pdu, codec.CommandId
    submit = Pdu(
        CommandId.submit_sm,
        0x1234,
        0,
        {
            "service_type": "",
            "source_addr_ton": 1,
            "source_addr_npi": 1,
            "source_addr": "4930123456",
            "dest_addr_ton": 1,
            "dest_addr_npi": 1,
            "destination_addr": "4915112345678",
            "esm_class": 0,
            "protocol_id": 0,
            "priority_flag": 0,
            "schedule_delivery_time": "",
            "validity_period": "",
            "registered_delivery": 1,
            "replace_if_present_flag": 0,
            "data_coding": 0,
            "sm_default_msg_id": 0,
            "short_message": b"Benchmark message: hello from smpp-bridge, a typical short text.",
        },
    )
    submit.set_tlv("user_message_reference", 42)
    resp = Pdu(CommandId.submit_sm_resp, 0x1234, 0, {"message_id": "0f3c5a7e-1b2d-4c6e-8a9b"})
    receipt = Pdu(
        CommandId.deliver_sm,
        0x5678,
        0,
        {
            **submit.fields,
            "source_addr": "4915112345678",
            "destination_addr": "4930123456",
            "esm_class": 0x04,
            "registered_delivery": 0,
            "short_message": b"id:0f3c5a7e-1b2d-4c6e-8a9b sub:001 dlvrd:001 submit date:2611221015"
            b" done date:2611221017 stat:DELIVRD err:000 text:Benchmark message: h",
        },
    )
    receipt.set_tlv("receipted_message_id", "0f3c5a7e-1b2d-4c6e-8a9b")
    receipt.set_tlv("message_state", 2)
    receipt.set_tlv("network_error_code", b"\x03\x00\x00")
    return {"submit_sm + 1 TLV": submit, "submit_sm_resp": resp, "deliver_sm receipt": receipt}


def _is_bridge(module: str) -> bool:
    return module == "bridge" or module.startswith("bridge.")


def load_revision(rev: str) -> ModuleType:
    """``bridge.smpp.pdu`` as of git revision ``rev``, imported beside the current one.

    The codec was one file (``bridge/smpp/pdu.py``) and is now a façade over several modules
    that import each other as ``bridge.smpp.*``; so ``bridge/`` and ``bridge/smpp/`` of ``rev``
    are written to a temporary directory and imported from there while ``sys.modules`` holds no
    ``bridge`` modules, and the current ones are put back afterwards. The functions of the old
    codec keep their own module globals, so both codecs work side by side in one process.
    """
    root = Path(__file__).resolve().parent.parent
    tree = Path(tempfile.mkdtemp(prefix="codec-bench-"))
    names = subprocess.run(
        ["git", "-C", str(root), "ls-tree", "-r", "--name-only", rev, "bridge/smpp/"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    for name in ["bridge/__init__.py", *names]:
        if not name.endswith(".py"):
            continue
        source = subprocess.run(
            ["git", "-C", str(root), "show", f"{rev}:{name}"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        (tree / name).write_text(source)
    current_modules = {
        k: v for k, v in sys.modules.items() if k == "bridge" or k.startswith("bridge.")
    }
    for k in current_modules:
        del sys.modules[k]
    sys.path.insert(0, str(tree))
    try:
        return importlib.import_module("bridge.smpp.pdu")
    finally:
        sys.path.remove(str(tree))
        for k in [k for k in sys.modules if _is_bridge(k)]:
            del sys.modules[k]
        sys.modules.update(current_modules)


# --------------------------------------------------------------------------- timing


def rate(fn: Callable[[Any], Any], arg: Any, loops: int) -> float:
    """Calls per second of ``fn(arg)`` over ``loops`` calls."""
    start = time.perf_counter()
    for _ in range(loops):
        fn(arg)
    return loops / (time.perf_counter() - start)


def calibrate(fn: Callable[[Any], Any], arg: Any, seconds: float) -> int:
    """A loop count that takes about ``seconds``."""
    loops = 1000
    while True:
        start = time.perf_counter()
        for _ in range(loops):
            fn(arg)
        elapsed = time.perf_counter() - start
        if elapsed >= seconds / 4:
            return max(1, int(loops * seconds / elapsed))
        loops *= 4


def measure(
    candidates: dict[str, tuple[Callable[[Any], Any], Any]], seconds: float, repeats: int
) -> dict[str, float]:
    """Best calls/s of each candidate; rounds interleave all of them so drift hits all alike."""
    loops = {key: calibrate(fn, arg, seconds) for key, (fn, arg) in candidates.items()}
    best = dict.fromkeys(candidates, 0.0)
    for _ in range(repeats):
        for key, (fn, arg) in candidates.items():
            best[key] = max(best[key], rate(fn, arg, loops[key]))
    return best


def candidates_for(label: str, codec: ModuleType) -> dict[str, tuple[Callable[[Any], Any], Any]]:
    out: dict[str, tuple[Callable[[Any], Any], Any]] = {}
    for case, pdu in cases(codec).items():
        wire = codec.encode(pdu)
        assert codec.decode(wire) == pdu, f"{label}: {case} does not round-trip"
        out[f"{label}|{case}|decode"] = (codec.decode, wire)
        out[f"{label}|{case}|encode"] = (codec.encode, pdu)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=0.15, help="per measurement round")
    parser.add_argument("--repeats", type=int, default=7, help="rounds; the best one counts")
    parser.add_argument("--against", metavar="REV", help="also measure the codec at git REV")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)

    submit = cases(current)["submit_sm + 1 TLV"]
    wire = current.encode(submit)
    decoded = baseline_decode_submit_sm(wire)
    assert decoded == (submit.command_id, 0, submit.sequence_number, submit.fields, submit.tlvs)
    assert baseline_encode_submit_sm(*decoded) == wire

    candidates: dict[str, tuple[Callable[[Any], Any], Any]] = {
        "baseline|submit_sm + 1 TLV|decode": (baseline_decode_submit_sm, wire),
        "baseline|submit_sm + 1 TLV|encode": (lambda d: baseline_encode_submit_sm(*d), decoded),
    }
    candidates.update(candidates_for("current", current))
    if args.against:
        candidates.update(candidates_for(args.against, load_revision(args.against)))
    rates = measure(candidates, args.seconds, args.repeats)

    base = {op: rates[f"baseline|submit_sm + 1 TLV|{op}"] for op in ("decode", "encode")}
    results: list[dict[str, Any]] = [
        {
            "codec": label,
            "case": case,
            "op": op,
            "per_second": round(value),
            "ratio_to_baseline": round(value / base[op], 3),
        }
        for key, value in rates.items()
        for label, case, op in [key.split("|")]
    ]
    if args.json:
        print(json.dumps({"python": platform.python_version(), "results": results}, indent=2))
        return 0

    print(
        f"SMPP codec throughput, best of {args.repeats} rounds of ~{args.seconds:.2f} s,"
        f" Python {platform.python_version()}"
    )
    print("ratio = rate / the same-run baseline (hand-written struct codec of submit_sm)\n")
    print(f"{'codec':<10} {'case':<20} {'decode/s':>10} {'ratio':>6} {'encode/s':>10} {'ratio':>6}")
    rows: dict[tuple[str, str], dict[str, float]] = {}
    for r in results:
        rows.setdefault((r["codec"], r["case"]), {})[r["op"]] = r["per_second"]
    for (label, case), ops in rows.items():
        print(
            f"{label:<10} {case:<20} {ops['decode']:>10,.0f} {ops['decode'] / base['decode']:>6.2f}"
            f" {ops['encode']:>10,.0f} {ops['encode'] / base['encode']:>6.2f}"
        )
    if args.against:
        print(f"\ncurrent / {args.against}:")
        for case in cases(current):
            before = rows[(args.against, case)]
            after = rows[("current", case)]
            print(
                f"  {case:<20} decode x{after['decode'] / before['decode']:.2f}"
                f"  encode x{after['encode'] / before['encode']:.2f}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
