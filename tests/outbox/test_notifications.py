from __future__ import annotations

import pytest

from orders.notifications import ORDER_PAID
from sagas.models import OutboxMessage
from sagas.outbox import consumers_for, outbox_put, outbox_relay
from tests.outbox.helpers import processed, refreshed


@pytest.mark.django_db
def test_an_order_paid_message_sends_the_customer_one_email(mailoutbox, settings):
    message = outbox_put(
        topic=ORDER_PAID,
        payload={
            "order_id": 42,
            "customer_email": "ada@example.com",
            "total": "99.90",
            "currency": "EUR",
        },
        key="order:42",
    )

    assert outbox_relay() == 1

    [mail] = mailoutbox
    assert mail.subject == "Your order 42 is paid"
    assert mail.to == ["ada@example.com"]
    assert mail.from_email == settings.DEFAULT_FROM_EMAIL
    assert "99.90 EUR" in mail.body
    assert processed(message) == ["email:order.paid"]
    assert refreshed(message).status == OutboxMessage.Status.SENT


@pytest.mark.django_db
def test_the_email_consumer_listens_to_order_paid():
    assert "email:order.paid" in [receiver.name for receiver in consumers_for(ORDER_PAID)]


@pytest.mark.django_db
def test_a_payload_without_an_address_sends_nothing_and_is_retried(mailoutbox):
    message = outbox_put(
        topic=ORDER_PAID, payload={"order_id": 1, "total": "1.00", "currency": "EUR"}
    )

    assert outbox_relay() == 1

    message = refreshed(message)
    assert (message.status, message.attempts) == (OutboxMessage.Status.PENDING, 1)
    assert "email:order.paid: KeyError" in message.last_error
    assert mailoutbox == []
    assert processed(message) == []
