"""Reads of payments, for other apps and the API."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

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


def payment_ledger_violations(*, ledger: dict[str, Any]) -> list[str]:
    """Disagreements between our payments and the gateway's own ledger (``/v1/ledger``).

    A SUCCEEDED payment must be charged in full and not refunded there, a REFUNDED one must
    net to zero, and every charge the gateway holds must be known here: a charge we
    "forgot" still counts against us.
    """
    by_key = ledger.get("by_key", {})
    problems = []
    ours = {payment.key: payment for payment in Payment.objects.all()}
    for key, payment in ours.items():
        entry = by_key.get(key)
        charged = Decimal(entry["charged"]) if entry else Decimal("0")
        refunded = Decimal(entry["refunded"]) if entry else Decimal("0")
        if not payment.gateway_charge_id:
            continue  # nothing was due at the gateway (paid with points)
        if payment.status == Payment.Status.SUCCEEDED and (
            charged != payment.amount or refunded != 0
        ):
            problems.append(f"{key}: ours {payment.amount} paid, gateway {charged}-{refunded}")
        if payment.status == Payment.Status.REFUNDED and charged != refunded:
            problems.append(f"{key}: ours refunded, gateway {charged}-{refunded}")
    for key, entry in by_key.items():
        if key not in ours and Decimal(entry["charged"]) != Decimal(entry["refunded"]):
            problems.append(f"{key}: gateway charged {entry['charged']}, unknown here")
    return problems


def payments_net(*, order_ref: str) -> Decimal:
    """Money kept for ``order_ref``: succeeded payments (refunded ones keep nothing)."""
    total = Decimal("0")
    for payment in Payment.objects.filter(order_ref=order_ref, status=Payment.Status.SUCCEEDED):
        total += payment.amount
    return total
