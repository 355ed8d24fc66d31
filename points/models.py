from __future__ import annotations

from django.db import models
from django.db.models import Q


class PointsAccount(models.Model):
    customer = models.OneToOneField(
        "orders.Customer", on_delete=models.PROTECT, related_name="points_account"
    )
    balance = models.PositiveIntegerField(default=0)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=Q(balance__gte=0), name="points_balance_not_negative"
            ),
        ]

    def __str__(self) -> str:
        return f"customer {self.customer_id}: {self.balance} points"


class PointsEntry(models.Model):
    """One movement of points. Append-only: corrections are new entries, never edits."""

    class Kind(models.TextChoices):
        AWARD = "AWARD"
        DEDUCT = "DEDUCT"
        RETURN = "RETURN"

    account = models.ForeignKey(PointsAccount, on_delete=models.PROTECT, related_name="entries")
    key = models.CharField(max_length=200, unique=True)
    kind = models.CharField(max_length=10, choices=Kind.choices)
    # Signed: awards and returns add, deductions subtract.
    amount = models.IntegerField()
    # A RETURN names the deduction it gives back; the unique constraint allows one return each.
    reverses = models.OneToOneField(
        "self", null=True, blank=True, on_delete=models.PROTECT, related_name="reversed_by"
    )
    reason = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name_plural = "points entries"
        ordering = ["id"]
        constraints = [
            models.CheckConstraint(
                condition=(Q(kind="DEDUCT", amount__lt=0) | (~Q(kind="DEDUCT") & Q(amount__gt=0))),
                name="points_entry_sign_matches_kind",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.kind} {self.amount} ({self.key})"
