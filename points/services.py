"""Writes to points accounts: an append-only ledger plus a balance kept by ``F()`` updates.

Each movement inserts its ledger entry first (unique on ``key``), then moves the balance with a
guarded UPDATE in the same transaction, so a repeated call finds the entry and moves nothing.
"""

from __future__ import annotations

from django.db import IntegrityError, transaction
from django.db.models import F

from l2c.db import atomic, savepoint
from points.exceptions import NotEnoughPoints, PointsAccountMissing
from points.models import PointsAccount, PointsEntry


def _insert_entry(**fields: object) -> tuple[PointsEntry, bool]:
    """Insert a ledger entry; (existing entry, False) when its key was used before."""
    try:
        with savepoint():
            return PointsEntry.objects.create(**fields), True
    except IntegrityError:
        return PointsEntry.objects.get(key=fields["key"]), False


def _account_id(customer_id: int) -> int:
    account_id = (
        PointsAccount.objects.filter(customer_id=customer_id).values_list("pk", flat=True).first()
    )
    if account_id is None:
        raise PointsAccountMissing(customer_id=customer_id)
    return account_id


@transaction.atomic
def points_account_open(*, customer_id: int) -> PointsAccount:
    """The customer's account, created empty if missing."""
    account, _ = PointsAccount.objects.get_or_create(customer_id=customer_id)
    return account


@atomic
def points_award(*, key: str, customer_id: int, amount: int, reason: str = "") -> PointsEntry:
    """Add ``amount`` points. Idempotent on ``key``."""
    if amount <= 0:
        raise ValueError(f"amount must be positive, got {amount}")
    account_id = _account_id(customer_id)
    entry, created = _insert_entry(
        account_id=account_id, key=key, kind=PointsEntry.Kind.AWARD, amount=amount, reason=reason
    )
    if created:
        PointsAccount.objects.filter(pk=account_id).update(balance=F("balance") + amount)
    return entry


@atomic
def points_deduct(
    *, key: str, customer_id: int, amount: int, reason: str = ""
) -> PointsEntry | None:
    """Take ``amount`` points. Idempotent on ``key``; never leaves a negative balance.

    Deducting nothing records nothing and returns None. Raises ``NotEnoughPoints`` and leaves
    no entry when the balance is short.
    """
    if amount < 0:
        raise ValueError(f"amount must not be negative, got {amount}")
    if amount == 0:
        return None
    account_id = _account_id(customer_id)
    entry, created = _insert_entry(
        account_id=account_id,
        key=key,
        kind=PointsEntry.Kind.DEDUCT,
        amount=-amount,
        reason=reason,
    )
    if not created:
        return entry
    taken = PointsAccount.objects.filter(pk=account_id, balance__gte=amount).update(
        balance=F("balance") - amount
    )
    if not taken:
        balance = PointsAccount.objects.filter(pk=account_id).values_list("balance", flat=True)
        raise NotEnoughPoints(customer_id=customer_id, requested=amount, balance=balance[0])
    return entry


@atomic
def points_return(*, key: str, deduct_key: str, reason: str = "") -> PointsEntry | None:
    """Give back what the deduction under ``deduct_key`` took. Idempotent on ``key``.

    When nothing was deducted under ``deduct_key`` there is nothing to give back: None.
    A deduction is returned at most once, whatever key the return comes with.
    """
    deduction = PointsEntry.objects.filter(key=deduct_key, kind=PointsEntry.Kind.DEDUCT).first()
    if deduction is None:
        return None
    try:
        with savepoint():
            entry = PointsEntry.objects.create(
                account_id=deduction.account_id,
                key=key,
                kind=PointsEntry.Kind.RETURN,
                amount=-deduction.amount,
                reverses=deduction,
                reason=reason,
            )
    except IntegrityError:
        return PointsEntry.objects.filter(reverses=deduction).first()
    PointsAccount.objects.filter(pk=deduction.account_id).update(
        balance=F("balance") - deduction.amount
    )
    return entry
