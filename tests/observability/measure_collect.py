#!/usr/bin/env python
"""How long one scrape of the saga metrics takes on a large history (not a test).

Fills a PostgreSQL database of its own with N sagas of five steps (default 100,000: 90 %
completed, 5 % compensated, 1 % dead-lettered, 4 % unfinished) with one INSERT ... SELECT
generate_series each, then times ``SagaCollector.collect()``:

    DATABASE_URL=postgresql://postgres@127.0.0.1:55432/metrics_bench \\
        python tests/observability/measure_collect.py --sagas 100000

The database is dropped and created again first (unless ``--reuse``), so point it at a
throwaway name.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def _recreate(url: str) -> None:
    parts = urlsplit(url)
    name = parts.path.lstrip("/")
    base = ["-h", parts.hostname or "127.0.0.1", "-p", str(parts.port or 5432)]
    base += ["-U", parts.username or "postgres"]
    subprocess.run(["dropdb", *base, "--if-exists", name], check=True)
    subprocess.run(["createdb", *base, name], check=True)


FILL = """
INSERT INTO sagas_sagainstance (id, definition, version, business_key, correlation_id,
    status, priority, tags, context, current_step, deadline, lease_owner, runs,
    recovery_attempts, error_code, error_message, created_at, updated_at, completed_at,
    dead_lettered_at, dead_letter_reason, resolved_by, resolution)
SELECT gen_random_uuid(), 'orders.place_order', 1, 'k' || i, '',
    CASE WHEN i % 100 < 90 THEN 'COMPLETED' WHEN i % 100 < 95 THEN 'COMPENSATED'
         WHEN i % 100 < 96 THEN 'FAILED' ELSE 'EXECUTING' END,
    1, '[]', '{}', '', now() + interval '1 hour', '', 1, 0, '', '',
    now() - (i % 86400) * interval '1 second',
    now() - (i % 86400) * interval '1 second' + (i % 90) * interval '1 second',
    CASE WHEN i % 100 < 96
         THEN now() - (i % 86400) * interval '1 second' + (i % 90) * interval '1 second' END,
    CASE WHEN i % 100 = 95 THEN now() END, '', '', ''
FROM generate_series(1, %(n)s) AS i;

INSERT INTO sagas_sagastep (saga_id, name, index, status, compensation_status, attempts,
    compensation_attempts, error_type, error_code, error_message, error_traceback,
    started_at, finished_at, duration_ms)
SELECT s.id, 'step' || k, k,
    CASE WHEN s.status = 'COMPENSATED' AND k < 3 THEN 'COMPENSATED'
         WHEN s.status = 'COMPENSATED' AND k = 3 THEN 'FAILED' ELSE 'COMPLETED' END,
    CASE WHEN s.status = 'COMPENSATED' AND k < 3 THEN 'COMPENSATED'
         WHEN s.status = 'COMPENSATED' AND k = 3 THEN 'EMPTY'
         WHEN s.status = 'FAILED' AND k = 1 THEN 'FAILED' ELSE 'NONE' END,
    1 + (k = 2 AND random() < 0.1)::int,
    CASE WHEN s.status = 'FAILED' AND k = 1 THEN 3
         WHEN s.status = 'COMPENSATED' AND k < 3 THEN 1 ELSE 0 END,
    '', '', '', '', s.created_at, s.created_at, (random() * 400)::int
FROM sagas_sagainstance s CROSS JOIN generate_series(0, 4) AS k;
ANALYZE sagas_sagainstance;
ANALYZE sagas_sagastep;
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sagas", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--reuse", action="store_true", help="keep the filled database")
    args = parser.parse_args()
    url = os.environ["DATABASE_URL"]
    if not args.reuse:
        _recreate(url)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "l2c.settings.base")
    os.environ.setdefault("DJANGO_DEBUG", "true")
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection

    from sagas.metrics import SagaCollector

    if not args.reuse:
        call_command("migrate", verbosity=0)
        started = time.perf_counter()
        with connection.cursor() as cursor:
            cursor.execute(FILL.replace("%(n)s", str(int(args.sagas))))
        print(f"filled {args.sagas} sagas in {time.perf_counter() - started:.1f} s")
    collector = SagaCollector()
    timings = []
    for _ in range(args.repeat):
        started = time.perf_counter()
        families = list(collector.collect())
        timings.append(time.perf_counter() - started)
    up = next(f for f in families if f.name == "saga_metrics_up").samples[0].value
    series = sum(len(f.samples) for f in families)
    print(
        f"collect(): median {statistics.median(timings) * 1000:.0f} ms, "
        f"min {min(timings) * 1000:.0f} ms over {args.repeat} runs; "
        f"{series} samples, saga_metrics_up={up:g}"
    )


if __name__ == "__main__":
    main()
