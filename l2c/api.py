"""The API's plumbing: the error shape, the bounded JSON parser and the throttles.

Every error is ``{"code", "message"}`` plus ``"errors"`` (field errors) or ``"extra"``
(the structured data of a business error).
"""

from __future__ import annotations

import contextlib
import io
from typing import IO, Any

from django.conf import settings
from django.core.exceptions import PermissionDenied, RequestDataTooBig
from django.http import Http404, HttpRequest, JsonResponse
from django.utils.translation import gettext_lazy as _
from django.views import defaults
from rest_framework import authentication, exceptions, serializers, status
from rest_framework.parsers import JSONParser
from rest_framework.response import Response
from rest_framework.settings import api_settings
from rest_framework.throttling import AnonRateThrottle, UserRateThrottle

from l2c.counters import counter_incr
from l2c.db import execute, instance_from_row, select_columns
from l2c.errors import DomainError


class TokenAuthentication(authentication.TokenAuthentication):
    """DRF's token authentication, with the token and its user read in one plain statement.

    Same checks and answers as DRF's; the ORM query it replaces (``select_related`` and
    ``get``) cost more to build than to run, on every API request.
    """

    def authenticate_credentials(self, key: str) -> tuple[Any, Any]:
        from django.contrib.auth import get_user_model

        token_model, user_model = self.get_model(), get_user_model()
        user_id = token_model._meta.get_field("user").column
        with execute(
            f"SELECT {select_columns(token_model, 't')}, {select_columns(user_model, 'u')}"
            f" FROM {token_model._meta.db_table} t JOIN {user_model._meta.db_table} u"
            f" ON u.{user_model._meta.pk.column} = t.{user_id}"
            f" WHERE t.{token_model._meta.pk.column} = %s",
            [key],
        ) as cursor:
            row = cursor.fetchone()
        if row is None:
            raise exceptions.AuthenticationFailed(_("Invalid token."))
        split = len(token_model._meta.concrete_fields)
        token = instance_from_row(token_model, row[:split])
        token.user = instance_from_row(user_model, row[split:])
        if not token.user.is_active:
            raise exceptions.AuthenticationFailed(_("User inactive or deleted."))
        return token.user, token


class RequestTooLarge(exceptions.APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_detail = "The request body is larger than the server accepts."
    default_code = "request_too_large"


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    # Imported here: rest_framework.views loads DEFAULT_THROTTLE_CLASSES, which name this
    # module, so a module-level import would be circular when this module loads first.
    from rest_framework.views import exception_handler as drf_exception_handler

    if isinstance(exc, DomainError):
        return Response(exc.as_dict(), status=status.HTTP_409_CONFLICT)
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, PermissionDenied):
        exc = exceptions.PermissionDenied()
    elif isinstance(exc, RequestDataTooBig):
        # Django raises it from request.body; left alone it would become an HTML 400.
        exc = RequestTooLarge()
    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    if isinstance(exc, exceptions.ValidationError):
        response.data = {
            "code": "invalid",
            "message": "The request has invalid fields.",
            "errors": response.data,
        }
    elif isinstance(exc, exceptions.APIException):
        detail = response.data.get("detail", "") if isinstance(response.data, dict) else ""
        response.data = {"code": exc.get_codes(), "message": str(detail)}
    return response


class ErrorSerializer(serializers.Serializer):
    """The error body, for the schema."""

    code = serializers.CharField()
    message = serializers.CharField()
    errors = serializers.DictField(required=False, help_text="Field errors, by field name.")
    extra = serializers.DictField(required=False, help_text="Data of a business error.")

    class Meta:
        ref_name = "Error"


class BoundedJSONParser(JSONParser):
    """JSON bodies up to DATA_UPLOAD_MAX_MEMORY_SIZE; a larger one is answered with 413.

    DRF reads the body as a stream, which skips Django's own size check (that one only
    guards ``request.body``), so the limit is enforced here before anything is decoded.
    """

    def parse(
        self,
        stream: IO[bytes],
        media_type: str | None = None,
        parser_context: dict[str, Any] | None = None,
    ) -> Any:
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        if limit is not None:
            request = (parser_context or {}).get("request")
            declared = request.META.get("CONTENT_LENGTH") if request is not None else None
            if declared and str(declared).isdigit() and int(declared) > limit:
                raise RequestTooLarge()
            body = stream.read(limit + 1)
            if len(body) > limit:
                raise RequestTooLarge()
            stream = io.BytesIO(body)
        return super().parse(stream, media_type, parser_context)


class _SettingsRate:
    """Read the rate from the current settings on every request.

    DRF binds ``THROTTLE_RATES`` when the module is imported, so a changed setting (an
    override in a test, a reloaded config) would otherwise go unnoticed.
    """

    scope: str | None

    def get_rate(self) -> str | None:
        return api_settings.DEFAULT_THROTTLE_RATES.get(self.scope)


class _WindowCounter:
    """Counts requests with two atomic counters per client and scope.

    DRF's own throttles keep every request's time in one cache entry, read, trimmed and
    written back whole on each request: at 6000 a minute that is a list of up to 6000
    floats unpickled and pickled per request and throttle, and two concurrent requests both
    write theirs, so one of them is not counted. Here each request is one increment of the
    current window's counter (``INCR`` in Redis) and one read of the previous window's. The
    last ``duration`` seconds are estimated as this window's count plus the previous one's,
    weighted by how much of it is still within them (a sliding window counter).
    """

    cache: Any
    key: str | None
    now: float
    rate: str | None
    num_requests: int
    duration: int
    timer: Any

    def allow_request(self, request: Any, view: Any) -> bool:
        if self.rate is None:
            return True
        self.key = self.get_cache_key(request, view)  # type: ignore[attr-defined]
        if self.key is None:
            return True
        self.now = self.timer()
        window, elapsed = divmod(self.now, self.duration)
        current = f"{self.key}:{int(window)}"
        count = counter_incr(self.cache, current, self.duration * 2)
        earlier = self.cache.get(f"{self.key}:{int(window) - 1}", 0)
        if count + earlier * (1 - elapsed / self.duration) <= self.num_requests:
            return True
        # A refused request does not use up the budget: a client that keeps retrying gets
        # through as soon as the window allows it.
        with contextlib.suppress(ValueError):
            self.cache.decr(current)
        self.retry_after = self.duration - elapsed
        return False

    def wait(self) -> float | None:
        """Seconds until the current window ends (the estimate may allow a request sooner)."""
        return getattr(self, "retry_after", None)


class UserThrottle(_SettingsRate, _WindowCounter, UserRateThrottle):
    """Requests per authenticated user (or per address for anonymous ones)."""


class AnonThrottle(_SettingsRate, _WindowCounter, AnonRateThrottle):
    """Requests per address from anonymous clients."""


class OrderSubmitThrottle(_SettingsRate, _WindowCounter, UserRateThrottle):
    """Order submissions per user; the ``orders`` rate. No rate configured: no limit."""

    scope = "orders"


def _wants_json(request: HttpRequest) -> bool:
    return request.path.startswith("/api/")


def not_found(request: HttpRequest, exception: Exception | None = None) -> Any:
    """handler404: API clients get the JSON error shape, the rest Django's page."""
    if _wants_json(request):
        return JsonResponse(
            {"code": "not_found", "message": "Not found."}, status=status.HTTP_404_NOT_FOUND
        )
    return defaults.page_not_found(request, exception)


def server_error(request: HttpRequest) -> Any:
    """handler500: API clients get the JSON error shape, the rest Django's page."""
    if _wants_json(request):
        return JsonResponse(
            {"code": "server_error", "message": "The server failed to handle the request."},
            status=status.HTTP_500_INTERNAL_SERVER_ERROR,
        )
    return defaults.server_error(request)
