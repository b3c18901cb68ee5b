"""MetricsConfig: defaults, TOML-shaped input, and every rejected value."""

from __future__ import annotations

import pytest

from qwen_fluent.metrics import MetricsConfig, MetricsConfigError
from qwen_fluent.metrics.buckets import DURATION_BUCKETS

ARTICLE_THRESHOLDS = (0.1, 0.5, 1.0, 2.0, 3.0, 4.0, 5.0)


def test_defaults_resolve_the_article_thresholds_and_the_long_tail() -> None:
    config = MetricsConfig()
    assert set(ARTICLE_THRESHOLDS) <= set(config.duration_buckets)
    assert config.duration_buckets[-1] >= 300  # minutes
    assert config.input_token_buckets[-1] == 131072
    assert config.output_token_buckets[-1] == 8192
    assert config.labels == ("status", "path", "model", "namespace", "pod", "container")
    assert config.namespace == "qwen"
    assert config.limit_for("pod") == 1000 and config.limit_for("team") == 64


def test_a_toml_table_with_lists_and_merged_limits() -> None:
    config = MetricsConfig(**{
        "namespace": "llm", "labels": ["status", "pod"], "duration_buckets": [1, 2, 5],
        "label_limits": {"pod": 10}, "pod_labels": {"team": "example.com/team"},
    })
    assert config.labels == ("status", "pod")
    assert config.duration_buckets == (1.0, 2.0, 5.0)
    assert config.limit_for("pod") == 10 and config.limit_for("path") == 64


@pytest.mark.parametrize("fields,field", [
    ({"namespace": "bad-name"}, "namespace"),
    ({"namespace": ""}, "namespace"),
    ({"namespace": "qwen_fluent"}, "namespace"),
    ({"labels": ["status", "nope"]}, "labels"),
    ({"labels": ["pod", "pod"]}, "labels"),
    ({"labels": "status"}, "labels"),
    ({"pod_labels": {"le": "x"}}, "pod_labels"),
    ({"pod_labels": {"pod": "x"}}, "pod_labels"),
    ({"pod_labels": {"__x": "x"}}, "pod_labels"),
    ({"pod_labels": {"team": ""}}, "pod_labels"),
    ({"label_limits": {"pod": 0}}, "label_limits"),
    ({"label_limits": {"pod": True}}, "label_limits"),
    ({"default_label_limit": 0}, "default_label_limit"),
    ({"max_series": -1}, "max_series"),
    ({"overflow_value": ""}, "overflow_value"),
    ({"series_idle_seconds": -1}, "series_idle_seconds"),
    ({"series_idle_seconds": float("inf")}, "series_idle_seconds"),
    ({"duration_buckets": []}, "duration_buckets"),
    ({"duration_buckets": [1, 1]}, "duration_buckets"),
    ({"duration_buckets": [2, 1]}, "duration_buckets"),
    ({"ttft_buckets": [-1, 1]}, "ttft_buckets"),
    ({"tpot_buckets": [1, float("inf")]}, "tpot_buckets"),
    ({"input_token_buckets": ["1"]}, "input_token_buckets"),
    ({"output_token_buckets": list(range(1, 100))}, "output_token_buckets"),
    ({"exemplars": "yes"}, "exemplars"),
    ({"histogram_labels": ["status", "nope"]}, "histogram_labels"),
    ({"histogram_labels": "path"}, "histogram_labels"),
    ({"family_labels": {"requests_total": ["pod"]}}, "family_labels"),
    ({"family_labels": {"request_duration_seconds": ["pod", "pod"]}}, "family_labels.request_duration_seconds"),
    ({"family_labels": ["request_duration_seconds"]}, "family_labels"),
    ({"histogram_labels": ["method"], "pod_labels": {"method": "x"}}, "pod_labels"),
])
def test_invalid_values_name_their_field(fields: dict, field: str) -> None:
    with pytest.raises(MetricsConfigError) as info:
        MetricsConfig(**fields)
    assert info.value.field == field
    assert str(info.value).startswith(f"metrics.{field}:")


def test_the_duration_default_is_the_documented_constant() -> None:
    assert MetricsConfig().duration_buckets == DURATION_BUCKETS
