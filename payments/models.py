from __future__ import annotations

from django.db import models
from django.db.models import Q


class Payment(models.Model):
    """Money taken at the gateway for an order, identified by the gateway idempotency key."""

    class Status(models.TextChoices):
        SUCCEEDED = "SUCCEEDED"
        DECLINED = "DECLINED"
        REFUNDED = "REFUNDED"

    # The idempotency key sent to the gateway: unique here too, so a retried step records
    # the charge once whatever the gateway answers.
    key = models.CharField(max_length=200, unique=True)
    order_ref = models.CharField(max_length=64, db_index=True)
    amount = models.DecimalField(max_digits=12, decimal_places=2)
    currency = models.CharField(max_length=3)
    method = models.CharField(max_length=64)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.SUCCEEDED)
    # Empty when nothing went through the gateway (an order paid entirely with points).
    gateway_charge_id = models.CharField(max_length=64, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.CheckConstraint(condition=Q(amount__gte=0), name="payment_amount_not_negative"),
        ]

    def __str__(self) -> str:
        return f"{self.key}: {self.amount} {self.currency} ({self.status})"


class Refund(models.Model):
    """Money given back for a payment, identified by its own gateway idempotency key."""

    key = models.CharField(max_length=200, unique=True)
    payment = models.ForeignKey(Payment, on_delete=models.PROTECT, related_name="refunds")
    amount = models.DecimalField(max_digits=12, decimal_places=2)
    gateway_refund_id = models.CharField(max_length=64)
    reason = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.CheckConstraint(condition=Q(amount__gt=0), name="refund_amount_positive"),
        ]

    def __str__(self) -> str:
        return f"{self.key}: -{self.amount}"
