"""examples/kubernetes/overlays/replicated, rendered by the real ``kubectl kustomize`` and validated offline.

The overlay must render, every object must pass the Kubernetes schemas
(strict), and the pieces must point at each other: Fluent Bit at the Forward
Service, the Service at the receiver pods' Forward port, the receivers (whose
configuration file the real loader reads) at the Redis Service, and the
state directory at a writable volume.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from urllib.parse import urlparse

import kubernetes_validate
import pytest

from qwen_fluent.config import load
from tests.deploy.conftest import KUBERNETES, kustomize_build

OVERLAY = "overlays/replicated"
#: The oldest Kubernetes the manifests claim and the newest schema kubernetes-validate ships (as tests/deploy).
K8S_VERSIONS = ("1.29.0", "1.37.0")


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("kubernetes") / "kubernetes"
    shutil.copytree(KUBERNETES, root, ignore=shutil.ignore_patterns("shared-key.env"))
    (root / "base" / "shared-key.env").write_text("shared-key=test-key-0123456789abcdef\n", encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def objects(tree: Path) -> list[dict]:
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl is not installed (tests/deploy/conftest.py says which one)"
    return kustomize_build(kubectl, tree / OVERLAY)


def one(objects: list[dict], kind: str, name: str) -> dict:
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def env(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_object_passes_the_kubernetes_schema(objects: list[dict], version: str) -> None:
    for obj in objects:
        kubernetes_validate.validate(obj, version, strict=True)


def test_fluent_bit_forwards_to_the_tier_which_shares_one_redis(objects: list[dict], tree: Path) -> None:
    daemonset = one(objects, "DaemonSet", "qwen-fluent")
    fluent_bit = {c["name"]: c for c in daemonset["spec"]["template"]["spec"]["containers"]}["fluent-bit"]
    host = env(fluent_bit)["FORWARD_HOST"]["value"]
    service = one(objects, "Service", "qwen-fluent-forward")
    assert host == f"{service['metadata']['name']}.{service['metadata']['namespace']}.svc.cluster.local"
    assert [p["port"] for p in service["spec"]["ports"]] == [int(env(fluent_bit)["FORWARD_PORT"]["value"])]

    receiver = one(objects, "Deployment", "qwen-fluent-receiver")
    assert receiver["spec"]["replicas"] >= 2
    pod = receiver["spec"]["template"]
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    container = pod["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert service["spec"]["ports"][0]["targetPort"] in ports

    # The configuration file the receivers run with, read by the real loader.
    config_map = next(o for o in objects if o["kind"] == "ConfigMap"
                      and o["metadata"]["name"].startswith("qwen-fluent-receiver-config"))
    assert any(v.get("configMap", {}).get("name") == config_map["metadata"]["name"]
               for v in pod["spec"]["volumes"])
    toml = tree / "receiver.toml"
    toml.write_text(config_map["data"]["receiver.toml"], encoding="utf-8")
    config = load(toml, environ={})
    assert config.server.host == "0.0.0.0" and config.server.port == ports["forward"]
    assert config.http.port == ports["metrics"]
    url = urlparse(config.reliability.redis_url)
    redis = one(objects, "Service", "qwen-fluent-redis")
    assert url.hostname == f"qwen-fluent-redis.{redis['metadata']['namespace']}.svc.cluster.local"
    assert url.port == redis["spec"]["ports"][0]["port"]
    redis_pod = one(objects, "Deployment", "qwen-fluent-redis")["spec"]["template"]
    assert redis["spec"]["selector"].items() <= redis_pod["metadata"]["labels"].items()
    # The state directory is a mounted, writable volume (the root filesystem is read-only).
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert config.reliability.state_dir in mounts and not mounts[config.reliability.state_dir].get("readOnly")
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert config.reliability.dedup_window >= 600


def test_the_nodes_keep_their_gpu_receiver(objects: list[dict]) -> None:
    daemonset = one(objects, "DaemonSet", "qwen-fluent")
    names = [c["name"] for c in daemonset["spec"]["template"]["spec"]["containers"]]
    assert names == ["qwen-fluent", "fluent-bit"]
