"""A circuit breaker in front of the payment gateway, shared by every process via the cache.

When most recent calls fail (connection errors, timeouts, 5xx), the gateway is left alone
for a cool-down: calls fail fast with ``GatewayUnavailable`` (a transient error, so sagas
retry later) instead of piling up on a sick service [seed 004]. After the cool-down one trial
call goes through (half-open): success closes the circuit, failure opens it again.

State lives in the configured cache (Redis in production, so every worker and web process
sees the same circuit; the in-process cache on the embedded default). Counters are kept per
10-second bucket over a sliding window.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.core.cache import cache

from l2c.counters import counter_incr
from payments.exceptions import GatewayUnavailable

BUCKET_SECONDS = 10
DEFAULTS: dict[str, Any] = {
    "WINDOW_SECONDS": 30,
    "MIN_CALLS": 20,
    "FAILURE_RATE": 0.5,
    "COOLDOWN_SECONDS": 15.0,
}


def _setting(name: str) -> Any:
    return getattr(settings, "PAYMENT_GATEWAY_BREAKER", {}).get(name, DEFAULTS[name])


@dataclass(frozen=True)
class BreakerState:
    state: str  # closed, open or half_open
    calls: int
    failures: int
    open_for_seconds: float


class CircuitBreaker:
    def __init__(self, name: str = "gateway") -> None:
        self.prefix = f"l2c:breaker:{name}"

    def _buckets(self, now: float) -> list[int]:
        current = int(now // BUCKET_SECONDS)
        count = max(1, int(_setting("WINDOW_SECONDS") // BUCKET_SECONDS))
        return [current - offset for offset in range(count)]

    def _bump(self, kind: str, now: float) -> None:
        key = f"{self.prefix}:{kind}:{int(now // BUCKET_SECONDS)}"
        counter_incr(cache, key, int(_setting("WINDOW_SECONDS")) + BUCKET_SECONDS)

    def _counts(self, now: float) -> tuple[int, int]:
        keys = {
            f"{self.prefix}:{kind}:{bucket}": kind
            for bucket in self._buckets(now)
            for kind in ("calls", "failures")
        }
        values = cache.get_many(list(keys))
        calls = sum(v for k, v in values.items() if keys[k] == "calls")
        failures = sum(v for k, v in values.items() if keys[k] == "failures")
        return calls, failures

    def state(self) -> BreakerState:
        now = time.time()
        open_until = cache.get(f"{self.prefix}:open_until")
        calls, failures = self._counts(now)
        if open_until and open_until > now:
            return BreakerState("open", calls, failures, round(open_until - now, 3))
        if open_until:
            return BreakerState("half_open", calls, failures, 0.0)
        return BreakerState("closed", calls, failures, 0.0)

    def before_call(self) -> None:
        """Raise ``GatewayUnavailable`` at once while the circuit is open; in half-open,
        let exactly one trial call through."""
        now = time.time()
        open_until = cache.get(f"{self.prefix}:open_until")
        if not open_until:
            return
        if open_until > now:
            raise GatewayUnavailable(
                f"payment gateway circuit open for {open_until - now:.1f} s more"
            )
        cooldown = float(_setting("COOLDOWN_SECONDS"))
        if not cache.add(f"{self.prefix}:trial", 1, max(1, int(cooldown))):
            raise GatewayUnavailable("payment gateway circuit half-open: a trial call is out")

    def record(self, *, ok: bool) -> None:
        now = time.time()
        if cache.get(f"{self.prefix}:open_until"):
            # The half-open trial decides: close and forget the bad window, or open again.
            cache.delete(f"{self.prefix}:trial")
            if ok:
                cache.delete(f"{self.prefix}:open_until")
                cache.delete_many(
                    [
                        f"{self.prefix}:{kind}:{bucket}"
                        for bucket in self._buckets(now)
                        for kind in ("calls", "failures")
                    ]
                )
            else:
                self._open(now)
            return
        self._bump("calls", now)
        if ok:
            return
        self._bump("failures", now)
        calls, failures = self._counts(now)
        if calls >= int(_setting("MIN_CALLS")) and failures / calls >= float(
            _setting("FAILURE_RATE")
        ):
            self._open(now)

    def _open(self, now: float) -> None:
        cooldown = float(_setting("COOLDOWN_SECONDS"))
        # Kept well past the cool-down so half-open is remembered until a trial decides.
        cache.set(f"{self.prefix}:open_until", now + cooldown, int(cooldown) + 3600)

    def reset(self) -> None:
        cache.delete_many(
            [f"{self.prefix}:open_until", f"{self.prefix}:trial"]
            + [
                f"{self.prefix}:{kind}:{bucket}"
                for bucket in self._buckets(time.time())
                for kind in ("calls", "failures")
            ]
        )


gateway_breaker = CircuitBreaker("gateway")
