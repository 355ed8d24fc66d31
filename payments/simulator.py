"""A payment gateway simulator that behaves like a remote service.

It runs as its own process (``manage.py gateway_simulator``) or in a thread
(``start_in_thread``), speaks JSON over HTTP like a real card gateway and keeps its ledger in
its own SQLite file through the stdlib ``sqlite3`` module, never the Django ORM: money it has
moved stays moved when our transactions roll back, exactly like an outside system.

Idempotency works as at real gateways: a POST's answer is stored under its
``Idempotency-Key`` and replayed for a repeated request; the same key with different
parameters is a 409. Requests refused by validation store nothing.

Test payment methods:

* ``pm_card_visa`` succeeds (201).
* ``pm_card_chargeDeclined`` is declined (402); the decline is stored, so replays decline too.
* ``pm_card_flaky`` answers 503 for the first two attempts under a key, then succeeds.
* ``pm_card_slow`` is charged at once but answered only after ``slow_seconds``, so the
  client times out although the money moved.
"""

from __future__ import annotations

import hmac
import json
import logging
import re
import secrets
import signal
import socket
import socketserver
import sqlite3
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import unquote, urlsplit

logger = logging.getLogger(__name__)

METHOD_SUCCEEDS = "pm_card_visa"
METHOD_DECLINED = "pm_card_chargeDeclined"
METHOD_FLAKY = "pm_card_flaky"
METHOD_SLOW = "pm_card_slow"
PAYMENT_METHODS = frozenset({METHOD_SUCCEEDS, METHOD_DECLINED, METHOD_FLAKY, METHOD_SLOW})
FLAKY_FAILURES = 2

CENT = Decimal("0.01")
# Positive amounts only come from the regex (no sign, no exponent, at most two places);
# 10 integer digits keep every amount within our DecimalField(12, 2).
AMOUNT_RE = re.compile(r"[0-9]{1,10}(?:\.[0-9]{1,2})?")
CURRENCY_RE = re.compile(r"[A-Za-z]{3}")
MAX_KEY_LENGTH = 255
MAX_BODY_BYTES = 64 * 1024
CHARGE_BY_KEY_PREFIX = "/v1/charges/by-key/"

SCHEMA = """
CREATE TABLE IF NOT EXISTS charges (
    key TEXT NOT NULL UNIQUE,
    id TEXT NOT NULL UNIQUE,
    amount TEXT NOT NULL,
    currency TEXT NOT NULL,
    payment_method TEXT NOT NULL,
    status TEXT NOT NULL,
    reference TEXT NOT NULL DEFAULT '',
    created TEXT NOT NULL,
    response_status INTEGER NOT NULL,
    response_body TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS refunds (
    key TEXT NOT NULL UNIQUE,
    id TEXT NOT NULL UNIQUE,
    charge_id TEXT NOT NULL,
    amount TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    created TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS refunds_charge_id ON refunds (charge_id);
CREATE TABLE IF NOT EXISTS attempts (
    key TEXT NOT NULL PRIMARY KEY,
    count INTEGER NOT NULL
);
"""


@dataclass
class Reply:
    status: int
    body: dict[str, Any]
    replayed: bool = False
    # Seconds to hold the answer back, spent outside the ledger lock.
    delay: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)


def _error(
    status: int, code: str, message: str, *, type_: str = "invalid_request_error", **extra: Any
) -> Reply:
    return Reply(status, {"error": {"type": type_, "code": code, "message": message, **extra}})


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _fmt(amount: Decimal) -> str:
    return str(amount.quantize(CENT))


def parse_amount(raw: object) -> Decimal | None:
    """A positive amount given as a decimal string with at most two places, else None."""
    if not isinstance(raw, str) or not AMOUNT_RE.fullmatch(raw):
        return None
    amount = Decimal(raw)
    return amount if amount > 0 else None


class Ledger:
    """The gateway's books in one SQLite file.

    Every write runs under one lock and in a ``BEGIN IMMEDIATE`` transaction, so reading the
    stored answer for a key and writing a new one can never interleave between requests.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.lock = threading.Lock()
        with closing(self._connect()) as conn:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.executescript(SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        # One connection per operation: sqlite3 connections must not be shared by threads.
        conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        conn.row_factory = sqlite3.Row
        return conn

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self.lock, closing(self._connect()) as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        with closing(self._connect()) as conn:
            yield conn

    @staticmethod
    def _refunded(conn: sqlite3.Connection, charge_id: str) -> Decimal:
        rows = conn.execute("SELECT amount FROM refunds WHERE charge_id = ?", (charge_id,))
        return sum((Decimal(row["amount"]) for row in rows), Decimal("0"))

    def _charge_body(self, conn: sqlite3.Connection, row: sqlite3.Row) -> dict[str, Any]:
        return {
            "id": row["id"],
            "object": "charge",
            "idempotency_key": row["key"],
            "amount": row["amount"],
            "currency": row["currency"],
            "payment_method": row["payment_method"],
            "status": row["status"],
            "reference": row["reference"],
            "refunded": _fmt(self._refunded(conn, row["id"])),
            "created": row["created"],
        }

    @staticmethod
    def _refund_body(row: sqlite3.Row) -> dict[str, Any]:
        return {
            "id": row["id"],
            "object": "refund",
            "idempotency_key": row["key"],
            "charge": row["charge_id"],
            "amount": row["amount"],
            "reason": row["reason"],
            "created": row["created"],
        }

    # --- operations -----------------------------------------------------------------------

    def charge(
        self, *, key: str, amount: Decimal, currency: str, method: str, reference: str
    ) -> Reply:
        amount_text = _fmt(amount)
        with self._write() as conn:
            row = conn.execute("SELECT * FROM charges WHERE key = ?", (key,)).fetchone()
            if row is not None:
                if (row["amount"], row["currency"], row["payment_method"]) != (
                    amount_text,
                    currency,
                    method,
                ):
                    return _error(
                        409,
                        "idempotency_key_in_use",
                        "The idempotency key was used for a charge with other parameters.",
                        type_="idempotency_error",
                    )
                return Reply(
                    row["response_status"], json.loads(row["response_body"]), replayed=True
                )
            if method == METHOD_FLAKY:
                conn.execute(
                    "INSERT INTO attempts (key, count) VALUES (?, 1) "
                    "ON CONFLICT (key) DO UPDATE SET count = count + 1",
                    (key,),
                )
                (count,) = conn.execute(
                    "SELECT count FROM attempts WHERE key = ?", (key,)
                ).fetchone()
                if count <= FLAKY_FAILURES:
                    # Not stored under the key: the next attempt is a fresh try.
                    return _error(
                        503, "service_unavailable", "Try again later.", type_="api_error"
                    )
            charge_id = f"ch_{secrets.token_hex(12)}"
            status = "declined" if method == METHOD_DECLINED else "succeeded"
            conn.execute(
                "INSERT INTO charges (key, id, amount, currency, payment_method, status, "
                "reference, created, response_status, response_body) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0, '')",
                (key, charge_id, amount_text, currency, method, status, reference, _now()),
            )
            row = conn.execute("SELECT * FROM charges WHERE key = ?", (key,)).fetchone()
            if status == "declined":
                reply = _error(
                    402,
                    "card_declined",
                    "Your card was declined.",
                    type_="card_error",
                    decline_code="generic_decline",
                    charge=charge_id,
                )
            else:
                reply = Reply(201, self._charge_body(conn, row))
            conn.execute(
                "UPDATE charges SET response_status = ?, response_body = ? WHERE key = ?",
                (reply.status, json.dumps(reply.body), key),
            )
        return reply

    def charge_by_key(self, *, key: str) -> Reply:
        with self._read() as conn:
            row = conn.execute("SELECT * FROM charges WHERE key = ?", (key,)).fetchone()
            if row is None:
                return _error(404, "resource_missing", "No charge was made under this key.")
            return Reply(200, self._charge_body(conn, row))

    def refund(self, *, key: str, charge_id: str, amount: Decimal | None, reason: str) -> Reply:
        with self._write() as conn:
            row = conn.execute("SELECT * FROM refunds WHERE key = ?", (key,)).fetchone()
            if row is not None:
                if row["charge_id"] != charge_id or (
                    amount is not None and _fmt(amount) != row["amount"]
                ):
                    return _error(
                        409,
                        "idempotency_key_in_use",
                        "The idempotency key was used for a refund with other parameters.",
                        type_="idempotency_error",
                    )
                return Reply(201, self._refund_body(row), replayed=True)
            charge = conn.execute("SELECT * FROM charges WHERE id = ?", (charge_id,)).fetchone()
            if charge is None:
                return _error(404, "resource_missing", f"No such charge: {charge_id}.")
            if charge["status"] != "succeeded":
                return _error(400, "charge_not_refundable", "Only a succeeded charge refunds.")
            remaining = Decimal(charge["amount"]) - self._refunded(conn, charge_id)
            if remaining <= 0:
                return _error(400, "charge_already_refunded", "The charge is fully refunded.")
            wanted = remaining if amount is None else amount
            if wanted > remaining:
                return _error(
                    400,
                    "amount_too_large",
                    f"Refund of {_fmt(wanted)} exceeds the refundable {_fmt(remaining)}.",
                    refundable=_fmt(remaining),
                )
            conn.execute(
                "INSERT INTO refunds (key, id, charge_id, amount, reason, created) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (key, f"re_{secrets.token_hex(12)}", charge_id, _fmt(wanted), reason, _now()),
            )
            row = conn.execute("SELECT * FROM refunds WHERE key = ?", (key,)).fetchone()
            return Reply(201, self._refund_body(row))

    def totals(self) -> dict[str, Any]:
        with self._read() as conn:
            conn.execute("BEGIN")  # one snapshot for both tables
            charges = conn.execute(
                "SELECT key, id, amount FROM charges WHERE status = 'succeeded' ORDER BY created"
            ).fetchall()
            refunds = conn.execute("SELECT charge_id, amount FROM refunds").fetchall()
            conn.execute("COMMIT")
        refunded_by_charge: dict[str, Decimal] = {}
        for row in refunds:
            refunded_by_charge[row["charge_id"]] = refunded_by_charge.get(
                row["charge_id"], Decimal("0")
            ) + Decimal(row["amount"])
        charged = sum((Decimal(row["amount"]) for row in charges), Decimal("0"))
        refunded = sum(refunded_by_charge.values(), Decimal("0"))
        return {
            "charged": _fmt(charged),
            "refunded": _fmt(refunded),
            "charges": len(charges),
            "refunds": len(refunds),
            "by_key": {
                row["key"]: {
                    "charged": row["amount"],
                    "refunded": _fmt(refunded_by_charge.get(row["id"], Decimal("0"))),
                }
                for row in charges
            },
        }


class _Handler(BaseHTTPRequestHandler):
    server: GatewaySimulator
    server_version = "GatewaySimulator/1.0"

    def do_GET(self) -> None:
        self._dispatch(self._get)

    def do_POST(self) -> None:
        # Read the body before any refusal: closing a socket with unread data makes the
        # kernel reset the connection, and the client could lose our answer.
        raw = self._read_body()
        self._dispatch(lambda path: raw if isinstance(raw, Reply) else self._post(path, raw))

    def do_PUT(self) -> None:
        self._dispatch(lambda path: _error(405, "method_not_allowed", "Method not allowed."))

    do_DELETE = do_PATCH = do_PUT

    def _dispatch(self, route: Callable[[str], Reply]) -> None:
        try:
            reply = route(urlsplit(self.path).path)
        except Exception:
            logger.exception("gateway simulator failed on %s %s", self.command, self.path)
            reply = _error(500, "internal_error", "Internal error.", type_="api_error")
        self._send(reply)

    def _get(self, path: str) -> Reply:
        if path == "/health":
            return Reply(200, {"ok": True})
        denied = self._authenticate()
        if denied is not None:
            return denied
        if path == "/v1/ledger":
            return Reply(200, self.server.ledger.totals())
        if path.startswith(CHARGE_BY_KEY_PREFIX):
            key = unquote(path[len(CHARGE_BY_KEY_PREFIX) :])
            if key:
                return self.server.ledger.charge_by_key(key=key)
        return _error(404, "not_found", f"No route for GET {path}.")

    def _post(self, path: str, raw: bytes) -> Reply:
        if path not in {"/v1/charges", "/v1/refunds"}:
            return _error(404, "not_found", f"No route for POST {path}.")
        denied = self._authenticate()
        if denied is not None:
            return denied
        key = self.headers.get("Idempotency-Key", "").strip()
        if not key:
            return _error(400, "missing_idempotency_key", "An Idempotency-Key header is required.")
        if len(key) > MAX_KEY_LENGTH:
            return _error(400, "invalid_idempotency_key", "The Idempotency-Key is too long.")
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            return _error(400, "invalid_json", "The body is not valid JSON.")
        if not isinstance(body, dict):
            return _error(400, "invalid_json", "The body must be a JSON object.")
        if path == "/v1/charges":
            return self._charge(key, body)
        return self._refund(key, body)

    def _charge(self, key: str, body: dict[str, Any]) -> Reply:
        amount = parse_amount(body.get("amount"))
        if amount is None:
            return _error(
                400,
                "invalid_amount",
                "amount must be a decimal string above 0 with at most 2 decimal places.",
            )
        currency = body.get("currency")
        if not isinstance(currency, str) or not CURRENCY_RE.fullmatch(currency):
            return _error(400, "invalid_currency", "currency must be a 3-letter code.")
        method = body.get("payment_method")
        if not isinstance(method, str) or method not in PAYMENT_METHODS:
            return _error(400, "invalid_payment_method", f"Unknown payment method {method!r}.")
        reference = body.get("reference", "")
        if not isinstance(reference, str) or len(reference) > 200:
            return _error(400, "invalid_reference", "reference must be a short string.")
        reply = self.server.ledger.charge(
            key=key, amount=amount, currency=currency.upper(), method=method, reference=reference
        )
        if method == METHOD_SLOW and not reply.replayed and reply.status < 300:
            # The money has moved (and is committed); only the answer is late.
            reply.delay = self.server.slow_seconds
        return reply

    def _refund(self, key: str, body: dict[str, Any]) -> Reply:
        charge_id = body.get("charge")
        if not isinstance(charge_id, str) or not charge_id:
            return _error(400, "invalid_charge", "charge must be a charge id.")
        amount = None
        if body.get("amount") is not None:
            amount = parse_amount(body["amount"])
            if amount is None:
                return _error(
                    400,
                    "invalid_amount",
                    "amount must be a decimal string above 0 with at most 2 decimal places.",
                )
        reason = body.get("reason") or ""
        if not isinstance(reason, str):
            return _error(400, "invalid_reason", "reason must be a string.")
        return self.server.ledger.refund(
            key=key, charge_id=charge_id, amount=amount, reason=reason[:200]
        )

    def _authenticate(self) -> Reply | None:
        scheme, _, token = self.headers.get("Authorization", "").partition(" ")
        token = token.strip()
        expected = self.server.api_key
        if scheme.lower() != "bearer" or not token:
            return self._unauthorized()
        if expected and not hmac.compare_digest(token.encode(), expected.encode()):
            return self._unauthorized()
        return None

    @staticmethod
    def _unauthorized() -> Reply:
        reply = _error(
            401,
            "unauthorized",
            "A valid bearer API key is required.",
            type_="authentication_error",
        )
        reply.headers["WWW-Authenticate"] = "Bearer"
        return reply

    def _read_body(self) -> bytes | Reply:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            return _error(400, "invalid_body", "Bad Content-Length.")
        if length > MAX_BODY_BYTES:
            return _error(413, "body_too_large", "The request body is too large.")
        return self.rfile.read(length) if length > 0 else b""

    def _send(self, reply: Reply) -> None:
        if reply.delay > 0:
            # Outside the ledger lock, and cut short when the server stops.
            self.server.stopping.wait(reply.delay)
        payload = json.dumps(reply.body).encode()
        try:
            self.send_response(reply.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            if reply.replayed:
                self.send_header("Idempotent-Replayed", "true")
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            # The client gave up waiting (a timed-out slow charge); the ledger is unchanged.
            logger.info("client left before the answer to %s %s", self.command, self.path)

    def log_message(self, format: str, *args: Any) -> None:
        logger.info("%s %s", self.address_string(), format % args)


class GatewaySimulator(ThreadingHTTPServer):
    daemon_threads = True
    # Bursts of concurrent clients (retries, tests) must queue, not be refused.
    request_queue_size = 128

    def __init__(
        self,
        server_address: tuple[str, int],
        *,
        ledger: Ledger,
        slow_seconds: float,
        api_key: str = "",
    ) -> None:
        if ":" in server_address[0]:
            self.address_family = socket.AF_INET6
        self.ledger = ledger
        self.slow_seconds = slow_seconds
        self.api_key = api_key
        self.stopping = threading.Event()
        super().__init__(server_address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host's FQDN, which can stall on DNS.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)

    @property
    def url(self) -> str:
        host = f"[{self.server_name}]" if ":" in self.server_name else self.server_name
        return f"http://{host}:{self.server_port}"

    def shutdown(self) -> None:
        self.stopping.set()
        super().shutdown()


def make_server(
    host: str, port: int, db_path: str | Path, slow_seconds: float, api_key: str = ""
) -> GatewaySimulator:
    """A bound simulator, not yet serving. Port 0 picks a free port (see ``server_port``)."""
    return GatewaySimulator(
        (host, port), ledger=Ledger(Path(db_path)), slow_seconds=slow_seconds, api_key=api_key
    )


def start_in_thread(
    host: str, port: int, db_path: str | Path, slow_seconds: float, api_key: str = ""
) -> tuple[GatewaySimulator, threading.Thread]:
    """Serve from a daemon thread; stop with ``server.shutdown(); server.server_close()``."""
    server = make_server(host, port, db_path, slow_seconds, api_key)
    thread = threading.Thread(
        target=server.serve_forever, name=f"gateway-simulator-{server.server_port}", daemon=True
    )
    thread.start()
    return server, thread


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def serve(
    host: str,
    port: int,
    db_path: str | Path,
    slow_seconds: float,
    api_key: str = "",
    out: TextIO | None = None,
) -> None:
    """Serve until Ctrl-C or SIGTERM, then close the socket and return."""
    out = out or sys.stdout
    server = make_server(host, port, db_path, slow_seconds, api_key)
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _interrupt) if in_main_thread else None
    try:
        # Inside the try: a signal right after the announcement still stops cleanly.
        out.write(
            f"Payment gateway simulator listening on {server.url} "
            f"(ledger {server.ledger.path}, slow answers after {slow_seconds:g} s)\n"
        )
        out.flush()
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        server.stopping.set()
        server.server_close()
        out.write("Payment gateway simulator stopped.\n")
        out.flush()
