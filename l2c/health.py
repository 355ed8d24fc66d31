"""``/api/health/``: liveness and readiness for load balancers, orchestrators and people.

- ``?probe=live`` answers 200 as long as the process serves requests; it touches nothing
  else, so a database outage does not get healthy web processes restarted.
- The default (``?probe=ready``) checks what the sagas need: the database, Redis when it is
  configured, a running qcluster, and the saga health of seed 000 (UNHEALTHY while a saga
  is stuck). 200 when all of them are fine, 503 otherwise, with every check in the body.
  The payment gateway's circuit breaker is reported but does not fail readiness: payments
  fail fast and their sagas retry while it is open, and the circuit is shared by every web
  process, so taking them all out of the load balancer would stop orders that need no
  payment without helping the ones that do.

Plain Django: no authentication, no throttling, never cached.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.db import connection
from django.http import HttpRequest, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_safe

logger = logging.getLogger("l2c.health")

Check = dict[str, Any]


def check_database() -> Check:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()
    return {"ok": True, "vendor": connection.vendor}


def check_redis() -> Check:
    if not settings.REDIS_URL:
        return {"ok": True, "skipped": "REDIS_URL is not set"}
    from django_redis import get_redis_connection

    return {"ok": bool(get_redis_connection("default").ping())}


def check_workers() -> Check:
    """At least one qcluster reports in.

    Each cluster's sentinel saves its status every half second with a 3 s expiry, through
    the broker (Redis keys ``django_q:<name>:cluster:*``) or, for the ORM broker, through
    Django's cache. Those statuses are visible here only when that store is shared between
    processes; the local-memory cache of the embedded default is not, so there the check
    says it cannot tell rather than report every worker dead.
    """
    from django.core.cache.backends.locmem import LocMemCache
    from django_q.brokers import Broker, get_broker
    from django_q.conf import Conf
    from django_q.status import Stat

    broker = get_broker()
    # Brokers that do not store statuses themselves (ORM) leave them to Django's cache.
    uses_cache = type(broker).get_stats is Broker.get_stats
    cache = getattr(broker, "cache", None)
    if uses_cache and (cache is None or isinstance(cache, LocMemCache)):
        return {"ok": True, "skipped": "cluster status is not shared between processes"}
    clusters = [
        {
            "cluster_id": str(stat.cluster_id),
            "host": stat.host,
            "status": stat.status,
            "workers": len(stat.workers),
        }
        for stat in Stat.get_all(broker=broker)
    ]
    running = [c for c in clusters if c["status"] in (Conf.IDLE, Conf.WORKING) and c["workers"]]
    return {"ok": bool(running), "clusters": clusters}


def check_sagas() -> Check:
    from sagas.stats import saga_health

    health = saga_health().as_dict()
    return {"ok": health["status"] == "HEALTHY", **health}


def check_payment_gateway() -> Check:
    from payments.circuit import gateway_breaker

    state = gateway_breaker.state()
    return {
        "ok": state.state != "open",
        "state": state.state,
        "calls": state.calls,
        "failures": state.failures,
        "open_for_seconds": state.open_for_seconds,
    }


# name -> (check, whether a failure makes the process unready)
CHECKS: dict[str, tuple[Callable[[], Check], bool]] = {
    "database": (check_database, True),
    "redis": (check_redis, True),
    "workers": (check_workers, True),
    "sagas": (check_sagas, True),
    "payment_gateway": (check_payment_gateway, False),
}


def _run(check: Callable[[], Check]) -> Check:
    started = time.perf_counter()
    try:
        result = check()
    except Exception as error:
        # One failing dependency must still let the others report.
        logger.warning("health check %s failed: %s", check.__name__, error)
        result = {"ok": False, "error": f"{type(error).__name__}: {error}"[:500]}
    result["duration_ms"] = round((time.perf_counter() - started) * 1000, 1)
    return result


def readiness() -> tuple[bool, dict[str, Check]]:
    """Run every check; True when no critical one failed."""
    results = {}
    ready = True
    for name, (check, critical) in CHECKS.items():
        result = _run(check)
        result["critical"] = critical
        results[name] = result
        ready = ready and (result["ok"] or not critical)
    return ready, results


@never_cache
@require_safe
def health(request: HttpRequest) -> JsonResponse:
    if request.GET.get("probe") == "live":
        return JsonResponse({"status": "ok"})
    ready, checks = readiness()
    response = JsonResponse(
        {"status": "ok" if ready else "unavailable", "checks": checks},
        status=200 if ready else 503,
    )
    if not ready:
        failed = sorted(name for name, check in checks.items() if not check["ok"])
        logger.warning("not ready: %s", ", ".join(failed), extra={"failed_checks": failed})
        # Said once above with the reason; Django would add an ERROR line per probe.
        response._has_been_logged = True  # type: ignore[attr-defined]
    return response
