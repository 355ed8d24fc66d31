"""The dashboard's figures against a data set whose answers are known."""

from __future__ import annotations

import pytest
from django.contrib import admin
from django.db import connection
from django.urls import reverse
from django.utils import timezone

from sagas.admin_views import definition_diagram, throughput_chart
from sagas.models import SagaInstance
from sagas.registry import registry
from tests.admin.helpers import make_saga, set_times

S = SagaInstance.Status
pytestmark = pytest.mark.django_db


@pytest.fixture
def data_set():
    """Six sagas finished ten minutes ago, one stuck, one from two days ago."""
    for took in (1, 2, 3, 4):
        set_times(make_saga(status=S.COMPLETED), created_ago=600, took=took)
    set_times(
        make_saga(status=S.COMPENSATED, error_code="card_declined"), created_ago=600, took=10
    )
    set_times(
        make_saga(
            status=S.FAILED,
            error_code="compensation_exhausted",
            dead_lettered_at=timezone.now(),
        ),
        created_ago=600,
        took=20,
    )
    stuck = make_saga(status=S.EXECUTING, current_step="s2")
    set_times(stuck, created_ago=1200, updated_ago=900)
    set_times(make_saga(status=S.COMPLETED), created_ago=2 * 86400, took=1)
    return stuck


def dashboard(admin_client, range_key):
    response = admin_client.get(reverse("admin:sagas_dashboard"), {"range": range_key})
    assert response.status_code == 200
    return response


def test_the_figures_of_the_last_hour(admin_client, data_set):
    response = dashboard(admin_client, "1h")
    context = response.context
    html = response.content.decode()

    assert context["stats"]["total"] == 7
    assert context["stats"]["by_status"] == {
        "STARTED": 0,
        "EXECUTING": 1,
        "COMPLETED": 4,
        "COMPENSATING": 0,
        "COMPENSATED": 1,
        "FAILED": 1,
        "TIMEOUT": 0,
    }
    assert context["success_rate"] == "57.1 %"
    assert context["compensation_rate"] == "14.3 %"
    assert context["stats"]["top_failure_reasons"] == [
        ("card_declined", 1),
        ("compensation_exhausted", 1),
    ]
    durations = context["stats"]["durations"]
    assert durations["avg"] == pytest.approx(40 / 6)
    assert durations["p50"] == pytest.approx(3.5)
    if connection.vendor == "postgresql":  # percentile_cont interpolates
        assert durations["p95"] == pytest.approx(17.5)
        assert durations["p99"] == pytest.approx(19.5)
        assert context["durations"]["p95"] == "17.50 s"
    assert context["durations"]["p50"] == "3.50 s"
    assert context["stats"]["dead_letters"] == 1
    for figure in ("57.1 %", "14.3 %", "6.67 s", "3.50 s", "card_declined"):
        assert figure in html


def test_the_health_is_unhealthy_with_the_stuck_saga_and_the_recommendations(
    admin_client, data_set
):
    context = dashboard(admin_client, "1h").context
    health = context["health"]

    assert (health.status, health.active, health.stuck, health.long_running) == (
        "UNHEALTHY",
        1,
        1,
        1,
    )
    assert health.dead_letters == 1
    assert [saga.pk for saga in context["stuck"]] == [data_set.pk]
    assert [saga.pk for saga in context["long_running"]] == [data_set.pk]
    assert any("no progress" in text for text in health.recommendations)
    assert any("dead-letter queue" in text for text in health.recommendations)


def test_the_range_decides_which_sagas_count(admin_client, data_set):
    assert dashboard(admin_client, "24h").context["stats"]["total"] == 7
    assert dashboard(admin_client, "7d").context["stats"]["total"] == 8
    assert dashboard(admin_client, "nonsense").context["range_key"] == "24h"


def test_the_chart_counts_sagas_per_minute_by_outcome(admin_client, data_set):
    chart = dashboard(admin_client, "1h").context["chart"]

    assert chart["bucket_minutes"] == 1
    assert sum(bar["total"] for bar in chart["bars"]) == 7
    [busy] = [bar for bar in chart["bars"] if bar["total"] == 6]
    assert busy["counts"] == {"completed": 4, "compensated": 1, "failed": 1, "in_progress": 0}
    assert len(busy["segments"]) == 3


def test_the_chart_is_one_grouped_query_and_buckets_long_ranges(data_set):
    from datetime import timedelta

    from django.test.utils import CaptureQueriesContext

    now = timezone.now()
    with CaptureQueriesContext(connection) as queries:
        chart = throughput_chart(since=now - timedelta(days=7), until=now)

    assert len(queries) == 1
    assert "GROUP BY" in queries[0]["sql"]
    assert chart["bucket_minutes"] == 240
    assert sum(bar["total"] for bar in chart["bars"]) == 8


def test_the_dashboard_is_linked_from_the_admin_index(admin_client):
    html = admin_client.get(reverse("admin:index")).content.decode()

    assert reverse("admin:sagas_dashboard") in html
    assert reverse("admin:sagas_deadlettersaga_changelist") in html


def test_the_definition_diagram_marks_pivot_remote_and_compensations(admin_client):
    definition = registry.get("orders.place_order", 1)
    diagram = definition_diagram(definition)
    steps = {item["step"].name: item for item in diagram["steps"]}

    assert len(diagram["forward_arrows"]) == len(definition.steps) - 1
    assert steps["process_payment"]["notes"] == "pivot, remote"
    assert steps["notify"]["forward_only"] and not steps["notify"]["compensable"]
    assert not steps["validate_customer"]["compensable"]
    assert diagram["compensation_sequence"] == [
        "process_payment",
        "deduct_points",
        "create_order",
        "reserve_stock",
    ]
    assert len(diagram["compensation_arrows"]) == 3
    url = reverse("admin:sagas_definition", kwargs={"name": definition.name, "version": 1})
    html = admin_client.get(url).content.decode()
    assert "PIVOT" in html and "remote" in html and "↶ reserve_stock" in html
    assert "point of no return" in html


def test_pages_need_the_view_permission(client, django_user_model):
    client.force_login(django_user_model.objects.create_user("nobody", is_staff=True))

    assert client.get(reverse("admin:sagas_dashboard")).status_code == 403
    assert client.get(reverse("admin:sagas_definitions")).status_code == 403
    assert admin.site.is_registered(SagaInstance)
