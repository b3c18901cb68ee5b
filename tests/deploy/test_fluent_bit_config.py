"""fluent-bit/: both formats parsed, compared, and checked for the settings the issue asks for.

No Fluent Bit runs here: tests/deploy/fluentbit.py reads both formats the way
Fluent Bit does. The selection rule is then tried on records that a real
Fluent Bit 4.2.8 produced with the same tail and kubernetes settings
(tests/deploy/data), decoded by the receiver's own Forward core.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from qwen_fluent.forward import NEED_DATA, ForwardConnection, Message

from . import fluentbit
from .conftest import DATA, REPO

YAML_FILE = REPO / "fluent-bit" / "fluent-bit.yaml"
CLASSIC_FILE = REPO / "fluent-bit" / "fluent-bit.conf"


@pytest.fixture(scope="module")
def yaml_sections() -> list[fluentbit.Section]:
    return fluentbit.parse_yaml(YAML_FILE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def classic_sections() -> list[fluentbit.Section]:
    return fluentbit.parse_classic(CLASSIC_FILE.read_text(encoding="utf-8"))


def _by_plugin(sections: list[fluentbit.Section]) -> dict[tuple[str, str], dict[str, str]]:
    out = {}
    for s in sections:
        key = (s.kind, s.plugin)
        assert key not in out, f"two {key} sections"
        out[key] = {k: fluentbit.canonical(v) for k, v in s.options.items()}
    return out


def test_classic_and_yaml_are_the_same_pipeline(yaml_sections, classic_sections) -> None:
    assert [(s.kind, s.plugin) for s in yaml_sections] == [(s.kind, s.plugin) for s in classic_sections]
    for y, c in zip(yaml_sections, classic_sections):
        assert {k: fluentbit.canonical(v) for k, v in y.options.items()} == {
            k: fluentbit.canonical(v) for k, v in c.options.items()
        }, (y.kind, y.plugin)


@pytest.mark.parametrize("which", ["yaml", "classic"])
def test_every_key_exists_in_fluent_bit_4(which, yaml_sections, classic_sections) -> None:
    sections = yaml_sections if which == "yaml" else classic_sections
    for section in sections:
        assert fluentbit.unknown_keys(section) == set(), (section.kind, section.plugin)


@pytest.mark.parametrize("path", [YAML_FILE, CLASSIC_FILE], ids=["yaml", "classic"])
def test_every_setting_that_matters_says_why(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    sections = fluentbit.parse_yaml(text) if path.suffix == ".yaml" else fluentbit.parse_classic(text)
    structural = {"name", "match", "tag", "log_level"}
    for section in sections:
        for key, line in section.lines.items():
            if key in structural:
                continue
            assert not fluentbit.uncommented(text, line), f"{path.name}:{line}: {key} has no comment saying why"


def test_the_pipeline_the_issue_asks_for(yaml_sections) -> None:
    p = _by_plugin(yaml_sections)
    assert list(p) == [("service", ""), ("input", "tail"), ("filter", "kubernetes"), ("filter", "grep"), ("output", "forward")]
    service, tail, kube, grep, forward = p.values()

    # Tail the container logs, CRI and docker runtimes, with a disk buffer and offsets.
    assert tail["path"] == "/var/log/containers/*.log"
    assert [x.strip() for x in tail["multiline.parser"].split(",")] == ["cri", "docker"]
    assert tail["storage.type"] == "filesystem"
    assert tail["db"] and tail["read_from_head"] == "false"
    assert tail["skip_long_lines"] == "true"
    assert service["storage.path"] and service["storage.sync"] == "normal"
    assert service["storage.backlog.mem_limit"] and service["storage.max_chunks_up"]

    # Kubernetes metadata, the JSON line merged into the record.
    assert kube["merge_log"] == "true" and kube["keep_log"] == "false" and kube["labels"] == "true"
    assert tail["tag"] == "kube.*" and kube["match"] == "kube.*" and kube["kube_tag_prefix"] == "kube.var.log.containers."

    # One configurable selection rule.
    assert grep["regex"] == "${INFERENCE_SELECT_FIELD} ${INFERENCE_SELECT_REGEX}"

    # Forward with acks, gzip, shared key, optional TLS, unlimited retries, bounded disk.
    assert forward["require_ack_response"] == "true"
    assert forward["compress"] == "gzip"
    assert forward["shared_key"] == "${FORWARD_SHARED_KEY}"
    assert forward["self_hostname"] == "${NODE_NAME}"
    assert forward["tls"] == "${FORWARD_TLS}" and forward["tls.verify"] == "${FORWARD_TLS_VERIFY}"
    assert forward["retry_limit"] == "no_limits"
    assert forward["storage.total_limit_size"].endswith("G")
    assert forward["alias"] == "qwen_fluent", "the FluentBit* alerts select name=\"qwen_fluent\""


def test_records_are_shaped_as_in_the_captures(yaml_sections) -> None:
    """The captures in tests/deploy/data ran the same tail and kubernetes settings that shape records."""
    ours = _by_plugin(yaml_sections)
    for capture, parser in (("tail_cri_k8s", "cri"), ("tail_docker_k8s", "docker")):
        theirs = _by_plugin(fluentbit.parse_classic((DATA / capture / "fluent-bit.conf").read_text()))
        assert parser in ours[("input", "tail")]["multiline.parser"]
        assert theirs[("input", "tail")]["multiline.parser"] == parser
        for key in ("merge_log", "keep_log", "labels"):
            assert theirs[("filter", "kubernetes")][key] == ours[("filter", "kubernetes")][key], (capture, key)


# --- the selection rule on real records -------------------------------------------------


def decode_capture(name: str) -> list[dict]:
    """The records of a capture, decoded by the receiver's Forward core, as our pipeline sends them.

    Our kubernetes filter runs with Annotations Off, the captures with On: the
    annotations map is removed to get exactly our records.
    """
    conn = ForwardConnection()
    conn.receive_data((DATA / name / "conn-001.client.bin").read_bytes())
    records = []
    while True:
        event = conn.next_event()
        if event is NEED_DATA:
            break
        assert isinstance(event, Message), event
        assert event.invalid == {}
        records.extend(entry.record for entry in event.entries)
    for record in records:
        record["kubernetes"].pop("annotations")
    return records


@pytest.fixture(scope="module")
def daemonset_env(rendered: dict) -> dict[str, str]:
    """The fluent-bit container's environment as the base DaemonSet sets it (plain values only)."""
    daemonset = next(o for o in rendered["base"] if o["kind"] == "DaemonSet")
    container = next(c for c in daemonset["spec"]["template"]["spec"]["containers"] if c["name"] == "fluent-bit")
    return {e["name"]: e["value"] for e in container["env"] if "value" in e}


def _rule(yaml_sections, env: dict[str, str]) -> str:
    grep = _by_plugin(yaml_sections)[("filter", "grep")]
    return fluentbit.substitute(grep["regex"], env)


def test_captured_records_carry_what_the_receiver_reads() -> None:
    records = decode_capture("tail_cri_k8s")
    assert [r.get("request_id") for r in records] == ["req_abc123xyz", "req_partial01", None, "req_err999"]
    split = records[1]
    assert split["input_tokens"] == 2048 and split["status"] == "success", "the CRI partial lines were rejoined"
    assert "log" not in records[0], "Merge_Log On + Keep_Log Off: the JSON fields replace the line"
    assert records[2]["log"].startswith("INFO "), "a plain line stays a log line"
    for record in records:
        kube = record["kubernetes"]
        assert (kube["namespace_name"], kube["pod_name"], kube["container_name"]) == (
            "ml-serving", "llm-inference-7d9f8b6c5-x2k4p", "vllm")
        assert kube["labels"]["model"] == "llama-3-8b-instruct"


def test_default_selection_keeps_only_labelled_inference_pods(yaml_sections, daemonset_env) -> None:
    rule = _rule(yaml_sections, daemonset_env)
    assert rule == "$kubernetes['labels']['app.kubernetes.io/component'] ^inference$"
    # Neither captured pod carries the component label: both are dropped ...
    for capture in ("tail_cri_k8s", "tail_docker_k8s"):
        assert not any(fluentbit.grep_keeps(rule, r) for r in decode_capture(capture))
    # ... and the same record with the label is kept.
    labelled = decode_capture("tail_cri_k8s")[0]
    labelled["kubernetes"]["labels"]["app.kubernetes.io/component"] = "inference"
    assert fluentbit.grep_keeps(rule, labelled)


def test_selection_by_container_name_keeps_vllm_and_drops_the_router(yaml_sections, daemonset_env) -> None:
    env = dict(daemonset_env, INFERENCE_SELECT_FIELD="$kubernetes['container_name']", INFERENCE_SELECT_REGEX="^(vllm|sglang)$")
    rule = _rule(yaml_sections, env)
    inference = decode_capture("tail_cri_k8s")
    router = decode_capture("tail_docker_k8s")
    assert all(fluentbit.grep_keeps(rule, r) for r in inference) and len(inference) == 4
    assert not any(fluentbit.grep_keeps(rule, r) for r in router) and len(router) == 3


def test_selection_by_another_pod_label(yaml_sections, daemonset_env) -> None:
    env = dict(
        daemonset_env,
        INFERENCE_SELECT_FIELD="$kubernetes['labels']['app.kubernetes.io/name']",
        INFERENCE_SELECT_REGEX="^llm-inference$",
    )
    rule = _rule(yaml_sections, env)
    assert all(fluentbit.grep_keeps(rule, r) for r in decode_capture("tail_cri_k8s"))
    assert not any(fluentbit.grep_keeps(rule, r) for r in decode_capture("tail_docker_k8s"))


def test_the_parsers_reject_what_fluent_bit_rejects() -> None:
    with pytest.raises(fluentbit.ConfigFormatError):
        fluentbit.parse_classic("[INPUT]\nName tail\n")  # not indented
    with pytest.raises(fluentbit.ConfigFormatError):
        fluentbit.parse_classic("[INPUT]\n    Name tail\n      Path /x\n")  # mixed indentation
    with pytest.raises(fluentbit.ConfigFormatError):
        fluentbit.parse_classic("[INPUT]\n    Name tail\n    Name dummy\n")  # duplicate key
    with pytest.raises(fluentbit.ConfigFormatError):
        fluentbit.parse_yaml("pipeline:\n  sources: []\n")
    bogus = fluentbit.Section("output", {"name": "forward", "require_ack": "true"})
    assert fluentbit.unknown_keys(bogus) == {"require_ack"}
