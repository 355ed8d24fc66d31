from __future__ import annotations

import io
from decimal import Decimal

import pytest
from django.core.management import CommandError, call_command

from inventory.models import Stock
from inventory.services import ItemIn, stock_confirm, stock_reserve
from points.models import PointsAccount
from points.services import points_deduct
from sagas.engine import saga_start
from tests.factories import make_customer, make_product


def check(*args: str) -> tuple[int, str]:
    out = io.StringIO()
    try:
        call_command("check_invariants", *args, stdout=out)
    except SystemExit as exc:
        return int(exc.code), out.getvalue()
    return 0, out.getvalue()


@pytest.mark.django_db
def test_consistent_books_pass():
    product = make_product(on_hand=10)
    customer = make_customer(points=100)
    stock_reserve(key="a", items=[ItemIn(product.sku, 3)])
    stock_confirm(key="a")
    stock_reserve(key="b", items=[ItemIn(product.sku, 2)])
    points_deduct(key="d", customer_id=customer.pk, amount=40)

    code, out = check("--skip-gateway")

    assert code == 0, out
    assert "stock: ok" in out and "points: ok" in out


@pytest.mark.django_db
def test_stock_or_points_the_ledgers_do_not_explain_are_violations():
    product = make_product(on_hand=10)
    customer = make_customer(points=100)
    Stock.objects.filter(product=product).update(on_hand=11)
    PointsAccount.objects.filter(customer=customer).update(balance=99)

    code, out = check("--skip-gateway")

    assert code == 1
    assert f"{product.sku}: on_hand 11 (ledger 10)" in out
    assert f"customer {customer.pk}: balance 99, ledger 100" in out


@pytest.mark.django_db
def test_a_saga_still_running_past_the_grace_period_is_a_violation():
    saga_start("test.five_steps", data={}, enqueue=False)

    assert check("--skip-gateway")[0] == 0
    code, out = check("--skip-gateway", "--grace", "0")
    assert code == 1 and "still STARTED" in out


@pytest.mark.django_db
def test_a_charge_the_gateway_holds_and_we_do_not_is_a_violation(tmp_path, settings):
    from tests.gateway import API_KEY, GatewayProcess

    gateway = GatewayProcess(tmp_path).start()
    settings.PAYMENT_GATEWAY_URL = gateway.url
    settings.PAYMENT_GATEWAY_API_KEY = API_KEY
    try:
        assert check()[0] == 0
        gateway.client().charge(
            key="forgotten", amount=Decimal("9.99"), currency="EUR", payment_method="pm_card_visa"
        )
        code, out = check()
    finally:
        gateway.stop()

    assert code == 1
    assert "forgotten: gateway charged 9.99, unknown here" in out


def test_bad_options_get_a_clear_error():
    with pytest.raises(CommandError, match="--grace must not be negative"):
        call_command("check_invariants", "--grace", "-1", "--skip-gateway")
