#!/usr/bin/env python3
"""Write the qwen-fluent Grafana dashboard (``qwen-fluent-dashboard.json``) from code.

The dashboard is a list of PromQL queries with a title each (``rows()``
below, what a reviewer reads); Grafana's own dashboards-as-code library, the
Grafana Foundation SDK (``grafana-foundation-sdk`` on PyPI, types generated
from Grafana's schemas), turns that list into Grafana's dashboard model. The
SDK is pinned to the build generated for Grafana 11.2.x (``SDK_REQUIREMENT``):
examples/compose runs Grafana 11.2, and that build writes schemaVersion 39,
which Grafana 10.x and 11.x import as is. Another build of the SDK writes
another schema, so the script refuses to run on one. The SDK needs Python 3.11
or newer (it annotates with ``typing.Self``).

The JSON is import-ready:

* the data source is a template variable (``$datasource``), so the same file
  imports on any Grafana whatever its Prometheus data source is called;
* template variables ``namespace``, ``model``, ``pod``, ``node`` and ``gpu``
  filter every panel they apply to (multi-select, "All" = ``.*``);
* latency panels read the recorded bucket rates of
  ``examples/prometheus/rules/qwen-fluent-recording.rules.yml`` (load those
  rules with the dashboard), which is what keeps them cheap on many pods.

Rows are expanded, so in Grafana's model their panels follow the row at the
top level (only a collapsed row holds its panels): each row is added with
``Dashboard.with_row`` and its panels with ``Dashboard.with_panel``, whose
layout fills 24-column lines left to right. A line must add up to 24 columns;
``tests/deploy`` fails on a panel that overlaps or overflows.

Run it after changing a panel::

    pip install 'grafana-foundation-sdk==1769699630!11.2.0'
    python3 examples/grafana/generate_dashboard.py

``tests/deploy`` fails while the committed JSON differs from what this script
writes, parses every query as PromQL, and runs every query against a real
Prometheus scraping a real receiver.
"""

from __future__ import annotations

import importlib.metadata
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

#: The SDK build this dashboard is generated with: its epoch is the SDK's
#: release, its version the Grafana release whose schema it was generated for.
SDK_REQUIREMENT = "grafana-foundation-sdk==1769699630!11.2.0"
SDK_VERSION = SDK_REQUIREMENT.split("==", 1)[1]


class SdkVersionError(RuntimeError):
    """The Grafana Foundation SDK is missing, or is another build than SDK_REQUIREMENT."""


if sys.version_info < (3, 11):
    raise SdkVersionError(
        f"generate_dashboard.py needs Python 3.11 or newer (the Grafana Foundation SDK uses typing.Self "
        f"and enum.StrEnum); this is {sys.version.split()[0]}"
    )

try:
    from grafana_foundation_sdk.builders import common as common_builders
    from grafana_foundation_sdk.builders import dashboard as dashboard_builders
    from grafana_foundation_sdk.builders import prometheus, timeseries
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.models import common as common_models
    from grafana_foundation_sdk.models import dashboard as dashboard_models
except ImportError as error:  # the SDK not installed
    raise SdkVersionError(
        f"generate_dashboard.py needs the Grafana Foundation SDK: pip install '{SDK_REQUIREMENT}' ({error})"
    ) from error

OUTPUT = Path(__file__).resolve().parent / "qwen-fluent-dashboard.json"

DATASOURCE = dashboard_models.DataSourceRef(type_val="prometheus", uid="${datasource}")

#: Label filters, spelled once. "All" selects ".*", which also matches a
#: series without the label (a request logged outside Kubernetes).
REQ = 'namespace=~"$namespace", pod=~"$pod", model=~"$model"'
LOGS = 'namespace=~"$namespace", pod=~"$pod"'
GPU = 'node=~"$node", gpu=~"$gpu"'
RECEIVER = 'job="qwen-fluent", node=~"$node"'


@dataclass
class Target:
    """One PromQL query of a panel and its legend."""

    expr: str
    legend: str


@dataclass
class Panel:
    """A time series panel: title, what it shows (the description Grafana displays), its queries and unit."""

    title: str
    description: str
    targets: list[Target]
    unit: str = "short"
    width: int = 12
    height: int = 8
    min: float | None = 0
    max: float | None = None
    stack: bool = False
    thresholds: list[tuple[float, str]] = field(default_factory=list)


@dataclass
class Row:
    """A row of panels, laid out left to right in 24-column lines."""

    title: str
    panels: list[Panel]


def quantile(q: float, recorded_buckets: str, by: str) -> str:
    """histogram_quantile over recorded per-pod bucket rates, re-aggregated by ``by``."""
    return f"histogram_quantile({q}, sum by ({by}, le) ({recorded_buckets}{{{REQ}}}))"


def raw_quantile(q: float, histogram: str, by: str) -> str:
    """histogram_quantile straight from a histogram's buckets (no recording rule)."""
    return f"histogram_quantile({q}, sum by ({by}, le) (rate({histogram}_bucket{{{REQ}}}[$__rate_interval])))"


def rows() -> list[Row]:
    """Every panel of the dashboard, in reading order."""
    return [
        Row("Requests", [
            Panel(
                "Request rate by status",
                "Finished requests per second, by the status the server logged. Statuses are folded into "
                "success, error, client_error, timeout, cancelled, unknown.",
                [Target(f'sum by (status) (rate(qwen_requests_total{{{REQ}}}[$__rate_interval]))', "{{status}}")],
                unit="reqps", stack=True,
            ),
            Panel(
                "Success rate",
                "Share of requests with status success. Client errors and cancellations count against it "
                "here; the error-rate alert counts server-side failures (error, timeout) only.",
                [Target(
                    f'sum by (model) (rate(qwen_requests_total{{{REQ}, status="success"}}[$__rate_interval]))'
                    f' / sum by (model) (rate(qwen_requests_total{{{REQ}}}[$__rate_interval]))',
                    "{{model}}",
                )],
                unit="percentunit", max=1, thresholds=[(0, "red"), (0.95, "orange"), (0.99, "green")],
            ),
            Panel(
                "Server error ratio (alert: > 5 %)",
                "Requests ending in error or timeout over all requests, 5-minute window, per model: the "
                "series the QwenInferenceErrorRateHigh alert reads. Absent while a model has no failure.",
                [Target(
                    'namespace_model:qwen_requests_server_errors:ratio_rate5m{namespace=~"$namespace", model=~"$model"}',
                    "{{namespace}}/{{model}}",
                )],
                unit="percentunit", thresholds=[(0, "green"), (0.05, "red")],
            ),
            Panel(
                "Requests by path",
                "Request rate per API path and model.",
                [Target(f'sum by (path, model) (rate(qwen_requests_total{{{REQ}}}[$__rate_interval]))', "{{model}} {{path}}")],
                unit="reqps",
            ),
        ]),
        Row("Latency", [
            Panel(
                "Request latency P50 / P95 / P99 (alert: P99 > 3 s)",
                "End-to-end request time (total_time_ms) per model, from the recorded 5-minute bucket rates.",
                [
                    Target(quantile(0.5, "namespace_pod_model:qwen_request_duration_seconds_bucket:rate5m", "model"), "P50 {{model}}"),
                    Target(quantile(0.95, "namespace_pod_model:qwen_request_duration_seconds_bucket:rate5m", "model"), "P95 {{model}}"),
                    Target(quantile(0.99, "namespace_pod_model:qwen_request_duration_seconds_bucket:rate5m", "model"), "P99 {{model}}"),
                ],
                unit="s", thresholds=[(0, "green"), (3, "red")],
            ),
            Panel(
                "Queue vs inference time (P95)",
                "Where the time goes: waiting for a place in the batch (queue) or running on the GPU "
                "(inference). Rising queue time with flat inference time means too few replicas.",
                [
                    Target(quantile(0.95, "namespace_pod_model:qwen_request_queue_duration_seconds_bucket:rate5m", "model"), "queue {{model}}"),
                    Target(quantile(0.95, "namespace_pod_model:qwen_request_inference_duration_seconds_bucket:rate5m", "model"), "inference {{model}}"),
                ],
                unit="s",
            ),
            Panel(
                "Time to first token P50 / P95",
                "Time until the first output token was streamed, for requests whose log carries it.",
                [
                    Target(quantile(0.5, "namespace_pod_model:qwen_time_to_first_token_seconds_bucket:rate5m", "model"), "P50 {{model}}"),
                    Target(quantile(0.95, "namespace_pod_model:qwen_time_to_first_token_seconds_bucket:rate5m", "model"), "P95 {{model}}"),
                ],
                unit="s",
            ),
            Panel(
                "Time per output token P50 / P95",
                "Decode speed: inference time over output tokens, per request.",
                [
                    Target(raw_quantile(0.5, "qwen_time_per_output_token_seconds", "model"), "P50 {{model}}"),
                    Target(raw_quantile(0.95, "qwen_time_per_output_token_seconds", "model"), "P95 {{model}}"),
                ],
                unit="s",
            ),
        ]),
        Row("Tokens", [
            Panel(
                "Token throughput",
                "Input (prompt) and output (generated) tokens per second, per model.",
                [
                    Target(f'sum by (model) (rate(qwen_input_tokens_total{{{REQ}}}[$__rate_interval]))', "input {{model}}"),
                    Target(f'sum by (model) (rate(qwen_output_tokens_total{{{REQ}}}[$__rate_interval]))', "output {{model}}"),
                ],
                unit="short",
            ),
            Panel(
                "Tokens per request (mean and P95)",
                "Prompt and completion length per request: a shift here explains latency changes that "
                "are not the server's doing.",
                [
                    Target(
                        f'sum by (model) (rate(qwen_request_input_tokens_sum{{{REQ}}}[$__rate_interval]))'
                        f' / sum by (model) (rate(qwen_request_input_tokens_count{{{REQ}}}[$__rate_interval]))',
                        "mean input {{model}}",
                    ),
                    Target(
                        f'sum by (model) (rate(qwen_request_output_tokens_sum{{{REQ}}}[$__rate_interval]))'
                        f' / sum by (model) (rate(qwen_request_output_tokens_count{{{REQ}}}[$__rate_interval]))',
                        "mean output {{model}}",
                    ),
                    Target(raw_quantile(0.95, "qwen_request_output_tokens", "model"), "P95 output {{model}}"),
                ],
                unit="short",
            ),
            Panel(
                "vLLM engine: running and waiting requests",
                "From vLLM's periodic engine stats line: requests in the batch and requests queued for it.",
                [
                    Target(f'sum by (pod) (qwen_vllm_running_requests{{{REQ}}})', "running {{pod}}"),
                    Target(f'sum by (pod) (qwen_vllm_waiting_requests{{{REQ}}})', "waiting {{pod}}"),
                ],
                unit="short", width=8,
            ),
            Panel(
                "vLLM engine: KV cache usage",
                "Share of the GPU KV cache in use; near 1, vLLM preempts requests and queue time grows.",
                [Target(f'max by (pod) (qwen_vllm_gpu_kv_cache_usage_ratio{{{REQ}}})', "{{pod}}")],
                unit="percentunit", max=1, width=8,
            ),
            Panel(
                "vLLM engine: throughput",
                "The engine's own prompt (prefill) and generation (decode) throughput, tokens per second.",
                [
                    Target(f'sum by (pod) (qwen_vllm_prompt_throughput_tokens_per_second{{{REQ}}})', "prompt {{pod}}"),
                    Target(f'sum by (pod) (qwen_vllm_generation_throughput_tokens_per_second{{{REQ}}})', "generation {{pod}}"),
                ],
                unit="short", width=8,
            ),
        ]),
        Row("GPU", [
            Panel(
                "GPU memory used (alert: > 95 %)",
                "Used over total memory per GPU, as NVML reads it on each node.",
                [Target(
                    f'qwen_gpu_memory_used_bytes{{{GPU}}} / qwen_gpu_memory_total_bytes{{{GPU}}}',
                    "{{node}} GPU {{gpu}}",
                )],
                unit="percentunit", max=1, thresholds=[(0, "green"), (0.95, "red")],
            ),
            Panel(
                "GPU utilisation",
                "Share of time a kernel was running (NVML utilisation.gpu) and memory-controller activity.",
                [
                    Target(f'qwen_gpu_utilization_ratio{{{GPU}}}', "compute {{node}} GPU {{gpu}}"),
                    Target(f'qwen_gpu_memory_utilization_ratio{{{GPU}}}', "memory bus {{node}} GPU {{gpu}}"),
                ],
                unit="percentunit", max=1,
            ),
            Panel(
                "GPU memory by pod",
                "Memory the inference server reported in its request logs (gpu_memory_mb), per pod. "
                "With per-process attribution on (overlays/per-process-gpu), "
                "qwen_gpu_process_memory_used_bytes gives NVML's own per-pod figure.",
                [Target(f'max by (namespace, pod) (qwen_gpu_memory_reported_bytes{{{REQ}}})', "{{namespace}}/{{pod}}")],
                unit="bytes",
            ),
            Panel(
                "GPU power and temperature",
                "Board power draw (watts) and core temperature (degrees Celsius).",
                [
                    Target(f'qwen_gpu_power_watts{{{GPU}}}', "W {{node}} GPU {{gpu}}"),
                    Target(f'qwen_gpu_temperature_celsius{{{GPU}}}', "°C {{node}} GPU {{gpu}}"),
                ],
                unit="short",
            ),
        ]),
        Row("Logs and receiver health", [
            Panel(
                "Log lines by level",
                "Log lines that are not request records, by level (debug ... critical, unknown).",
                [Target(f'sum by (level) (rate(qwen_log_messages_total{{{LOGS}}}[$__rate_interval]))', "{{level}}")],
                unit="short", stack=True,
            ),
            Panel(
                "Error log rate",
                "Lines logged at level error or critical, per pod: what to read when the error ratio rises.",
                [Target(
                    f'sum by (namespace, pod) (rate(qwen_log_messages_total{{{LOGS}, level=~"error|critical"}}[$__rate_interval]))',
                    "{{namespace}}/{{pod}}",
                )],
                unit="short",
            ),
            Panel(
                "Receiver: records by outcome",
                "Every record the receivers took in, once: accepted (became a metric), unrecognised, "
                "invalid, skipped_signal (metrics or traces payloads).",
                [Target(f'sum by (outcome) (rate(qwen_fluent_records_total{{{RECEIVER}}}[$__rate_interval]))', "{{outcome}}")],
                unit="short", stack=True,
            ),
            Panel(
                "Receiver: scrapes, connections and errors",
                "Targets up, open Forward connections, and connections closed on protocol errors by reason.",
                [
                    Target(f'sum(up{{{RECEIVER}}})', "receivers up"),
                    Target(f'sum(qwen_fluent_connections_active{{{RECEIVER}}})', "connections"),
                    Target(f'sum by (reason) (rate(qwen_fluent_errors_total{{{RECEIVER}}}[$__rate_interval]))', "errors: {{reason}}"),
                ],
                unit="short",
            ),
        ]),
    ]





def check_sdk_version() -> None:
    """Refuse an SDK build other than SDK_REQUIREMENT: it would write another schema."""
    installed = importlib.metadata.version("grafana-foundation-sdk")
    if installed != SDK_VERSION:
        raise SdkVersionError(
            f"grafana-foundation-sdk {installed} is installed; this dashboard is generated with "
            f"{SDK_VERSION}: pip install '{SDK_REQUIREMENT}'"
        )


def _thresholds(steps: list[tuple[float, str]]) -> dashboard_builders.ThresholdsConfig:
    """Absolute thresholds; Grafana's first step has no value (it starts at minus infinity)."""
    steps = steps or [(0, "green")]
    return (
        dashboard_builders.ThresholdsConfig()
        .mode(dashboard_models.ThresholdsMode.ABSOLUTE)
        .steps([
            dashboard_models.Threshold(value=None if i == 0 else value, color=color)
            for i, (value, color) in enumerate(steps)
        ])
    )


def _panel(panel: Panel, panel_id: int) -> timeseries.Panel:
    """One time series panel: lines, 10 % fill, legend below, a tooltip listing every series."""
    builder = (
        timeseries.Panel()
        .id(panel_id)
        .title(panel.title)
        .description(panel.description)
        .datasource(DATASOURCE)
        .span(panel.width)
        .height(panel.height)
        .unit(panel.unit)
        .thresholds(_thresholds(panel.thresholds))
        .draw_style(common_models.GraphDrawStyle.LINE)
        .line_width(1)
        .fill_opacity(10)
        .show_points(common_models.VisibilityMode.NEVER)
        .span_nulls(False)
        .stacking(
            common_builders.StackingConfig()
            .mode(common_models.StackingMode.NORMAL if panel.stack else common_models.StackingMode.NONE)
            .group("A")
        )
        .thresholds_style(
            common_builders.GraphThresholdsStyleConfig().mode(
                common_models.GraphThresholdsStyleMode.LINE if panel.thresholds else common_models.GraphThresholdsStyleMode.OFF
            )
        )
        .legend(
            common_builders.VizLegendOptions()
            .display_mode(common_models.LegendDisplayMode.LIST)
            .placement(common_models.LegendPlacement.BOTTOM)
            .show_legend(True)
            .calcs([])
        )
        .tooltip(
            common_builders.VizTooltipOptions()
            .mode(common_models.TooltipDisplayMode.MULTI)
            .sort(common_models.SortOrder.DESCENDING)
        )
    )
    if panel.min is not None:
        builder.min(panel.min)
    if panel.max is not None:
        builder.max(panel.max)
    for i, target in enumerate(panel.targets):
        builder.with_target(
            prometheus.Dataquery()
            .ref_id(chr(ord("A") + i))
            .datasource(DATASOURCE)
            .expr(target.expr)
            .legend_format(target.legend)
            .range()
        )
    return builder


def _query_variable(name: str, label: str, query: str) -> dashboard_builders.QueryVariable:
    """A label filter: multi-select, "All" = ``.*``, values re-read when the time range changes."""
    return (
        dashboard_builders.QueryVariable(name)
        .label(label)
        .datasource(DATASOURCE)
        .query({"query": query, "refId": f"{name}-variable"})
        .refresh(dashboard_models.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .multi(True)
        .include_all(True)
        .all_value(".*")
        .current(dashboard_models.VariableOption(selected=True, text=["All"], value=["$__all"]))
        .sort(dashboard_models.VariableSort.ALPHABETICAL_ASC)
    )


def variables() -> list[dashboard_builders.DatasourceVariable | dashboard_builders.QueryVariable]:
    """The data source variable, then the label filters, each narrowed by the ones before it."""
    return [
        dashboard_builders.DatasourceVariable("datasource").label("Data source").type("prometheus"),
        _query_variable("namespace", "Namespace", "label_values(qwen_requests_total, namespace)"),
        _query_variable("model", "Model", 'label_values(qwen_requests_total{namespace=~"$namespace"}, model)'),
        _query_variable("pod", "Pod", 'label_values(qwen_requests_total{namespace=~"$namespace", model=~"$model"}, pod)'),
        _query_variable("node", "Node", "label_values(qwen_gpu_memory_total_bytes, node)"),
        _query_variable("gpu", "GPU", 'label_values(qwen_gpu_memory_total_bytes{node=~"$node"}, gpu)'),
    ]


def dashboard() -> dashboard_models.Dashboard:
    """The whole dashboard model, built by the SDK."""
    builder = (
        dashboard_builders.Dashboard("LLM inference (qwen-fluent)")
        .uid("qwen-fluent")
        .description(
            "Requests, latency, tokens and GPUs of LLM inference servers, from their logs "
            "(Fluent Bit -> qwen-fluent) and NVML. Generated by examples/grafana/generate_dashboard.py."
        )
        .tags(["llm", "inference", "qwen-fluent", "gpu"])
        .timezone("browser")
        .editable()
        .tooltip(dashboard_models.DashboardCursorSync.CROSSHAIR)
        .version(1)
        .refresh("10s")
        .time("now-1h", "now")
        .annotation(
            dashboard_builders.AnnotationQuery()
            .name("Annotations & Alerts")
            .datasource(dashboard_models.DataSourceRef(type_val="grafana", uid="-- Grafana --"))
            .enable(True)
            .hide(True)
            .icon_color("rgba(0, 211, 255, 1)")
            .type("dashboard")
            .built_in(1)
        )
        .variables(variables())
    )
    panel_id = 1
    for row in rows():
        builder.with_row(dashboard_builders.Row(row.title).id(panel_id))
        panel_id += 1
        for panel in row.panels:
            builder.with_panel(_panel(panel, panel_id))
            panel_id += 1
    return builder.build()


def render() -> str:
    """The dashboard as the JSON text that is committed (the SDK's key order, trailing newline)."""
    return json.dumps(dashboard(), cls=JSONEncoder, indent=2, ensure_ascii=False) + "\n"


def main() -> int:
    check_sdk_version()
    OUTPUT.write_text(render(), encoding="utf-8")
    print(f"wrote {OUTPUT.name}: {sum(len(r.panels) for r in rows())} panels")
    return 0


if __name__ == "__main__":
    sys.exit(main())
