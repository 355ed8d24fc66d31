"""A saga's page: steps, context, timeline, history, and links to the business rows it
touched; the domain admins link back to their saga."""

from __future__ import annotations

import re
from datetime import timedelta
from decimal import Decimal

import pytest
from django.urls import reverse
from django.utils import timezone

from inventory.models import Reservation
from orders.models import Order
from payments.models import Payment
from points.models import PointsEntry
from sagas.admin_views import saga_timeline
from sagas.models import SagaEvent, SagaInstance
from tests.admin.helpers import dead_letter_saga, make_saga
from tests.factories import make_customer

S = SagaInstance.Status
pytestmark = pytest.mark.django_db


def page(admin_client, saga):
    response = admin_client.get(reverse("admin:sagas_sagainstance_change", args=[saga.pk]))
    assert response.status_code == 200
    return response


@pytest.fixture
def order_saga():
    """An order saga with the rows its steps wrote, keyed as the engine keys them."""
    customer = make_customer(points=500)
    order = Order.objects.create(
        customer=customer,
        request_key="req-1",
        total=Decimal("20.00"),
        amount_due=Decimal("15.00"),
        points_used=500,
        currency="EUR",
        payment_method="pm_card_visa",
    )
    saga = make_saga(definition="orders.place_order", business_key=f"order:{order.pk}")
    payment = Payment.objects.create(
        key=f"{saga.pk}:process_payment",
        order_ref=f"order:{order.pk}",
        amount=Decimal("15.00"),
        currency="EUR",
        method="pm_card_visa",
    )
    reservation = Reservation.objects.create(
        key=f"{saga.pk}:reserve_stock", expires_at=timezone.now() + timedelta(minutes=5)
    )
    entry = PointsEntry.objects.create(
        account=customer.points_account,
        key=f"{saga.pk}:deduct_points",
        kind="DEDUCT",
        amount=-500,
    )
    return {
        "saga": saga,
        "order": order,
        "payment": payment,
        "reservation": reservation,
        "entry": entry,
    }


def test_the_page_links_the_business_rows_the_saga_touched(admin_client, order_saga):
    html = page(admin_client, order_saga["saga"]).content.decode()

    assert reverse("admin:orders_order_change", args=[order_saga["order"].pk]) in html
    assert reverse("admin:payments_payment_change", args=[order_saga["payment"].pk]) in html
    assert (
        reverse("admin:inventory_reservation_change", args=[order_saga["reservation"].pk]) in html
    )
    assert reverse("admin:points_pointsentry_change", args=[order_saga["entry"].pk]) in html


def test_the_domain_admins_link_back_to_the_saga(admin_client, order_saga):
    saga_url = reverse("admin:sagas_sagainstance_change", args=[order_saga["saga"].pk])
    pages = [
        reverse("admin:orders_order_changelist"),
        reverse("admin:orders_order_change", args=[order_saga["order"].pk]),
        reverse("admin:payments_payment_changelist"),
        reverse("admin:payments_payment_change", args=[order_saga["payment"].pk]),
        reverse("admin:inventory_reservation_changelist"),
        reverse("admin:inventory_reservation_change", args=[order_saga["reservation"].pk]),
        reverse("admin:points_pointsentry_changelist"),
        reverse("admin:points_pointsentry_change", args=[order_saga["entry"].pk]),
    ]
    for url in pages:
        response = admin_client.get(url)
        assert response.status_code == 200, url
        assert saga_url in response.content.decode(), url


def test_a_key_that_names_no_saga_gets_no_link(admin_client):
    customer = make_customer(points=10)
    entry = customer.points_account.entries.get()

    html = admin_client.get(reverse("admin:points_pointsentry_changelist")).content.decode()

    assert entry.key.startswith("test:")
    assert not re.search(r"/admin/sagas/sagainstance/[0-9a-f-]{36}/change/", html)


def test_the_page_shows_steps_context_timeline_and_history(admin_client):
    saga = dead_letter_saga()

    response = page(admin_client, saga)
    html = response.content.decode()

    assert "<details" in html and "Traceback" in html  # the failed compensation's traceback
    assert "&quot;compensation_fails&quot;" in html  # the context, as JSON
    labels = [bar["label"] for bar in response.context["timeline"].bars]
    assert labels[:3] == ["s1 #1", "s2 #1", "s3 #1"]
    assert "undo s2 #1" in labels
    assert [label for label in labels if label.startswith("undo s1")] == [
        "undo s1 #1",
        "undo s1 #2",
        "undo s1 #3",
    ]
    outcomes = {bar["label"]: bar["outcome"] for bar in response.context["timeline"].bars}
    assert outcomes["s3 #1"] == "failed"
    assert outcomes["undo s2 #1"] == "compensated"
    assert outcomes["undo s1 #3"] == "compensation_failed"
    assert "<svg" in html and 'class="saga-bar saga-bar-failed"' in html
    assert "dead_lettered" in html  # the history table


def test_the_timeline_draws_a_running_attempt_up_to_now():
    saga = make_saga(status=S.EXECUTING)
    started = timezone.now() - timedelta(seconds=30)
    SagaEvent.objects.create(
        saga=saga, kind="step_started", step="s1", attempt=1, created_at=started
    )

    timeline = saga_timeline(saga, list(saga.events.all()), now=started + timedelta(seconds=30))

    [bar] = timeline.bars
    assert bar["outcome"] == "running"
    assert bar["width"] > 100
