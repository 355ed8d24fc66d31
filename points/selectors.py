from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

from django.conf import settings

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
