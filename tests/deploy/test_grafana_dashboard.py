"""examples/grafana: the dashboard JSON is current, import-ready, and every query is PromQL.

Running the queries against a real Prometheus is test_dashboard_prometheus.py.
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys

import promql_parser
import pytest
import yaml

from .conftest import EXAMPLES, RULES_DIR, load_script

GRAFANA = EXAMPLES / "grafana"
DASHBOARD = json.loads((GRAFANA / "qwen-fluent-dashboard.json").read_text(encoding="utf-8"))

#: What Grafana puts in place of each variable when "All" is selected, and of
#: the interval macros (any valid duration exercises the same grammar).
SUBSTITUTIONS = {
    "$__rate_interval": "20s",
    "$__interval": "5s",
    "$namespace": ".*",
    "$model": ".*",
    "$pod": ".*",
    "$node": ".*",
    "$gpu": ".*",
}

#: The metric names the receiver exposes (the fixed names of the project's
#: brief), plus Prometheus' own `up`.
QWEN_METRICS = {
    "qwen_requests_total", "qwen_request_duration_seconds", "qwen_request_queue_duration_seconds",
    "qwen_request_inference_duration_seconds", "qwen_time_to_first_token_seconds",
    "qwen_time_per_output_token_seconds", "qwen_request_input_tokens", "qwen_request_output_tokens",
    "qwen_input_tokens_total", "qwen_output_tokens_total", "qwen_gpu_memory_reported_bytes",
    "qwen_last_request_timestamp_seconds", "qwen_log_messages_total", "qwen_vllm_running_requests",
    "qwen_vllm_waiting_requests", "qwen_vllm_gpu_kv_cache_usage_ratio",
    "qwen_vllm_prompt_throughput_tokens_per_second", "qwen_vllm_generation_throughput_tokens_per_second",
    "qwen_gpu_nvml_up", "qwen_gpu_memory_used_bytes", "qwen_gpu_memory_total_bytes", "qwen_gpu_utilization_ratio",
    "qwen_gpu_memory_utilization_ratio", "qwen_gpu_power_watts", "qwen_gpu_temperature_celsius",
    "qwen_gpu_xid_errors_total", "qwen_gpu_process_memory_used_bytes", "qwen_fluent_records_total",
    "qwen_fluent_errors_total", "qwen_fluent_auth_failures_total", "qwen_fluent_connections_active",
    "qwen_fluent_messages_total", "qwen_fluent_label_overflow_total", "up",
}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def substitute(text: str) -> str:
    """A query as Grafana sends it with every variable on "All"."""
    for name in sorted(SUBSTITUTIONS, key=len, reverse=True):
        text = text.replace(name, SUBSTITUTIONS[name])
    assert "$" not in text, f"unknown variable in {text!r}"
    return text


def panels() -> list[dict]:
    return [p for p in DASHBOARD["panels"] if p["type"] != "row"]


def targets() -> list[tuple[str, dict]]:
    return [(p["title"], t) for p in panels() for t in p["targets"]]


def recorded_names() -> set[str]:
    return {
        rule["record"]
        for path in RULES_DIR.glob("*.rules.yml")
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
        if "record" in rule
    }


def metric_names(expr: str) -> set[str]:
    names: set[str] = set()

    def visit(node) -> None:
        if isinstance(node, promql_parser.VectorSelector) and node.name:
            names.add(node.name)

    promql_parser.walk(promql_parser.parse(expr), visit)
    return names


@pytest.mark.skipif(sys.version_info < (3, 11), reason="grafana-foundation-sdk needs Python 3.11+ (typing.Self); "
                    "this check runs on 3.11-3.13")
def test_committed_json_is_what_the_generator_writes() -> None:
    if importlib.util.find_spec("grafana_foundation_sdk") is None:
        pytest.fail(
            "grafana-foundation-sdk is not installed; generate_dashboard.py builds the dashboard with it: "
            "pip install -e '.[test]' (or the pin in examples/grafana/generate_dashboard.py, SDK_REQUIREMENT)",
            pytrace=False,
        )
    module = load_script(GRAFANA / "generate_dashboard.py")
    module.check_sdk_version()  # another SDK build writes another schema: say so, not "stale"
    assert (GRAFANA / "qwen-fluent-dashboard.json").read_text(encoding="utf-8") == module.render(), (
        "qwen-fluent-dashboard.json is stale: run python3 examples/grafana/generate_dashboard.py"
    )


def test_import_ready_with_a_datasource_variable() -> None:
    variables = {v["name"]: v for v in DASHBOARD["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert {"namespace", "pod", "model", "gpu"} <= set(variables)
    assert "__inputs" not in DASHBOARD, "no import-time inputs: the data source is chosen by the variable"
    assert DASHBOARD["uid"] and DASHBOARD["schemaVersion"] >= 36
    for title, target in targets():
        assert target["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, title
    for panel in panels():
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
    for name, variable in variables.items():
        if variable["type"] == "query":
            assert variable["datasource"]["uid"] == "${datasource}"
            assert variable["includeAll"] and variable["allValue"] == ".*" and variable["multi"], name


def test_layout_has_unique_ids_and_no_overlaps() -> None:
    ids = [p["id"] for p in DASHBOARD["panels"]]
    assert len(ids) == len(set(ids))
    cells: dict[tuple[int, int], str] = {}
    for panel in DASHBOARD["panels"]:
        g = panel["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24, panel["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]


@pytest.mark.parametrize("title,target", targets(), ids=[f"{t}:{x['refId']}" for t, x in targets()])
def test_every_query_parses_as_promql(title: str, target: dict) -> None:
    expr = substitute(target["expr"])
    promql_parser.parse(expr)
    known = QWEN_METRICS | recorded_names()
    for name in metric_names(expr):
        base = next((name[: -len(s)] for s in HISTOGRAM_SUFFIXES if name.endswith(s) and name[: -len(s)] in known), name)
        assert base in known, f"{title}: {name} is neither an exposed metric nor a recording rule"


def test_variable_queries_parse() -> None:
    for variable in DASHBOARD["templating"]["list"]:
        if variable["type"] != "query":
            continue
        match = re.fullmatch(r"label_values\((.+), (\w+)\)", variable["query"]["query"])
        assert match, variable["name"]
        promql_parser.parse(substitute(match.group(1)))
        # The SDK has no `definition` field (Grafana shows it in the variable list and
        # rewrites it on save); where one is written it must be the query.
        assert variable.get("definition", variable["query"]["query"]) == variable["query"]["query"]
        assert variable["query"]["refId"], variable["name"]


def test_the_articles_four_panels_and_the_rest() -> None:
    exprs = {p["title"]: " ".join(t["expr"] for t in p["targets"]) for p in panels()}
    wanted = {
        "request rate by status": lambda e: "qwen_requests_total" in e and "by (status)" in e,
        "success rate": lambda e: 'status="success"' in e,
        "P95/P99 latency": lambda e: "histogram_quantile(0.95" in e and "histogram_quantile(0.99" in e,
        "GPU memory": lambda e: "qwen_gpu_memory_used_bytes" in e,
        "GPU utilisation": lambda e: "qwen_gpu_utilization_ratio" in e,
        "token throughput": lambda e: "qwen_output_tokens_total" in e and "qwen_input_tokens_total" in e,
        "queue vs inference": lambda e: "queue_duration" in e and "inference_duration" in e,
        "time to first token": lambda e: "time_to_first_token" in e,
        "tokens per request": lambda e: "qwen_request_output_tokens" in e,
        "error log rate": lambda e: "qwen_log_messages_total" in e and "error|critical" in e,
        "receiver health": lambda e: "qwen_fluent_records_total" in e,
    }
    for what, check in wanted.items():
        assert any(check(e) for e in exprs.values()), f"no panel shows {what}"
