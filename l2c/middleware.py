"""Request correlation ids and the API access log.

``CorrelationIdMiddleware`` takes the caller's ``X-Correlation-ID`` when it is a sane token
(at most 100 characters of ``A-Z a-z 0-9 . _ -``, so it is safe in logs, headers and the
saga's ``correlation_id`` column) and makes a new one otherwise. The id is on
``request.correlation_id``, in ``l2c.logging.correlation_id_var`` for every log line of the
request, and in the response's ``X-Correlation-ID`` header. Each ``/api/`` request then
logs one line on the ``l2c.request`` logger: method, path, status, duration, correlation id
and user id.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Callable

from django.http import HttpRequest, HttpResponseBase
from django.utils.functional import LazyObject, empty

from l2c.logging import correlation_id_var

logger = logging.getLogger("l2c.request")

HEADER = "X-Correlation-ID"
MAX_LENGTH = 100
_VALID = re.compile(r"[A-Za-z0-9._-]{1,100}")
# Probes call these every few seconds; their lines would drown the real requests.
_QUIET_PREFIXES = ("/api/health/",)


def valid_correlation_id(value: str | None) -> str | None:
    """``value`` when it may be used as a correlation id, else None."""
    if value and len(value) <= MAX_LENGTH and _VALID.fullmatch(value):
        return value
    return None


def new_correlation_id() -> str:
    return uuid.uuid4().hex


class CorrelationIdMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        correlation_id = valid_correlation_id(request.headers.get(HEADER))
        correlation_id = correlation_id or new_correlation_id()
        request.correlation_id = correlation_id  # type: ignore[attr-defined]
        token = correlation_id_var.set(correlation_id)
        started = time.perf_counter()
        try:
            response = self.get_response(request)
            response[HEADER] = correlation_id
            self._log(request, response, started)
        finally:
            correlation_id_var.reset(token)
        return response

    def _log(self, request: HttpRequest, response: HttpResponseBase, started: float) -> None:
        path = request.path
        if not path.startswith("/api/"):
            return
        level = logging.DEBUG if path.startswith(_QUIET_PREFIXES) else logging.INFO
        if not logger.isEnabledFor(level):
            return
        user = getattr(request, "user", None)
        # Only read a user that authentication already loaded: evaluating the lazy one here
        # would cost a session query on requests that never needed it.
        if isinstance(user, LazyObject) and user._wrapped is empty:
            user = None
        user_id = user.pk if user is not None and user.is_authenticated else None
        logger.log(
            level,
            "%s %s %s",
            request.method,
            path,
            response.status_code,
            extra={
                "method": request.method,
                "path": path,
                "status": response.status_code,
                "duration_ms": round((time.perf_counter() - started) * 1000, 1),
                "correlation_id": request.correlation_id,  # type: ignore[attr-defined]
                "user_id": user_id,
            },
        )
