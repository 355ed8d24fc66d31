from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q


class Customer(models.Model):
    name = models.CharField(max_length=200)
    email = models.EmailField(unique=True)
    active = models.BooleanField(default=True)
    credit_limit = models.DecimalField(max_digits=12, decimal_places=2, default=0)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.CheckConstraint(
                condition=Q(credit_limit__gte=0), name="customer_credit_limit_not_negative"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} <{self.email}>"


class Order(models.Model):
    class Status(models.TextChoices):
        PLACED = "PLACED"
        AWAITING_PAYMENT = "AWAITING_PAYMENT"
        PAID = "PAID"
        CANCELLED = "CANCELLED"
        FAILED = "FAILED"

    customer = models.ForeignKey(Customer, on_delete=models.PROTECT, related_name="orders")
    placed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    # The key the caller placed the order under; a second placement with it is a replay.
    request_key = models.CharField(max_length=200, unique=True)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.PLACED)
    total = models.DecimalField(max_digits=12, decimal_places=2)
    points_used = models.PositiveIntegerField(default=0)
    points_value = models.DecimalField(max_digits=12, decimal_places=2, default=0)
    amount_due = models.DecimalField(max_digits=12, decimal_places=2)
    currency = models.CharField(max_length=3)
    payment_method = models.CharField(max_length=64)
    status_reason = models.CharField(max_length=300, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-id"]
        indexes = [
            models.Index(fields=["status", "updated_at"], name="order_status_idx"),
            models.Index(fields=["placed_by", "-id"], name="order_placed_by_idx"),
        ]
        constraints = [
            models.CheckConstraint(condition=Q(total__gte=0), name="order_total_not_negative"),
            models.CheckConstraint(
                condition=Q(amount_due__gte=0), name="order_amount_due_not_negative"
            ),
        ]

    def __str__(self) -> str:
        return f"order {self.pk} ({self.status})"

    @property
    def business_key(self) -> str:
        return f"order:{self.pk}"


class OrderLine(models.Model):
    order = models.ForeignKey(Order, on_delete=models.CASCADE, related_name="lines")
    sku = models.CharField(max_length=64)
    name = models.CharField(max_length=200)
    # The price the customer saw at submission; later catalogue changes do not touch it.
    unit_price = models.DecimalField(max_digits=12, decimal_places=2)
    quantity = models.PositiveIntegerField()
    line_total = models.DecimalField(max_digits=12, decimal_places=2)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(fields=["order", "sku"], name="order_line_unique_sku"),
            models.CheckConstraint(condition=Q(quantity__gt=0), name="order_line_positive"),
        ]

    def __str__(self) -> str:
        return f"{self.sku} x {self.quantity}"
