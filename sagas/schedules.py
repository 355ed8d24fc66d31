"""The django-q2 schedules of the engine, created (or updated) after every migrate.

They are the cluster-wide backstop for the timer thread of ``sagas.timer``: django-q2
schedules run at a one-minute resolution, so sub-minute intervals are rounded up here.
"""

from __future__ import annotations

import math
from typing import Any

from django.db import DEFAULT_DB_ALIAS, connections

from sagas.conf import saga_setting


def _minutes(seconds: float) -> int:
    return max(1, math.ceil(seconds / 60))


def engine_schedules() -> list[dict[str, Any]]:
    return [
        {
            "name": "sagas: recover lost sagas",
            "func": "sagas.tasks.recover_sagas",
            "minutes": _minutes(saga_setting("RECOVERY_INTERVAL_SECONDS")),
        },
        {
            "name": "sagas: sagas past their deadline",
            "func": "sagas.tasks.expire_sagas",
            "minutes": _minutes(saga_setting("TIMEOUT_CHECK_INTERVAL_SECONDS")),
        },
        {
            "name": "sagas: wake delayed retries",
            "func": "sagas.tasks.wake_sagas",
            "minutes": 1,
        },
        {
            "name": "sagas: dead-letter sweep",
            "func": "sagas.tasks.sweep_dead_letters",
            "minutes": 10,
        },
        {
            "name": "sagas: outbox relay",
            "func": "sagas.tasks.relay_outbox",
            "minutes": _minutes(saga_setting("OUTBOX_RELAY_INTERVAL_SECONDS")),
        },
    ]


def schedules_ensure(specs: list[dict[str, Any]], using: str = DEFAULT_DB_ALIAS) -> None:
    """Create or update the MINUTES schedules named in ``specs`` (idempotent by name).

    Nothing when django-q2's tables are not there yet (``migrate`` of one app on a new
    database): the migrate that creates them runs this again."""
    from django_q.models import Schedule

    if Schedule._meta.db_table not in connections[using].introspection.table_names():
        return
    schedules = Schedule.objects.using(using)
    for spec in specs:
        existing = schedules.filter(name=spec["name"]).first()
        if existing is None:
            schedules.create(
                name=spec["name"],
                func=spec["func"],
                schedule_type=Schedule.MINUTES,
                minutes=spec["minutes"],
                repeats=-1,
            )
        elif existing.func != spec["func"] or existing.minutes != spec["minutes"]:
            schedules.filter(pk=existing.pk).update(
                func=spec["func"], minutes=spec["minutes"], schedule_type=Schedule.MINUTES
            )


def ensure_engine_schedules(sender: Any = None, **kwargs: Any) -> None:
    schedules_ensure(engine_schedules(), using=kwargs.get("using", DEFAULT_DB_ALIAS))
