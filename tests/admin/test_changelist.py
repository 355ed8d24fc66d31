"""The saga list: filters, search, ready-made lists, and a query count that does not grow
with the rows shown."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from sagas.models import SagaInstance
from tests.admin.helpers import make_saga, set_times

S = SagaInstance.Status
pytestmark = pytest.mark.django_db

CHANGELIST = "admin:sagas_sagainstance_changelist"


def listed(admin_client, params=None, name=CHANGELIST) -> set:
    response = admin_client.get(reverse(name), params or {})
    assert response.status_code == 200
    return {row.pk for row in response.context["cl"].result_list}


def count_queries(admin_client, name=CHANGELIST) -> int:
    with CaptureQueriesContext(connection) as queries:
        assert admin_client.get(reverse(name)).status_code == 200
    return len(queries)


@pytest.mark.parametrize(
    "name",
    [
        CHANGELIST,
        "admin:sagas_stucksaga_changelist",
        "admin:sagas_deadlettersaga_changelist",
        "admin:sagas_intervention_changelist",
    ],
)
def test_the_list_makes_as_many_queries_for_50_rows_as_for_5(admin_client, name):
    def add(n):
        for i in range(n):
            saga = make_saga(
                status=[S.EXECUTING, S.FAILED, S.COMPLETED][i % 3],
                business_key=f"order:{i}",
                dead_lettered_at=timezone.now() if i % 3 == 1 else None,
            )
            set_times(saga, created_ago=3600, updated_ago=3000)
            saga.interventions.create(
                actor_name="ops", action="resume", reason="r", status_before="A", status_after="B"
            )

    add(5)
    few = count_queries(admin_client, name)
    add(45)
    many = count_queries(admin_client, name)

    assert many == few


def test_filters_by_status_definition_version_age_dead_letter_and_stuck(admin_client):
    now = timezone.now()
    done = make_saga(status=S.COMPLETED)
    old = make_saga(status=S.COMPLETED, definition="test.delayed")
    set_times(old, created_ago=8 * 86400, updated_ago=8 * 86400)
    stuck = make_saga(status=S.EXECUTING)
    set_times(stuck, created_ago=1200, updated_ago=900)
    letter = make_saga(status=S.FAILED, dead_lettered_at=now)
    resolved = make_saga(status=S.FAILED, dead_lettered_at=now, resolved_at=now)

    assert listed(admin_client, {"status__exact": "FAILED"}) == {letter.pk, resolved.pk}
    assert listed(admin_client, {"definition": "test.delayed"}) == {old.pk}
    assert listed(admin_client, {"version": "1"}) == {
        done.pk,
        old.pk,
        stuck.pk,
        letter.pk,
        resolved.pk,
    }
    assert listed(admin_client, {"created": "1h"}) == {done.pk, stuck.pk, letter.pk, resolved.pk}
    assert listed(admin_client, {"created": "older"}) == {old.pk}
    assert listed(admin_client, {"updated": "7d"}) == {done.pk, stuck.pk, letter.pk, resolved.pk}
    assert listed(admin_client, {"dead_letter": "yes"}) == {letter.pk}
    assert listed(admin_client, {"dead_letter": "resolved"}) == {resolved.pk}
    assert listed(admin_client, {"stuck": "yes"}) == {stuck.pk}
    assert stuck.pk not in listed(admin_client, {"stuck": "no"})


def test_search_finds_an_exact_id_business_key_or_correlation_id(admin_client):
    first = make_saga(business_key="order:7", correlation_id="req-1")
    second = make_saga(business_key="order:70", correlation_id="req-2")

    assert listed(admin_client, {"q": str(first.pk)}) == {first.pk}
    assert listed(admin_client, {"q": "order:70"}) == {second.pk}
    assert listed(admin_client, {"q": "req-1"}) == {first.pk}
    assert listed(admin_client, {"q": "order"}) == set()


def test_the_ready_made_lists(admin_client):
    now = timezone.now()
    stuck = make_saga(status=S.EXECUTING)
    set_times(stuck, created_ago=400, updated_ago=700)
    long_running = make_saga(status=S.COMPENSATING)
    set_times(long_running, created_ago=400, updated_ago=10)
    letter = make_saga(status=S.FAILED, dead_lettered_at=now)
    make_saga(status=S.FAILED, dead_lettered_at=now, resolved_at=now)
    make_saga(status=S.COMPLETED)

    assert listed(admin_client, name="admin:sagas_stucksaga_changelist") == {stuck.pk}
    assert listed(admin_client, name="admin:sagas_longrunningsaga_changelist") == {
        stuck.pk,
        long_running.pk,
    }
    assert listed(admin_client, name="admin:sagas_deadlettersaga_changelist") == {letter.pk}


def test_the_list_shows_a_status_badge_and_the_definition(admin_client):
    make_saga(status=S.FAILED, dead_lettered_at=timezone.now(), business_key="order:5")

    html = admin_client.get(reverse(CHANGELIST)).content.decode()

    assert 'class="saga-status"' in html and ">FAILED</span>" in html
    assert "dead letter</span>" in html
    assert "test.five_steps v1" in html and "order:5" in html


def test_sagas_are_read_only(admin_client):
    saga = make_saga()
    change = reverse("admin:sagas_sagainstance_change", args=[saga.pk])

    response = admin_client.post(change, {"status": "COMPLETED"})

    assert admin_client.get(reverse("admin:sagas_sagainstance_add")).status_code == 403
    assert response.status_code == 403
    assert (
        admin_client.get(reverse("admin:sagas_sagainstance_delete", args=[saga.pk])).status_code
        == 403
    )
    assert "delete_selected" not in dict(
        admin_client.get(reverse(CHANGELIST)).context["action_form"].fields["action"].choices
    )


def test_a_viewer_sees_the_ready_made_lists_with_the_saga_permission(client):
    from tests.admin.helpers import make_staff

    client.force_login(make_staff("viewer"))
    make_saga(status=S.FAILED, dead_lettered_at=timezone.now() - timedelta(minutes=1))

    assert client.get(reverse("admin:sagas_deadlettersaga_changelist")).status_code == 200
    assert client.get(reverse("admin:sagas_dashboard")).status_code == 200
    assert client.get(reverse("admin:sagas_intervention_changelist")).status_code == 200
