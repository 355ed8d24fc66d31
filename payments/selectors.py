"""Reads of payments, for other apps and the API."""

from __future__ import annotations

from django.db.models import QuerySet

from payments.models import Payment


def payment_get(*, key: str) -> Payment | None:
    return Payment.objects.filter(key=key).first()


def payments_for_order(*, order_ref: str) -> QuerySet[Payment]:
    """Every payment recorded for ``order_ref`` (e.g. "order:42"), oldest first."""
    return (
        Payment.objects.filter(order_ref=order_ref)
        .prefetch_related("refunds")
        .order_by("created_at", "pk")
    )
