"""Every page of the console loads for a superuser."""

from __future__ import annotations

import pytest
from django.contrib import admin
from django.urls import reverse

from sagas.models import Intervention, OutboxMessage, SagaEvent, WebhookSubscription
from sagas.registry import registry
from sagas.services import saga_resume
from tests.admin.helpers import dead_letter_saga, waiting_saga

pytestmark = pytest.mark.django_db


@pytest.fixture
def rows(admin_user):
    failed = dead_letter_saga()
    saga_resume(saga_id=failed.pk, actor=admin_user, reason="fixed the service")
    waiting = waiting_saga()
    OutboxMessage.objects.create(topic="order.paid", key="order:1", payload={"order_id": 1})
    WebhookSubscription.objects.create(name="crm", url="https://crm.example/hook", secret="s")
    return {"failed": failed, "waiting": waiting}


def test_every_changelist_and_add_page_loads(admin_client, rows):
    for model, model_admin in admin.site._registry.items():
        info = f"{model._meta.app_label}_{model._meta.model_name}"
        response = admin_client.get(reverse(f"admin:{info}_changelist"))
        assert response.status_code == 200, info
        if model_admin.has_add_permission(response.wsgi_request):
            assert admin_client.get(reverse(f"admin:{info}_add")).status_code == 200


def test_console_pages_load(admin_client, rows):
    for saga in rows.values():
        response = admin_client.get(reverse("admin:sagas_sagainstance_change", args=[saga.pk]))
        assert response.status_code == 200
        assert b"saga-timeline" in response.content
    for key in ("1h", "24h", "7d", "30d", "bogus"):
        response = admin_client.get(reverse("admin:sagas_dashboard"), {"range": key})
        assert response.status_code == 200
    assert admin_client.get(reverse("admin:sagas_definitions")).status_code == 200
    for definition in registry.all():
        url = reverse(
            "admin:sagas_definition",
            kwargs={"name": definition.name, "version": definition.version},
        )
        assert admin_client.get(url).status_code == 200, definition.name
    for model in (Intervention, OutboxMessage, WebhookSubscription):
        row = model.objects.first()
        info = f"{model._meta.app_label}_{model._meta.model_name}"
        url = reverse(f"admin:{info}_change", args=[row.pk])
        assert admin_client.get(url).status_code == 200
    assert admin_client.get(reverse("admin:index")).status_code == 200
    assert SagaEvent.objects.exists()


def test_unknown_definition_and_saga_are_not_found(admin_client):
    url = reverse("admin:sagas_definition", kwargs={"name": "nope", "version": 1})
    assert admin_client.get(url).status_code == 404
    url = reverse("admin:sagas_sagainstance_intervene", args=["not-a-uuid", "retry_now"])
    assert admin_client.get(url).status_code == 404
