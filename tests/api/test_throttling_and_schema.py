"""Throttling, the OpenAPI schema and the docs page."""

from __future__ import annotations

import re

import pytest
from django.core.management import call_command
from rest_framework.test import APIClient

from l2c.api import UserThrottle
from orders.models import IdempotencyRecord, Order
from sagas.models import SagaInstance
from tests.api.conftest import ORDERS_URL
from tests.concurrency import run_concurrently


@pytest.fixture
def throttle_rates(settings):
    """Set throttle rates for one test; DRF reloads its settings on the change."""

    def apply(**rates: str) -> None:
        settings.REST_FRAMEWORK = {
            **settings.REST_FRAMEWORK,
            "DEFAULT_THROTTLE_RATES": {"user": "100000/min", "anon": "100000/min", **rates},
        }

    return apply


@pytest.mark.django_db
def test_order_posts_past_the_orders_rate_get_429_and_create_nothing(
    user_client, order_body, throttle_rates
):
    throttle_rates(orders="2/min")

    answers = [
        user_client.post(ORDERS_URL, order_body(), format="json", HTTP_IDEMPOTENCY_KEY=f"k{n}")
        for n in range(4)
    ]

    assert [a.status_code for a in answers] == [202, 202, 429, 429]
    assert answers[2].json()["code"] == "throttled"
    assert int(answers[2]["Retry-After"]) > 0
    assert Order.objects.count() == 2
    assert SagaInstance.objects.count() == 2
    assert IdempotencyRecord.objects.count() == 2
    # Reads are on the user rate, not the orders one.
    assert user_client.get("/api/products/").status_code == 200


@pytest.mark.django_db
def test_requests_past_the_user_rate_get_429(user_client, order_body, throttle_rates):
    throttle_rates(user="3/min")

    answers = [user_client.post(ORDERS_URL, order_body(), format="json") for _ in range(3)]
    answers.append(user_client.get("/api/products/"))

    assert [a.status_code for a in answers] == [202, 202, 202, 429]
    assert Order.objects.count() == 3


@pytest.mark.django_db(transaction=True)
def test_concurrent_requests_are_each_counted(api_user, throttle_rates):
    from tests.api.conftest import token_client

    throttle_rates(user="10/min")
    clients = [token_client(api_user) for _ in range(20)]

    answers = run_concurrently(lambda i: clients[i].get("/api/products/").status_code, 20)

    assert sorted(answers) == [200] * 10 + [429] * 10


@pytest.mark.django_db
def test_the_budget_slides_with_time_and_refused_requests_do_not_use_it(
    user_client, throttle_rates, monkeypatch
):
    throttle_rates(user="2/min")
    clock = [6_000_000.0]  # the start of a minute
    monkeypatch.setattr(UserThrottle, "timer", staticmethod(lambda: clock[0]))

    def get() -> int:
        return user_client.get("/api/products/").status_code

    assert [get(), get(), get(), get()] == [200, 200, 429, 429]
    # Half of the last 60 s lie in the previous minute: its 2 requests count as 1 (had the
    # 2 refused ones counted too, as 2, and this one would be refused).
    clock[0] += 90
    assert [get(), get()] == [200, 429]
    clock[0] += 120  # after a quiet minute, the whole budget
    assert [get(), get(), get()] == [200, 200, 429]


@pytest.mark.django_db
def test_anonymous_clients_are_throttled_by_address(throttle_rates):
    throttle_rates(anon="2/min")
    client = APIClient()

    answers = [client.get("/api/schema/").status_code for _ in range(3)]

    assert answers == [200, 200, 429]


@pytest.mark.django_db
def test_each_user_has_its_own_budget(user_client, other_user, order_body, throttle_rates):
    from tests.api.conftest import token_client

    throttle_rates(orders="1/min")

    assert user_client.post(ORDERS_URL, order_body(), format="json").status_code == 202
    assert user_client.post(ORDERS_URL, order_body(), format="json").status_code == 429
    other = token_client(other_user).post(ORDERS_URL, order_body(), format="json")
    assert other.status_code == 202


def test_schema_is_valid_openapi_without_warnings(tmp_path):
    target = tmp_path / "schema.yaml"

    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(target))

    schema = target.read_text()
    for path in (
        "/api/products/",
        "/api/customers/{customer_id}/",
        "/api/orders/",
        "/api/orders/{order_id}/",
        "/api/orders/{order_id}/cancel/",
        "/api/sagas/{saga_id}/",
    ):
        assert f"  {path}:" in schema
    assert "Idempotency-Key" in schema


@pytest.mark.django_db
def test_schema_endpoint_serves_the_schema():
    response = APIClient().get("/api/schema/", HTTP_ACCEPT="application/json")

    assert response.status_code == 200
    assert "/api/orders/" in response.json()["paths"]


EXTERNAL = re.compile(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", re.IGNORECASE)


@pytest.mark.django_db
def test_docs_page_loads_nothing_from_another_host():
    response = APIClient().get("/api/docs/")

    assert response.status_code == 200
    html = response.content.decode()
    assert "<html" in html.lower()
    assert "drf_spectacular_sidecar" in html
    assert not EXTERNAL.search(html), EXTERNAL.findall(html)
    assert "cdn" not in html.lower()
