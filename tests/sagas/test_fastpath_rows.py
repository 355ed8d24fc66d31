"""Step rows built from the values just written equal the ones the ORM reads back."""

from __future__ import annotations

import pytest
from django.db import connection
from django.utils import timezone

from sagas import fastpath
from sagas.engine import saga_start
from sagas.models import SagaStep

pytestmark = pytest.mark.django_db


def _fields(row: SagaStep) -> dict:
    return {f.attname: getattr(row, f.attname) for f in SagaStep._meta.concrete_fields}


def test_a_built_step_row_is_the_row_the_orm_reads():
    saga = saga_start("test.five_steps", data={}, enqueue=False)
    now = timezone.now()
    values = {
        "saga_id": saga.pk,
        "name": "s1",
        "index": 0,
        "status": SagaStep.Status.COMPLETED,
        "attempts": 2,
        "output": {"n": 1},
        "started_at": now,
        "finished_at": now,
        "duration_ms": 3,
    }
    stored = SagaStep.objects.create(**values)

    built = fastpath.step_row(id=stored.pk, **values)

    assert _fields(built) == _fields(SagaStep.objects.get(pk=stored.pk))
    assert (built._state.adding, built._state.db) == (False, connection.alias)
    built.attempts = 3
    built.save(update_fields=["attempts"])  # an existing row: an UPDATE, not an INSERT
    assert SagaStep.objects.get(pk=stored.pk).attempts == 3
    assert built.saga.pk == saga.pk
