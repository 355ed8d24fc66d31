"""The rows the benchmark saga writes: the same workload as /work/shared/bench/peers.

``acct`` holds 100k rows (seeded by the bench with one INSERT ... SELECT generate_series);
every step adds 1 to one random row and appends one ``StepLog`` row.
"""

from django.db import models
from django.utils import timezone


class Acct(models.Model):
    id = models.IntegerField(primary_key=True)
    balance = models.BigIntegerField(default=0)

    def __str__(self) -> str:
        return f"acct {self.id}: {self.balance}"


class StepLog(models.Model):
    saga_id = models.UUIDField()
    step = models.SmallIntegerField()
    acct_id = models.IntegerField()
    created = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return f"{self.saga_id} step {self.step} acct {self.acct_id}"
