"""Every dashboard query, run against a real Prometheus that scraped a real receiver.

The chain is the deployed one minus Fluent Bit and the GPU: the receiver as
``qwen-fluent serve`` assembles it (qwen_fluent.app.Receiver: Forward server,
normaliser, metrics, /metrics), with the GPU collector reading the fake NVML
(no GPU here). Records are the demo's fake inference server's lines, shaped as
the Fluent Bit pipeline delivers them (JSON fields merged at the top level,
``kubernetes`` metadata, Forward mode with acks) and sent over TCP in batches
while Prometheus (Debian's binary, the shipped recording and alert rules,
1 s scrapes, job ``qwen-fluent`` with a ``node`` label as in a cluster)
scrapes. Then every panel query and every variable query must return data.
"""

from __future__ import annotations

import json
import math
import socket
import struct
import time

import msgpack
import pytest

from tests.support.fake_nvml import FakeNvml
from tests.support.prometheus import PrometheusServer, require_binary
from tests.support.receiver import ReceiverThread

from .conftest import EXAMPLES, RULES_DIR, load_script
from .test_grafana_dashboard import DASHBOARD, substitute, targets

#: Batches of records, sent this far apart, so that every rate() window holds
#: an increase (Prometheus scrapes every second).
BATCHES = 12
BATCH_LINES = 30
BATCH_GAP = 0.5
NODE = "test-node"
PODS = ("llm-inference-0", "llm-inference-1")


def fluent_bit_record(line: str, pod: str, fake) -> dict:
    """A log line as fluent-bit/fluent-bit.yaml delivers it: JSON merged (or kept as log), pod metadata added."""
    record: dict = {"stream": "stdout", "_p": "F", "time": time.strftime("%Y-%m-%dT%H:%M:%S.000000000Z", time.gmtime())}
    if line.startswith("{"):
        record.update(json.loads(line))
    else:
        record["log"] = line
    record["kubernetes"] = {
        "pod_name": pod,
        "namespace_name": fake.NAMESPACE,
        "container_name": fake.CONTAINER,
        "host": NODE,
        "labels": {"app.kubernetes.io/component": "inference", "model": fake.MODEL},
        "docker_id": fake.CONTAINER_ID,
    }
    return record


def event_time(t: float) -> msgpack.ExtType:
    seconds = int(t)
    return msgpack.ExtType(0, struct.pack(">II", seconds, int((t - seconds) * 1e9)))


def send_forward(port: int, tag: str, records: list[dict], chunk: str) -> None:
    """One Forward-mode message with an ack request, as Fluent Bit's forward output sends it."""
    now = time.time()
    payload = msgpack.packb([tag, [[event_time(now), r] for r in records], {"chunk": chunk, "size": len(records)}])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(payload)
        reply = msgpack.unpackb(s.recv(4096), raw=False)
    assert reply == {"ack": chunk}


def send_garbage(port: int) -> None:
    """A connection that sends something that is not a Forward message (counted as an error)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(msgpack.packb(42))
        s.settimeout(5)
        try:
            while s.recv(4096):
                pass
        except OSError:
            pass


def has_data(result: list[dict]) -> bool:
    """At least one sample with a finite value."""
    for series in result:
        values = [series["value"]] if "value" in series else series.get("values", [])
        if any(math.isfinite(float(v[1])) for v in values):
            return True
    return False


@pytest.fixture(scope="module")
def scraped():
    require_binary("prometheus")
    fake = load_script(EXAMPLES / "compose" / "fake_inference.py")
    rules = tuple(sorted(RULES_DIR.glob("*.rules.yml")))
    # Deployed, the GPU gauges come from NVML on the node; here from the fake.
    with ReceiverThread(nvml=FakeNvml()) as receiver:
        with PrometheusServer([f"127.0.0.1:{receiver.metrics_port}"], job="qwen-fluent", labels={"node": NODE},
                              features=(), rule_files=rules) as prom:
            prom.wait_until_up()
            lines = fake.lines(seed=7, start=time.time())
            for batch in range(BATCHES):
                records = [fluent_bit_record(next(lines)[1], PODS[i % 2], fake) for i in range(BATCH_LINES)]
                send_forward(receiver.forward_port, f"kube.var.log.containers.{fake.LOG_NAME}", records, f"chunk-{batch}")
                if batch == BATCHES // 2:
                    send_garbage(receiver.forward_port)
                time.sleep(BATCH_GAP)
            # The recorded rates need two evaluations after the last batch.
            prom.wait_for("namespace_model:qwen_request_duration_seconds:p99_5m")
            time.sleep(2)
            yield prom


@pytest.mark.prometheus
@pytest.mark.parametrize("title,target", targets(), ids=[f"{t}:{x['refId']}" for t, x in targets()])
def test_panel_query_returns_data(scraped: PrometheusServer, title: str, target: dict) -> None:
    expr = substitute(target["expr"]).replace("[20s]", "[30s]")
    result = scraped.query(expr)
    assert has_data(result), f"{title}: {expr} returned {result}"


@pytest.mark.prometheus
def test_variable_queries_return_values(scraped: PrometheusServer) -> None:
    import re

    expected = {"namespace": {"demo"}, "model": {"qwen2.5-7b-instruct"}, "pod": set(PODS), "node": {NODE}}
    for variable in DASHBOARD["templating"]["list"]:
        if variable["type"] != "query":
            continue
        match = re.fullmatch(r"label_values\((.+), (\w+)\)", variable["query"]["query"])
        values = scraped.label_values(match.group(2), substitute(match.group(1)))
        assert values, f"variable {variable['name']} has no values"
        if variable["name"] in expected:
            assert set(values) == expected[variable["name"]], variable["name"]


@pytest.mark.prometheus
def test_the_alerts_see_the_same_data(scraped: PrometheusServer) -> None:
    # The series the alert rules compare with thresholds exist for the model.
    for series in ("namespace_model:qwen_request_duration_seconds:p99_5m", "namespace_model:qwen_requests:rate5m"):
        result = scraped.query(f'{series}{{namespace="demo", model="qwen2.5-7b-instruct"}}')
        assert has_data(result), series
    # No request is older than 10 minutes, so QwenInferenceNoRequests must not be pending.
    assert scraped.query('ALERTS{alertname="QwenInferenceNoRequests"}') == []
