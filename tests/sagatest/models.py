"""Rows the test sagas write, so tests can count every effect a step had."""

from django.db import models


class Counter(models.Model):
    name = models.CharField(max_length=100, unique=True)
    value = models.IntegerField(default=0)

    def __str__(self) -> str:
        return f"{self.name}={self.value}"


class Effect(models.Model):
    """One row per effect; deliberately not unique, so a duplicate effect shows as two rows."""

    saga_id = models.CharField(max_length=64, db_index=True)
    step = models.CharField(max_length=100)
    kind = models.CharField(max_length=20)
    attempt = models.PositiveIntegerField(default=1)

    def __str__(self) -> str:
        return f"{self.kind} of {self.step} in {self.saga_id}"
