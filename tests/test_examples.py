"""The lines operators paste work as written: the README's Quick start, and each example config's
"try it" lines (its provider's simulator, the bridge, ``smpp-bridge send --wait-receipt``).

They run from a fresh working directory that holds what a clone has (README, Makefile,
pyproject.toml, config/) and the repository's ``.venv`` (a symlink: nothing is installed), in a
private network namespace (:mod:`tests.harness.instructions`), so their fixed ports collide with
nothing and their data directories land in the temporary directory.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from tests.harness.instructions import (
    clean_environment,
    header_commands,
    namespaces_available,
    run_lines,
)

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "config" / "examples").glob("*.toml"))
SIMULATED = [p for p in EXAMPLES if p.name != "full.toml"]  # full.toml: the option reference
PASSWORD_ENV = "SMPP_DEMO_PASSWORD"

needs_namespaces = pytest.mark.skipif(
    not namespaces_available(), reason="needs unshare -rn (user and network namespaces)"
)


@pytest.fixture
def clone(tmp_path: Path) -> Path:
    """A directory laid out like a fresh clone, using the repository's installed venv."""
    work = tmp_path / "clone"
    work.mkdir()
    for name in ("README.md", "Makefile", "pyproject.toml"):
        shutil.copy2(ROOT / name, work / name)  # copy2: make compares pyproject's mtime
    shutil.copytree(ROOT / "config", work / "config")
    (work / ".venv").symlink_to(ROOT / ".venv")
    return work


def _receipts(stdout: str) -> list[str]:
    return [line for line in stdout.splitlines() if line.startswith("receipt")]


# --------------------------------------------------------------------------- README


def _quick_start_lines() -> list[str]:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```sh\n(.*?)```", section, re.S)
    lines = [ln.split("#", 1)[0].strip() for block in blocks for ln in block.splitlines()]
    return [ln for ln in lines if ln]


@needs_namespaces
def test_readme_make_run_then_send_wait_receipt_prints_the_delivrd_receipt(clone: Path) -> None:
    lines = _quick_start_lines()
    assert lines[0] == "make run"
    send = [ln for ln in lines if ln.startswith(".venv/bin/smpp-bridge send")]
    assert len(send) == 1 and "--wait-receipt" in send[0]
    # `make run` installs first when the stamp is stale: that needs the network (PyPI), which
    # the namespace has not. Say so rather than fail for a reason that is not the README's.
    built = (clone / "pyproject.toml").stat().st_mtime
    stamps = [ROOT / ".venv" / name for name in (".run-installed", ".dev-installed")]
    if not any(p.exists() and p.stat().st_mtime > built for p in stamps):
        pytest.skip("the venv's install stamps are stale: run `make .venv/.dev-installed` first")

    outcome = run_lines(clone, ["make run", send[0]])
    assert outcome.returncode == 0, outcome.report()
    (receipt,) = _receipts(outcome.stdout)
    assert "stat=DELIVRD" in receipt and "err=000" in receipt
    assert any((clone / "data").iterdir()), "make run keeps its queue in ./data"


# --------------------------------------------------------------------------- examples


@needs_namespaces
@pytest.mark.parametrize("example", SIMULATED, ids=lambda p: p.stem)
def test_example_try_it_lines_run_as_written_and_deliver_a_receipt(
    example: Path, clone: Path
) -> None:
    lines = header_commands(example)
    assert len(lines) == 3, f"{example.name}: simulator, bridge and send lines, got {lines}"
    simulate, run, send = lines
    assert " simulate " in simulate and f"--config config/examples/{example.name}" in run
    assert send.startswith(".venv/bin/smpp-bridge send") and "--wait-receipt" in send

    outcome = run_lines(clone, lines)
    assert outcome.returncode == 0, outcome.report()
    receipts = _receipts(outcome.stdout)
    assert receipts, outcome.report()
    # phlyMail has no delivery reports: a message it took ends ACCEPTD (documented there).
    expected = "ACCEPTD" if example.stem == "phlymail" else "DELIVRD"
    assert all(f"stat={expected}" in r for r in receipts), outcome.report()
    assert (clone / "data" / example.stem).is_dir(), "the example keeps its own data directory"


def test_full_example_check_config_line_passes_as_written(clone: Path) -> None:
    (line,) = header_commands(ROOT / "config" / "examples" / "full.toml")
    assert "check-config config/examples/full.toml" in line
    proc = subprocess.run(
        ["sh", "-c", line],
        cwd=clone,
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_environment(),
    )
    assert proc.returncode == 0, proc.stderr


def _raw(path: Path) -> dict[str, object]:
    with path.open("rb") as f:
        return tomllib.load(f)


def test_examples_and_the_default_config_have_ports_and_data_dirs_of_their_own() -> None:
    configs = [ROOT / "config" / "bridge.toml", *SIMULATED]
    seen: dict[object, str] = {}
    for path in configs:
        raw = _raw(path)
        smpp, http, storage = raw["smpp"], raw["http"], raw["storage"]
        assert isinstance(smpp, dict) and isinstance(http, dict) and isinstance(storage, dict)
        data_dir = (path.parent / storage["data_dir"]).resolve()
        for key in (("smpp", smpp["port"]), ("http", http["port"]), ("data", data_dir)):
            assert key not in seen, f"{path.name} shares {key} with {seen.get(key)}"
            seen[key] = path.name


def test_one_name_for_the_esme_password_variable_everywhere() -> None:
    for path in SIMULATED:
        accounts = _raw(path)["accounts"]
        assert isinstance(accounts, list)
        assert [a["password"] for a in accounts] == [f"env:{PASSWORD_ENV}"], path.name
        for line in header_commands(path):
            if " run " in line:
                assert f"{PASSWORD_ENV}=" in line, line
    docker = _raw(ROOT / "config" / "docker.toml")["accounts"]
    assert isinstance(docker, list) and docker[0]["password"] == f"env:{PASSWORD_ENV}"
    texts = {
        name: (ROOT / name).read_text(encoding="utf-8")
        for name in ("README.md", "Dockerfile", "compose.yaml")
    }
    texts.update({p.name: p.read_text(encoding="utf-8") for p in EXAMPLES})
    for name, text in texts.items():
        # An ESME account's password variable by any other name.
        others = set(re.findall(r"\b([A-Z_]*(?:DEMO|ESME)[A-Z_]*PASSWORD)\b", text))
        assert others <= {PASSWORD_ENV}, f"{name}: {others}"
    assert PASSWORD_ENV in texts["Dockerfile"] and PASSWORD_ENV in texts["compose.yaml"]
