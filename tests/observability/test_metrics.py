"""The saga metrics: names and PromQL of seed 001, figures that add up across processes."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import DatabaseError
from django.utils import timezone
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import REGISTRY

from sagas.deadletters import dead_letter_list, dead_letter_size
from sagas.engine import saga_start
from sagas.metrics import SagaCollector, metric_names, register_saga_metrics
from sagas.models import SagaInstance, SagaStep
from tests.observability.helpers import (
    check_expression,
    parse_exposition,
    parse_promql,
    run_mixed_sagas,
    scrape_metrics,
)
from tests.sagas.helpers import make_counters
from tests.workers import QCluster, wait_for

DEFINITION = "test.five_steps"

# Seed 001, "监控查询 / Prometheus PromQL", verbatim.
SEED_PROMQL = [
    """sum(rate(saga_total{status="completed"}[5m]))
/ sum(rate(saga_total[5m]))""",
    """histogram_quantile(0.95, rate(saga_duration_seconds_bucket[5m]))""",
    """sum(rate(saga_compensation_total{status="failed"}[5m]))
/ sum(rate(saga_compensation_total[5m]))""",
    """saga_dlq_size""",
]

# The eight metrics seed 001 lists.
SEED_METRICS = {
    "saga_total": "counter",
    "saga_duration_seconds": "histogram",
    "saga_step_total": "counter",
    "saga_step_duration_seconds": "histogram",
    "saga_compensation_total": "counter",
    "saga_compensation_retries": "histogram",
    "saga_in_progress": "gauge",
    "saga_dlq_size": "gauge",
}


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_counters_scraped_from_the_web_process_match_what_the_workers_did(tmp_path):
    """Sagas run in a real qcluster (other processes); this process serves /metrics."""
    make_counters("s1", "s2", "s3", "s4", "s5")
    cluster = QCluster(
        tmp_path, SAGA_LEASE_SECONDS="2", SAGA_LEASE_MARGIN_SECONDS="1", Q_WORKERS="2"
    ).start()
    try:
        mix = (
            [{}] * 5
            + [{"fail": "s3"}] * 2
            + [{"fail": "s4", "compensation_fails": ["s2"]}]
            + [{"transient": {"s2": 2}}]
        )
        sagas = [saga_start(DEFINITION, data=data) for data in mix]
        ids = [saga.pk for saga in sagas]

        def finished() -> bool:
            active = SagaInstance.objects.filter(pk__in=ids, status__in=SagaInstance.ACTIVE)
            return not active.exists()

        wait_for(finished, timeout=120, what=lambda: f"the sagas\n{cluster.log_tail()}")
    finally:
        cluster.kill()
    # Nothing ran here: every step row was written by a worker process.
    assert not SagaInstance.objects.filter(pk__in=ids, runs=0).exists()

    scrape = scrape_metrics()

    def value(name: str, **labels: str) -> float:
        return scrape.value(name, definition=DEFINITION, **labels)

    assert value("saga_total", status="completed") == 6
    assert value("saga_total", status="compensated") == 2
    assert value("saga_total", status="failed") == 1
    assert value("saga_in_progress") == 0
    assert value("saga_duration_seconds_count") == 9
    assert value("saga_duration_seconds_count", status="completed") == 6

    # 6 complete sagas x 5 steps, s1-s2 of the two that failed at s3, s1-s3 of the one that
    # failed at s4; the compensated ones count as completed actions.
    assert value("saga_step_total", status="completed") == 30 + 2 * 2 + 3
    assert value("saga_step_total", status="failed") == 3
    assert value("saga_step_total", step="s3", status="failed") == 2
    assert value("saga_step_total", step="s4", status="failed") == 1
    assert value("saga_step_retries_total", step="s2") == 2
    assert value("saga_step_retries_total") == 2
    assert value("saga_step_duration_seconds_count") == 40

    # Compensations: s2 and s1 of both fail=s3 sagas, s3 and s1 of the dead-lettered one;
    # its s2 failed after 3 attempts; the failed steps' own compensations were empty.
    assert value("saga_compensation_total", status="compensated") == 6
    assert value("saga_compensation_total", status="failed") == 1
    assert value("saga_compensation_total", step="s2", status="failed") == 1
    assert value("saga_compensation_total", status="empty") == 3
    # FAST_COMPENSATION allows 2 retries, both used by s2 of the dead-lettered saga.
    assert value("saga_compensation_retries_sum") == 2
    assert value("saga_compensation_retries_sum", step="s2") == 2
    assert value("saga_compensation_retries_count") == 7
    assert value("saga_compensation_retries_bucket", step="s2", le="1.0") == 2
    assert value("saga_compensation_retries_bucket", step="s2", le="2.0") == 3

    assert scrape.value("saga_dlq_size") == dead_letter_size() == 1
    assert len(dead_letter_list()) == 1
    assert scrape.value("saga_metrics_up") == 1

    # The figures are the database's, not this process's: they match its rows exactly.
    steps = SagaStep.objects.filter(saga_id__in=ids)
    assert value("saga_step_total") == steps.count()


@pytest.mark.django_db
def test_seed_promql_uses_only_names_and_labels_the_scrape_has():
    run_mixed_sagas()
    scrape = scrape_metrics()
    for text in SEED_PROMQL:
        expression = parse_promql(text)
        assert check_expression(expression, scrape) == [], text
    used = set().union(*(parse_promql(text).metrics for text in SEED_PROMQL))
    assert used == {
        "saga_total",
        "saga_duration_seconds_bucket",
        "saga_compensation_total",
        "saga_dlq_size",
    }


@pytest.mark.django_db
def test_the_eight_seed_metrics_are_exposed_with_their_types():
    run_mixed_sagas()
    scrape = scrape_metrics()
    for name, kind in SEED_METRICS.items():
        sample = {"counter": name, "histogram": f"{name}_bucket", "gauge": name}[kind]
        assert sample in scrape.samples, name
        assert scrape.types[sample] == kind, name
    # Status values are lower case, as the seed's PromQL writes them.
    assert scrape.label_values("saga_total", "status") == {"completed", "compensated", "failed"}
    assert {"compensated", "failed", "empty"} <= scrape.label_values(
        "saga_compensation_total", "status"
    )
    names = set(metric_names())
    assert {"saga_total", "saga_duration_seconds_bucket", "saga_stuck"} <= names


@pytest.mark.django_db
def test_histograms_are_cumulative_and_gauges_track_unfinished_sagas():
    run_mixed_sagas()
    stuck = saga_start(DEFINITION, data={}, enqueue=False)
    SagaInstance.objects.filter(pk=stuck.pk).update(
        status=SagaInstance.Status.EXECUTING, updated_at=timezone.now() - timedelta(minutes=11)
    )
    scrape = scrape_metrics()

    buckets = sorted(
        (float(labels["le"]), value)
        for labels, value in scrape.samples["saga_duration_seconds_bucket"]
        if labels["definition"] == DEFINITION and labels["status"] == "completed"
    )
    counts = [value for _, value in buckets]
    assert counts == sorted(counts), "buckets must be cumulative"
    assert buckets[-1] == (float("inf"), 1)
    assert scrape.value("saga_in_progress", definition=DEFINITION) == 1
    assert scrape.value("saga_stuck", definition=DEFINITION) == 1
    # No lease and no wake-up for 11 minutes: recovery should have picked it up long ago.
    assert scrape.value("saga_recovery_lag_seconds") >= 600
    assert scrape.value("saga_dlq_size") == 1
    assert scrape.value("saga_dlq_oldest_seconds") >= 0
    assert scrape.value("saga_outbox_messages", status="pending") >= 0
    assert scrape.value("payment_gateway_circuit_open") == 0
    assert scrape.value("payment_gateway_circuit_state", state="closed") == 1


@pytest.mark.django_db
def test_a_failing_collection_reports_down_and_keeps_the_other_metrics(monkeypatch):
    def broken(*args, **kwargs):
        raise DatabaseError("the database is gone")

    monkeypatch.setattr(SagaCollector, "_sagas", broken)
    scrape = scrape_metrics()
    assert scrape.value("saga_metrics_up") == 0
    assert "saga_total" not in scrape.samples
    # django-prometheus's own metrics are still served.
    assert any(name.startswith("django_") for name in scrape.samples)


def test_registration_is_once_per_registry():
    first = register_saga_metrics()
    assert register_saga_metrics() is first
    collectors = [c for c in REGISTRY._collector_to_names if isinstance(c, SagaCollector)]
    assert len(collectors) == 1

    registry = CollectorRegistry()
    register_saga_metrics(registry)
    # describe() answers without the database: registering costs no query.
    assert "saga_dlq_size" in registry._names_to_collectors


@pytest.mark.django_db
def test_a_fresh_collector_sees_the_same_figures():
    """No state lives in the collector or the process: a new one in a new registry (as in
    another web process) reads the same counts."""
    run_mixed_sagas()
    registry = CollectorRegistry()
    registry.register(SagaCollector())
    scrape = parse_exposition(generate_latest(registry).decode())
    assert scrape.value("saga_total", definition=DEFINITION) == 3
    assert scrape.value("saga_total", definition=DEFINITION) == scrape_metrics().value(
        "saga_total", definition=DEFINITION
    )


# transaction=True: in autocommit the failing statement leaves no aborted transaction behind
# for the test's teardown.
@pytest.mark.django_db(transaction=True)
def test_each_statement_is_counted_timed_and_its_errors_typed_by_the_database_metrics():
    from django.db import connection
    from django_prometheus.db import (
        errors_total,
        execute_many_total,
        execute_total,
        query_duration_seconds,
    )

    # A registry of these four alone: scraping the default one runs the saga collector's
    # queries, which these counters would count too.
    registry = CollectorRegistry()
    for metric in (execute_total, execute_many_total, query_duration_seconds, errors_total):
        registry.register(metric)
    labels = {"alias": "default", "vendor": connection.vendor}

    def sample(name: str, **extra: str) -> float:
        return registry.get_sample_value(name, {**labels, **extra}) or 0.0

    # Connected first: a new connection's own set-up statements count too.
    connection.ensure_connection()
    executed = sample("django_db_execute_total")
    timed = sample("django_db_query_duration_seconds_count")
    many = sample("django_db_execute_many_total")
    errors = sample("django_db_errors_total", type="UndefinedTable")

    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.executemany("SELECT %s", [(1,), (2,), (3,)])
    with pytest.raises(DatabaseError), connection.cursor() as cursor:
        cursor.execute("SELECT * FROM no_such_table")

    assert sample("django_db_execute_total") == executed + 1 + 3 + 1
    assert sample("django_db_execute_many_total") == many + 3
    assert sample("django_db_query_duration_seconds_count") == timed + 3
    # The driver's own exception type, as django-prometheus labels it.
    assert sample("django_db_errors_total", type="UndefinedTable") == errors + 1
