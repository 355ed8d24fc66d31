"""Orders through the API, run by a real qcluster against the gateway simulator process."""

from __future__ import annotations

import io
import random
from collections import Counter
from decimal import Decimal

import pytest
from django.core.management import call_command
from django.db import close_old_connections

from inventory.models import Restock, Stock
from orders.models import Order
from points.selectors import points_balance
from sagas.models import OutboxMessage, SagaInstance
from tests.api.conftest import make_user, token_client
from tests.factories import make_customer, make_product
from tests.workers import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def shop(qcluster_with_gateway):
    qcluster_with_gateway.start()
    user = make_user("shop")
    return {
        "client": token_client(user),
        "cluster": qcluster_with_gateway,
        "products": [make_product(sku=f"P{i}", price=f"{5 + i}.50", on_hand=60) for i in range(4)],
        "customers": [make_customer(points=3000) for _ in range(5)],
    }


def post_order(client, customer, items, *, method="pm_card_visa", points=0, key=None):
    headers = {"HTTP_IDEMPOTENCY_KEY": key} if key else {}
    response = client.post(
        "/api/orders/",
        {
            "customer": customer.pk,
            "items": [{"sku": sku, "quantity": qty} for sku, qty in items],
            "points_to_use": points,
            "payment_method": method,
        },
        format="json",
        **headers,
    )
    assert response.status_code == 202, response.content
    return response.json()


def wait_terminal(order_ids, cluster, timeout=180):
    def done() -> bool:
        close_old_connections()
        keys = [f"order:{pk}" for pk in order_ids]
        sagas = SagaInstance.objects.filter(business_key__in=keys)
        return (
            sagas.count() == len(keys)
            and not sagas.exclude(status__in=SagaInstance.TERMINAL).exists()
        )

    wait_for(done, timeout=timeout, what=lambda: cluster.log_tail(60))


def check_invariants_once_delivered(cluster) -> None:
    """The invariant command with no grace, once the outbox has delivered what the sagas put.

    A saga's worker relays the messages of its steps right after the saga's last commit (and
    the timer relays every few seconds after a restart), so a message committed a moment
    before the last saga turned terminal is not late yet. A message that a killed relay had
    claimed waits out the claim (``OUTBOX_CLAIM_SECONDS``, short in these clusters). Wait for
    the relay, then require everything, with the command's report in the failure."""

    def pending():
        close_old_connections()
        return OutboxMessage.objects.filter(status=OutboxMessage.Status.PENDING)

    def report() -> str:
        rows = pending().values_list("id", "topic", "attempts", "next_attempt_at")[:20]
        listed = "\n".join(f"  {row}" for row in rows)
        return f"PENDING outbox messages:\n{listed}\n{cluster.log_tail(60)}"

    wait_for(lambda: not pending().exists(), timeout=60, what=report)
    out = io.StringIO()
    try:
        call_command("check_invariants", "--grace", "0", stdout=out)
    except SystemExit:
        pytest.fail(f"check_invariants found violations:\n{out.getvalue()}")
    assert "VIOLATED" not in out.getvalue()


def order_status(order_id) -> str:
    return Order.objects.values_list("status", flat=True).get(pk=order_id)


@pytest.mark.parametrize(
    ("method", "stock_wanted", "points", "expected"),
    [
        ("pm_card_visa", 2, 200, "PAID"),
        ("pm_card_chargeDeclined", 2, 200, "CANCELLED"),
        ("pm_card_visa", 999, 0, "FAILED"),  # insufficient stock
        ("pm_card_visa", 1, 5000, "CANCELLED"),  # not enough points
        ("pm_card_flaky", 2, 0, "PAID"),
    ],
)
def test_an_order_through_the_api_ends_as_its_payment_decides(
    shop, gateway, method, stock_wanted, points, expected
):
    product, customer = shop["products"][0], shop["customers"][0]
    if points > 3000:
        customer = make_customer(points=10)  # asks for more points than it has
        points = 500
    customer_points = points_balance(customer_id=customer.pk)

    body = post_order(
        shop["client"], customer, [(product.sku, stock_wanted)], method=method, points=points
    )
    wait_terminal([body["id"]], shop["cluster"])

    status = order_status(body["id"])
    ledger = gateway.client().ledger()
    on_hand, reserved = Stock.objects.filter(product=product).values_list("on_hand", "reserved")[0]
    assert status == expected
    assert reserved == 0
    if expected == "PAID":
        order = Order.objects.get(pk=body["id"])
        assert on_hand == 60 - stock_wanted
        assert points_balance(customer_id=customer.pk) == customer_points - order.points_used
        assert ledger["charges"] == 1
        assert Decimal(ledger["charged"]) == order.amount_due
    else:
        assert on_hand == 60
        assert points_balance(customer_id=customer.pk) == customer_points
        assert Decimal(ledger["charged"]) == Decimal(ledger["refunded"])


def test_a_slow_gateway_ends_with_both_ledgers_agreeing(shop, gateway):
    product, customer = shop["products"][1], shop["customers"][1]

    body = post_order(shop["client"], customer, [(product.sku, 1)], method="pm_card_slow")
    wait_terminal([body["id"]], shop["cluster"])

    order = Order.objects.get(pk=body["id"])
    ledger = gateway.client().ledger()
    net = Decimal(ledger["charged"]) - Decimal(ledger["refunded"])
    assert ledger["charges"] == 1
    if order.status == "PAID":
        assert net == order.amount_due
    else:
        assert order.status == "CANCELLED" and net == 0


def test_cancelling_a_paid_order_refunds_once_and_the_books_balance(shop, gateway):
    product, customer = shop["products"][2], shop["customers"][2]
    body = post_order(shop["client"], customer, [(product.sku, 3)], points=500)
    wait_terminal([body["id"]], shop["cluster"])
    assert order_status(body["id"]) == "PAID"

    response = shop["client"].post(
        f"/api/orders/{body['id']}/cancel/", {"reason": "changed my mind"}, format="json"
    )
    assert response.status_code == 202, response.content
    wait_for(
        lambda: SagaInstance.objects.filter(
            business_key=f"order:{body['id']}",
            definition="orders.cancel_order",
            status="COMPLETED",
        ).exists(),
        what=lambda: shop["cluster"].log_tail(60),
    )

    ledger = gateway.client().ledger()
    assert order_status(body["id"]) == "CANCELLED"
    assert (ledger["charges"], ledger["refunds"]) == (1, 1)
    assert ledger["charged"] == ledger["refunded"]
    assert points_balance(customer_id=customer.pk) == 3000
    assert Stock.objects.get(product=product).on_hand == 60
    check_invariants_once_delivered(shop["cluster"])


METHODS = (
    ["pm_card_visa"] * 12
    + ["pm_card_chargeDeclined"] * 4
    + ["pm_card_flaky"] * 3
    + ["pm_card_slow"]
)


def place_random_orders(shop, count: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    ids = []
    for _ in range(count):
        lines = rng.sample(shop["products"], rng.randint(1, 2))
        body = post_order(
            shop["client"],
            rng.choice(shop["customers"]),
            [(p.sku, rng.randint(1, 3)) for p in lines],
            method=rng.choice(METHODS),
            points=rng.choice([0, 0, 100, 400]),
        )
        ids.append(body["id"])
    return ids


def assert_books_balance(gateway) -> None:
    """Stock, money and points are conserved; every saga ended."""
    for product in Stock.objects.select_related("product"):
        sold = sum(
            line.quantity
            for order in Order.objects.filter(status="PAID", lines__sku=product.product.sku)
            for line in order.lines.filter(sku=product.product.sku)
        )
        restocked = sum(
            Restock.objects.filter(product=product.product).values_list("quantity", flat=True)
        )
        assert product.reserved == 0
        assert product.on_hand == restocked - sold, product.product.sku
    ledger = gateway.client().ledger()
    paid = sum(
        Order.objects.filter(status="PAID").values_list("amount_due", flat=True), Decimal(0)
    )
    assert Decimal(ledger["charged"]) - Decimal(ledger["refunded"]) == paid
    for customer in Order.objects.values_list("customer_id", flat=True).distinct():
        used = sum(
            Order.objects.filter(customer_id=customer, status="PAID").values_list(
                "points_used", flat=True
            )
        )
        assert points_balance(customer_id=customer) == 3000 - used
    assert not SagaInstance.objects.exclude(status__in=SagaInstance.TERMINAL).exists()


def test_a_mixed_run_of_two_hundred_orders_keeps_every_invariant(shop, gateway):
    ids = place_random_orders(shop, 200, seed=7)
    wait_terminal(ids, shop["cluster"], timeout=300)

    statuses = Counter(order_status(pk) for pk in ids)
    assert set(statuses) <= {"PAID", "CANCELLED", "FAILED"}
    assert statuses["PAID"] > 0 and statuses["CANCELLED"] > 0
    assert_books_balance(gateway)
    check_invariants_once_delivered(shop["cluster"])


def test_two_hundred_orders_survive_a_kill_of_the_whole_cluster(shop, gateway):
    ids = place_random_orders(shop, 100, seed=11)
    wait_for(
        lambda: SagaInstance.objects.filter(status="COMPLETED").count() >= 10,
        what=lambda: shop["cluster"].log_tail(60),
    )
    shop["cluster"].kill()
    ids += place_random_orders(shop, 100, seed=12)  # accepted while no worker runs
    shop["cluster"].start()
    wait_terminal(ids, shop["cluster"], timeout=300)

    assert_books_balance(gateway)
    check_invariants_once_delivered(shop["cluster"])
