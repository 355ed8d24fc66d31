from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

from django.conf import settings
from django.db.models import F, Q, Sum, Value
from django.db.models.functions import Coalesce

from points.models import PointsAccount


def points_balance(*, customer_id: int) -> int:
    balance = (
        PointsAccount.objects.filter(customer_id=customer_id)
        .values_list("balance", flat=True)
        .first()
    )
    return balance or 0


def points_value(*, points: int) -> Decimal:
    """The money value of ``points``, from the POINTS_VALUE setting, rounded to the cent."""
    return (Decimal(points) * settings.POINTS_VALUE).quantize(
        Decimal("0.01"), rounding=ROUND_HALF_UP
    )


def points_invariant_violations() -> list[str]:
    """Accounts whose balance is not the sum of their ledger, or is negative."""
    rows = PointsAccount.objects.annotate(
        ledger=Coalesce(Sum("entries__amount"), Value(0))
    ).filter(~Q(balance=F("ledger")) | Q(balance__lt=0))
    return [
        f"customer {row.customer_id}: balance {row.balance}, ledger {row.ledger}" for row in rows
    ]
