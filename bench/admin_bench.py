#!/usr/bin/env python
"""Admin console benchmark: the dashboard and the saga list with 100,000 sagas.

Run from the repository root (a few minutes, mostly inserting the rows):

    python bench/admin_bench.py --pg-url postgresql://postgres@127.0.0.1:55432

It drops and creates the database ``bench_admin``, migrates it with ``l2c.settings.base``
(``DJANGO_DEBUG=true``, ``DATABASE_URL`` pointing at it, no Redis), bulk-inserts the sagas (a
mix of statuses, durations and error codes over the last 30 days, some dead letters and stuck
ones, steps and events for a few), runs ANALYZE as autovacuum would, then requests each page
with Django's test client as a logged-in superuser: one warm-up, then the median of
``--repeat`` requests, with the number of SQL queries of one request. The database is dropped
at the end unless ``--keep``. The target is under one second per page.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
import uuid
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

DB_NAME = "bench_admin"
STATUS_MIX = [  # (status, weight)
    ("COMPLETED", 880),
    ("COMPENSATED", 70),
    ("FAILED", 10),
    ("EXECUTING", 20),
    ("COMPENSATING", 10),
    ("STARTED", 5),
    ("TIMEOUT", 5),
]
ERROR_CODES = [
    ("payment_declined", 40),
    ("insufficient_stock", 25),
    ("insufficient_points", 12),
    ("customer_inactive", 5),
    ("gateway_timeout", 10),
    ("deadline_exceeded", 5),
    ("compensation_exhausted", 3),
]
PLACE_STEPS = [
    "validate_customer",
    "reserve_stock",
    "create_order",
    "deduct_points",
    "process_payment",
    "confirm_stock",
    "complete_order",
    "notify",
]


def options() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pg-url", default="postgresql://postgres@127.0.0.1:55432")
    parser.add_argument("--sagas", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards")
    parser.add_argument(
        "--reuse", action="store_true", help="measure a database kept by an earlier --keep run"
    )
    return parser.parse_args()


def admin_database(pg_url: str, *, create: bool) -> None:
    import psycopg

    with psycopg.connect(f"{pg_url.rstrip('/')}/postgres", autocommit=True) as connection:
        connection.execute(f"DROP DATABASE IF EXISTS {DB_NAME} WITH (FORCE)")
        if create:
            connection.execute(f"CREATE DATABASE {DB_NAME}")


def setup_django(pg_url: str) -> None:
    os.environ.update(
        DJANGO_SETTINGS_MODULE="l2c.settings.base",
        DJANGO_DEBUG="true",
        DATABASE_URL=f"{pg_url.rstrip('/')}/{DB_NAME}",
        DJANGO_ALLOWED_HOSTS="testserver,localhost,127.0.0.1",
        LOG_LEVEL="WARNING",
    )
    os.environ.pop("REDIS_URL", None)
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


@contextmanager
def explicit_timestamps(*models: Any):
    """Let bulk_create keep the created_at/updated_at given, instead of now()."""
    changed = []
    for model in models:
        for field in model._meta.concrete_fields:
            if getattr(field, "auto_now", False) or getattr(field, "auto_now_add", False):
                changed.append((field, field.auto_now, field.auto_now_add))
                field.auto_now = field.auto_now_add = False
    try:
        yield
    finally:
        for field, auto_now, auto_now_add in changed:
            field.auto_now, field.auto_now_add = auto_now, auto_now_add


def _pick(rng: random.Random, weighted: list[tuple[str, int]]) -> str:
    return rng.choices([value for value, _ in weighted], [w for _, w in weighted])[0]


def seed(count: int) -> dict[str, Any]:
    from django.utils import timezone

    from sagas.models import SagaEvent, SagaInstance, SagaStep

    rng = random.Random(7)
    now = timezone.now()
    rows = []
    for n in range(count):
        # A quarter of the sagas in the last day (5 % in the last hour), the rest over 30 days.
        spot = rng.random()
        if spot < 0.05:
            age = rng.uniform(0, 3600)
        elif spot < 0.25:
            age = rng.uniform(3600, 86400)
        else:
            age = rng.uniform(86400, 30 * 86400)
        created = now - timedelta(seconds=age)
        status = _pick(rng, STATUS_MIX)
        cancel = rng.random() < 0.1
        took = min(rng.lognormvariate(0.4, 0.9), 290.0)
        finished = status in ("COMPLETED", "COMPENSATED", "FAILED")
        failing = status in ("COMPENSATED", "FAILED", "COMPENSATING", "TIMEOUT")
        code = _pick(rng, ERROR_CODES) if failing else ""
        if status == "FAILED":
            code = "compensation_exhausted"
        active_age = min(age, rng.choice([5, 30, 120, 900, 4000]))  # some stuck ones
        updated = (
            created + timedelta(seconds=took) if finished else now - timedelta(seconds=active_age)
        )
        dead = status == "FAILED"
        rows.append(
            SagaInstance(
                id=uuid.UUID(int=rng.getrandbits(128), version=4),
                definition="orders.cancel_order" if cancel else "orders.place_order",
                version=1,
                business_key=f"order:{n + 1}",
                correlation_id=f"req-{n + 1}",
                status=status,
                context={"order_id": n + 1},
                current_step="" if finished else rng.choice(PLACE_STEPS),
                deadline=created + timedelta(minutes=5),
                runs=1 if rng.random() < 0.95 else rng.randint(2, 5),
                error_code=code,
                error_message=f"{code}: simulated" if code else "",
                created_at=created,
                updated_at=updated,
                completed_at=created + timedelta(seconds=took) if finished else None,
                dead_lettered_at=updated if dead else None,
                dead_letter_reason="compensation of process_payment failed" if dead else "",
                resolved_at=updated + timedelta(hours=1) if dead and rng.random() < 0.3 else None,
            )
        )
    started = time.perf_counter()
    with explicit_timestamps(SagaInstance):
        SagaInstance.objects.bulk_create(rows, batch_size=5000)
    inserted = time.perf_counter() - started

    # Steps and events for a few sagas, so their pages have something to draw.
    detailed = [row for row in rows[:300]]
    steps, events = [], []
    for saga in detailed:
        at = saga.created_at
        events.append(SagaEvent(saga=saga, kind="saga_started", status="STARTED", created_at=at))
        for index, name in enumerate(PLACE_STEPS):
            took = timedelta(milliseconds=rng.randint(2, 400))
            fails = saga.status != "COMPLETED" and index == 4
            steps.append(
                SagaStep(
                    saga=saga,
                    name=name,
                    index=index,
                    status="FAILED" if fails else "COMPLETED",
                    attempts=1,
                    started_at=at,
                    finished_at=at + took,
                    duration_ms=int(took.total_seconds() * 1000),
                    error_code=saga.error_code if fails else "",
                    error_message=saga.error_message if fails else "",
                )
            )
            events.append(
                SagaEvent(saga=saga, kind="step_started", step=name, attempt=1, created_at=at)
            )
            events.append(
                SagaEvent(
                    saga=saga,
                    kind="step_failed" if fails else "step_completed",
                    step=name,
                    attempt=1,
                    detail={"duration_ms": int(took.total_seconds() * 1000)},
                    created_at=at + took,
                )
            )
            at += took
            if fails:
                break
    SagaStep.objects.bulk_create(steps, batch_size=5000)
    SagaEvent.objects.bulk_create(events, batch_size=5000)

    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")
    return {"insert_seconds": inserted, "detailed": detailed[0]}


def measure(client: Any, url: str, repeat: int) -> tuple[float, int, int]:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    assert client.get(url).status_code == 200, url  # warm-up
    timings = []
    for _ in range(repeat):
        started = time.perf_counter()
        response = client.get(url)
        timings.append(time.perf_counter() - started)
        assert response.status_code == 200, url
    with CaptureQueriesContext(connection) as queries:
        client.get(url)
    query_ms = sum(float(query["time"]) for query in queries.captured_queries) * 1000
    return statistics.median(timings) * 1000, len(queries), round(query_ms)


def main() -> int:
    args = options()
    if not args.reuse:
        admin_database(args.pg_url, create=True)
    try:
        started = time.perf_counter()
        setup_django(args.pg_url)
        print(f"database {DB_NAME} migrated in {time.perf_counter() - started:.1f} s")
        from django.contrib.auth import get_user_model
        from django.test import Client
        from django.urls import reverse

        from sagas.models import SagaInstance, SagaStep

        if args.reuse:
            saga = SagaStep.objects.select_related("saga").first().saga
        else:
            seeded = seed(args.sagas)
            print(f"{args.sagas} sagas inserted in {seeded['insert_seconds']:.1f} s")
            saga = seeded["detailed"]
        user, _ = get_user_model().objects.get_or_create(
            username="bench", defaults={"is_staff": True, "is_superuser": True}
        )
        client = Client()
        client.force_login(user)
        changelist = reverse("admin:sagas_sagainstance_changelist")
        dashboard = reverse("admin:sagas_dashboard")
        pages = [
            ("dashboard ?range=1h", f"{dashboard}?range=1h"),
            ("dashboard ?range=24h", f"{dashboard}?range=24h"),
            ("dashboard ?range=7d", f"{dashboard}?range=7d"),
            ("dashboard ?range=30d", f"{dashboard}?range=30d"),
            ("saga list", changelist),
            ("saga list, FAILED", f"{changelist}?status__exact=FAILED"),
            ("saga list, dead letters", f"{changelist}?dead_letter=yes"),
            ("saga list, stuck", f"{changelist}?stuck=yes"),
            ("saga list, created last day", f"{changelist}?created=24h"),
            ("saga list, search order:4242", f"{changelist}?q=order:4242"),
            ("dead-letter list", reverse("admin:sagas_deadlettersaga_changelist")),
            ("saga page", reverse("admin:sagas_sagainstance_change", args=[saga.pk])),
            ("definitions", reverse("admin:sagas_definitions")),
        ]
        total = SagaInstance.objects.count()
        print(f"\n{total} sagas, median of {args.repeat} requests (after one warm-up)\n")
        print(f"{'page':32} {'median ms':>10} {'queries':>8} {'SQL ms':>7}")
        print("-" * 60)
        slowest = 0.0
        for label, url in pages:
            median_ms, count, sql_ms = measure(client, url, args.repeat)
            slowest = max(slowest, median_ms)
            print(f"{label:32} {median_ms:10.0f} {count:8d} {sql_ms:7d}")
        print("-" * 60)
        print(f"slowest page: {slowest:.0f} ms ({'under' if slowest < 1000 else 'OVER'} 1 s)")
    finally:
        from django.db import connections

        connections.close_all()
        if not (args.keep or args.reuse):
            admin_database(args.pg_url, create=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
