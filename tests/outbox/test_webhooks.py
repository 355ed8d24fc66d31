from __future__ import annotations

import json
from decimal import Decimal

import pytest
from django.db import transaction
from django.utils.dateparse import parse_datetime

from sagas.models import OutboxMessage, WebhookSubscription
from sagas.outbox import RELAY_TASK, consumers_for, outbox_publish, outbox_put, outbox_relay
from sagas.webhooks import (
    WebhookDeliveryError,
    webhook_post,
    webhook_signature,
    webhook_verify,
)
from tests.concurrency import run_concurrently
from tests.outbox.helpers import closed_port, make_due, processed, refreshed
from tests.workers import wait_for

S = OutboxMessage.Status
TOPIC = "shipment.created"


def subscribe(url: str, name: str = "crm", **fields) -> WebhookSubscription:
    return WebhookSubscription.objects.create(
        name=name, url=url, secret=fields.pop("secret", f"secret-of-{name}"), **fields
    )


def put(topic: str = TOPIC, **payload) -> OutboxMessage:
    return outbox_put(topic=topic, payload=payload or {"order_id": 7}, key="order:7")


def test_a_signature_verifies_only_the_same_body_under_the_same_secret():
    body = b'{"id":"1","payload":{"total":"10.50"}}'
    signature = webhook_signature("s3cret", body)

    assert signature.startswith("sha256=") and len(signature) == len("sha256=") + 64
    assert webhook_verify("s3cret", body, signature)
    assert not webhook_verify("other", body, signature)
    assert not webhook_verify("s3cret", body + b" ", signature)
    assert not webhook_verify("s3cret", body, signature.removeprefix("sha256="))
    assert not webhook_verify("s3cret", body, None)
    assert not webhook_verify("s3cret", body, "sha256=é")


@pytest.mark.django_db
def test_a_subscription_receives_the_message_signed_with_its_secret(receiver):
    subscription = subscribe(receiver.url, secret="s3cret")
    message = outbox_put(
        topic=TOPIC, payload={"order_id": 7, "total": Decimal("10.50")}, key="order:7"
    )

    assert outbox_relay() == 1

    assert refreshed(message).status == S.SENT
    [request] = receiver.requests
    assert request.path == "/hooks/l2c"
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["X-L2C-Message-Id"] == str(message.pk)
    assert request.headers["X-L2C-Topic"] == TOPIC
    assert webhook_verify("s3cret", request.body, request.headers["X-L2C-Signature"])
    document = json.loads(request.body)
    assert document == {
        "id": str(message.pk),
        "topic": TOPIC,
        "key": "order:7",
        "payload": {"order_id": 7, "total": "10.50"},
        "created_at": document["created_at"],
    }
    # JSON carries milliseconds.
    created = message.created_at
    assert parse_datetime(document["created_at"]) == created.replace(
        microsecond=created.microsecond // 1000 * 1000
    )
    assert processed(message) == [f"webhook:{subscription.pk}"]


@pytest.mark.django_db
def test_only_active_subscriptions_to_the_topic_receive_it(receiver):
    shipments = subscribe(f"{receiver.url}?to=shipments", "shipments", topics=[TOPIC])
    everything = subscribe(f"{receiver.url}?to=everything", "everything", topics=[])
    subscribe(f"{receiver.url}?to=inactive", "inactive", active=False)
    created = put(TOPIC)
    cancelled = put("shipment.cancelled")

    assert outbox_relay() == 2

    assert sorted((r.path, r.headers["X-L2C-Topic"]) for r in receiver.requests) == [
        ("/hooks/l2c?to=everything", "shipment.cancelled"),
        ("/hooks/l2c?to=everything", TOPIC),
        ("/hooks/l2c?to=shipments", TOPIC),
    ]
    assert processed(created) == sorted([f"webhook:{shipments.pk}", f"webhook:{everything.pk}"])
    assert processed(cancelled) == [f"webhook:{everything.pk}"]
    assert [c.name for c in consumers_for("shipment.cancelled")] == [f"webhook:{everything.pk}"]


@pytest.mark.django_db
def test_a_receiver_failing_twice_gets_the_message_on_the_third_attempt(receiver):
    receiver.answer(500, 500)
    subscription = subscribe(receiver.url)
    message = put()

    for attempt in (1, 2):
        assert outbox_relay() == 1
        message = refreshed(message)
        assert (message.status, message.attempts) == (S.PENDING, attempt)
        assert message.last_error.startswith(
            f"webhook:{subscription.pk}: WebhookDeliveryError: HTTP 500"
        )
        make_due(message)
    assert outbox_relay() == 1

    message = refreshed(message)
    assert (message.status, message.attempts) == (S.SENT, 2)
    assert [r.headers["X-L2C-Message-Id"] for r in receiver.requests] == [str(message.pk)] * 3
    assert processed(message) == [f"webhook:{subscription.pk}"]

    # The dedupe table records the one successful delivery: publishing again sends nothing.
    assert outbox_publish(message=message) == []
    assert len(receiver.requests) == 3


@pytest.mark.django_db
@pytest.mark.parametrize("status", [301, 400, 404, 503])
def test_any_answer_but_2xx_is_a_failed_delivery(receiver, status):
    receiver.answer(status)
    subscription = subscribe(receiver.url)
    message = put()

    assert outbox_publish(message=message) == [
        f"webhook:{subscription.pk}: WebhookDeliveryError: HTTP {status} from 127.0.0.1"
    ]
    assert processed(message) == []


@pytest.mark.django_db
def test_an_unreachable_receiver_is_a_failed_delivery():
    subscription = subscribe(f"http://127.0.0.1:{closed_port()}/hook")
    message = put()

    [error] = outbox_publish(message=message)

    assert error.startswith(f"webhook:{subscription.pk}: WebhookDeliveryError: ")
    assert "ConnectionRefusedError" in error
    assert processed(message) == []


@pytest.mark.django_db
def test_a_receiver_slower_than_the_timeout_is_a_failed_delivery(receiver, settings):
    settings.SAGAS = {**settings.SAGAS, "WEBHOOK_TIMEOUT": 0.2}
    subscription = subscribe(receiver.url)
    message = put()
    receiver.gate.clear()  # the receiver holds its answer until the test lets it go

    try:
        [error] = outbox_publish(message=message)
    finally:
        receiver.gate.set()

    assert error.startswith(f"webhook:{subscription.pk}: WebhookDeliveryError: ")
    assert "timed out" in error
    assert len(receiver.requests) == 1
    assert processed(message) == []


@pytest.mark.parametrize("url", ["ftp://example.com/in", "http://example.com:99999/in"])
def test_a_url_that_is_not_plain_http_is_refused(url):
    subscription = WebhookSubscription(name="bad", url=url, secret="x")
    message = OutboxMessage(topic=TOPIC)

    with pytest.raises(WebhookDeliveryError, match="unsupported webhook URL"):
        webhook_post(subscription=subscription, message=message)


def test_concurrent_relays_post_a_message_once(transactional_db, receiver):
    subscription = subscribe(receiver.url)
    message = put()

    results = run_concurrently(lambda i: outbox_relay(), threads=5)

    assert sorted(results) == [0, 0, 0, 0, 1]
    assert len(receiver.requests) == 1
    assert refreshed(message).status == S.SENT
    assert processed(message) == [f"webhook:{subscription.pk}"]


@pytest.mark.slow
def test_a_committed_message_reaches_its_subscriber_through_the_prompt_relay_task(
    qcluster, receiver
):
    from django_q.models import Success

    subscription = subscribe(receiver.url)
    # Q_SAVE_LIMIT keeps the record of successful tasks, to see the prompt task itself ran
    # (the worker's timer relays too, so the message alone would not show it).
    qcluster.start(Q_SAVE_LIMIT="100")

    with transaction.atomic():
        message = put()

    wait_for(
        lambda: Success.objects.filter(func=RELAY_TASK).exists(),
        timeout=60,
        what="the prompt relay task to run in a worker",
    )
    wait_for(lambda: refreshed(message).status == S.SENT, timeout=60, what="the relay")
    assert [r.headers["X-L2C-Message-Id"] for r in receiver.requests] == [str(message.pk)]
    assert processed(message) == [f"webhook:{subscription.pk}"]
