"""HTTP client of the payment gateway (stdlib only).

Every POST carries an ``Idempotency-Key``: the gateway stores the answer under that key and
replays it for a repeated request, so a step may call it again after any failure without
charging or refunding twice. Amounts travel as decimal strings ("12.34"), never floats.

How failures map to exceptions decides what the saga engine does next:

* 402 -> ``CardDeclined``, other 4xx -> ``PaymentRejected``: final answers, compensate.
* 5xx, 429, refused or reset connections -> ``GatewayUnavailable``: retry with the same key.
* no answer within the timeout -> ``GatewayTimeout``: the outcome is unknown, ask the
  status query (``charge_status``) before deciding.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from http.client import HTTPConnection, HTTPException, HTTPSConnection
from typing import Any
from urllib.parse import quote, urlsplit

from django.conf import settings

from payments.circuit import gateway_breaker
from payments.exceptions import (
    CardDeclined,
    GatewayTimeout,
    GatewayUnavailable,
    PaymentRejected,
)

CENT = Decimal("0.01")


@dataclass(frozen=True)
class Charge:
    id: str
    idempotency_key: str
    amount: Decimal
    currency: str
    status: str
    payment_method: str
    refunded: Decimal
    reference: str = ""

    @property
    def succeeded(self) -> bool:
        return self.status == "succeeded"


@dataclass(frozen=True)
class RefundResult:
    id: str
    charge_id: str
    amount: Decimal
    idempotency_key: str


@dataclass(frozen=True)
class _Response:
    status: int
    body: dict[str, Any]

    @property
    def error(self) -> dict[str, Any]:
        error = self.body.get("error")
        return error if isinstance(error, dict) else {}


def money(amount: Decimal) -> str:
    """``amount`` as the wire format: a decimal string with two places, refusing rounding."""
    if not isinstance(amount, Decimal):
        raise TypeError(f"amount must be a Decimal, got {type(amount).__name__}")
    if not amount.is_finite() or amount.quantize(CENT) != amount:
        raise ValueError(f"amount {amount} is not a whole number of cents")
    return str(amount.quantize(CENT))


class GatewayClient:
    """One gateway, one API key, one timeout; a new connection per request (thread-safe)."""

    def __init__(self, *, base_url: str, api_key: str, timeout: float) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in {"http", "https"} or not parts.hostname:
            raise ValueError(f"payment gateway URL {base_url!r} is not an http(s) URL")
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self._api_key = api_key
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port
        self._prefix = parts.path.rstrip("/")

    def __repr__(self) -> str:
        return f"GatewayClient({self.base_url!r}, timeout={self.timeout})"

    # --- API ------------------------------------------------------------------------------

    def charge(
        self,
        *,
        key: str,
        amount: Decimal,
        currency: str,
        payment_method: str,
        reference: str = "",
    ) -> Charge:
        """Take ``amount`` from ``payment_method``. At most once per ``key`` at the gateway.

        Raises ``CardDeclined`` (402), ``PaymentRejected`` (other 4xx, including the same key
        reused for a different amount), ``GatewayUnavailable`` or ``GatewayTimeout``.
        """
        response = self._request(
            "POST",
            "/v1/charges",
            body={
                "amount": money(amount),
                "currency": currency,
                "payment_method": payment_method,
                "reference": reference,
            },
            idempotency_key=key,
        )
        if response.status == 402:
            error = response.error
            raise CardDeclined(
                error.get("message") or None,
                decline_code=error.get("decline_code") or error.get("code") or "card_declined",
                key=key,
            )
        self._raise_for_status(response, what="charge")
        return self._charge(response)

    def charge_status(self, *, key: str) -> Charge | None:
        """The charge the gateway made under ``key`` (whatever its status), or None."""
        response = self._request("GET", f"/v1/charges/by-key/{quote(key, safe='')}")
        if response.status == 404:
            # Only the gateway's own "no such charge" means never charged: a 404 from a
            # misrouted URL must not let a refund conclude that no money moved.
            if response.error.get("code") == "resource_missing":
                return None
            raise GatewayUnavailable(f"unexpected 404 from {self.base_url} for the status query")
        self._raise_for_status(response, what="charge status query")
        return self._charge(response)

    def refund(
        self,
        *,
        key: str,
        charge_id: str,
        amount: Decimal | None = None,
        reason: str = "",
    ) -> RefundResult:
        """Give back ``amount`` of a charge (default: all that is left). At most once per key.

        The gateway never refunds more than was charged: asking for more raises
        ``PaymentRejected``, as does an unknown charge.
        """
        body: dict[str, Any] = {"charge": charge_id, "reason": reason}
        if amount is not None:
            body["amount"] = money(amount)
        response = self._request("POST", "/v1/refunds", body=body, idempotency_key=key)
        self._raise_for_status(response, what="refund")
        data = response.body
        try:
            return RefundResult(
                id=str(data["id"]),
                charge_id=str(data["charge"]),
                amount=Decimal(str(data["amount"])),
                idempotency_key=str(data.get("idempotency_key") or key),
            )
        except (KeyError, TypeError, InvalidOperation) as exc:
            raise GatewayUnavailable(f"unreadable refund from the gateway: {data!r}") from exc

    def ledger(self) -> dict[str, Any]:
        """The gateway's totals: charged, refunded (decimal strings), counts and by_key."""
        response = self._request("GET", "/v1/ledger", guarded=False)
        self._raise_for_status(response, what="ledger")
        return response.body

    def health(self) -> bool:
        try:
            response = self._request("GET", "/health", guarded=False)
        except (GatewayUnavailable, GatewayTimeout):
            return False
        return response.status == 200 and response.body.get("ok") is True

    # --- plumbing -------------------------------------------------------------------------

    def _request(
        self,
        method: str,
        path: str,
        *,
        body: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
        guarded: bool = True,
    ) -> _Response:
        """One HTTP exchange. ``guarded`` calls go through the circuit breaker: refused at
        once while it is open, and counted (a failure is no answer, a 5xx or a 429)."""
        if not guarded:
            return self._exchange(method, path, body=body, idempotency_key=idempotency_key)
        gateway_breaker.before_call()
        try:
            response = self._exchange(method, path, body=body, idempotency_key=idempotency_key)
        except (GatewayUnavailable, GatewayTimeout):
            gateway_breaker.record(ok=False)
            raise
        gateway_breaker.record(ok=response.status < 500 and response.status != 429)
        return response

    def _exchange(
        self,
        method: str,
        path: str,
        *,
        body: dict[str, Any] | None,
        idempotency_key: str | None,
    ) -> _Response:
        headers = {
            "Authorization": f"Bearer {self._api_key}",
            "Accept": "application/json",
        }
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if idempotency_key is not None:
            headers["Idempotency-Key"] = idempotency_key
        connection_class = HTTPSConnection if self._https else HTTPConnection
        connection = connection_class(self._host, self._port, timeout=self.timeout)
        try:
            try:
                connection.connect()
            except OSError as exc:
                # Nothing was sent, so nothing happened at the gateway: a plain retry, even
                # when the connect itself timed out.
                raise GatewayUnavailable(f"cannot connect to {self.base_url}: {exc}") from exc
            try:
                connection.request(method, self._prefix + path, body=data, headers=headers)
                response = connection.getresponse()
                raw = response.read()
            except TimeoutError as exc:
                # The request may have been carried out: only the status query can tell.
                raise GatewayTimeout(
                    f"no answer from {self.base_url} to {method} {path} within {self.timeout} s"
                ) from exc
            except (OSError, HTTPException) as exc:
                raise GatewayUnavailable(
                    f"connection to {self.base_url} failed during {method} {path}: {exc}"
                ) from exc
        finally:
            connection.close()
        try:
            parsed = json.loads(raw) if raw else {}
        except ValueError:
            parsed = {}
        return _Response(status=response.status, body=parsed if isinstance(parsed, dict) else {})

    def _raise_for_status(self, response: _Response, *, what: str) -> None:
        status = response.status
        if 200 <= status < 300:
            return
        error = response.error
        detail = error.get("message") or error.get("code") or f"HTTP {status}"
        # 429 is "slow down", not "no": retrying later is the right answer.
        if status >= 500 or status == 429:
            raise GatewayUnavailable(f"gateway {what} failed with {status}: {detail}")
        if 400 <= status < 500:
            raise PaymentRejected(
                f"gateway rejected the {what}: {detail}",
                status=status,
                gateway_code=error.get("code", ""),
            )
        raise GatewayUnavailable(f"unexpected HTTP {status} from the gateway {what}")

    def _charge(self, response: _Response) -> Charge:
        data = response.body
        try:
            return Charge(
                id=str(data["id"]),
                idempotency_key=str(data["idempotency_key"]),
                amount=Decimal(str(data["amount"])),
                currency=str(data["currency"]),
                status=str(data["status"]),
                payment_method=str(data["payment_method"]),
                refunded=Decimal(str(data.get("refunded") or "0")),
                reference=str(data.get("reference") or ""),
            )
        except (KeyError, TypeError, InvalidOperation) as exc:
            # A 2xx we cannot read is not an answer: retrying with the same key replays it.
            raise GatewayUnavailable(f"unreadable charge from the gateway: {data!r}") from exc


def gateway_client() -> GatewayClient:
    """A client configured from settings, read now (so tests can override them)."""
    return GatewayClient(
        base_url=settings.PAYMENT_GATEWAY_URL,
        api_key=settings.PAYMENT_GATEWAY_API_KEY,
        timeout=float(settings.PAYMENT_GATEWAY_TIMEOUT),
    )
