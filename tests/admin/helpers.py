"""Users and sagas for the admin console tests."""

from __future__ import annotations

from datetime import timedelta

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.utils import timezone

from sagas.models import SagaInstance
from tests.sagas.helpers import run, start

S = SagaInstance.Status
PASSWORD = "console-pass-123"


def make_staff(username: str, *codenames: str):
    """A staff user who may see sagas, plus the given ``sagas`` permissions."""
    user = get_user_model().objects.create_user(username, password=PASSWORD, is_staff=True)
    wanted = {"view_sagainstance", *codenames}
    user.user_permissions.set(
        Permission.objects.filter(content_type__app_label="sagas", codename__in=wanted)
    )
    return user


def waiting_saga() -> SagaInstance:
    """EXECUTING, waiting for a delayed retry of its third step."""
    saga = run(start("test.delayed", transient={"d3": 1}))
    assert saga.status == S.EXECUTING and saga.wake_at is not None
    return saga


def dead_letter_saga() -> SagaInstance:
    """FAILED in the dead-letter queue: the compensation of s1 ran out of retries."""
    saga = run(start("test.five_steps", fail="s3", compensation_fails=["s1"]))
    assert saga.status == S.FAILED and saga.dead_lettered_at is not None
    return saga


def make_saga(*, status: str = S.COMPLETED, definition: str = "test.five_steps", **fields):
    """A bare saga row; timestamps are set with ``set_times``."""
    return SagaInstance.objects.create(
        definition=definition,
        version=1,
        status=status,
        deadline=timezone.now() + timedelta(minutes=5),
        **fields,
    )


def set_times(saga, *, created_ago: float, took: float | None = None, updated_ago: float = 0):
    now = timezone.now()
    created = now - timedelta(seconds=created_ago)
    SagaInstance.objects.filter(pk=saga.pk).update(
        created_at=created,
        updated_at=now - timedelta(seconds=updated_ago),
        completed_at=None if took is None else created + timedelta(seconds=took),
    )
