from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from inventory.exceptions import InsufficientStock, UnknownProduct
from inventory.models import Reservation, Restock, Stock
from inventory.selectors import product_list_available
from inventory.services import (
    ItemIn,
    reservation_expire_due,
    stock_confirm,
    stock_release,
    stock_reserve,
    stock_restock,
)
from tests.concurrency import run_concurrently
from tests.factories import make_product


def stock_of(product) -> Stock:
    return Stock.objects.get(product=product)


@pytest.mark.django_db(transaction=True)
def test_twenty_threads_reserving_the_last_unit_give_exactly_one_reservation():
    product = make_product(on_hand=1)

    results = run_concurrently(
        lambda i: stock_reserve(key=f"race:{i}", items=[ItemIn(product.sku, 1)]), threads=20
    )

    winners = [r for r in results if isinstance(r, Reservation)]
    losers = [r for r in results if isinstance(r, InsufficientStock)]
    assert len(winners) == 1
    assert len(losers) == 19
    assert Reservation.objects.count() == 1
    stock = stock_of(product)
    assert (stock.on_hand, stock.reserved) == (1, 1)


@pytest.mark.django_db(transaction=True)
def test_concurrent_reservations_of_two_products_in_opposite_orders_do_not_deadlock():
    a = make_product(on_hand=100)
    b = make_product(on_hand=100)

    def reserve(i: int) -> Reservation:
        items = [ItemIn(a.sku, 1), ItemIn(b.sku, 1)]
        return stock_reserve(key=f"pair:{i}", items=items if i % 2 else items[::-1])

    results = run_concurrently(reserve, threads=16)

    assert all(isinstance(r, Reservation) for r in results), results
    assert stock_of(a).reserved == 16
    assert stock_of(b).reserved == 16


@pytest.mark.django_db
def test_stock_reserve_is_idempotent_on_key():
    product = make_product(on_hand=5)

    first = stock_reserve(key="k1", items=[ItemIn(product.sku, 2)])
    second = stock_reserve(key="k1", items=[ItemIn(product.sku, 2)])

    assert first.pk == second.pk
    assert stock_of(product).reserved == 2


@pytest.mark.django_db
def test_insufficient_stock_leaves_no_reservation_and_no_partial_hold():
    plenty = make_product(on_hand=10)
    scarce = make_product(on_hand=1)

    with pytest.raises(InsufficientStock) as caught:
        stock_reserve(key="k", items=[ItemIn(plenty.sku, 3), ItemIn(scarce.sku, 2)])

    assert caught.value.code == "insufficient_stock"
    assert caught.value.extra["sku"] == scarce.sku
    assert not Reservation.objects.filter(key="k").exists()
    assert stock_of(plenty).reserved == 0


@pytest.mark.django_db
def test_unknown_or_inactive_product_is_refused():
    inactive = make_product(active=False)

    with pytest.raises(UnknownProduct) as caught:
        stock_reserve(key="k", items=[ItemIn("NOPE", 1), ItemIn(inactive.sku, 1)])

    assert caught.value.extra["skus"] == sorted(["NOPE", inactive.sku])
    assert not Reservation.objects.exists()


@pytest.mark.django_db
def test_stock_release_twice_gives_units_back_once():
    product = make_product(on_hand=5)
    stock_reserve(key="k", items=[ItemIn(product.sku, 3)])

    stock_release(key="k", reason="order cancelled")
    again = stock_release(key="k", reason="order cancelled")

    assert again.status == Reservation.Status.RELEASED
    assert stock_of(product).reserved == 0


@pytest.mark.django_db
def test_releasing_a_key_that_reserved_nothing_is_a_no_op():
    assert stock_release(key="never-reserved") is None


@pytest.mark.django_db
def test_stock_confirm_twice_sells_the_units_once():
    product = make_product(on_hand=5)
    stock_reserve(key="k", items=[ItemIn(product.sku, 2)])

    stock_confirm(key="k")
    stock_confirm(key="k")

    stock = stock_of(product)
    assert (stock.on_hand, stock.reserved) == (3, 0)


@pytest.mark.django_db
def test_released_reservation_cannot_be_released_after_confirm():
    product = make_product(on_hand=5)
    stock_reserve(key="k", items=[ItemIn(product.sku, 2)])
    stock_confirm(key="k")

    stock_release(key="k")

    stock = stock_of(product)
    assert (stock.on_hand, stock.reserved) == (3, 0)


@pytest.mark.django_db
def test_confirming_an_expired_reservation_takes_available_units_or_refuses():
    product = make_product(on_hand=2)
    stock_reserve(key="old", items=[ItemIn(product.sku, 2)], ttl_seconds=0)
    assert reservation_expire_due(now=timezone.now() + timedelta(seconds=1)) == 1
    stock_reserve(key="other", items=[ItemIn(product.sku, 1)])

    with pytest.raises(InsufficientStock):
        stock_confirm(key="old")
    assert Reservation.objects.get(key="old").status == Reservation.Status.RELEASED

    stock_release(key="other")
    stock_confirm(key="old")
    stock = stock_of(product)
    assert (stock.on_hand, stock.reserved) == (0, 0)


@pytest.mark.django_db
def test_stock_restock_is_idempotent_on_key():
    product = make_product(on_hand=1)

    stock_restock(key="r1", sku=product.sku, quantity=4)
    stock_restock(key="r1", sku=product.sku, quantity=4)

    assert stock_of(product).on_hand == 5
    assert Restock.objects.filter(key="r1").count() == 1


@pytest.mark.django_db
def test_expiry_sweep_releases_only_due_reservations():
    product = make_product(on_hand=5)
    stock_reserve(key="due", items=[ItemIn(product.sku, 1)], ttl_seconds=0)
    stock_reserve(key="fresh", items=[ItemIn(product.sku, 1)], ttl_seconds=300)

    released = reservation_expire_due(now=timezone.now() + timedelta(seconds=1))

    assert released == 1
    assert Reservation.objects.get(key="due").status == Reservation.Status.RELEASED
    assert Reservation.objects.get(key="fresh").status == Reservation.Status.RESERVED
    assert stock_of(product).reserved == 1


@pytest.mark.django_db(transaction=True)
def test_product_list_cache_is_dropped_when_stock_moves():
    product = make_product(on_hand=5)
    assert product_list_available()[0]["available"] == 5

    stock_reserve(key="k", items=[ItemIn(product.sku, 2)])

    assert product_list_available()[0]["available"] == 3
