"""The outbox list's requeue action, the editable webhook subscriptions, the audit log."""

from __future__ import annotations

import pytest
from django.contrib.admin.models import LogEntry
from django.urls import reverse

from sagas.models import Intervention, OutboxMessage, WebhookSubscription
from sagas.services import saga_resume
from tests.admin.helpers import dead_letter_saga, make_staff

pytestmark = pytest.mark.django_db
OUTBOX = "admin:sagas_outboxmessage_changelist"


@pytest.fixture(autouse=True)
def no_relay(monkeypatch):
    monkeypatch.setattr("sagas.outbox._relay_soon", lambda: None)


def test_requeue_gives_failed_messages_a_fresh_start_and_leaves_others(admin_client):
    failed = OutboxMessage.objects.create(topic="order.paid", status="FAILED", attempts=3)
    sent = OutboxMessage.objects.create(topic="order.paid", status="SENT", attempts=1)

    response = admin_client.post(
        reverse(OUTBOX),
        {"action": "requeue", "_selected_action": [failed.pk, sent.pk], "index": 0},
    )

    assert response.status_code == 302
    failed.refresh_from_db()
    sent.refresh_from_db()
    assert (failed.status, failed.attempts) == ("PENDING", 0)
    assert sent.status == "SENT"
    assert LogEntry.objects.filter(object_id=str(failed.pk)).count() == 1


def test_requeue_needs_the_change_permission(client):
    client.force_login(make_staff("viewer", "view_outboxmessage"))
    failed = OutboxMessage.objects.create(topic="order.paid", status="FAILED", attempts=3)

    listed = client.get(reverse(OUTBOX))
    forced = client.post(
        reverse(OUTBOX), {"action": "requeue", "_selected_action": [failed.pk], "index": 0}
    )

    assert listed.status_code == 200
    assert listed.context["action_form"] is None  # no action left for this user
    assert forced.status_code == 403
    assert OutboxMessage.objects.get(pk=failed.pk).status == "FAILED"


def test_outbox_messages_are_read_only(admin_client):
    message = OutboxMessage.objects.create(topic="order.paid")

    response = admin_client.post(
        reverse("admin:sagas_outboxmessage_change", args=[message.pk]), {"topic": "x"}
    )

    assert response.status_code == 403


def test_webhook_subscriptions_are_editable(admin_client):
    response = admin_client.post(
        reverse("admin:sagas_webhooksubscription_add"),
        {
            "name": "crm",
            "url": "https://crm.example/hooks",
            "secret": "s3cret",
            "topics": '["order.paid"]',
            "active": "on",
        },
    )

    assert response.status_code == 302
    subscription = WebhookSubscription.objects.get()
    assert (subscription.secret, subscription.topics) == ("s3cret", ["order.paid"])


def test_the_audit_log_lists_interventions_and_finds_them_by_saga(admin_client, admin_user):
    saga = dead_letter_saga()
    saga_resume(saga_id=saga.pk, actor=admin_user, reason="service is back")
    other = dead_letter_saga()
    saga_resume(saga_id=other.pk, actor=admin_user, reason="again")

    response = admin_client.get(
        reverse("admin:sagas_intervention_changelist"), {"q": str(saga.pk)}
    )

    assert [row.saga_id for row in response.context["cl"].result_list] == [saga.pk]
    assert "service is back" in response.content.decode()
    intervention = Intervention.objects.get(saga=saga)
    change = reverse("admin:sagas_intervention_change", args=[intervention.pk])
    assert admin_client.post(change, {"reason": "rewritten"}).status_code == 403
