"""``smpp-bridge bench e2e``: the whole bridge on the sandbox provider, vs a do-nothing baseline.

A load client (a separate process, so it has its own core) binds ``binds`` transceivers, keeps
``window`` submit_sm (registered_delivery=1) in flight on each, answers every deliver_sm, and
matches each receipt's receipted_message_id against the ids it was given. It reports:

* submit_sm/s accepted (every ESME_ROK came after the message's durable commit),
* submit → submit_sm_resp latency p50/p99,
* messages/s end to end (first submit to last receipt), receipts matched, missing, duplicated.

The baseline is the same client against a minimal responder that answers each submit_sm at once
and sends its receipt straight away (no storage, no routing, no session rules): Python's ceiling
on loopback for this traffic, so the bridge's figures are also given as a ratio to it.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bridge.bench.base import bridge_config, print_report, run_setup, start_run
from bridge.bench.wire import Responder, load_client, run_load_client

#: The sandbox provider, like a fast real provider (a delay of 0 would make every report arrive
#: before its correlation).
_SANDBOX = """[providers.sandbox]
delay = 0.2
concurrency = 64
"""


def _config(data_dir: str, window: int, storage: str = "") -> str:
    return bridge_config(data_dir, window, _SANDBOX, storage=storage)


async def _bench(
    binds: int, window: int, messages: int, timeout: float, store_url: str | None = None
) -> dict[str, Any]:
    from bridge.app import Bridge
    from bridge.config import load_config_text
    from bridge.runtime import tune_gc

    loop = asyncio.get_running_loop()
    bare = await loop.create_server(Responder, "127.0.0.1", 0)
    port = bare.sockets[0].getsockname()[1]
    print("baseline (do-nothing responder):", file=sys.stderr)
    cpu = time.process_time()
    baseline = await asyncio.to_thread(run_load_client, port, binds, window, messages, timeout)
    baseline["server_cpu_us_per_message"] = (time.process_time() - cpu) / messages * 1e6
    bare.close()
    with tempfile.TemporaryDirectory() as tmp:
        bridge = Bridge(load_config_text(_config(tmp, window), base_dir=Path(tmp)))
        await bridge.start()
        tune_gc()  # as `smpp-bridge run` does (bridge/runtime.py)
        print("bridge (sandbox provider, embedded journal store):", file=sys.stderr)
        # CPU time of this process (the load client is another one): every thread of the
        # bridge, the journal writer included — a figure the machine's noise hardly moves.
        cpu = time.process_time()
        try:
            result = await asyncio.to_thread(
                run_load_client, bridge.smpp.ports["smpp"], binds, window, messages, timeout
            )
            result["server_cpu_us_per_message"] = (time.process_time() - cpu) / messages * 1e6
            result["journal_batches"] = bridge.store.commits
            result["journal_largest_batch"] = bridge.store.largest_batch
        finally:
            await bridge.stop()
    out = {"baseline": baseline, "bridge": result}
    if store_url is not None:
        out["bridge_redis"] = await _bench_redis(binds, window, messages, timeout, store_url)
    return out


async def _bench_redis(
    binds: int, window: int, messages: int, timeout: float, store_url: str
) -> dict[str, Any]:
    """The same bridge on the Redis store (cluster mode, one node): its own CPU and the Redis
    server's (from INFO, so both halves of the cost are counted)."""
    import redis.asyncio as aioredis

    from bridge.app import Bridge
    from bridge.config import load_config_text

    prefix = f"bench{os.getpid()}:"
    client = aioredis.from_url(store_url)
    with tempfile.TemporaryDirectory() as tmp:
        text = _config(tmp, window, f'url = "{store_url}"\nprefix = "{prefix}"\n')
        bridge = Bridge(load_config_text(text, base_dir=Path(tmp)))
        await bridge.start()
        print("bridge (sandbox provider, Redis store, one node):", file=sys.stderr)
        cpu = time.process_time()
        redis_cpu = await _redis_cpu(client)
        try:
            result = await asyncio.to_thread(
                run_load_client, bridge.smpp.ports["smpp"], binds, window, messages, timeout
            )
            result["server_cpu_us_per_message"] = (time.process_time() - cpu) / messages * 1e6
            result["redis_cpu_us_per_message"] = (
                ((await _redis_cpu(client)) - redis_cpu) / messages * 1e6
            )
            result["redis_batches"] = bridge.store.commits
            result["redis_largest_batch"] = bridge.store.largest_batch
        finally:
            await bridge.stop()
            keys = [k async for k in client.scan_iter(match=prefix + "*", count=1000)]
            for start in range(0, len(keys), 1000):
                await client.delete(*keys[start : start + 1000])
            await client.aclose()
    return result


async def _redis_cpu(client: Any) -> float:
    info = await client.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


def main(
    *,
    binds: int = 4,
    window: int = 64,
    messages: int = 50_000,
    timeout: float = 120,
    as_json: bool = False,
    store_url: str | None = None,
) -> int:
    from bridge.bench.summary import e2e_summary

    loop_name = start_run()
    res = asyncio.run(_bench(binds, window, messages, timeout, store_url))
    b, base = res["bridge"], res["baseline"]
    res["ratios"] = {
        "submit_per_s": b["submit_per_s"] / base["submit_per_s"],
        "end_to_end_per_s": b["end_to_end_per_s"] / base["end_to_end_per_s"],
    }
    if "bridge_redis" in res:
        r = res["bridge_redis"]
        res["ratios_redis_vs_embedded"] = {
            "submit_per_s": r["submit_per_s"] / b["submit_per_s"],
            "end_to_end_per_s": r["end_to_end_per_s"] / b["end_to_end_per_s"],
            "server_cpu_us_per_message": r["server_cpu_us_per_message"]
            / b["server_cpu_us_per_message"],
        }
    res["setup"] = run_setup(loop_name, binds, window, messages)
    return print_report(res, e2e_summary, as_json)


def load_main(
    *,
    host: str,
    port: int,
    system_id: str,
    password: str,
    binds: int = 4,
    window: int = 64,
    messages: int = 50_000,
    timeout: float = 300,
    as_json: bool = False,
) -> int:
    """``smpp-bridge bench load``: the e2e benchmark's load client against a bridge that is
    already running (``smpp-bridge run``), e.g. on another machine or with another config.
    Nothing to compare with in the same run here: run ``bench e2e`` beside it for the baseline."""
    try:
        result = load_client(
            port, binds, window, messages, timeout, True, host, system_id, password
        )
    except (OSError, RuntimeError) as exc:
        print(f"smpp-bridge bench load: {exc}", file=sys.stderr)
        return 1
    if not as_json:
        print(
            f"{host}:{port}, {binds} binds x window {window}: {result['accepted']} of {messages}"
            f" accepted at {result['submit_per_s'] / 1000:.2f}k/s (p50"
            f" {result['latency_p50_ms']:.1f} ms, p99 {result['latency_p99_ms']:.1f} ms);"
            f" receipts: {result['receipts_matched']} matched, {result['receipts_missing']}"
            f" missing, {result['receipts_duplicated']} duplicated;"
            f" {result['end_to_end_per_s'] / 1000:.2f}k/s end to end\n"
        )
    print(json.dumps(result, indent=2))
    complete = result["receipts_missing"] == 0 and result["refused"] == 0
    return 0 if complete else 1
