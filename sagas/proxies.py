"""Ready-made saga lists for the admin console: proxies of ``SagaInstance`` whose managers
filter, so each gets its own changelist (as django-q2's ``Success``/``Failure``).

The filters are evaluated on every query, so "stuck" and "long-running" always mean "as of
now". Imported at the end of ``sagas/models.py`` so Django registers them with the app.
"""

from __future__ import annotations

from django.db import models

from sagas.models import SagaInstance

__all__ = ["DeadLetterSaga", "LongRunningSaga", "StuckSaga"]


class StuckSagaManager(models.Manager):
    def get_queryset(self) -> models.QuerySet:
        from sagas.stats import stuck_filter  # sagas.stats imports this app's models

        return super().get_queryset().filter(stuck_filter())


class LongRunningSagaManager(models.Manager):
    def get_queryset(self) -> models.QuerySet:
        from sagas.stats import long_running_filter

        return super().get_queryset().filter(long_running_filter())


class DeadLetterSagaManager(models.Manager):
    def get_queryset(self) -> models.QuerySet:
        return (
            super().get_queryset().filter(dead_lettered_at__isnull=False, resolved_at__isnull=True)
        )


class StuckSaga(SagaInstance):
    """Unfinished sagas that made no progress for ``STUCK_AFTER_SECONDS``."""

    objects = StuckSagaManager()

    class Meta:
        proxy = True
        ordering = ["updated_at"]
        verbose_name = "stuck saga"


class LongRunningSaga(SagaInstance):
    """Unfinished sagas started more than ``LONG_RUNNING_SECONDS`` ago."""

    objects = LongRunningSagaManager()

    class Meta:
        proxy = True
        ordering = ["created_at"]
        verbose_name = "long-running saga"


class DeadLetterSaga(SagaInstance):
    """Open dead letters: sagas that wait for an operator."""

    objects = DeadLetterSagaManager()

    class Meta:
        proxy = True
        ordering = ["-dead_lettered_at"]
        verbose_name = "dead-lettered saga"
