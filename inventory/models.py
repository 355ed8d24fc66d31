from __future__ import annotations

from django.db import models
from django.db.models import F, Q


class Product(models.Model):
    sku = models.CharField(max_length=64, unique=True)
    name = models.CharField(max_length=200)
    price = models.DecimalField(max_digits=12, decimal_places=2)
    active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["sku"]
        constraints = [
            models.CheckConstraint(condition=Q(price__gte=0), name="product_price_not_negative"),
        ]

    def __str__(self) -> str:
        return f"{self.sku} {self.name}"


class Stock(models.Model):
    """Units of one product. Available = on_hand - reserved; sold units leave on_hand."""

    product = models.OneToOneField(Product, on_delete=models.PROTECT, related_name="stock")
    on_hand = models.PositiveIntegerField(default=0)
    reserved = models.PositiveIntegerField(default=0)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name_plural = "stock"
        constraints = [
            # The last line of defence against overselling: whatever code runs, the
            # database refuses a row that promises more units than it holds.
            models.CheckConstraint(
                condition=Q(reserved__lte=F("on_hand")), name="stock_reserved_within_on_hand"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.product.sku}: {self.on_hand} on hand, {self.reserved} reserved"

    @property
    def available(self) -> int:
        return self.on_hand - self.reserved


class Reservation(models.Model):
    """Stock held for one caller, identified by its idempotency key."""

    class Status(models.TextChoices):
        RESERVED = "RESERVED"
        CONFIRMED = "CONFIRMED"
        RELEASED = "RELEASED"

    key = models.CharField(max_length=200, unique=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.RESERVED)
    expires_at = models.DateTimeField()
    release_reason = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        indexes = [models.Index(fields=["status", "expires_at"], name="reservation_due_idx")]

    def __str__(self) -> str:
        return f"{self.key} ({self.status})"


class ReservationLine(models.Model):
    reservation = models.ForeignKey(Reservation, on_delete=models.CASCADE, related_name="lines")
    product = models.ForeignKey(Product, on_delete=models.PROTECT, related_name="+")
    quantity = models.PositiveIntegerField()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["reservation", "product"], name="reservation_line_unique_product"
            ),
            models.CheckConstraint(condition=Q(quantity__gt=0), name="reservation_line_positive"),
        ]

    def __str__(self) -> str:
        return f"{self.product_id} x {self.quantity}"


class Restock(models.Model):
    """Units added to on_hand (deliveries, returns), idempotent on its key."""

    key = models.CharField(max_length=200, unique=True)
    product = models.ForeignKey(Product, on_delete=models.PROTECT, related_name="restocks")
    quantity = models.PositiveIntegerField()
    reason = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.CheckConstraint(condition=Q(quantity__gt=0), name="restock_positive"),
        ]

    def __str__(self) -> str:
        return f"{self.key}: +{self.quantity}"
