from __future__ import annotations

from collections import Counter as Tally

from sagas.engine import saga_run, saga_start
from sagas.models import SagaEvent, SagaInstance
from tests.sagatest.models import Counter, Effect


def start(name: str, **data) -> SagaInstance:
    return saga_start(name, data=data, business_key="test", enqueue=False)


def run(instance: SagaInstance) -> SagaInstance:
    saga_run(instance.pk)
    instance.refresh_from_db()
    return instance


def effects(instance: SagaInstance) -> Tally:
    return Tally((row.step, row.kind) for row in Effect.objects.filter(saga_id=str(instance.pk)))


def history(instance: SagaInstance) -> list[tuple[str, str]]:
    return [
        (event.kind, event.step)
        for event in SagaEvent.objects.filter(saga=instance).order_by("id")
    ]


def make_counters(*names: str) -> None:
    for name in names:
        Counter.objects.get_or_create(name=name)
