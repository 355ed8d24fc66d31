"""Test sagas: five local steps that each update a counter and insert an effect row.

Behaviour is steered by the saga's input data:
- ``fail``: name of a step that raises a business error;
- ``transient``: {step: n} fails the first n attempts of that step with a transient error;
- ``compensation_fails``: step names whose compensation always fails;
- ``sleep``: {step: seconds} to make a step slow (timeouts);
- ``lose_lease``: a step during which another runner takes the saga over;
- ``on_commit``: a step that registers an on-commit callback (it appends to ``COMMITTED``).
"""

from __future__ import annotations

import time
from decimal import Decimal

from django.db import transaction
from django.db.models import F

from l2c.errors import DomainError
from sagas import Retry, Saga, Step, StepContext, register
from tests.sagatest.models import Counter, Effect

FAST = Retry(retries=3, delay=0.0)
FAST_COMPENSATION = Retry(retries=2, delay=0.0)


class TestBusinessError(DomainError):
    code = "test_business_error"


# The steps whose on-commit callback ran, for sagas started with "on_commit".
COMMITTED: list[str] = []

# The saga row's lease expiry as each step saw it, for sagas started with "watch_lease".
LEASES_SEEN: list = []


def _act(ctx: StepContext) -> dict:
    data = ctx.data
    if data.get("sleep", {}).get(ctx.step):
        time.sleep(data["sleep"][ctx.step])
    if data.get("fail") == ctx.step:
        raise TestBusinessError(f"{ctx.step} refused")
    if ctx.attempt <= data.get("transient", {}).get(ctx.step, 0):
        raise ConnectionError(f"{ctx.step} attempt {ctx.attempt} lost its connection")
    if data.get("watch_lease"):
        from sagas.models import SagaInstance

        LEASES_SEEN.append(
            SagaInstance.objects.values_list("lease_expires_at", flat=True).get(pk=ctx.saga_id)
        )
    if data.get("lose_lease") == ctx.step:
        # Another runner takes the saga over while this step runs (its own connection, so
        # the takeover stands whatever this step's transaction does).
        _take_over(ctx.saga_id)
    if data.get("on_commit") == ctx.step:
        step = ctx.step
        transaction.on_commit(lambda: COMMITTED.append(step))
    Counter.objects.filter(name=ctx.step).update(value=F("value") + 1)
    Effect.objects.create(saga_id=ctx.saga_id, step=ctx.step, kind="action", attempt=ctx.attempt)
    return {"done": ctx.step, "attempt": ctx.attempt}


def _take_over(saga_id: str) -> None:
    import threading

    from sagas.models import SagaInstance

    def steal() -> None:
        from django.db import connection

        SagaInstance.objects.filter(pk=saga_id).update(lease_owner="another-runner")
        connection.close()

    thread = threading.Thread(target=steal)
    thread.start()
    thread.join()


def _undo(ctx: StepContext) -> None:
    if ctx.step in ctx.data.get("compensation_fails", []):
        raise ConnectionError(f"compensation of {ctx.step} cannot reach its service")
    Counter.objects.filter(name=ctx.step).update(value=F("value") - 1)
    Effect.objects.create(saga_id=ctx.saga_id, step=ctx.step, kind="compensation")


def step(name: str, **options) -> Step:
    options.setdefault("retry", FAST)
    options.setdefault("compensation_retry", FAST_COMPENSATION)
    return Step(name, action=_act, compensate=_undo, **options)


FIVE_STEPS = register(
    Saga(
        name="test.five_steps",
        version=1,
        steps=tuple(step(f"s{i}", timeout=5.0) for i in range(1, 6)),
    )
)

# Waiting retries and compensations, handed back to workers by the timer.
DELAYED = register(
    Saga(
        name="test.delayed",
        version=1,
        steps=(
            step("d1", retry=Retry(retries=3, delay=0.2, max_delay=0.5)),
            step("d2", compensation_retry=Retry(retries=2, delay=0.2, max_delay=0.5)),
            step("d3", retry=Retry(retries=3, delay=0.2, max_delay=0.5)),
        ),
    )
)

PIVOTED = register(
    Saga(
        name="test.pivoted",
        version=1,
        steps=(
            step("p1"),
            step("p2", pivot=True),
            Step("p3", action=_act, retry=FAST),
        ),
    )
)

TIMED = register(
    Saga(
        name="test.timed",
        version=1,
        steps=(step("t1"), step("t2", timeout=0.5), step("t3")),
    )
)


# A remote step: a charge through the payment gateway, refunded on compensation, resolved by
# the gateway's status query when an earlier attempt's outcome is unknown.
def _charge(ctx: StepContext) -> dict:
    from payments.services import payment_charge

    payment = payment_charge(
        key=ctx.key,
        order_ref=ctx.business_key,
        amount=Decimal(ctx.data.get("amount", "10.00")),
        method=ctx.data.get("method", "pm_card_visa"),
    )
    return {"payment_id": payment.pk, "charge_id": payment.gateway_charge_id}


def _refund(ctx: StepContext) -> None:
    from payments.services import payment_refund

    payment_refund(key=ctx.compensation_key, charge_key=ctx.key, reason="compensated")


def _resolve_charge(ctx: StepContext) -> dict | None:
    from payments.services import payment_resolve

    payment = payment_resolve(key=ctx.key)
    if payment is None:
        return None
    return {"payment_id": payment.pk, "charge_id": payment.gateway_charge_id}


PAYMENT = register(
    Saga(
        name="test.payment",
        version=1,
        steps=(
            step("m1", timeout=10.0),
            Step(
                "charge",
                action=_charge,
                compensate=_refund,
                resolve=_resolve_charge,
                remote=True,
                timeout=10.0,
                retry=Retry(retries=5, delay=0.2, max_delay=1.0),
                compensation_retry=Retry(retries=3, delay=0.2, max_delay=1.0),
            ),
            step("m3", timeout=10.0),
        ),
    )
)


def _announce(ctx: StepContext) -> dict:
    from sagas.outbox import outbox_put

    message = outbox_put(topic="test.announced", payload={"saga": str(ctx.saga_id)})
    return {"message": str(message.pk)}


ANNOUNCING = register(
    Saga(
        name="test.announcing",
        version=1,
        steps=(
            step("a1"),
            Step("announce", action=_announce, nothing_to_undo=True),
        ),
    )
)
