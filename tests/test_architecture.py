"""docs/architecture.md stays the account of the whole house: every module and package of
``bridge/`` is named on its floor plan (the import rules themselves are checked by
``lint-imports`` in ``make lint``, with the contracts in pyproject.toml)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def floor_plan() -> str:
    text = (REPO / "docs" / "architecture.md").read_text()
    match = re.search(r"## The floors\n\n```\n(.*?)```", text, re.S)
    assert match, "docs/architecture.md has lost its floor plan"
    return match.group(1)


def test_every_module_and_package_of_bridge_is_on_the_floor_plan() -> None:
    plan = floor_plan()
    names = sorted(
        p.name + ("/" if p.is_dir() else "")
        for p in (REPO / "bridge").iterdir()
        if (p.is_dir() and (p / "__init__.py").exists())
        or (p.suffix == ".py" and p.name != "__init__.py")
    )
    missing = [n for n in names if not re.search(rf"(?<![\w/]){re.escape(n)}", plan)]
    assert missing == [], f"add these to the floor plan of docs/architecture.md: {missing}"


def test_the_layer_contract_names_every_floor_of_the_plan() -> None:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    (layers,) = [
        c["layers"] for c in config["tool"]["importlinter"]["contracts"] if c["type"] == "layers"
    ]
    named = {m.strip() for layer in layers for m in layer.split("|")}
    floors = {"cli", "app", "admin", "simulators", "web", "smsc", "providers", "store", "smpp",
              "core"}  # fmt: skip
    assert {f"bridge.{f}" for f in floors} <= named
