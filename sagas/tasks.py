"""django-q2 entry points: take ids, make one call, nothing else."""

from __future__ import annotations

from sagas import engine


def run_saga(saga_id: str) -> str | None:
    return engine.saga_run(saga_id)


def wake_sagas() -> int:
    return len(engine.sagas_wake_due())


def recover_sagas() -> int:
    return len(engine.sagas_recover())
