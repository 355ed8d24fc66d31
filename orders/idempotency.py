"""``Idempotency-Key`` for the API's unsafe requests.

A client that retries a POST under the same key gets the first answer again instead of a
second effect. Keys belong to the API user that sent them and live at least 24 hours in
``IdempotencyRecord``:

- the claim is an INSERT; the unique (user, key) constraint decides who wins, never a
  "check, then insert";
- a loser compares its request with the winner's: another body (or endpoint) gives 422,
  a first request still running gives 409 (retry later), a finished one is replayed with
  its status, Location and byte-identical body;
- the answer is stored in the same transaction as the work, so a committed effect always
  has its answer on record; a request without effect (any 4xx, or the view raising)
  gives the key back;
- a claim left behind by a crashed process is taken over after ``CLAIM_TIMEOUT``, which
  is safe because the services behind these views are idempotent themselves.
"""

from __future__ import annotations

import functools
import hashlib
import json
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, TypeVar

from django.contrib.auth.base_user import AbstractBaseUser
from django.db import IntegrityError, transaction
from django.http import HttpResponse
from django.utils import timezone
from rest_framework import exceptions, status
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request

from l2c.db import no_savepoints, savepoint
from l2c.faults import fault_point
from orders.models import IdempotencyRecord

HEADER = "Idempotency-Key"
MAX_KEY_LENGTH = 255
RETENTION = timedelta(hours=24)
CLAIM_TIMEOUT = timedelta(seconds=60)
# Headers of the first answer that a replay repeats; the rest belong to each request.
REPLAYED_HEADERS = ("Location",)
REPLAY_HEADER = "Idempotent-Replayed"
# Where the decorator leaves the claim for service_request_key.
_CLAIM_ATTRIBUTE = "_idempotency_claim"

View = TypeVar("View", bound=Callable[..., Any])


class IdempotencyKeyInUse(exceptions.APIException):
    status_code = status.HTTP_409_CONFLICT
    default_detail = "A request with this Idempotency-Key is still being processed; retry later."
    default_code = "idempotency_key_in_use"


class IdempotencyKeyReused(exceptions.APIException):
    status_code = status.HTTP_422_UNPROCESSABLE_ENTITY
    default_detail = "This Idempotency-Key was used for a different request."
    default_code = "idempotency_key_reused"


def idempotency_key(request: Request) -> str | None:
    """The request's ``Idempotency-Key``, or None when absent. Raises 400 for a bad key."""
    key = request.headers.get(HEADER)
    if key is None:
        return None
    if not 1 <= len(key) <= MAX_KEY_LENGTH or not (key.isascii() and key.isprintable()):
        raise exceptions.ValidationError(
            {HEADER: [f"Must be 1 to {MAX_KEY_LENGTH} printable ASCII characters."]}
        )
    return key


def service_request_key(request: Request) -> str:
    """The key the service behind the view dedupes this request on.

    Under an ``Idempotency-Key`` it names the claim: a retry that takes over a crashed
    request's claim repeats the same service call, while the key reused after it expired
    is a new request. Without the header every request is a new one.
    """
    record: IdempotencyRecord | None = getattr(request, _CLAIM_ATTRIBUTE, None)
    if record is None:
        return f"api:{request.user.pk}:{uuid.uuid4().hex}"
    return f"api:{record.user_id}:claim:{record.pk}"


def request_fingerprint(data: Any) -> str:
    """sha256 of the body as canonical JSON (sorted keys, no spaces)."""
    canonical = json.dumps(
        data, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def idempotent(view_method: View) -> View:
    """Make an APIView handler honour ``Idempotency-Key``; without the header it runs as is.

    Only answers with a 2xx status are kept: the views' other answers have no effect, so
    the client may retry with the same key once it has fixed the request.
    """

    @functools.wraps(view_method)
    def wrapper(view: Any, request: Request, *args: Any, **kwargs: Any) -> Any:
        key = idempotency_key(request)
        if key is None or not request.user.is_authenticated:
            return view_method(view, request, *args, **kwargs)
        # Parse first: a body that cannot be read is a 400 that must not claim the key.
        fingerprint = request_fingerprint(request.data)
        record = _claim(
            user=request.user,
            key=key,
            method=request.method,
            path=request.path,
            fingerprint=fingerprint,
        )
        if record.state == IdempotencyRecord.State.DONE:
            response = _stored_response(record)
            response[REPLAY_HEADER] = "true"
            return response
        setattr(request, _CLAIM_ATTRIBUTE, record)
        try:
            # Whatever fails in the view leaves this block, which rolls back: the services
            # it calls need no savepoints of their own (see l2c.db).
            with transaction.atomic(), no_savepoints():
                response = view_method(view, request, *args, **kwargs)
                fault_point("api.before_response")
                if status.is_success(response.status_code):
                    _complete(record, response)
        except BaseException:
            _release(record)
            raise
        if not status.is_success(response.status_code):
            _release(record)
            return response
        return _stored_response(record)

    return wrapper  # type: ignore[return-value]


def _claim(
    *, user: AbstractBaseUser, key: str, method: str, path: str, fingerprint: str
) -> IdempotencyRecord:
    """Take the key for this request, or return the finished record to replay.

    Raises ``IdempotencyKeyReused`` (422) or ``IdempotencyKeyInUse`` (409).
    """
    path = path[:255]
    # A few rounds at most: a record can vanish between the failed INSERT and the read
    # when its request gives the key back, or be an expired one that this request removes;
    # then the INSERT is worth another try.
    for _ in range(3):
        now = timezone.now()
        try:
            # In autocommit (the views run outside a transaction) this is one statement.
            with savepoint():
                return IdempotencyRecord.objects.create(
                    user=user,
                    key=key,
                    method=method,
                    path=path,
                    fingerprint=fingerprint,
                    created_at=now,
                    claimed_at=now,
                    expires_at=now + RETENTION,
                )
        except IntegrityError:
            existing = IdempotencyRecord.objects.filter(user=user, key=key).first()
        if existing is None:
            continue
        if existing.expires_at <= now:
            # Past its retention the key is free again. Two requests removing the same
            # expired record at once still meet at the unique constraint on the next INSERT.
            IdempotencyRecord.objects.filter(pk=existing.pk, expires_at__lte=now).delete()
            continue
        if (existing.method, existing.path, existing.fingerprint) != (method, path, fingerprint):
            raise IdempotencyKeyReused()
        if existing.state == IdempotencyRecord.State.DONE:
            return existing
        if existing.claimed_at <= now - CLAIM_TIMEOUT and _take_over(existing, now):
            return existing
        raise IdempotencyKeyInUse()
    raise IdempotencyKeyInUse()


def _take_over(record: IdempotencyRecord, now: datetime) -> bool:
    """Compare-and-set on ``claimed_at``: of two requests taking over one claim, one wins."""
    taken = IdempotencyRecord.objects.filter(
        pk=record.pk, state=IdempotencyRecord.State.IN_PROGRESS, claimed_at=record.claimed_at
    ).update(claimed_at=now)
    if taken:
        record.claimed_at = now
    return bool(taken)


def _complete(record: IdempotencyRecord, response: Any) -> None:
    record.state = IdempotencyRecord.State.DONE
    record.response_status = response.status_code
    record.response_body = JSONRenderer().render(response.data).decode()
    record.response_headers = {
        name: response[name] for name in REPLAYED_HEADERS if response.has_header(name)
    }
    record.save(update_fields=["state", "response_status", "response_body", "response_headers"])


def _release(record: IdempotencyRecord) -> None:
    # Only this request's own claim: one taken over by another request is not ours to drop.
    IdempotencyRecord.objects.filter(
        pk=record.pk, state=IdempotencyRecord.State.IN_PROGRESS, claimed_at=record.claimed_at
    ).delete()


def _stored_response(record: IdempotencyRecord) -> HttpResponse:
    """The answer as recorded; the first response and every replay are built here."""
    response = HttpResponse(
        record.response_body.encode(),
        status=record.response_status,
        content_type="application/json",
    )
    for name, value in record.response_headers.items():
        response[name] = value
    return response


def idempotency_records_purge(*, now: datetime | None = None, limit: int = 1000) -> int:
    """Delete up to ``limit`` expired records; returns how many went."""
    now = now or timezone.now()
    expired = list(
        IdempotencyRecord.objects.filter(expires_at__lte=now)
        .order_by("expires_at")
        .values_list("pk", flat=True)[:limit]
    )
    deleted, _ = IdempotencyRecord.objects.filter(pk__in=expired, expires_at__lte=now).delete()
    return deleted
