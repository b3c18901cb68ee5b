"""examples/compose: the one-machine chain, checked without a Docker engine.

No container runs here, so the checks are on what each container would read:
the compose file's wiring (mounts exist, ports stay on loopback, the two
Forward ends share a key and a port), the demo's Fluent Bit pipeline (the
shipped one, but for three documented keys), the Prometheus config (real
promtool, with the rules mounted where compose mounts them), Grafana's
provisioning, the Dockerfile, and the fake inference server's output.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
import yaml

from . import fluentbit
from .conftest import EXAMPLES, REPO, load_script, run_tool, tomllib

COMPOSE_DIR = EXAMPLES / "compose"
COMPOSE = yaml.safe_load((COMPOSE_DIR / "compose.yaml").read_text(encoding="utf-8"))
SERVICES = COMPOSE["services"]

#: The kubernetes-filter keys the demo sets because there is no API server.
DEMO_ONLY_KEYS = {"kube_meta_preload_cache_dir", "kube_url", "kube_token_file"}


def _fake_inference():
    return load_script(COMPOSE_DIR / "fake_inference.py")


def _env(service: str) -> dict[str, str]:
    """A service's environment as the container sees it ($$ is compose's escape for $; defaults applied)."""
    out = {}
    for key, value in SERVICES[service].get("environment", {}).items():
        value = str(value)
        value = re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", value)
        out[key] = value.replace("$$", "$")
    return out


def _mounts(service: str) -> dict[str, Path]:
    """Container path -> host path of a service's bind mounts (named volumes left out)."""
    out = {}
    for spec in SERVICES[service].get("volumes", []):
        source, target = spec.split(":")[:2]
        if source.startswith("."):
            out[target] = (COMPOSE_DIR / source).resolve()
    return out


def test_services_and_loopback_only_ports() -> None:
    assert set(SERVICES) == {"inference", "fluent-bit", "qwen-fluent", "prometheus", "grafana"}
    for name, service in SERVICES.items():
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port} beyond this machine"
    assert "24224" not in " ".join(SERVICES["qwen-fluent"].get("ports", [])), "Forward stays on the compose network"


def test_every_bind_mount_and_build_context_exists() -> None:
    for name in SERVICES:
        for target, source in _mounts(name).items():
            assert source.exists(), f"{name}: {source} (mounted at {target}) does not exist"
    build = SERVICES["qwen-fluent"]["build"]
    assert (COMPOSE_DIR / build["context"] / build["dockerfile"]).resolve() == REPO / "Dockerfile"


def test_demo_pipeline_is_the_shipped_one_but_for_the_api_server() -> None:
    shipped = fluentbit.parse_yaml((REPO / "fluent-bit" / "fluent-bit.yaml").read_text(encoding="utf-8"))
    demo = fluentbit.parse_yaml((COMPOSE_DIR / "fluent-bit.yaml").read_text(encoding="utf-8"))
    assert [(s.kind, s.plugin) for s in demo] == [(s.kind, s.plugin) for s in shipped]
    for ours, theirs in zip(shipped, demo):
        extra = set(theirs.options) - set(ours.options)
        if ours.plugin == "kubernetes":
            assert extra == DEMO_ONLY_KEYS
        else:
            assert extra == set()
        assert {k: v for k, v in theirs.options.items() if k not in DEMO_ONLY_KEYS} == ours.options
        assert fluentbit.unknown_keys(theirs) == set()


def test_fluent_bit_gets_every_variable_and_its_files() -> None:
    demo = fluentbit.parse_yaml((COMPOSE_DIR / "fluent-bit.yaml").read_text(encoding="utf-8"))
    env = _env("fluent-bit")
    assert set(env) == fluentbit.env_references(demo)
    mounts = _mounts("fluent-bit")
    (config_arg,) = [a for a in SERVICES["fluent-bit"]["command"] if a.startswith("--config=")]
    assert mounts[config_arg.split("=", 1)[1]] == (COMPOSE_DIR / "fluent-bit.yaml").resolve()
    kube = next(s for s in demo if s.plugin == "kubernetes").options
    assert mounts[kube["kube_meta_preload_cache_dir"]] == (COMPOSE_DIR / "kube-meta").resolve()
    tail = next(s for s in demo if s.plugin == "tail").options
    log_mount = next(v for v in SERVICES["fluent-bit"]["volumes"] if v.startswith("container-logs:"))
    assert tail["path"].startswith(log_mount.split(":")[1] + "/")
    inference_mount = next(v for v in SERVICES["inference"]["volumes"] if v.startswith("container-logs:"))
    assert inference_mount.split(":")[1] == log_mount.split(":")[1]


def test_both_forward_ends_agree() -> None:
    fluent = _env("fluent-bit")
    receiver = _env("qwen-fluent")
    assert fluent["FORWARD_SHARED_KEY"] == receiver["QWEN_FLUENT_SHARED_KEY"]
    assert fluent["FORWARD_HOST"] == "qwen-fluent"
    config = tomllib.loads((COMPOSE_DIR / "qwen-fluent.toml").read_text(encoding="utf-8"))
    assert config["server"]["port"] == int(fluent["FORWARD_PORT"])
    assert SERVICES["qwen-fluent"]["command"][:2] == ["serve", "--config"]
    assert _mounts("qwen-fluent")[SERVICES["qwen-fluent"]["command"][2]] == (COMPOSE_DIR / "qwen-fluent.toml").resolve()


def test_the_demo_pod_is_selected_and_named_like_its_log_file() -> None:
    fake = _fake_inference()
    meta = json.loads((COMPOSE_DIR / "kube-meta" / f"{fake.NAMESPACE}_{fake.POD}.meta").read_text())
    assert (meta["metadata"]["namespace"], meta["metadata"]["name"]) == (fake.NAMESPACE, fake.POD)
    status = meta["status"]["containerStatuses"][0]
    assert status["name"] == fake.CONTAINER and status["containerID"] == f"containerd://{fake.CONTAINER_ID}"
    # kubelet's file name: <pod>_<namespace>_<container>-<64 hex id>.log
    assert re.fullmatch(r"[a-z0-9-]+_[a-z0-9-]+_[a-z0-9-]+-[0-9a-f]{64}\.log", fake.LOG_NAME)
    demo = fluentbit.parse_yaml((COMPOSE_DIR / "fluent-bit.yaml").read_text(encoding="utf-8"))
    rule = fluentbit.substitute(next(s for s in demo if s.plugin == "grep").options["regex"], _env("fluent-bit"))
    record = {"kubernetes": {"labels": meta["metadata"]["labels"], "container_name": fake.CONTAINER}}
    assert fluentbit.grep_keeps(rule, record)


def test_fake_inference_writes_cri_lines(tmp_path: Path) -> None:
    fake = _fake_inference()
    assert fake.main(["--dir", str(tmp_path), "--count", "60", "--rate", "100000"]) == 0
    lines = (tmp_path / fake.LOG_NAME).read_text(encoding="utf-8").splitlines()
    assert len(lines) == 60
    kinds = {"request": 0, "stats": 0, "log": 0}
    for line in lines:
        stamp, stream, flag, text = line.split(" ", 3)
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z", stamp)
        assert (stream, flag) == ("stdout", "F")
        if text.startswith("{"):
            record = json.loads(text)
            assert record["total_time_ms"] == record["queue_time_ms"] + record["inference_time_ms"]
            kinds["request"] += 1
        elif "Avg prompt throughput" in text:
            kinds["stats"] += 1
        else:
            assert text.split()[0] in ("INFO", "WARNING", "ERROR")
            kinds["log"] += 1
    assert all(kinds.values()), kinds


def test_prometheus_config_passes_promtool(promtool: str, tmp_path: Path) -> None:
    config = yaml.safe_load((COMPOSE_DIR / "prometheus.yml").read_text(encoding="utf-8"))
    # Where compose mounts ../prometheus/rules, so promtool finds the same files.
    mount = next(v for v in SERVICES["prometheus"]["volumes"] if v.startswith("../prometheus/rules:"))
    container_dir = mount.split(":")[1]
    config["rule_files"] = [str((COMPOSE_DIR / "../prometheus/rules").resolve() / Path(r).relative_to(container_dir))
                            for r in config["rule_files"]]
    checked = tmp_path / "prometheus.yml"
    checked.write_text(yaml.safe_dump(config), encoding="utf-8")
    result = run_tool(promtool, "check", "config", str(checked))
    assert result.returncode == 0, result.stdout + result.stderr
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    assert jobs["qwen-fluent"]["static_configs"][0]["targets"] == ["qwen-fluent:8000"]
    assert jobs["qwen-fluent-fluent-bit"]["metrics_path"] == "/api/v2/metrics/prometheus"


def test_grafana_is_provisioned_with_the_dashboard() -> None:
    mounts = _mounts("grafana")
    provisioning = mounts["/etc/grafana/provisioning"]
    datasource = yaml.safe_load((provisioning / "datasources" / "prometheus.yaml").read_text())["datasources"][0]
    assert datasource["type"] == "prometheus" and datasource["url"] == "http://prometheus:9090"
    provider = yaml.safe_load((provisioning / "dashboards" / "qwen-fluent.yaml").read_text())["providers"][0]
    dashboards = [t for t in mounts if t.startswith(provider["options"]["path"] + "/")]
    assert [mounts[t] for t in dashboards] == [(EXAMPLES / "grafana" / "qwen-fluent-dashboard.json").resolve()]


def test_dockerfile_builds_the_package_as_a_non_root_user() -> None:
    # Instructions as Docker reads them: comments dropped, a line ending in a backslash continued.
    text = "\n".join(l for l in (REPO / "Dockerfile").read_text().splitlines() if not l.lstrip().startswith("#"))
    lines = [l.strip() for l in text.replace("\\\n", " ").splitlines() if l.strip()]
    instructions = [l.split(None, 1) for l in lines]
    # A build stage with a compiler (the C scanner), then the image itself on the same slim base.
    stages = [rest for kind, rest in instructions if kind == "FROM"]
    assert stages == ["python:3.12-slim AS build", "python:3.12-slim"]
    for kind, rest in instructions:
        if kind == "COPY" and not rest.startswith("--from="):
            for source in shlex.split(rest)[:-1]:
                assert (REPO / source).exists(), source
    # The image refuses to build without the scanner rather than ship a receiver several times slower.
    assert any(kind == "RUN" and "import qwen_fluent.forward._scan" in rest for kind, rest in instructions)
    assert ["USER", "65532:65532"] in instructions
    entry = json.loads(dict(instructions)["ENTRYPOINT"])
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert entry == ["qwen-fluent"] and "qwen-fluent" in pyproject["project"]["scripts"]
    # The image the manifests and compose run is the one this file builds.
    assert SERVICES["qwen-fluent"]["image"] == f"ghcr.io/qwen-fluent/qwen-fluent:{pyproject['project']['version']}"
