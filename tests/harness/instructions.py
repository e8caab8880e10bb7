"""Run lines an operator pastes (README, the examples' comments) exactly as written.

The lines use fixed ports (2775, 8080, a simulator's 9500 …), so they run in a private network
namespace (``unshare -rn``: a user namespace plus a network namespace with only its own
loopback): they cannot collide with anything else on the machine, including a parallel run of
the same test. The namespace is entered by re-running this file as a script; the caller gets a
:class:`Outcome` back as JSON.

Every line but the last is a server (``smpp-bridge run``, ``smpp-bridge simulate``, ``make
run``): it is started in the background from ``workdir`` with ``sh -c``, and the next line
starts once it listens on a new TCP port. The last line runs in the foreground; then the
servers get SIGTERM (SIGKILL after 10 s). The environment is the caller's without the venv on
PATH and without ``VIRTUAL_ENV`` or ``SMPP_DEMO_PASSWORD``: the lines must work as pasted into
a fresh shell.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

#: A line that runs the repository's command without an activated venv (optionally with
#: VAR=value assignments before it).
COMMAND_RE = re.compile(r"^(?:[A-Z_][A-Z0-9_]*=\S*\s+)*\.venv/bin/smpp-bridge\s")
SERVER_RE = re.compile(r"(?:^make run$)|(?:\.venv/bin/smpp-bridge (?:run|simulate)\b)")


@dataclass
class Outcome:
    """The last line's exit status and output, and each server's output (for diagnostics)."""

    returncode: int
    stdout: str
    stderr: str
    servers: dict[str, str] = field(default_factory=dict)

    def report(self) -> str:
        parts = [f"exit {self.returncode}", f"stdout:\n{self.stdout}", f"stderr:\n{self.stderr}"]
        parts += [f"--- {line}\n{out[-4000:]}" for line, out in self.servers.items()]
        return "\n".join(parts)


def header_commands(path: Path) -> list[str]:
    """The ``.venv/bin/smpp-bridge`` lines in a config file's leading comment block."""
    lines = []
    for raw in path.read_text(encoding="utf-8").splitlines():
        if not raw.startswith("#"):
            if raw.strip():
                break
            continue
        line = raw.lstrip("#").strip()
        if COMMAND_RE.match(line):
            lines.append(line)
    return lines


def namespaces_available() -> bool:
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return False
    probe = subprocess.run(
        ["unshare", "-rn", "ip", "link", "set", "lo", "up"], capture_output=True, timeout=30
    )
    return probe.returncode == 0


def clean_environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "SMPP_DEMO_PASSWORD")}
    venv_bin = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join(
        p for p in env.get("PATH", "").split(os.pathsep) if p and p != venv_bin
    )
    return env


def run_lines(workdir: Path, lines: list[str], timeout: float = 120.0) -> Outcome:
    """Run ``lines`` (servers, then one foreground line) in a private network namespace."""
    spec = json.dumps({"workdir": str(workdir), "lines": lines, "timeout": timeout})
    proc = subprocess.run(
        ["unshare", "-rn", sys.executable, __file__, spec],
        capture_output=True,
        text=True,
        timeout=timeout + 60,
        env=clean_environment(),
    )
    if proc.returncode != 0:
        raise RuntimeError(f"the runner failed ({proc.returncode}):\n{proc.stderr}")
    return Outcome(**json.loads(proc.stdout))


# --------------------------------------------------------------------------- in the namespace


def _listening_ports() -> set[int]:
    ports = set()
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(name).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            cols = row.split()
            if len(cols) > 3 and cols[3] == "0A":  # TCP_LISTEN
                ports.add(int(cols[1].rsplit(":", 1)[1], 16))
    return ports


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    except ProcessLookupError:
        pass


def _inside(workdir: Path, lines: list[str], timeout: float) -> Outcome:
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    logs = workdir / ".instruction-logs"
    logs.mkdir(exist_ok=True)
    servers: list[tuple[str, subprocess.Popen[bytes], Path]] = []
    deadline = time.monotonic() + timeout
    try:
        for i, line in enumerate(lines[:-1]):
            if not SERVER_RE.search(line):
                raise ValueError(f"not a server line: {line}")
            log = logs / f"server{i}.log"
            before = _listening_ports()
            with log.open("wb") as out:
                proc = subprocess.Popen(
                    ["sh", "-c", line],
                    cwd=workdir,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            servers.append((line, proc, log))
            while not (_listening_ports() - before):
                if proc.poll() is not None or time.monotonic() > deadline:
                    return _outcome(124, "", f"server did not start listening: {line}", servers)
                time.sleep(0.05)
            time.sleep(0.5)  # its other listeners (the bridge has SMPP and HTTP)
        try:
            last = subprocess.run(
                ["sh", "-c", lines[-1]],
                cwd=workdir,
                capture_output=True,
                text=True,
                timeout=max(1.0, deadline - time.monotonic()),
            )
        except subprocess.TimeoutExpired as e:
            return _outcome(124, str(e.stdout or ""), f"timed out: {lines[-1]}", servers)
        return _outcome(last.returncode, last.stdout, last.stderr, servers)
    finally:
        for _, proc, _ in reversed(servers):
            _stop(proc)


def _outcome(
    code: int, stdout: str, stderr: str, servers: list[tuple[str, subprocess.Popen[bytes], Path]]
) -> Outcome:
    for _, proc, _ in servers:
        _stop(proc)
    return Outcome(
        code,
        stdout,
        stderr,
        {line: log.read_text(errors="replace") for line, _, log in servers},
    )


if __name__ == "__main__":
    spec = json.loads(sys.argv[1])
    outcome = _inside(Path(spec["workdir"]), spec["lines"], spec["timeout"])
    print(json.dumps(asdict(outcome)))
