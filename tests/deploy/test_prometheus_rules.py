"""The alert and recording rules, checked and unit-tested by the real promtool."""

from __future__ import annotations

from pathlib import Path

import promql_parser
import yaml

from .conftest import EXAMPLES, KUBERNETES, REPO, RULES_DIR, load_script, run_tool

RULE_FILES = sorted(RULES_DIR.glob("*.rules.yml"))
UNIT_TESTS = Path(__file__).resolve().parent / "promtool" / "alerts.test.yml"
PROMETHEUSRULE = KUBERNETES / "overlays" / "prometheus-operator" / "prometheusrule.yaml"


def _load(path: Path) -> dict:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def _rules() -> list[dict]:
    return [rule for path in RULE_FILES for group in _load(path)["groups"] for rule in group["rules"]]


def _generator():
    return load_script(EXAMPLES / "prometheus" / "generate_prometheusrule.py")


def test_rule_files_pass_promtool_check(promtool: str) -> None:
    assert len(RULE_FILES) == 2
    result = run_tool(promtool, "check", "rules", *map(str, RULE_FILES))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_fires_and_stays_silent_in_promtool_unit_tests(promtool: str) -> None:
    result = run_tool(promtool, "test", "rules", UNIT_TESTS.name, cwd=UNIT_TESTS.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_has_a_firing_and_a_silent_case() -> None:
    alerts = {rule["alert"] for rule in _rules() if "alert" in rule}
    tests = _load(UNIT_TESTS)["tests"]
    firing: set[str] = set()
    silent: set[str] = set()
    for case in tests:
        for check in case.get("alert_rule_test", []):
            (firing if check["exp_alerts"] else silent).add(check["alertname"])
    assert alerts, "no alert rules found"
    assert alerts - firing == set(), "alerts never shown firing"
    assert alerts - silent == set(), "alerts never shown silent"
    assert (firing | silent) - alerts == set(), "unit tests name alerts that do not exist"


def test_unit_tests_load_the_shipped_rule_files() -> None:
    files = {(UNIT_TESTS.parent / f).resolve() for f in _load(UNIT_TESTS)["rule_files"]}
    assert files == {p.resolve() for p in RULE_FILES}


def test_every_expression_parses_as_promql() -> None:
    for rule in _rules():
        promql_parser.parse(rule["expr"])


def test_recording_rules_follow_the_level_metric_operation_convention() -> None:
    records = [rule["record"] for rule in _rules() if "record" in rule]
    assert records
    for name in records:
        level, metric, operation = name.split(":")
        assert level and metric.startswith("qwen_") and operation, name


def test_alerts_have_severity_summary_description_and_runbook() -> None:
    docs = (REPO / "docs" / "deploy.md").read_text(encoding="utf-8")
    for rule in _rules():
        if "alert" not in rule:
            continue
        assert rule["labels"]["severity"] in ("critical", "warning", "info"), rule["alert"]
        for key in ("summary", "description", "runbook_url"):
            assert rule["annotations"].get(key), (rule["alert"], key)
        anchor = rule["annotations"]["runbook_url"].rsplit("#", 1)[1]
        assert anchor == f"alert-{rule['alert'].lower()}"
        assert f"### Alert: {rule['alert']}" in docs, f"docs/deploy.md has no runbook for {rule['alert']}"


def test_prometheusrule_is_generated_from_the_rule_files() -> None:
    generator = _generator()
    assert PROMETHEUSRULE.read_text(encoding="utf-8") == generator.render(), (
        "prometheusrule.yaml is stale: run python3 examples/prometheus/generate_prometheusrule.py"
    )
    groups = [group for path in generator.rule_files() for group in _load(path)["groups"]]
    assert _load(PROMETHEUSRULE)["spec"]["groups"] == groups


def test_prometheusrule_groups_pass_promtool_check(promtool: str, tmp_path: Path) -> None:
    rule = _load(PROMETHEUSRULE)
    assert rule["apiVersion"] == "monitoring.coreos.com/v1" and rule["kind"] == "PrometheusRule"
    assert set(rule["spec"]) == {"groups"}
    extracted = tmp_path / "from-prometheusrule.yml"
    extracted.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}), encoding="utf-8")
    result = run_tool(promtool, "check", "rules", str(extracted))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(_rules())} rules found" in result.stdout
