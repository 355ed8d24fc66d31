from __future__ import annotations

import pytest

from points.exceptions import NotEnoughPoints, PointsAccountMissing
from points.models import PointsAccount, PointsEntry
from points.selectors import points_balance
from points.services import points_award, points_deduct, points_return
from tests.concurrency import run_concurrently
from tests.factories import make_customer


@pytest.mark.django_db(transaction=True)
def test_concurrent_deductions_never_take_the_balance_below_zero():
    customer = make_customer(points=100)

    results = run_concurrently(
        lambda i: points_deduct(key=f"d:{i}", customer_id=customer.pk, amount=30), threads=20
    )

    succeeded = [r for r in results if isinstance(r, PointsEntry)]
    refused = [r for r in results if isinstance(r, NotEnoughPoints)]
    assert (len(succeeded), len(refused)) == (3, 17)
    assert points_balance(customer_id=customer.pk) == 10
    assert PointsEntry.objects.filter(kind=PointsEntry.Kind.DEDUCT).count() == 3


@pytest.mark.django_db(transaction=True)
def test_the_same_deduction_sent_concurrently_takes_points_once():
    customer = make_customer(points=100)

    run_concurrently(
        lambda i: points_deduct(key="same", customer_id=customer.pk, amount=30), threads=10
    )

    assert points_balance(customer_id=customer.pk) == 70


@pytest.mark.django_db
def test_points_deduct_is_idempotent_on_key():
    customer = make_customer(points=100)

    first = points_deduct(key="k", customer_id=customer.pk, amount=40)
    second = points_deduct(key="k", customer_id=customer.pk, amount=40)

    assert first.pk == second.pk
    assert points_balance(customer_id=customer.pk) == 60


@pytest.mark.django_db
def test_not_enough_points_leaves_no_entry():
    customer = make_customer(points=10)

    with pytest.raises(NotEnoughPoints) as caught:
        points_deduct(key="k", customer_id=customer.pk, amount=11)

    assert caught.value.code == "not_enough_points"
    assert not PointsEntry.objects.filter(key="k").exists()
    assert points_balance(customer_id=customer.pk) == 10


@pytest.mark.django_db
def test_points_return_gives_a_deduction_back_once_even_under_another_key():
    customer = make_customer(points=100)
    points_deduct(key="d", customer_id=customer.pk, amount=25)

    points_return(key="r", deduct_key="d")
    points_return(key="r", deduct_key="d")
    points_return(key="r-other", deduct_key="d")

    assert points_balance(customer_id=customer.pk) == 100
    assert PointsEntry.objects.filter(kind=PointsEntry.Kind.RETURN).count() == 1


@pytest.mark.django_db
def test_returning_points_that_were_never_deducted_is_a_no_op():
    customer = make_customer(points=5)

    assert points_return(key="r", deduct_key="never") is None
    assert points_balance(customer_id=customer.pk) == 5


@pytest.mark.django_db
def test_deducting_zero_points_records_nothing():
    customer = make_customer(points=5)

    assert points_deduct(key="z", customer_id=customer.pk, amount=0) is None
    assert not PointsEntry.objects.filter(key="z").exists()


@pytest.mark.django_db
def test_points_award_is_idempotent_and_needs_an_account():
    customer = make_customer()
    points_award(key="a", customer_id=customer.pk, amount=7)
    points_award(key="a", customer_id=customer.pk, amount=7)
    assert PointsAccount.objects.get(customer=customer).balance == 7

    with pytest.raises(PointsAccountMissing):
        points_award(key="b", customer_id=customer.pk + 1000, amount=1)
