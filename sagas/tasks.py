"""django-q2 entry points: take ids, make one call, nothing else."""

from __future__ import annotations

from sagas import deadletters, engine


def run_saga(saga_id: str, first: tuple | None = None) -> str | None:
    from sagas.outbox import relay_when_done

    with relay_when_done():
        return engine.saga_run(saga_id, first=first)


def wake_sagas() -> int:
    return len(engine.sagas_wake_due())


def recover_sagas() -> int:
    return len(engine.sagas_recover())


def expire_sagas() -> int:
    return len(engine.sagas_expire())


def sweep_dead_letters() -> int:
    return deadletters.dead_letter_sweep()


def relay_outbox() -> int:
    from sagas.outbox import relay_outbox_task

    return relay_outbox_task()
