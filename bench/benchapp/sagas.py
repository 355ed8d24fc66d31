"""The benchmark saga: five local steps, each one row update and one insert through the ORM.

Registered by the engine's autodiscovery (``<app>.sagas``) when ``bench.benchapp`` is installed.
"""

from __future__ import annotations

import random

from django.db.models import F

from bench.benchapp.models import Acct, StepLog
from sagas import Saga, Step, StepContext, register

N_ACCT = 100_000
STEPS = 5
# Set by the profiler of saga_bench.py: called with (ctx, "start") and (ctx, "end") around
# each action, to tell the step's own work from the engine's.
PROFILE_HOOK = None


def _act(ctx: StepContext) -> dict:
    if PROFILE_HOOK is not None:
        PROFILE_HOOK(ctx, "start")
    acct = random.randint(1, N_ACCT)
    Acct.objects.filter(id=acct).update(balance=F("balance") + 1)
    StepLog.objects.create(saga_id=ctx.saga_id, step=int(ctx.step[1:]), acct_id=acct)
    if PROFILE_HOOK is not None:
        PROFILE_HOOK(ctx, "end")
    return {"acct": acct}


def _undo(ctx: StepContext) -> None:
    acct = ctx.results.get(ctx.step, {}).get("acct")
    if acct is None:
        return
    Acct.objects.filter(id=acct).update(balance=F("balance") - 1)
    StepLog.objects.create(saga_id=ctx.saga_id, step=-int(ctx.step[1:]), acct_id=acct)


FIVE_STEPS = register(
    Saga(
        name="bench.five_steps",
        version=1,
        steps=tuple(
            Step(f"s{i}", action=_act, compensate=_undo, timeout=10.0) for i in range(1, STEPS + 1)
        ),
    )
)
