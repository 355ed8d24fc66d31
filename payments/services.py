"""The remote payment steps: charge, resolve an unknown outcome, refund.

Each is idempotent twice over: the gateway dedupes on the idempotency key (so calling it
again after any failure is safe), and our rows are unique on the same key (so a retried
step records once). No database transaction is held open across a gateway call: a slow
gateway must not hold locks or a connection, and the gateway's ledger cannot roll back with
ours anyway.
"""

from __future__ import annotations

from decimal import Decimal

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from l2c.db import savepoint
from l2c.faults import fault_point
from payments.exceptions import PaymentRejected
from payments.gateway import CENT, Charge, gateway_client
from payments.models import Payment, Refund


def _record_payment(
    *,
    key: str,
    order_ref: str,
    amount: Decimal,
    currency: str,
    method: str,
    gateway_charge_id: str,
) -> Payment:
    try:
        with savepoint():
            return Payment.objects.create(
                key=key,
                order_ref=order_ref,
                amount=amount,
                currency=currency,
                method=method,
                status=Payment.Status.SUCCEEDED,
                gateway_charge_id=gateway_charge_id,
            )
    except IntegrityError:
        return Payment.objects.get(key=key)


def _record_charge(charge: Charge, *, order_ref: str | None = None) -> Payment:
    return _record_payment(
        key=charge.idempotency_key,
        order_ref=charge.reference if order_ref is None else order_ref,
        amount=charge.amount,
        currency=charge.currency,
        method=charge.payment_method,
        gateway_charge_id=charge.id,
    )


def payment_charge(
    *, key: str, order_ref: str, amount: Decimal, method: str, currency: str | None = None
) -> Payment:
    """Take ``amount`` with ``method`` and record a SUCCEEDED payment. Idempotent on ``key``.

    ``key`` is the gateway's idempotency key: calling again (after a crash, a timeout or a
    503) charges at most once and returns the same payment row. ``amount`` must be >= 0 in
    whole cents; 0 (an order paid entirely with points) records a payment without calling
    the gateway. Raises ``CardDeclined`` (no row is written), ``PaymentRejected``, or the
    transient ``GatewayUnavailable`` / ``GatewayTimeout`` (after a timeout, call
    ``payment_resolve`` rather than assuming the charge failed).
    """
    if amount < 0 or amount.quantize(CENT) != amount:
        raise ValueError(f"amount must be >= 0 in whole cents, got {amount}")
    currency = (currency or settings.CURRENCY).upper()
    if amount == 0:
        payment = _record_payment(
            key=key,
            order_ref=order_ref,
            amount=amount,
            currency=currency,
            method=method,
            gateway_charge_id="",
        )
    else:
        charge = gateway_client().charge(
            key=key, amount=amount, currency=currency, payment_method=method, reference=order_ref
        )
        # The window a crash test aims at: the money moved, nothing of it is recorded here.
        fault_point("payment.after_gateway_charge")
        if not charge.succeeded:
            raise PaymentRejected(f"the gateway answered a charge with status {charge.status!r}")
        payment = _record_charge(charge, order_ref=order_ref)
    if payment.amount != amount:
        # Only reachable for zero amounts: the gateway already refuses a reused key (409).
        raise PaymentRejected(
            "the payment key was already used for another amount",
            key=key,
            recorded=str(payment.amount),
            requested=str(amount),
        )
    return payment


def payment_resolve(*, key: str) -> Payment | None:
    """The payment made under ``key``, recorded now if only the gateway knew of it.

    For a charge whose outcome is unknown (a timeout, a crash before recording): asks the
    gateway's status query and records a succeeded charge with the same idempotent insert as
    ``payment_charge``. None when the gateway never charged under ``key`` (or declined).
    Safe to call any number of times.
    """
    payment = Payment.objects.filter(key=key).first()
    if payment is not None:
        return payment
    charge = gateway_client().charge_status(key=key)
    if charge is None or not charge.succeeded:
        return None
    return _record_charge(charge)


def payment_refund(*, key: str, charge_key: str, reason: str = "") -> Refund | None:
    """Give back the whole payment made under ``charge_key``. Idempotent on ``key``.

    The compensation of ``payment_charge``. Without a payment row it first asks the gateway,
    because the charge may have gone through without being recorded (a timeout, a crash).
    Returns None when nothing moved, so nothing is owed: the gateway never charged, or the
    payment was zero (then it is only marked REFUNDED). Otherwise refunds under the
    idempotency key ``key`` (a repeat refunds once), records the refund and moves the
    payment to REFUNDED; a payment already REFUNDED returns its refund without calling the
    gateway. Raises ``PaymentRejected`` or the transient gateway errors.
    """
    payment = payment_resolve(key=charge_key)
    if payment is None or payment.status == Payment.Status.DECLINED:
        return None
    if payment.amount == 0 or not payment.gateway_charge_id:
        Payment.objects.filter(pk=payment.pk, status=Payment.Status.SUCCEEDED).update(
            status=Payment.Status.REFUNDED, updated_at=timezone.now()
        )
        return None
    if payment.status == Payment.Status.REFUNDED:
        # Already given back (under this key or, by an operator, another): nothing is owed.
        done = Refund.objects.filter(key=key).first()
        return done or payment.refunds.order_by("-created_at").first()
    # No amount: the gateway refunds whatever is left, so a partial refund made elsewhere
    # does not turn the compensation into an over-refund error.
    result = gateway_client().refund(
        key=key, charge_id=payment.gateway_charge_id, reason=reason[:200]
    )
    with transaction.atomic():
        try:
            with transaction.atomic():
                refund = Refund.objects.create(
                    key=key,
                    payment=payment,
                    amount=result.amount,
                    gateway_refund_id=result.id,
                    reason=reason[:200],
                )
        except IntegrityError:
            refund = Refund.objects.select_related("payment").get(key=key)
        # Conditional: a concurrent refund of the same payment moves it once.
        Payment.objects.filter(pk=refund.payment_id, status=Payment.Status.SUCCEEDED).update(
            status=Payment.Status.REFUNDED, updated_at=timezone.now()
        )
    refund.payment.refresh_from_db(fields=["status", "updated_at"])
    return refund
