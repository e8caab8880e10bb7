"""The CPU budget of one accepted submit_sm, step by step, on the bridge's real objects.

Usage: ``python -m benchmarks.budget [--messages 50000]``

A :class:`~bridge.app.Bridge` is started on the embedded defaults (sandbox provider, journal in
a temporary directory, fsync on), its provider paused so nothing is dispatched, and the steps a
submit_sm goes through are timed one by one on the same prebuilt frames, each over all
``--messages`` (µs of CPU per message, ``thread_time``):

* **decode** — frame bytes → :class:`Pdu` (the codec);
* **submission** — field checks, times, data_coding (``SmscHandler._submission``);
* **numbers** — source and destination checks (``normalise_source`` / ``normalise_destination``);
* **text, id, route** — decoding the text, a new message id, the routing rules
  (``Pipeline._single``);
* **journal record** — the accept record encoded (msgpack) and framed (length + CRC-32);
* **submit_sm_resp** — the answer encoded.

Then the **whole accept path** is timed as the server runs it: ``SmscHandler.try_handle`` for
every frame, a loop pass per window of 256, until every answer is out — the event loop's
thread CPU per message (it includes the store's apply and the durable callback that answers),
and the process's (adding the journal's writer thread, which runs beside the loop). The steps'
sum is less than the whole: the rest is the store's bookkeeping, metrics and the callbacks.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

from bridge.app import Bridge
from bridge.bench.wire import submit_bytes as _submit_bytes
from bridge.config import load_config_text
from bridge.core.admission import normalise_destination, normalise_source
from bridge.logs import configure_logging
from bridge.runtime import tune_gc
from bridge.smpp.events import BindType
from bridge.smpp.pdu import CommandId, Pdu, decode, encode
from bridge.smpp.server import SessionInfo
from bridge.store.embedded import EmbeddedStore

_CONFIG = """
[smpp]
host = "127.0.0.1"
port = 0
[http]
host = "127.0.0.1"
port = 0
[admin]
host = "127.0.0.1"
port = 0
[storage]
data_dir = "{data}"
min_free_mb = 0
[logging]
level = "warning"
[[accounts]]
system_id = "demo"
password = "demopass"
[providers.sandbox]
delay = 1.0
"""


def _per_message(fn: Callable[[Any], Any], items: list[Any]) -> tuple[float, list[Any]]:
    out = []
    append = out.append
    started = time.thread_time()
    for item in items:
        append(fn(item))
    return (time.thread_time() - started) / len(items) * 1e6, out


async def run(messages: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-budget-") as tmp:
        cfg = load_config_text(_CONFIG.format(data=Path(tmp) / "data"))
        bridge = Bridge(cfg)
        await bridge.start()
        tune_gc()  # as `smpp-bridge run` does (bridge/runtime.py)
        try:
            return await _measure(bridge, messages)
        finally:
            await bridge.stop()


async def _measure(bridge: Bridge, messages: int) -> dict[str, Any]:
    bridge.dispatcher.pause("sandbox")
    account = bridge.accounts.get("demo")
    session = SessionInfo(1, "127.0.0.1", 1, False, "demo", BindType.TRANSCEIVER, account)
    handler, pipeline = bridge.handler, bridge.pipeline
    policy = handler.policy(account, "demo")
    frames = [_submit_bytes(i) for i in range(messages)]
    steps: dict[str, float] = {}

    steps["decode"], pdus = _per_message(decode, frames)

    def submission(pdu: Pdu) -> Any:
        f = pdu.fields
        return handler._submission(
            pdu, policy, f["destination_addr"], f["dest_addr_ton"], f["dest_addr_npi"]
        )

    steps["submission"], subs = _per_message(submission, pdus)

    def numbers(sub: Any) -> Any:
        return normalise_source(sub.source, policy), normalise_destination(sub.destination, policy)

    steps["numbers"], _ = _per_message(numbers, subs)

    def single(sub: Any) -> Any:
        source = normalise_source(sub.source, policy)
        destination = normalise_destination(sub.destination, policy)
        return pipeline._single(sub, source, destination, 1.0)

    whole, built = _per_message(single, subs)
    steps["text, id, route"] = whole - steps["numbers"]
    encode_record = msgspec.msgpack.Encoder().encode

    def record(message: Any) -> bytes:
        payload = encode_record(EmbeddedStore._add_record(message))
        return len(payload).to_bytes(4, "little") + zlib.crc32(payload).to_bytes(4, "little")

    steps["journal record"], _ = _per_message(record, built)
    steps["submit_sm_resp"], _ = _per_message(
        lambda m: encode(Pdu(CommandId.submit_sm_resp, 1, 0, {"message_id": m.id})), built
    )

    answered = 0
    done = asyncio.get_running_loop().create_future()

    def reply(_token: Any, pdu: Pdu) -> None:
        nonlocal answered
        answered += 1
        if pdu.command_status != 0 and not done.done():
            done.set_exception(RuntimeError(f"refused: {pdu.command_status:#x}"))
        if answered == messages and not done.done():
            done.set_result(None)

    fresh = [decode(f) for f in frames]
    thread0, process0, wall0 = time.thread_time(), time.process_time(), time.perf_counter()
    for i in range(0, messages, 256):
        for pdu in fresh[i : i + 256]:
            handler.try_handle(session, pdu, reply, None)
        await asyncio.sleep(0)  # one loop pass per window, as the server reads
    await done
    loop_us = (time.thread_time() - thread0) / messages * 1e6
    process_us = (time.process_time() - process0) / messages * 1e6
    wall = time.perf_counter() - wall0
    return {
        "messages": messages,
        "steps_cpu_us": {k: round(v, 2) for k, v in steps.items()},
        "steps_sum_us": round(sum(steps.values()), 1),
        "accept_path_loop_cpu_us": round(loop_us, 1),
        "accept_path_process_cpu_us": round(process_us, 1),
        "accepted_per_s_one_core": round(messages / wall),
        "journal_batches": bridge.store.commits if isinstance(bridge.store, EmbeddedStore) else 0,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=50_000)
    args = parser.parse_args(argv)
    configure_logging("info", "console")  # as `run` does: per-message DEBUG lines are filtered
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    report = asyncio.run(run(args.messages))
    for step, us in report["steps_cpu_us"].items():
        print(f"{step:18} {us:6.2f} µs", file=sys.stderr)
    print(
        f"{'steps together':18} {report['steps_sum_us']:6.1f} µs\n"
        f"{'accept path, loop':18} {report['accept_path_loop_cpu_us']:6.1f} µs "
        f"(+ journal thread: {report['accept_path_process_cpu_us']} µs per message in all)",
        file=sys.stderr,
    )
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
