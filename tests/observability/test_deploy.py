"""deploy/: the Prometheus config, alert rules and Grafana dashboard use what we expose.

The parse-based checks always run; promtool's own checks (config, rules and the rule unit
tests in alerts_test.yml) run where promtool is installed (Debian's ``prometheus`` package).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.observability.helpers import (
    check_expression,
    expressions_of_dashboard,
    parse_promql,
    run_mixed_sagas,
    scrape_metrics,
)

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
PROMETHEUS = DEPLOY / "prometheus"
DASHBOARD = DEPLOY / "grafana" / "l2c-sagas.json"


def alert_rules() -> list[dict]:
    rules = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())
    return [rule for group in rules["groups"] for rule in group["rules"]]


def test_prometheus_config_scrapes_metrics_and_loads_the_rules():
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    for name in config["rule_files"]:
        assert (PROMETHEUS / name).is_file(), name
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["l2c-web"]["metrics_path"] == "/metrics"


def test_alerts_cover_the_seed_targets():
    rules = {rule["alert"]: rule for rule in alert_rules()}
    assert {
        "SagaSuccessRateLow",
        "SagaCompensationFailureRateHigh",
        "SagaP95DurationHigh",
        "SagaDeadLetterQueueGrowing",
        "SagaStuck",
        "PaymentGatewayCircuitOpen",
    } <= set(rules)
    assert "< 0.99" in rules["SagaSuccessRateLow"]["expr"]
    assert "> 0.05" in rules["SagaCompensationFailureRateHigh"]["expr"]
    assert "> 60" in rules["SagaP95DurationHigh"]["expr"]
    for rule in rules.values():
        assert rule["labels"]["severity"] in {"warning", "critical"}
        assert rule["annotations"]["summary"]


@pytest.mark.django_db
def test_every_expression_uses_exposed_metrics_and_labels():
    run_mixed_sagas()
    scrape = scrape_metrics()
    expressions = [rule["expr"] for rule in alert_rules()]
    expressions += expressions_of_dashboard(json.loads(DASHBOARD.read_text()))
    assert len(expressions) > 20
    problems = {
        text: found
        for text in expressions
        if (found := check_expression(parse_promql(text), scrape))
    }
    assert problems == {}


def test_the_dashboard_shows_the_asked_for_panels():
    dashboard = json.loads(DASHBOARD.read_text())
    text = json.dumps(dashboard)
    for metric in (
        "saga_total",
        "saga_duration_seconds_bucket",
        "saga_in_progress",
        "saga_dlq_size",
        "saga_compensation_total",
        "saga_outbox_messages",
        "saga_recovery_lag_seconds",
    ):
        assert metric in text, metric
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def test_the_promql_reader_finds_names_labels_and_grouping():
    expression = parse_promql(
        'histogram_quantile(0.95, sum by (le, definition) (rate(x_bucket{status="ok"}[5m])))'
        " / on(job) group_left y > 1e3 and z offset 5m"
    )
    assert expression.metrics == {"x_bucket", "y", "z"}
    assert expression.matchers == [("x_bucket", "status", "=", "ok")]
    assert expression.grouping == {"le", "definition", "job"}


PROMTOOL = shutil.which("promtool")


@pytest.mark.skipif(
    PROMTOOL is None, reason="promtool is not installed (apt-get install prometheus)"
)
@pytest.mark.parametrize(
    "args",
    [
        ["check", "config", "prometheus.yml"],
        ["check", "rules", "alerts.yml"],
        ["test", "rules", "alerts_test.yml"],
    ],
    ids=["config", "rules", "rule-tests"],
)
def test_promtool(args):
    result = subprocess.run(
        [PROMTOOL, *args], cwd=PROMETHEUS, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
