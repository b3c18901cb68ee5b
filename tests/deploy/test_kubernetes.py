"""examples/kubernetes, rendered by the real kustomize and validated offline.

``kubectl kustomize`` renders the base and every overlay (conftest.py). Every object of the base and of every overlay is validated against the
Kubernetes OpenAPI schemas of two pinned versions (kubernetes-validate, strict:
unknown fields are errors). The Prometheus Operator's CRDs are not in those
schemas, so their structure is checked here field by field. Then the
properties the deployment relies on are asserted on the rendered objects:
what talks to what, on which port, with which key, under which identity.
"""

from __future__ import annotations

import base64
import copy
import re
import shutil
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from . import fluentbit
from .conftest import KUBERNETES, OVERLAYS, REPO, KustomizeBuildError, kustomize_build

#: The oldest Kubernetes minor these manifests claim to support, and the newest
#: schema kubernetes-validate ships. Both must accept every object.
K8S_VERSIONS = ("1.29.0", "1.37.0")

CRD_KINDS = {"ServiceMonitor", "PrometheusRule"}


def _one(objects: list[dict], kind: str, name: str | None = None) -> dict:
    found = [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def _container(daemonset: dict, name: str) -> dict:
    containers = {c["name"]: c for c in daemonset["spec"]["template"]["spec"]["containers"]}
    return containers[name]


def _env(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


# --- what kustomize does with these files ------------------------------------------


def _tree(tmp_path: Path, shared_key: str | None = "shared-key=test-key-0123456789abcdef\n") -> Path:
    """A private copy of examples/kubernetes for a test that edits it."""
    root = tmp_path / "kubernetes"
    shutil.copytree(KUBERNETES, root, ignore=shutil.ignore_patterns("shared-key.env"))
    if shared_key is not None:
        (root / "base" / "shared-key.env").write_text(shared_key, encoding="utf-8")
    return root


def test_build_fails_without_the_users_shared_key(kubectl: str, tmp_path: Path) -> None:
    # The base must not deploy a known key: with no shared-key.env there is nothing to apply.
    root = _tree(tmp_path, shared_key=None)
    for overlay in OVERLAYS:
        with pytest.raises(KustomizeBuildError, match="shared-key.env"):
            kustomize_build(kubectl, root / overlay)


def test_a_changed_config_file_rolls_the_pods(kubectl: str, rendered: dict, tmp_path: Path) -> None:
    """The generated ConfigMap's name carries a hash of its content, and the pod template follows it.

    That is why the kustomization generates the ConfigMaps: `kubectl apply` of a
    changed qwen-fluent.toml gives the DaemonSet a new pod template, so the pods
    restart on the new file instead of keeping the old one.
    """
    root = _tree(tmp_path)
    toml = root / "base" / "qwen-fluent.toml"
    toml.write_text(toml.read_text(encoding="utf-8") + "\n# edited\n", encoding="utf-8")
    before = rendered["base"]
    after = kustomize_build(kubectl, root / "base")

    def config_names(objects: list[dict]) -> tuple[str, set[str]]:
        (configmap,) = [o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("qwen-fluent-config-")]
        volumes = _one(objects, "DaemonSet")["spec"]["template"]["spec"]["volumes"]
        return configmap["metadata"]["name"], {v["configMap"]["name"] for v in volumes if "configMap" in v}

    old_name, old_refs = config_names(before)
    new_name, new_refs = config_names(after)
    assert re.fullmatch(r"qwen-fluent-config-[a-z0-9]{10}", new_name)
    assert new_name != old_name, "the ConfigMap's name must change with its content"
    assert old_name in old_refs and new_name in new_refs and old_name not in new_refs


def test_the_runtime_overlay_refuses_a_base_it_was_not_written_for(kubectl: str, tmp_path: Path) -> None:
    # nvidia-default-runtime removes runtimeClassName only after a JSON 6902 `test`
    # that it is "nvidia": a base that changes it must fail the build, not be patched blindly.
    root = _tree(tmp_path)
    daemonset = root / "base" / "daemonset.yaml"
    text = daemonset.read_text(encoding="utf-8")
    assert text.count("runtimeClassName: nvidia") == 1
    daemonset.write_text(text.replace("runtimeClassName: nvidia", "runtimeClassName: nvidia-cdi"), encoding="utf-8")
    kustomize_build(kubectl, root / "base")
    with pytest.raises(KustomizeBuildError, match="test failed"):
        kustomize_build(kubectl, root / "overlays" / "nvidia-default-runtime")


def test_the_per_process_overlay_patches_the_receiver_container(kubectl: str, tmp_path: Path) -> None:
    # per-process-gpu mounts /var/log into containers/0 after testing that it is qwen-fluent.
    root = _tree(tmp_path)
    daemonset = root / "base" / "daemonset.yaml"
    document = yaml.safe_load(daemonset.read_text(encoding="utf-8"))
    containers = document["spec"]["template"]["spec"]["containers"]
    assert containers[0]["name"] == "qwen-fluent"
    containers.reverse()
    daemonset.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    with pytest.raises(KustomizeBuildError, match="test failed"):
        kustomize_build(kubectl, root / "overlays" / "per-process-gpu")


# --- schema validation ---------------------------------------------------------------


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_validates_against_the_kubernetes_schema(rendered: dict, overlay: str, version: str) -> None:
    objects = rendered[overlay]
    core = [o for o in objects if o["kind"] not in CRD_KINDS]
    assert core
    for obj in core:
        kubernetes_validate.validate(obj, version, strict=True)


def test_the_schema_validation_rejects_a_wrong_field(rendered: dict) -> None:
    daemonset = copy.deepcopy(_one(rendered["base"], "DaemonSet"))
    daemonset["spec"]["template"]["spec"]["containers"][0]["readinessProbes"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(daemonset, K8S_VERSIONS[0], strict=True)


def test_servicemonitor_structure(rendered: dict) -> None:
    objects = rendered["overlays/prometheus-operator"]
    monitor = _one(objects, "ServiceMonitor")
    service = _one(objects, "Service")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(monitor) == {"apiVersion", "kind", "metadata", "spec"}
    assert set(monitor["spec"]) == {"selector", "namespaceSelector", "endpoints"}
    labels = service["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [service["metadata"]["namespace"]]}
    service_ports = {p["name"] for p in service["spec"]["ports"]}
    jobs = {}
    for endpoint in monitor["spec"]["endpoints"]:
        assert set(endpoint) <= {"port", "path", "interval", "scrapeTimeout", "relabelings", "honorLabels"}
        assert endpoint["port"] in service_ports
        assert re.fullmatch(r"\d+s", endpoint["interval"]) and re.fullmatch(r"\d+s", endpoint["scrapeTimeout"])
        assert int(endpoint["scrapeTimeout"][:-1]) < int(endpoint["interval"][:-1])
        for relabel in endpoint["relabelings"]:
            assert set(relabel) <= {"sourceLabels", "separator", "targetLabel", "regex", "modulus", "replacement", "action"}
            re.compile(relabel.get("regex", ".*"))
            if relabel.get("targetLabel") == "job":
                jobs[endpoint["port"]] = relabel["replacement"]
    # The job names the alert rules select on.
    assert jobs == {"metrics": "qwen-fluent", "fluent-bit": "qwen-fluent-fluent-bit"}
    metrics = next(e for e in monitor["spec"]["endpoints"] if e["port"] == "metrics")
    assert metrics["interval"] == "5s" and metrics["path"] == "/metrics"


def test_prometheusrule_structure(rendered: dict) -> None:
    rule = _one(rendered["overlays/prometheus-operator"], "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["metadata"]["namespace"] == "qwen-fluent"
    for group in rule["spec"]["groups"]:
        assert set(group) <= {"name", "interval", "rules"}
        for r in group["rules"]:
            assert ("alert" in r) != ("record" in r)
            assert set(r) <= {"alert", "record", "expr", "for", "labels", "annotations"}


# --- what the deployment relies on ---------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_one_namespace_and_rbac_bound_to_the_serviceaccount(rendered: dict, overlay: str) -> None:
    objects = rendered[overlay]
    namespace = _one(objects, "Namespace")["metadata"]["name"]
    for obj in objects:
        if obj["kind"] not in ("Namespace", "ClusterRole", "ClusterRoleBinding"):
            assert obj["metadata"]["namespace"] == namespace, obj["kind"]
    account = _one(objects, "ServiceAccount")
    binding = _one(objects, "ClusterRoleBinding")
    role = _one(objects, "ClusterRole")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role["metadata"]["name"]}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account["metadata"]["name"], "namespace": namespace}]
    for rule in role["rules"]:
        assert set(rule["verbs"]) <= {"get", "list", "watch"}, "the kubernetes filter only reads"
        assert "secrets" not in rule["resources"]
    daemonset = _one(objects, "DaemonSet")
    assert daemonset["spec"]["template"]["spec"]["serviceAccountName"] == account["metadata"]["name"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pods_are_locked_down(rendered: dict, overlay: str) -> None:
    pod = _one(rendered[overlay], "DaemonSet")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod.get("hostNetwork", False) is False
    for container in pod["containers"]:
        sc = container["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True, container["name"]
        assert sc["allowPrivilegeEscalation"] is False, container["name"]
        assert sc["capabilities"] == {"drop": ["ALL"]}, container["name"]
        assert sc.get("privileged", False) is False
        for kind in ("requests", "limits"):
            assert set(container["resources"][kind]) == {"cpu", "memory"}, (container["name"], kind)
    receiver = next(c for c in pod["containers"] if c["name"] == "qwen-fluent")
    assert receiver["securityContext"]["runAsNonRoot"] is True
    assert "runAsUser" not in receiver["securityContext"] and pod["securityContext"]["runAsUser"] == 65532
    # Fluent Bit is root only to read kubelet's 0640 log files; it mounts them read-only.
    mounts = {m["mountPath"]: m for m in _container({"spec": {"template": {"spec": pod}}}, "fluent-bit")["volumeMounts"]}
    assert mounts["/var/log"]["readOnly"] is True


def test_hostpid_only_where_per_process_attribution_needs_it(rendered: dict) -> None:
    for overlay in OVERLAYS:
        pod = _one(rendered[overlay], "DaemonSet")["spec"]["template"]["spec"]
        assert pod.get("hostPID", False) is (overlay == "overlays/per-process-gpu"), overlay


def test_gpu_access_through_the_nvidia_runtime(rendered: dict) -> None:
    for overlay in OVERLAYS:
        pod = _one(rendered[overlay], "DaemonSet")["spec"]["template"]["spec"]
        if overlay == "overlays/nvidia-default-runtime":
            assert "runtimeClassName" not in pod
        else:
            assert pod["runtimeClassName"] == "nvidia"
        env = _env(next(c for c in pod["containers"] if c["name"] == "qwen-fluent"))
        assert env["NVIDIA_VISIBLE_DEVICES"]["value"] == "all"
        assert env["NVIDIA_DRIVER_CAPABILITIES"]["value"] == "utility"
        # No GPU is requested: that would take one away from the inference pods.
        for container in pod["containers"]:
            assert not any("nvidia.com" in r for r in container["resources"].get("limits", {}))
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]


def test_probes_hit_the_receivers_health_endpoints(rendered: dict) -> None:
    daemonset = _one(rendered["base"], "DaemonSet")
    receiver = _container(daemonset, "qwen-fluent")
    ports = {p["name"]: p["containerPort"] for p in receiver["ports"]}
    assert receiver["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert receiver["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert ports == {"forward": 24224, "metrics": 8000}
    fluent = _container(daemonset, "fluent-bit")
    assert fluent["livenessProbe"]["httpGet"]["port"] == "fluent-bit"
    assert {p["name"]: p["containerPort"] for p in fluent["ports"]} == {"fluent-bit": 2020}


def test_headless_service_selects_the_pods_on_named_ports(rendered: dict) -> None:
    objects = rendered["base"]
    service = _one(objects, "Service")
    daemonset = _one(objects, "DaemonSet")
    assert service["spec"]["clusterIP"] == "None"
    pod_labels = daemonset["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert daemonset["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    port_names = {p["name"] for c in daemonset["spec"]["template"]["spec"]["containers"] for p in c["ports"]}
    for port in service["spec"]["ports"]:
        assert port["targetPort"] in port_names
    assert "forward" not in {p["targetPort"] for p in service["spec"]["ports"]}, "Forward stays inside the pod"


def _configmap_for(objects: list[dict], daemonset: dict, container: str, path: str) -> tuple[dict, str]:
    """The ConfigMap and key that a file path inside a container comes from."""
    pod = daemonset["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    for mount in _container(daemonset, container)["volumeMounts"]:
        prefix = mount["mountPath"].rstrip("/") + "/"
        if path.startswith(prefix) and "configMap" in volumes[mount["name"]]:
            configmap = _one(objects, "ConfigMap", volumes[mount["name"]]["configMap"]["name"])
            return configmap, path[len(prefix):]
    raise AssertionError(f"{path} is not mounted from a ConfigMap in {container}")


def test_fluent_bit_runs_the_shipped_pipeline(rendered: dict) -> None:
    for overlay in OVERLAYS:
        objects = rendered[overlay]
        daemonset = _one(objects, "DaemonSet")
        fluent = _container(daemonset, "fluent-bit")
        (config_arg,) = [a for a in fluent["args"] if a.startswith("--config=")]
        configmap, key = _configmap_for(objects, daemonset, "fluent-bit", config_arg.split("=", 1)[1])
        assert configmap["data"][key] == (REPO / "fluent-bit" / "fluent-bit.yaml").read_text(encoding="utf-8")


def test_the_base_copy_of_the_pipeline_is_the_shipped_one() -> None:
    assert (KUBERNETES / "base" / "fluent-bit.yaml").read_bytes() == (REPO / "fluent-bit" / "fluent-bit.yaml").read_bytes(), (
        "examples/kubernetes/base/fluent-bit.yaml differs from fluent-bit/fluent-bit.yaml: copy it over"
    )


def test_fluent_bit_environment_is_exactly_what_the_pipeline_reads(rendered: dict) -> None:
    daemonset = _one(rendered["base"], "DaemonSet")
    env = _env(_container(daemonset, "fluent-bit"))
    pipeline = fluentbit.parse_yaml((REPO / "fluent-bit" / "fluent-bit.yaml").read_text(encoding="utf-8"))
    assert set(env) == fluentbit.env_references(pipeline)
    # The same variables serve the classic twin.
    classic = fluentbit.parse_classic((REPO / "fluent-bit" / "fluent-bit.conf").read_text(encoding="utf-8"))
    assert fluentbit.env_references(classic) == set(env)


def test_both_containers_share_one_generated_secret(rendered: dict) -> None:
    objects = rendered["base"]
    daemonset = _one(objects, "DaemonSet")
    secret = _one(objects, "Secret")
    assert re.fullmatch(r"qwen-fluent-shared-key-[a-z0-9]{10}", secret["metadata"]["name"])
    refs = [
        _env(_container(daemonset, "qwen-fluent"))["QWEN_FLUENT_SHARED_KEY"]["valueFrom"]["secretKeyRef"],
        _env(_container(daemonset, "fluent-bit"))["FORWARD_SHARED_KEY"]["valueFrom"]["secretKeyRef"],
    ]
    for ref in refs:
        assert ref == {"name": secret["metadata"]["name"], "key": "shared-key"}
    assert base64.b64decode(secret["data"]["shared-key"]).decode() == "test-key-0123456789abcdef"


def test_forward_goes_over_loopback_to_the_receivers_port(rendered: dict, tmp_path: Path) -> None:
    from qwen_fluent.config import load

    objects = rendered["base"]
    daemonset = _one(objects, "DaemonSet")
    receiver = _container(daemonset, "qwen-fluent")
    assert receiver["args"][:2] == ["serve", "--config"]
    configmap, key = _configmap_for(objects, daemonset, "qwen-fluent", receiver["args"][2])
    config_file = tmp_path / key
    config_file.write_text(configmap["data"][key], encoding="utf-8")
    environ = {"QWEN_FLUENT_SHARED_KEY": "test-key-0123456789abcdef", "QWEN_FLUENT_SELF_HOSTNAME": "gpu-node-01"}
    config = load(config_file, environ=environ)
    fluent_env = _env(_container(daemonset, "fluent-bit"))
    assert config.server.host == "127.0.0.1" == fluent_env["FORWARD_HOST"]["value"]
    assert config.server.port == int(fluent_env["FORWARD_PORT"]["value"]) == 24224
    assert config.server.auth is not None, "the receiver must require the shared key"
    ports = {p["name"]: p["containerPort"] for p in receiver["ports"]}
    assert config.http.port == ports["metrics"]
    assert fluent_env["FORWARD_TLS"]["value"] == "off", "no TLS needed inside the pod"


def test_state_directory_holds_the_buffer_and_the_offsets(rendered: dict) -> None:
    objects = rendered["base"]
    daemonset = _one(objects, "DaemonSet")
    pipeline = {(s.kind, s.plugin): s.options for s in fluentbit.parse_yaml((REPO / "fluent-bit" / "fluent-bit.yaml").read_text())}
    volumes = {v["name"]: v for v in daemonset["spec"]["template"]["spec"]["volumes"]}
    mount = next(m for m in _container(daemonset, "fluent-bit")["volumeMounts"] if m["name"] == "fluent-bit-state")
    assert volumes["fluent-bit-state"]["hostPath"]["type"] == "DirectoryOrCreate"
    assert not mount.get("readOnly", False)
    for path in (pipeline[("service", "")]["storage.path"], pipeline[("input", "tail")]["db"]):
        assert path.startswith(mount["mountPath"] + "/"), path


# --- the plain Prometheus configuration -------------------------------------------------

PROMETHEUS_YML = KUBERNETES.parent / "prometheus" / "prometheus.yml"

#: Fields of a kubernetes_sd_configs entry in Prometheus 2.x
#: (https://prometheus.io/docs/prometheus/latest/configuration/configuration/#kubernetes_sd_config).
KUBERNETES_SD_FIELDS = {
    "api_server", "role", "kubeconfig_file", "basic_auth", "authorization", "oauth2", "proxy_url",
    "follow_redirects", "enable_http2", "tls_config", "namespaces", "selectors", "attach_metadata",
}


def test_plain_prometheus_config_passes_promtool(promtool: str, tmp_path: Path) -> None:
    """promtool checks everything but the Kubernetes discovery, which Debian's build leaves out.

    Debian's prometheus 2.42 is built without kubernetes_sd (promtool rejects the
    field outright), so each job's discovery is swapped for a static target and
    the discovery block is checked against the documented fields below.
    """
    from .conftest import run_tool

    config = yaml.safe_load(PROMETHEUS_YML.read_text(encoding="utf-8"))
    for job in config["scrape_configs"]:
        job.pop("kubernetes_sd_configs")
        job["static_configs"] = [{"targets": ["127.0.0.1:8000"]}]
    config["rule_files"] = [str(PROMETHEUS_YML.parent / f) for f in config["rule_files"]]
    checked = tmp_path / "prometheus.yml"
    checked.write_text(yaml.safe_dump(config), encoding="utf-8")
    result = run_tool(promtool, "check", "config", str(checked))
    assert result.returncode == 0, result.stdout + result.stderr


def test_plain_prometheus_config_finds_the_daemonset(rendered: dict) -> None:
    config = yaml.safe_load(PROMETHEUS_YML.read_text(encoding="utf-8"))
    assert config["global"]["scrape_interval"] == "5s"
    daemonset = _one(rendered["base"], "DaemonSet")
    namespace = daemonset["metadata"]["namespace"]
    pod_labels = daemonset["spec"]["template"]["metadata"]["labels"]
    port_names = {p["name"] for c in daemonset["spec"]["template"]["spec"]["containers"] for p in c["ports"]}
    jobs = {}
    for job in config["scrape_configs"]:
        (sd,) = job["kubernetes_sd_configs"]
        assert set(sd) <= KUBERNETES_SD_FIELDS
        assert sd["role"] == "pod"
        assert sd["namespaces"] == {"names": [namespace]}
        (selector,) = sd["selectors"]
        key, value = selector["label"].split("=")
        assert selector["role"] == "pod" and pod_labels[key] == value
        keep = [r for r in job["relabel_configs"] if r.get("action") == "keep"]
        assert [r["source_labels"] for r in keep] == [["__meta_kubernetes_pod_container_port_name"]]
        assert keep[0]["regex"] in port_names
        for relabel in job["relabel_configs"]:
            for label in relabel.get("source_labels", []):
                assert label.startswith("__meta_kubernetes_pod_"), label
            assert relabel.get("target_label") not in ("namespace", "pod", "container"), (
                "the receiver's metrics carry the inference pod's namespace/pod/container"
            )
        jobs[job["job_name"]] = keep[0]["regex"]
    assert jobs == {"qwen-fluent": "metrics", "qwen-fluent-fluent-bit": "fluent-bit"}


def test_manifests_run_the_image_the_dockerfile_builds(rendered: dict) -> None:
    from .conftest import tomllib

    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    daemonset = _one(rendered["base"], "DaemonSet")
    assert _container(daemonset, "qwen-fluent")["image"] == f"ghcr.io/qwen-fluent/qwen-fluent:{version}"
    assert daemonset["metadata"]["labels"]["app.kubernetes.io/version"] == version
