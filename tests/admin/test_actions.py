"""Operator interventions from the admin: behind a permission each, confirmed with a reason,
audited three ways (Intervention, LogEntry, operator event), effective once."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.admin.models import LogEntry
from django.contrib.messages import get_messages
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from sagas.models import Intervention, SagaEvent, SagaInstance
from sagas.services import saga_resume
from tests.admin.helpers import dead_letter_saga, make_staff, waiting_saga
from tests.concurrency import run_concurrently
from tests.sagas.helpers import run, start

S = SagaInstance.Status
pytestmark = pytest.mark.django_db

CHANGELIST = "admin:sagas_sagainstance_changelist"

# action -> (permission, saga in a state it applies to, extra form fields, status after)
CASES = {
    "retry_now": ("retry_saga", waiting_saga, {}, S.EXECUTING),
    "resume": ("resume_saga", dead_letter_saga, {}, S.COMPENSATING),
    "compensate": ("compensate_saga", waiting_saga, {}, S.COMPENSATING),
    "skip_step": ("skip_step", waiting_saga, {"step": "d3"}, S.EXECUTING),
    "cancel": ("cancel_saga", waiting_saga, {}, S.COMPENSATING),
    "dead_letter_retry": ("resolve_dead_letter", dead_letter_saga, {}, S.COMPENSATING),
    "dead_letter_resolve": ("resolve_dead_letter", dead_letter_saga, {}, S.FAILED),
}


def action_names(response) -> list[str]:
    return [name for name, _ in response.context["action_form"].fields["action"].choices]


def messages_of(response) -> list[str]:
    return [str(message) for message in get_messages(response.wsgi_request)]


def intervene_url(saga, action: str) -> str:
    return reverse("admin:sagas_sagainstance_intervene", args=[saga.pk, action])


def after_the_first(action: str, saga) -> None:
    """What happens between two operators' clicks: a retried saga is run by a worker."""
    if action == "retry_now":
        assert run(saga).status == S.COMPLETED


@pytest.mark.parametrize("action", CASES)
def test_without_the_permission_the_action_is_hidden_and_refused(client, action):
    permission, make, extra, _ = CASES[action]
    others = {p for name, (p, *_) in CASES.items() if p != permission}
    client.force_login(make_staff("viewer", *others))
    saga = make()

    changelist = client.get(reverse(CHANGELIST))
    page = client.get(reverse("admin:sagas_sagainstance_change", args=[saga.pk]))
    forced = client.post(
        reverse(CHANGELIST),
        {"action": action, "_selected_action": [saga.pk], "index": 0},
    )
    confirmed = client.post(
        reverse(CHANGELIST),
        {"action": action, "_selected_action": [saga.pk], "post": "yes", "reason": "x", **extra},
    )

    assert changelist.status_code == 200
    assert action not in action_names(changelist)
    assert intervene_url(saga, action) not in page.content.decode()
    assert forced.status_code == 403
    assert confirmed.status_code == 403
    assert client.get(intervene_url(saga, action)).status_code == 403
    assert client.post(intervene_url(saga, action), {"reason": "x", **extra}).status_code == 403
    assert not Intervention.objects.exists()


@pytest.mark.parametrize("action", CASES)
def test_the_action_confirms_requires_a_reason_and_audits_once(client, action):
    permission, make, extra, status_after = CASES[action]
    operator = make_staff("ops", permission)
    client.force_login(operator)
    saga = make()
    before = saga.status
    selected = {"action": action, "_selected_action": [saga.pk]}

    assert action in action_names(client.get(reverse(CHANGELIST)))
    first = client.post(reverse(CHANGELIST), {**selected, "index": 0})
    assert first.status_code == 200
    assert "admin/sagas/confirm_intervention.html" in [t.name for t in first.templates]
    assert not Intervention.objects.exists()

    empty = client.post(reverse(CHANGELIST), {**selected, "post": "yes", "reason": "  ", **extra})
    assert empty.status_code == 200
    assert empty.context["form"].errors["reason"]
    assert not Intervention.objects.exists()
    assert SagaInstance.objects.get(pk=saga.pk).status == before

    done = client.post(
        reverse(CHANGELIST), {**selected, "post": "yes", "reason": "customer called", **extra}
    )
    assert done.status_code == 302
    saga.refresh_from_db()
    assert saga.status == status_after
    [intervention] = Intervention.objects.all()
    assert (intervention.actor, intervention.reason, intervention.effective) == (
        operator,
        "customer called",
        True,
    )
    assert intervention.status_before == before
    [log] = LogEntry.objects.filter(object_id=str(saga.pk))
    assert log.user == operator and "customer called" in log.change_message
    event = SagaEvent.objects.filter(saga=saga, kind=SagaEvent.Kind.OPERATOR).get()
    assert (event.actor, event.reason, event.detail["before"]) == (
        "ops",
        "customer called",
        before,
    )

    after_the_first(action, saga)
    again = client.post(
        reverse(CHANGELIST),
        {**selected, "post": "yes", "reason": "me too", **extra},
        follow=True,
    )
    assert any("No effect" in text for text in messages_of(again))
    assert [i.effective for i in Intervention.objects.order_by("id")] == [True, False]


@pytest.mark.parametrize("action", CASES)
def test_the_saga_page_button_confirms_and_acts(client, action):
    permission, make, extra, status_after = CASES[action]
    client.force_login(make_staff("ops", permission))
    saga = make()
    url = intervene_url(saga, action)

    page = client.get(reverse("admin:sagas_sagainstance_change", args=[saga.pk]))
    assert url in page.content.decode()
    confirmation = client.get(url)
    assert confirmation.status_code == 200
    assert "reason" in confirmation.context["form"].fields
    assert client.post(url, {"reason": "", **extra}).status_code == 200
    assert not Intervention.objects.exists()

    response = client.post(url, {"reason": "operator checked the ledger", **extra}, follow=True)

    assert response.redirect_chain[-1][0] == reverse(
        "admin:sagas_sagainstance_change", args=[saga.pk]
    )
    assert SagaInstance.objects.get(pk=saga.pk).status == status_after
    assert Intervention.objects.get().effective
    assert LogEntry.objects.filter(object_id=str(saga.pk)).count() == 1
    assert "operator checked the ledger" in response.content.decode()  # in the history


def test_skip_step_offers_the_steps_and_suggests_the_first_not_done(client):
    client.force_login(make_staff("ops", "skip_step"))
    saga = waiting_saga()

    response = client.get(intervene_url(saga, "skip_step"))

    field = response.context["form"].fields["step"]
    assert field.choices == [("d1", "d1 (completed)"), ("d2", "d2 (completed)"), ("d3", "d3")]
    assert field.initial == "d3"


def test_a_busy_saga_gives_an_error_message_not_a_server_error(client):
    client.force_login(make_staff("ops", "compensate_saga"))
    saga = waiting_saga()
    SagaInstance.objects.filter(pk=saga.pk).update(
        lease_owner="worker-1", lease_expires_at=timezone.now() + timedelta(minutes=1)
    )

    response = client.post(intervene_url(saga, "compensate"), {"reason": "stop"}, follow=True)

    assert response.status_code == 200
    assert any("refused" in text and "worker-1" in text for text in messages_of(response))
    assert not Intervention.objects.exists()
    assert not LogEntry.objects.exists()


def test_an_invalid_intervention_gives_an_error_message(client):
    client.force_login(make_staff("ops", "compensate_saga"))
    saga = run(start("test.pivoted", transient={"p3": 99}))
    saga_resume(saga_id=saga.pk, actor=None, reason="try again")  # EXECUTING past the pivot

    response = client.post(intervene_url(saga, "compensate"), {"reason": "undo"}, follow=True)

    assert any("pivot" in text for text in messages_of(response))
    assert SagaInstance.objects.get(pk=saga.pk).status == S.EXECUTING
    assert not Intervention.objects.filter(action="compensate").exists()


def test_two_sagas_in_one_action_are_handled_one_by_one(client):
    client.force_login(make_staff("ops", "resolve_dead_letter"))
    first, second = dead_letter_saga(), dead_letter_saga()
    payload = {
        "action": "dead_letter_resolve",
        "_selected_action": [first.pk, second.pk],
        "post": "yes",
        "reason": "refunded by hand",
    }

    client.post(reverse(CHANGELIST), payload)

    assert Intervention.objects.filter(effective=True).count() == 2
    assert SagaInstance.objects.filter(resolved_by="ops").count() == 2


def test_csrf_is_enforced(db):
    client = Client(enforce_csrf_checks=True)
    client.force_login(make_staff("ops", "resume_saga"))
    saga = dead_letter_saga()

    response = client.post(intervene_url(saga, "resume"), {"reason": "no token"})

    assert response.status_code == 403
    assert not Intervention.objects.exists()


def test_the_ready_made_lists_run_the_actions_too(client):
    client.force_login(make_staff("ops", "resolve_dead_letter"))
    saga = dead_letter_saga()
    url = reverse("admin:sagas_deadlettersaga_changelist")

    listed = client.get(url)
    done = client.post(
        url,
        {
            "action": "dead_letter_resolve",
            "_selected_action": [saga.pk],
            "post": "yes",
            "reason": "written off",
        },
    )

    assert listed.status_code == 200
    assert [row.pk for row in listed.context["cl"].result_list] == [saga.pk]
    assert done.status_code == 302
    assert SagaInstance.objects.get(pk=saga.pk).resolved_at is not None
    assert client.get(url).context["cl"].result_count == 0


@pytest.mark.django_db(transaction=True)
def test_two_operators_confirming_at_once_make_one_effect():
    saga = dead_letter_saga()
    operators = [make_staff(f"ops{i}", "resolve_dead_letter") for i in range(2)]

    def confirm(i: int) -> int:
        client = Client()
        client.force_login(operators[i])
        return client.post(
            intervene_url(saga, "dead_letter_resolve"), {"reason": f"refunded by ops{i}"}
        ).status_code

    assert run_concurrently(confirm, threads=2) == [302, 302]
    assert sorted(i.effective for i in Intervention.objects.filter(saga=saga)) == [False, True]
    assert LogEntry.objects.filter(object_id=str(saga.pk)).count() == 2
    assert SagaInstance.objects.get(pk=saga.pk).resolved_by in {"ops0", "ops1"}
