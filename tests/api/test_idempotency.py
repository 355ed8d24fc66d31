"""Idempotency-Key on POST /api/orders/ and the cancel POST."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest
from django.utils import timezone

from l2c.faults import set_faults
from orders.idempotency import request_fingerprint
from orders.models import IdempotencyRecord, Order
from sagas.models import SagaInstance
from tests.api.conftest import ORDERS_URL, token_client
from tests.concurrency import run_concurrently


def post(client, body, key, **headers):
    return client.post(ORDERS_URL, body, format="json", HTTP_IDEMPOTENCY_KEY=key, **headers)


@pytest.mark.django_db
def test_same_key_and_body_replays_the_first_answer_byte_for_byte(user_client, order_body):
    first = post(user_client, order_body(), "order-1")
    # Key order and spacing differ; the canonical body is the same.
    reordered = dict(reversed(list(order_body().items())))
    second = post(user_client, reordered, "order-1")

    assert first.status_code == second.status_code == 202
    assert second.content == first.content
    assert second["Location"] == first["Location"]
    assert second["Idempotent-Replayed"] == "true"
    assert not first.has_header("Idempotent-Replayed")
    assert Order.objects.count() == 1
    assert SagaInstance.objects.count() == 1
    record = IdempotencyRecord.objects.get()
    assert record.state == IdempotencyRecord.State.DONE
    assert record.response_status == 202
    assert record.expires_at - record.created_at >= timedelta(hours=24)


@pytest.mark.django_db
def test_the_replay_is_the_first_answer_even_after_the_order_moved_on(user_client, order_body):
    first = post(user_client, order_body(), "order-1")
    Order.objects.update(status=Order.Status.PAID)

    second = post(user_client, order_body(), "order-1")

    assert second.content == first.content
    assert second.json()["status"] == "PLACED"


@pytest.mark.django_db
def test_same_key_with_another_body_is_refused_with_422(user_client, order_body):
    post(user_client, order_body(), "order-1")

    changed = post(user_client, order_body(items=[{"sku": "KB-1", "quantity": 3}]), "order-1")

    assert changed.status_code == 422
    assert changed.json()["code"] == "idempotency_key_reused"
    assert Order.objects.count() == 1


@pytest.mark.django_db
def test_same_key_on_another_endpoint_is_refused_with_422(user_client, order_body):
    created = post(user_client, order_body(), "shared-key").json()
    Order.objects.update(status=Order.Status.PAID)

    cancel = user_client.post(
        f"/api/orders/{created['id']}/cancel/",
        order_body(),
        format="json",
        HTTP_IDEMPOTENCY_KEY="shared-key",
    )

    assert cancel.status_code == 422


@pytest.mark.django_db
def test_keys_are_scoped_per_user(user_client, api_user, other_user, order_body):
    mine = post(user_client, order_body(), "order-1")
    theirs = post(token_client(other_user), order_body(), "order-1")

    assert mine.status_code == theirs.status_code == 202
    assert mine.json()["id"] != theirs.json()["id"]
    assert Order.objects.count() == 2
    assert {o.placed_by_id for o in Order.objects.all()} == {api_user.pk, other_user.pk}
    assert IdempotencyRecord.objects.filter(key="order-1").count() == 2


@pytest.mark.django_db
def test_a_request_still_in_flight_gets_409(user_client, api_user, order_body):
    now = timezone.now()
    IdempotencyRecord.objects.create(
        user=api_user,
        key="order-1",
        method="POST",
        path=ORDERS_URL,
        fingerprint=request_fingerprint(order_body()),
        created_at=now,
        claimed_at=now,
        expires_at=now + timedelta(hours=24),
    )

    response = post(user_client, order_body(), "order-1")

    assert response.status_code == 409
    assert response.json()["code"] == "idempotency_key_in_use"
    assert Order.objects.count() == 0


@pytest.mark.django_db
def test_a_claim_left_by_a_crashed_request_is_taken_over(user_client, api_user, order_body):
    long_ago = timezone.now() - timedelta(minutes=5)
    IdempotencyRecord.objects.create(
        user=api_user,
        key="order-1",
        method="POST",
        path=ORDERS_URL,
        fingerprint=request_fingerprint(order_body()),
        created_at=long_ago,
        claimed_at=long_ago,
        expires_at=long_ago + timedelta(hours=24),
    )

    response = post(user_client, order_body(), "order-1")

    assert response.status_code == 202
    assert Order.objects.count() == 1
    assert IdempotencyRecord.objects.get().state == IdempotencyRecord.State.DONE


@pytest.mark.django_db
def test_an_expired_key_is_a_new_request(user_client, order_body):
    first = post(user_client, order_body(), "order-1")
    IdempotencyRecord.objects.update(expires_at=timezone.now() - timedelta(seconds=1))

    again = post(user_client, order_body(items=[{"sku": "CABLE-1", "quantity": 1}]), "order-1")

    assert again.status_code == 202
    assert again.json()["id"] != first.json()["id"]
    assert again.json()["lines"][0]["sku"] == "CABLE-1"
    assert Order.objects.count() == 2
    record = IdempotencyRecord.objects.get()
    assert record.expires_at > timezone.now() + timedelta(hours=23)


@pytest.mark.django_db
def test_a_refused_request_gives_the_key_back(user_client, order_body):
    refused = post(user_client, order_body(items=[{"sku": "KB-1", "quantity": 0}]), "order-1")
    assert refused.status_code == 400
    assert IdempotencyRecord.objects.count() == 0

    fixed = post(user_client, order_body(), "order-1")

    assert fixed.status_code == 202


@pytest.mark.django_db
def test_a_view_that_raises_gives_the_key_back(user_client, order_body, monkeypatch):
    def broken(**kwargs):
        raise RuntimeError("database went away")

    monkeypatch.setattr("orders.apis.order_submit", broken)
    with pytest.raises(RuntimeError):
        post(user_client, order_body(), "order-1")

    assert IdempotencyRecord.objects.count() == 0
    assert Order.objects.count() == 0


@pytest.mark.django_db
def test_without_a_key_every_post_is_a_new_order(user_client, order_body):
    user_client.post(ORDERS_URL, order_body(), format="json")
    user_client.post(ORDERS_URL, order_body(), format="json")

    assert Order.objects.count() == 2
    assert IdempotencyRecord.objects.count() == 0


@pytest.mark.django_db(transaction=True)
def test_ten_concurrent_posts_with_one_key_make_one_order(api_user, order_body):
    body = order_body()
    clients = [token_client(api_user) for _ in range(10)]

    results = run_concurrently(lambda i: post(clients[i], body, "burst-1"), threads=10)

    errors = [r for r in results if isinstance(r, BaseException)]
    assert not errors, errors
    assert Order.objects.count() == 1
    assert SagaInstance.objects.count() == 1
    accepted = [r for r in results if r.status_code == 202]
    assert accepted, [r.status_code for r in results]
    assert {r.content for r in accepted} == {accepted[0].content}
    assert all(r.status_code in (202, 409) for r in results)
    replay = post(clients[0], body, "burst-1")
    assert replay.content == accepted[0].content


@pytest.mark.django_db(transaction=True)
def test_the_second_request_gets_409_while_the_first_is_still_running(api_user, order_body):
    body = order_body()
    first_client, second_client = token_client(api_user), token_client(api_user)
    answers = {}

    def first() -> None:
        try:
            answers["first"] = post(first_client, body, "slow-1")
        finally:
            from django.db import connections

            connections.close_all()

    set_faults({"api.before_response": "sleep:2"})
    try:
        thread = threading.Thread(target=first)
        thread.start()
        deadline = time.monotonic() + 10
        while not IdempotencyRecord.objects.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        second = post(second_client, body, "slow-1")
        thread.join(timeout=30)
    finally:
        set_faults(None)

    from django.db import connection

    if connection.vendor == "sqlite":
        # One writer at a time: the second request's claim waits for the first request to
        # finish, then finds its answer and replays it.
        assert (second.status_code, second.content) == (202, answers["first"].content)
    else:
        assert second.status_code == 409
    assert answers["first"].status_code == 202
    assert Order.objects.count() == 1
    assert SagaInstance.objects.count() == 1
    assert post(second_client, body, "slow-1").content == answers["first"].content
