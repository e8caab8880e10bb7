"""The Redis client's CPU per command: redis-py asyncio with hiredis (what the cluster store
uses) against redis-py's own pure-Python parser, one command per round trip against pipelined,
in the same run, on a redis-server of its own.

Usage: ``python -m benchmarks.redis_client [--commands 20000]``

Each case sends ``--commands`` of the kind the store sends most — an ``EVALSHA`` of a small
script writing one hash and one set member, like an accepted message — and reports the client
process's CPU µs per command (``process_time``: parsing, packing, asyncio) and commands/s. The
server runs without AOF here: the figure is the client's cost, not the disk's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any

import redis.asyncio as redis
from redis.asyncio.connection import ConnectionPool, _AsyncHiredisParser, _AsyncRESP2Parser

_SCRIPT = """
redis.call('HSET', KEYS[1], 'blob', ARGV[1], 'state', ARGV[2])
redis.call('SADD', KEYS[2], ARGV[3])
return 1
"""
_BLOB = b"x" * 200  # about an accept record
_PIPELINE = 100


async def _case(port: int, parser: type, commands: int, pipelined: bool) -> dict[str, Any]:
    pool = ConnectionPool(host="127.0.0.1", port=port, parser_class=parser)
    client = redis.Redis(connection_pool=pool)
    try:
        sha = await client.script_load(_SCRIPT)
        cpu, wall = time.process_time(), time.perf_counter()
        if pipelined:
            for start in range(0, commands, _PIPELINE):
                pipe = client.pipeline(transaction=False)
                for i in range(start, min(commands, start + _PIPELINE)):
                    pipe.evalsha(sha, 2, f"m:{i}", "q:a", _BLOB, 1, i)
                await pipe.execute()
        else:
            for i in range(commands):
                await client.evalsha(sha, 2, f"m:{i}", "q:a", _BLOB, 1, i)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        await client.flushdb()
    finally:
        await client.aclose()
        await pool.disconnect()
    return {
        "cpu_us_per_command": round(cpu / commands * 1e6, 1),
        "commands_per_s": round(commands / wall),
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def run(commands: int) -> dict[str, Any]:
    server_bin = shutil.which("redis-server")
    if server_bin is None:
        raise SystemExit("redis-server is not installed (Debian: apt-get install redis-server)")
    tmp = tempfile.mkdtemp(prefix="bench-redis-")
    port = _free_port()
    server = subprocess.Popen(
        [server_bin, "--port", str(port), "--bind", "127.0.0.1", "--dir", tmp, "--save", ""],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        for _ in range(100):
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            await asyncio.sleep(0.05)
        report: dict[str, Any] = {}
        for pipelined in (False, True):
            for label, parser in (("hiredis", _AsyncHiredisParser), ("python", _AsyncRESP2Parser)):
                key = f"{label}, {'pipelined by 100' if pipelined else 'one per round trip'}"
                report[key] = await _case(port, parser, commands, pipelined)
        return report
    finally:
        server.terminate()
        server.wait(timeout=10)
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commands", type=int, default=20_000)
    args = parser.parse_args(argv)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    report = asyncio.run(run(args.commands))
    for case, r in report.items():
        print(f"{case:36} {r['cpu_us_per_command']:6.1f} µs CPU/command"
              f"  {r['commands_per_s']:>8,}/s", file=sys.stderr)  # fmt: skip
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
