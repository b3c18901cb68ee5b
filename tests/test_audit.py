"""The sensitive-data audit as a user turns it on: ``qwen-fluent serve --audit-sensitive``.

A real receiver process is fed over real Forward connections (Forward and
PackedForward modes, container-log envelopes and bare request logs) with
records into which the test put known secrets and personal data (published
test values: card networks' test numbers, the GB 11643-1999 example id); the
expected counts come from where the test put them, not from the scanner.
/metrics must count them exactly per kind, namespace and pod, and neither
/metrics nor the process's stderr (at debug level) may hold any of the text.
With the audit off the family is absent and packed payloads stay on the typed
fast path. The caps and expiry of the counters, and the ``[audit]`` section,
are checked on the real classes.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path

import pytest

from qwen_fluent.audit import AuditConfig, AuditSink
from qwen_fluent.config import ConfigError, load
from qwen_fluent.forward.events import Entry, Message, Mode
from qwen_fluent.metrics import MetricsConfig
from qwen_fluent.metrics.audit import SensitiveMetrics
from qwen_fluent.metrics.exposition import Format, Registry, generate

from .support.forward import ForwardClient
from .support.receiver import ReceiverThread
from .support.net import free_port
from .support.truth import parse_text

QWEN = [sys.executable, "-m", "qwen_fluent"]
#: Seconds a process has to start serving, and the counts to arrive.
SECONDS = 30.0

#: Kind -> (where in a record it goes, the text). Every text is a documented test value.
SECRETS: dict[str, tuple[str, str]] = {
    "card_number": ("prompt", "I paid with 4111 1111 1111 1111 yesterday"),
    "phone": ("prompt", "call me back on +86 138 1234 5678 please"),
    "email": ("prompt", "write to john.doe+llm@example.co.uk"),
    "cn_resident_id": ("prompt", "my id is 11010519491231002X"),
    "bearer_token": ("headers", "Bearer 9f8e7d6c5b4a39281706f5e4d3c2b1a0"),
    "api_key": ("note", "judge called with sk-proj-4f9K2mZq8Lr1Tx7Vb3Nc6Hd0"),
}
#: Pieces of the texts above that must appear nowhere the receiver writes (digits alone too).
LEAKS = ("4111 1111", "4111111111111111", "138 1234", "13812345678", "john.doe", "example.co.uk",
         "11010519491231002X", "9f8e7d6c5b4a", "4f9K2mZq8Lr1", "sk-proj")
PODS = (("team-a", "vllm-qwen-7b-5d8f9-aaaaa"), ("team-a", "vllm-qwen-7b-5d8f9-bbbbb"), ("team-b", "tgi-7b-0"))


def kubernetes(namespace: str, pod: str) -> dict:
    return {"namespace_name": namespace, "pod_name": pod, "container_name": "server", "host": "node-1",
            "labels": {"app": "llm"}, "container_image": "vllm/vllm-openai@sha256:" + "ab" * 32}


def request(i: int, kinds: list[str]) -> dict:
    """A request log as the middleware writes it, with the texts of ``kinds`` in its fields."""
    record: dict = {"timestamp": "2025-04-05T10:23:45Z", "request_id": f"req_{i}", "method": "POST",
                    "path": "/v1/chat/completions", "model": "Qwen2.5-7B-Instruct", "input_tokens": 100 + i,
                    "output_tokens": 20, "total_time_ms": 812.5, "status": "success"}
    for kind in kinds:
        field, text = SECRETS[kind]
        if field == "headers":
            record["headers"] = {"Authorization": text, "User-Agent": "openai-python/1.51.0"}
        else:
            record[field] = (record.get(field, "") + " " + text).strip()
    return record


def traffic(seed: int, n: int) -> tuple[list[tuple[str, dict, str]], Counter]:
    """``n`` records (namespace, record, shape) with 0 to 2 kinds each; the counts they must give."""
    rng = random.Random(seed)
    out = []
    expected: Counter = Counter()
    for i in range(n):
        namespace, pod = PODS[i % len(PODS)]
        kinds = rng.sample(sorted(SECRETS), rng.choice((0, 0, 1, 1, 2)))
        for kind in kinds:
            expected[(kind, namespace, pod)] += 1
        shape = rng.choice(("bare", "envelope"))
        record = request(i, kinds)
        if shape == "envelope":  # a container log line as Fluent Bit's tail and kubernetes filter leave it
            record = {"log": json.dumps(record) + "\n", "stream": "stdout", "time": "2025-04-05T10:23:45.1Z"}
        record["kubernetes"] = kubernetes(namespace, pod)
        out.append((namespace, record, shape))
    return out, expected


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        return reply.read().decode()


def sensitive(samples: dict) -> dict[tuple[str, str, str], float]:
    out = {}
    for (name, labels), value in samples.items():
        if name == "qwen_sensitive_records_total":
            got = dict(labels)
            out[(got["kind"], got["namespace"], got["pod"])] = value
    return out


def value(samples: dict, name: str) -> float:
    return samples.get((name, frozenset()), 0.0)


def wait_for(port: int, done, proc: subprocess.Popen | None = None) -> tuple[str, dict]:
    deadline = time.monotonic() + SECONDS
    text, samples = "", {}
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the receiver exited: {proc.stderr.read().decode()}")
        try:
            text = scrape(port)
            samples = parse_text(text)
            if done(samples):
                return text, samples
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"the counts never arrived; last: {sensitive(samples)}")


def test_serve_audit_sensitive_counts_each_kind_per_pod_and_never_the_text() -> None:
    fport, mport = free_port(), free_port()
    proc = subprocess.Popen(
        QWEN + ["serve", "--audit-sensitive", "--host", "127.0.0.1", "--port", str(fport), "--metrics-host",
                "127.0.0.1", "--metrics-port", str(mport), "--no-gpu", "--log-level", "debug"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    try:
        wait_for(mport, lambda s: True, proc)
        records, expected = traffic(seed=10, n=300)
        # A record whose e-mail lies past the scanner's bound: scanned up to 16 KiB, counted as
        # truncated, the e-mail not found (docs/audit.md: a documented false negative).
        far = {"log": "x " * 20000 + "write to john.doe@example.com", "stream": "stdout",
               "kubernetes": kubernetes(*PODS[0])}
        with ForwardClient("127.0.0.1", fport) as client:
            for start in range(0, len(records), 25):
                batch = [(1743848625.0 + i, record) for i, (_, record, _) in
                         enumerate(records[start:start + 25])]
                client.send("kube.var.log.containers", batch, chunk=f"c{start}", packed=(start // 25) % 2 == 1)
            client.send("kube.var.log.containers", [(1743848626.0, far)], chunk="far", packed=True)
        total = len(records) + 1
        text, samples = wait_for(mport, lambda s: value(s, "qwen_sensitive_scanned_records_total") == total, proc)
        assert sensitive(samples) == dict(expected)
        assert sum(expected.values()) > 100 and len({k for k, _, _ in expected}) == len(SECRETS)
        assert value(samples, "qwen_sensitive_scans_truncated_total") == 1
        assert value(samples, "qwen_sensitive_scan_errors_total") == 0
        # The metrics path counted every request as before: the audit took nothing from it.
        assert sum(v for (name, _), v in samples.items() if name == "qwen_requests_total") == len(records)
        for leak in LEAKS:
            assert leak not in text, f"{leak!r} is in /metrics"
    finally:
        proc.terminate()
        try:
            _, err = proc.communicate(timeout=SECONDS)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    stderr = err.decode()
    assert "sensitive-data audit on" in stderr
    for leak in LEAKS:
        assert leak not in stderr, f"{leak!r} is in the log"


def test_audit_off_no_family_and_packed_payloads_stay_on_the_fast_path_either_way() -> None:
    records, _ = traffic(seed=11, n=40)
    with ReceiverThread() as off:
        assert off.receiver.forward.defer_packed is True and off.receiver.audit is None
        with ForwardClient("127.0.0.1", off.forward_port) as client:
            client.send("kube", [(1743848625.0, r) for _, r, _ in records], chunk="a", packed=True)
        text, samples = wait_for(off.metrics_port,
                                 lambda s: sum(v for (n, _), v in s.items() if n == "qwen_requests_total") == 40)
        assert "_sensitive_" not in text
    with ReceiverThread({"audit_sensitive": True}) as on:
        # The audit decodes deferred payloads itself; the metrics keep the typed fast path.
        assert on.receiver.forward.defer_packed is True and on.receiver.audit is not None
        with ForwardClient("127.0.0.1", on.forward_port) as client:
            client.send("kube", [(1743848625.0, r) for _, r, _ in records], chunk="a", packed=True)
        _, samples = wait_for(on.metrics_port, lambda s: value(s, "qwen_sensitive_scanned_records_total") == 40)
        assert sum(v for (n, _), v in samples.items() if n == "qwen_requests_total") == 40
    # --stdout still has the connection decode (it prints every record); the audit works on either.
    from qwen_fluent.app import Receiver

    printing = Receiver(load(None, {"audit_sensitive": True, "no_gpu": True, "port": 0, "metrics_port": 0},
                             environ={}, stdout=True))
    assert printing.forward.defer_packed is False and printing.audit is not None


def test_a_resent_message_is_audited_once() -> None:
    """Behind the duplicate check, as the metrics are: a chunk resent on a new connection counts once."""
    record = request(1, ["email"]) | {"kubernetes": kubernetes(*PODS[2])}
    with ReceiverThread({"audit_sensitive": True}) as receiver:
        for _ in range(2):
            with ForwardClient("127.0.0.1", receiver.forward_port) as client:
                client.send("kube", [(1743848625.0, record)], chunk="same-chunk-id")
        _, samples = wait_for(receiver.metrics_port, lambda s: sum(
            v for (n, _), v in s.items() if n == "qwen_fluent_duplicate_messages_total") == 1)
        assert sensitive(samples) == {("email", "team-b", "tgi-7b-0"): 1}
        assert value(samples, "qwen_sensitive_scanned_records_total") == 1


# -- the counters' bounds, on the real classes -------------------------------------------------------------

def message(records: list[dict], tag: str = "kube") -> Message:
    return Message(tag, [Entry(1743848625.0, r) for r in records], Mode.FORWARD, None, {}, 0, {})


def test_pod_cap_and_max_series_fold_into_overflow_counted_per_record() -> None:
    limits = {**MetricsConfig().label_limits, "pod": 2}
    metrics = SensitiveMetrics(MetricsConfig(label_limits=limits, max_series=4))
    sink = AuditSink(metrics)
    pods = [f"pod-{i}" for i in range(5)]
    # Three e-mail records per pod, in one message: pods 0 and 1 fit the cap, pods 2..4 fold.
    sink(message([request(i, ["email"]) | {"kubernetes": kubernetes("ns", pod)} for pod in pods for i in range(3)]))
    samples = parse_text(generate(_registry(metrics), Format.TEXT))
    assert sensitive(samples) == {("email", "ns", "pod-0"): 3, ("email", "ns", "pod-1"): 3,
                                  ("email", "ns", "__overflow__"): 9}
    assert samples[("qwen_sensitive_label_overflow_total", frozenset({("label", "pod")}))] == 9
    # max_series 4: one more label set fits (card in pod-0); past it a new one folds whole, namespace
    # and pod both, one overflow series per kind (so at most max_series + 6 series).
    sink(message([request(0, [kind]) | {"kubernetes": kubernetes("ns", pod)}
                  for kind in ("card_number", "phone") for pod in ("pod-0", "pod-1")]))
    samples = parse_text(generate(_registry(metrics), Format.TEXT))
    assert sensitive(samples) == {("email", "ns", "pod-0"): 3, ("email", "ns", "pod-1"): 3,
                                  ("email", "ns", "__overflow__"): 9, ("card_number", "ns", "pod-0"): 1,
                                  ("card_number", "__overflow__", "__overflow__"): 1,
                                  ("phone", "__overflow__", "__overflow__"): 2}
    assert samples[("qwen_sensitive_label_overflow_total", frozenset({("label", "max_series")}))] == 3


def test_quiet_pods_expire_and_free_their_label_values() -> None:
    now = [1000.0]
    limits = {**MetricsConfig().label_limits, "pod": 1}
    metrics = SensitiveMetrics(MetricsConfig(label_limits=limits, series_idle_seconds=300.0), clock=lambda: now[0])
    sink = AuditSink(metrics, clock=lambda: now[0])
    sink(message([request(0, ["phone"]) | {"kubernetes": kubernetes("ns", "old-pod")}]))
    now[0] += 301
    assert sensitive(parse_text(generate(_registry(metrics), Format.TEXT))) == {}  # expired at the scrape
    sink(message([request(0, ["phone"]) | {"kubernetes": kubernetes("ns", "new-pod")}]))
    assert sensitive(parse_text(generate(_registry(metrics), Format.TEXT))) == {("phone", "ns", "new-pod"): 1}


def test_tail_tag_names_the_pod_without_a_kubernetes_map() -> None:
    metrics = SensitiveMetrics()
    tag = "kube.var.log.containers.vllm-0_team-c_server-" + "a" * 64 + ".log"
    AuditSink(metrics)(message([request(0, ["cn_resident_id", "api_key"])], tag=tag))
    assert sensitive(parse_text(generate(_registry(metrics), Format.TEXT))) == {
        ("cn_resident_id", "team-c", "vllm-0"): 1, ("api_key", "team-c", "vllm-0"): 1}


def _registry(metrics: SensitiveMetrics) -> Registry:
    registry = Registry()
    registry.register(metrics)
    return registry


# -- the [audit] section ---------------------------------------------------------------------------------

def test_audit_section_flag_variable_and_file(tmp_path: Path) -> None:
    assert load(None, {}, environ={}).audit == AuditConfig(sensitive=False)
    assert load(None, {"audit_sensitive": True}, environ={}).audit.sensitive is True
    assert load(None, {}, environ={"QWEN_FLUENT_AUDIT_SENSITIVE": "1"}).audit.sensitive is True
    path = tmp_path / "q.toml"
    path.write_text("[audit]\nsensitive = true\nmax_chars = 262144\n")
    config = load(path, {}, environ={})
    assert config.audit == AuditConfig(sensitive=True, max_chars=262144)
    assert config.audit.limits().max_chars == 262144
    path.write_text("[audit]\nmax_chars = 10\n")
    with pytest.raises(ConfigError, match=r"max_chars.*1024\.\..*max_chars in"):
        load(path, {}, environ={})
    with pytest.raises(ConfigError, match="--audit-sensitive audits in one process"):
        load(None, {"audit_sensitive": True, "workers": 2}, environ={})


def test_a_deferred_payload_past_the_decode_limits_counts_as_truncated_never_clean() -> None:
    metrics = SensitiveMetrics()
    sink = AuditSink(metrics)
    # 0xc1 is the one byte msgpack never uses: the general decoder refuses the payload.
    sink(Message("kube", [], Mode.PACKED_FORWARD, None, {"size": 3}, 10, {}, b"\xc1\xc1\xc1"))
    samples = parse_text(generate(_registry(metrics), Format.TEXT))
    assert value(samples, "qwen_sensitive_scanned_records_total") == 3
    assert value(samples, "qwen_sensitive_scans_truncated_total") == 3
    assert sensitive(samples) == {}
