"""Packaging: the Dockerfile, compose.yaml, Prometheus and Grafana provisioning, the dashboard.

No Docker engine runs where these tests run, so nothing is built or started in a container.
What can be checked without one is checked here:

* the Dockerfile passes hadolint (every finding fails, down to style);
* the YAML files parse, and every file or directory they name exists in the repository, seen
  through the compose mounts (a container path is mapped back to the file it comes from);
* the Dockerfile, compose.yaml, prometheus.yml and config/docker.toml agree with each other:
  ports, the config path, the data volume, the HEALTHCHECK port;
* the HEALTHCHECK command itself passes against a running bridge;
* the dashboard JSON is a well-formed Grafana model, and every metric it queries exists in a
  real ``/metrics`` scrape of a running bridge that has bound, accepted a message and delivered
  its receipt (so the labelled series exist and their label names can be checked too).
"""

from __future__ import annotations

import fnmatch
import ipaddress
import json
import re
import shlex
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from bridge.config import Config, load_config
from tests.harness.daemon import BridgeThread, StartBridge
from tests.harness.esme import Esme

yaml = pytest.importorskip("yaml", reason="PyYAML is a dev dependency: pip install -e '.[dev]'")

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "compose.yaml"
PROMETHEUS = ROOT / "prometheus" / "prometheus.yml"
DATASOURCES = ROOT / "grafana" / "provisioning" / "datasources" / "prometheus.yaml"
DASHBOARD_PROVIDERS = ROOT / "grafana" / "provisioning" / "dashboards" / "smpp-bridge.yaml"
DASHBOARD = ROOT / "grafana" / "dashboards" / "smpp-bridge.json"
DOCKER_CONFIG = ROOT / "config" / "docker.toml"

DEMO_ENV = {"SMPP_DEMO_PASSWORD": "demopass"}


# --------------------------------------------------------------------------- helpers


def _yaml(path: Path) -> Any:
    with path.open(encoding="utf-8") as f:
        return yaml.safe_load(f)


def _docker_config() -> Config:
    return load_config(DOCKER_CONFIG, env=DEMO_ENV)


def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = pending + line
        pending = ""
        keyword, _, args = full.partition(" ")
        out.append((keyword.upper(), args.strip()))
    return out


def _instructions(keyword: str) -> list[str]:
    return [args for kw, args in _dockerfile_instructions() if kw == keyword]


def _exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list), f"{args!r} is not the exec (JSON array) form"
    return [str(v) for v in value]


def _healthcheck_command() -> list[str]:
    (args,) = _instructions("HEALTHCHECK")
    _options, sep, command = args.partition("CMD ")
    assert sep, "HEALTHCHECK without CMD"
    return _exec_form(command.strip())


def _compose() -> dict[str, Any]:
    data = _yaml(COMPOSE)
    assert isinstance(data, dict)
    return data


def _service(name: str) -> dict[str, Any]:
    services = _compose()["services"]
    assert name in services, f"compose.yaml has no service {name!r}"
    return dict(services[name])


def _bind_mounts(service: str) -> list[tuple[Path, str]]:
    """(repository path, container path) of the service's bind mounts."""
    mounts = []
    for volume in _service(service).get("volumes", []):
        assert isinstance(volume, str), "use the short volume syntax (SRC:DST[:MODE])"
        source, target = volume.split(":")[:2]
        if source.startswith(("./", "../", "/")):
            mounts.append((ROOT / source, target))
    return mounts


def _repo_path(service: str, container_path: str) -> Path:
    """The file of the repository that ``container_path`` is in ``service``'s container."""
    wanted = PurePosixPath(container_path)
    for source, target in _bind_mounts(service):
        tgt = PurePosixPath(target)
        if wanted == tgt or tgt in wanted.parents:
            return source / wanted.relative_to(tgt)
    raise AssertionError(f"{container_path} is not bind-mounted into {service}")


def _env(service: str) -> dict[str, str]:
    env = _service(service).get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


def _container_ports(service: str) -> set[int]:
    return {int(str(p).rsplit(":", 1)[-1].split("/")[0]) for p in _service(service)["ports"]}


def _dockerignored(path: str, patterns: list[str]) -> bool:
    """Whether .dockerignore (simple patterns, no ``!`` exceptions) drops ``path``."""
    parts = PurePosixPath(path).parts
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        plain = pattern.removeprefix("**/")
        for prefix in prefixes:
            name = prefix.rsplit("/", 1)[-1]
            if fnmatch.fnmatchcase(prefix, pattern) or fnmatch.fnmatchcase(name, plain):
                return True
    return False


def _dashboard() -> dict[str, Any]:
    data = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def _panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, including those inside collapsed rows."""
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def _queries(dashboard: dict[str, Any]) -> list[str]:
    """Every PromQL expression: panel targets and template variable queries."""
    exprs = [target["expr"] for panel in _panels(dashboard) for target in panel.get("targets", [])]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            exprs.append(query["query"] if isinstance(query, dict) else query)
    return exprs


_METRIC_RE = re.compile(r"\bbridge_[a-z0-9_]+\b")
_SELECTOR_RE = re.compile(r"\b(bridge_[a-z0-9_]+)\s*\{([^}]*)\}")
_MATCHER_RE = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")
_GROUPING_RE = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
_LABEL_VALUES_RE = re.compile(r"label_values\(\s*(bridge_[a-z0-9_]+)\s*,\s*([a-zA-Z_]\w*)\s*\)")


def _sample_names(exposition: str) -> dict[str, str]:
    """Every sample name the families of the ``# TYPE`` lines expose -> its family.

    ``# TYPE`` lines list every family, also those without samples yet (a labelled counter
    before its first increment). In the Prometheus text format a counter's TYPE line already
    names its ``_total`` sample (OpenMetrics names the family without it: both are accepted);
    a histogram ``h`` has samples ``h_bucket``, ``h_sum`` and ``h_count``.
    """
    suffixes = {
        "counter": ("_total",),
        "gauge": ("",),
        "histogram": ("_bucket", "_sum", "_count"),
        "summary": ("", "_sum", "_count"),
        "untyped": ("",),
        "unknown": ("",),
    }
    names: dict[str, str] = {}
    for line in exposition.splitlines():
        if not line.startswith("# TYPE "):
            continue
        _, _, family, kind = line.split(maxsplit=3)
        family = family.removesuffix("_total") if kind == "counter" else family
        for suffix in suffixes.get(kind.strip(), ("",)):
            names[family + suffix] = family
    return names


def _sample_labels(exposition: str) -> dict[str, set[str]]:
    """Label names seen on the samples of each sample name."""
    labels: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            labels.setdefault(sample.name, set()).update(sample.labels)
    return labels


def _scrape(bt: BridgeThread) -> str:
    """GET /metrics of the running bridge (or its registry, when it serves no HTTP)."""
    bridge: Any = bt.bridge
    admin = getattr(bridge, "admin_http", None)
    port = getattr(admin, "port", None)
    if port:
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/metrics",
            headers={"Authorization": f"Bearer {bridge.admin_token}"},
        )
        with urllib.request.urlopen(request, timeout=5) as resp:
            assert resp.status == 200
            return str(resp.read().decode("utf-8"))
    registry = getattr(bridge, "registry", None)
    if registry is None:
        pytest.fail("the Bridge serves no /metrics (no .http.port) and has no .registry")
    from prometheus_client import generate_latest

    return generate_latest(registry).decode("utf-8")


# --------------------------------------------------------------------------- Dockerfile


def _hadolint() -> str | None:
    beside = Path(sys.executable).parent / "hadolint"
    if beside.is_file():
        return str(beside)
    return shutil.which("hadolint")


def test_dockerfile_passes_hadolint() -> None:
    hadolint = _hadolint()
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install -e '.[dev]' on linux x86_64)")
    result = subprocess.run(
        [hadolint, "--no-color", "--failure-threshold", "style", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_is_multi_stage_slim_non_root_with_volumes_and_healthcheck() -> None:
    cfg = _docker_config()
    froms = _instructions("FROM")
    assert len(froms) >= 2, "multi-stage: a builder stage and a runtime stage"
    assert all("slim" in f for f in froms), froms
    # Non-root: the last USER is neither root nor uid 0.
    user = _instructions("USER")[-1].split(":")[0]
    assert user not in ("root", "0"), user
    assert user.isdigit(), "a numeric uid, so Kubernetes' runAsNonRoot can check it"

    volumes = {v for args in _instructions("VOLUME") for v in _exec_form(args)}
    assert volumes >= {"/etc/smpp-bridge", str(cfg.storage.data_dir)}
    exposed = {int(p.split("/")[0]) for args in _instructions("EXPOSE") for p in args.split()}
    assert exposed >= {cfg.smpp.port, cfg.http.port, cfg.admin.port}

    env = " ".join(_instructions("ENV"))
    assert "PYTHONDONTWRITEBYTECODE=1" in env and "PYTHONUNBUFFERED=1" in env

    (entrypoint,) = _instructions("ENTRYPOINT")
    (cmd,) = _instructions("CMD")
    argv = _exec_form(entrypoint) + _exec_form(cmd)
    assert argv[:2] == ["smpp-bridge", "run"]
    config_path = argv[argv.index("--config") + 1]
    assert PurePosixPath(config_path).parent == PurePosixPath("/etc/smpp-bridge")

    health = " ".join(_healthcheck_command())
    assert f":{cfg.admin.port}/healthz" in health


def test_dockerfile_copies_only_files_that_exist_and_are_not_dockerignored() -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert not any(p.startswith("!") for p in patterns), "the helper here has no ! support"
    for must_ignore in (".venv", ".git", "data", ".pytest_cache"):
        assert _dockerignored(must_ignore, patterns), must_ignore
    copies = _instructions("COPY")
    assert copies
    for args in copies:
        words = shlex.split(args)
        if any(w.startswith("--from") for w in words):
            continue  # from a build stage, not the context
        sources = [w for w in words if not w.startswith("--")][:-1]
        for source in sources:
            assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
            assert not _dockerignored(source, patterns), f"COPY {source}: .dockerignore drops it"


def test_docker_config_is_valid_and_listens_on_all_interfaces() -> None:
    cfg = _docker_config()
    assert cfg.smpp.host == "0.0.0.0"
    assert cfg.http.host == "0.0.0.0"
    # Prometheus reaches the admin listener over the compose network; the API still needs
    # the token, which the bridge creates in its data volume.
    assert cfg.admin.host == "0.0.0.0"
    assert not cfg.admin.allow_unauthenticated
    assert str(cfg.storage.data_dir) == "/var/lib/smpp-bridge"
    (account,) = cfg.accounts
    assert account.password.get_secret_value() == DEMO_ENV["SMPP_DEMO_PASSWORD"]
    # Peers on the compose network (and through Docker's NAT) must be able to bind.
    for peer in ("172.18.0.5", "10.0.0.7", "fd00::5"):
        addr = ipaddress.ip_address(peer)
        assert any(addr in net for net in account.allowed_ips), peer
    assert "env:SMPP_DEMO_PASSWORD" in DOCKER_CONFIG.read_text(encoding="utf-8")


def test_healthcheck_command_passes_against_a_running_bridge(start_bridge: StartBridge) -> None:
    bt = start_bridge()
    port = bt.bridge.admin_http.port
    cfg = _docker_config()
    command = [
        arg.replace(f"127.0.0.1:{cfg.admin.port}/", f"127.0.0.1:{port}/")
        for arg in _healthcheck_command()
    ]
    assert command[0] == "python"
    command[0] = sys.executable
    result = subprocess.run(command, capture_output=True, text=True, timeout=10, check=False)
    assert result.returncode == 0, result.stderr
    # …and fails when nothing answers (so the check can report unhealthy at all).
    bt.stop()
    result = subprocess.run(command, capture_output=True, text=True, timeout=10, check=False)
    assert result.returncode != 0


# --------------------------------------------------------------------------- compose & provisioning


def test_compose_services_and_mounts() -> None:
    compose = _compose()
    assert set(compose["services"]) >= {"bridge", "prometheus", "grafana"}
    cfg = _docker_config()

    bridge = _service("bridge")
    build = bridge["build"]
    context = ROOT / (build if isinstance(build, str) else build.get("context", "."))
    dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
    assert (context / dockerfile).resolve() == DOCKERFILE
    assert _container_ports("bridge") >= {cfg.smpp.port, cfg.http.port, cfg.admin.port}
    assert "SMPP_DEMO_PASSWORD" in _env("bridge")
    (cmd,) = _instructions("CMD")
    config_path = _exec_form(cmd)[-1]
    assert _repo_path("bridge", config_path).resolve() == DOCKER_CONFIG

    # Every bind mount's source exists; every named volume is declared.
    declared = set(compose.get("volumes") or {})
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source, target = str(volume).split(":")[:2]
            if source.startswith(("./", "../", "/")):
                assert (ROOT / source).exists(), f"{name}: {source} does not exist"
            else:
                assert source in declared, f"{name}: volume {source} is not declared"
            if target == str(cfg.storage.data_dir):
                assert name == "bridge" and source in declared, "bridge data on a named volume"
    assert any(
        str(v).split(":")[1] == str(cfg.storage.data_dir) for v in bridge.get("volumes", [])
    ), "the bridge's data directory is not on a volume"


def test_prometheus_scrapes_the_bridge_service() -> None:
    cfg = _docker_config()
    prometheus = _service("prometheus")
    config_flag = next(
        (a for a in prometheus.get("command", []) if a.startswith("--config.file=")),
        "--config.file=/etc/prometheus/prometheus.yml",
    )
    container_path = config_flag.split("=", 1)[1]
    assert _repo_path("prometheus", container_path).resolve() == PROMETHEUS

    config = _yaml(PROMETHEUS)
    interval = config["global"]["scrape_interval"]
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "smpp-bridge"]
    assert job.get("scrape_interval", interval) == "5s"
    assert job.get("metrics_path", "/metrics") == "/metrics"
    targets = [t for sc in job["static_configs"] for t in sc["targets"]]
    assert targets == [f"bridge:{cfg.admin.port}"]
    # The demo scrapes without a token: the bridge config must allow that.
    assert not cfg.admin.metrics_auth or "authorization" in job


def test_grafana_provisioning() -> None:
    grafana = _service("grafana")
    env = _env("grafana")
    provisioning = _repo_path("grafana", "/etc/grafana/provisioning")
    assert provisioning.resolve() == (ROOT / "grafana" / "provisioning")
    assert "GF_SECURITY_ADMIN_PASSWORD" in env or env.get("GF_AUTH_ANONYMOUS_ENABLED") == "true"
    assert grafana["image"].startswith("grafana/grafana")

    datasources = _yaml(DATASOURCES)
    assert datasources["apiVersion"] == 1
    (ds,) = datasources["datasources"]
    assert ds["type"] == "prometheus"
    assert ds["url"] == "http://prometheus:9090"
    assert _container_ports("prometheus") >= {9090}
    assert ds["jsonData"]["timeInterval"] == _yaml(PROMETHEUS)["global"]["scrape_interval"]

    providers = _yaml(DASHBOARD_PROVIDERS)
    assert providers["apiVersion"] == 1
    (provider,) = providers["providers"]
    assert provider["type"] == "file"
    dashboards_dir = _repo_path("grafana", provider["options"]["path"])
    assert (dashboards_dir / DASHBOARD.name).resolve() == DASHBOARD
    home = env.get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH")
    if home:
        assert _repo_path("grafana", home).resolve() == DASHBOARD


# --------------------------------------------------------------------------- dashboard


def test_dashboard_is_a_well_formed_grafana_model() -> None:
    dashboard = _dashboard()
    assert dashboard["uid"] and dashboard["title"]
    assert dashboard["schemaVersion"] >= 36
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("account", "provider"):
        query = variables[name]["query"]
        match = _LABEL_VALUES_RE.fullmatch(query["query"] if isinstance(query, dict) else query)
        assert match and match.group(2) == name, f"${name}: {query}"

    ids = [panel["id"] for panel in _panels(dashboard)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    datasource = {"type": "prometheus", "uid": "${datasource}"}
    panels = [p for p in _panels(dashboard) if p["type"] != "row"]
    assert len(panels) >= 20
    for panel in panels:
        title = panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24 and grid["h"] > 0, title
        assert panel["datasource"] == datasource, title
        assert panel["targets"], f"{title}: no target"
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), title
        for target in panel["targets"]:
            assert target["datasource"] == datasource, title
            expr = target["expr"]
            assert _METRIC_RE.search(expr), f"{title}: {expr}"
            # Ranges follow the scrape interval; a literal [5m] would hide or smear spikes.
            for window in re.findall(r"\[([^\]]*)\]", expr):
                assert window == "$__rate_interval", f"{title}: [{window}] in {expr}"
            for var in re.findall(r"\$(\w+)", expr):
                assert var in variables or var.startswith("__"), f"{title}: ${var}"

    # Every section the dashboard is for has a row.
    rows = {p["title"] for p in dashboard["panels"] if p["type"] == "row"}
    for section in (
        "Throughput",
        "Latency",
        "Errors",
        "Queues",
        "Receipts",
        "Providers",
        "Binds",
        "Store",
        "Reassembly",
    ):
        assert section in rows, section


def test_every_dashboard_metric_exists_in_a_real_scrape(start_bridge: StartBridge) -> None:
    bt = start_bridge()
    with Esme(bt.port) as esme:
        esme.bind("transceiver")
        esme.submit_ok(registered_delivery=1)
        (receipt,) = esme.receipts(1)
        assert receipt.esm_class & 0x04
        # A refused submit (not a number), so the rejection series exist too.
        assert esme.submit(destination_addr="not-a-number").status != 0
        if getattr(bt.bridge, "admin_http", None) is not None:
            # /readyz runs the provider health checks (bridge_provider_up).
            with urllib.request.urlopen(
                f"http://127.0.0.1:{bt.bridge.admin_http.port}/readyz", timeout=5
            ) as resp:
                assert resp.status == 200
        exposition = _scrape(bt)

    known = _sample_names(exposition)
    labels = _sample_labels(exposition)
    queries = _queries(_dashboard())
    used = {name for expr in queries for name in _METRIC_RE.findall(expr)}
    missing = sorted(used - known.keys())
    assert not missing, f"the dashboard queries metrics the bridge does not expose: {missing}"
    assert {known[name] for name in used} >= {"bridge_messages_accepted", "bridge_smpp_pdus"}
    assert len(used) >= 25

    # Label names: every label an expression selects on or groups by exists on the samples of
    # the metrics it queries (checked for every metric the scrape has samples of).
    for expr in queries:
        names = set(_METRIC_RE.findall(expr))
        used_labels = {
            label
            for _name, matchers in _SELECTOR_RE.findall(expr)
            for label in _MATCHER_RE.findall(matchers)
        }
        used_labels |= {
            label.strip()
            for group in _GROUPING_RE.findall(expr)
            for label in group.split(",")
            if label.strip()
        }
        used_labels |= {m.group(2) for m in _LABEL_VALUES_RE.finditer(expr)}
        used_labels.discard("le")
        # Target labels Prometheus adds to every series it scrapes (one target per node).
        used_labels -= {"instance", "job"}
        # A join (``* on (instance) group_left (node) bridge_node_info``) brings the labels of
        # its right-hand side: any metric of the expression may then have them.
        joined = (
            set().union(*(labels[n] for n in names & labels.keys()))
            if "group_left" in expr
            else set()
        )
        for name in names & labels.keys():
            unknown = used_labels - labels[name] - joined
            assert not unknown, f"{expr}: {name} has no label {sorted(unknown)}"


# --------------------------------------------------------------------------- the command


def test_the_only_console_script_is_smpp_bridge_never_bridge() -> None:
    """``bridge`` would shadow (or be shadowed by) iproute2's /usr/sbin/bridge."""
    import tomllib

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"][
        "scripts"
    ]
    assert scripts == {"smpp-bridge": "bridge.cli:main"}


def test_installed_smpp_bridge_and_python_m_bridge_are_the_same_command() -> None:
    script = Path(sys.executable).parent / "smpp-bridge"
    assert script.exists(), "pip install -e . installs the smpp-bridge script next to python"
    for argv in ([str(script), "--help"], [sys.executable, "-m", "bridge", "--help"]):
        out = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=True).stdout
        assert out.startswith("usage: smpp-bridge"), out
        assert "check-config" in out
