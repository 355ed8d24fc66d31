"""Shared pieces of the outbox tests: a webhook receiver and small shortcuts."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import timedelta
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from django.utils import timezone

from sagas.models import OutboxMessage, ProcessedMessage


@dataclass(frozen=True)
class Received:
    path: str
    headers: Message
    body: bytes


class _Handler(BaseHTTPRequestHandler):
    server: _ReceiverServer

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        receiver = self.server.receiver
        status = receiver.record(Received(self.path, self.headers, body))
        # Held here while a test wants the client to time out.
        receiver.gate.wait(timeout=30)
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _ReceiverServer(ThreadingHTTPServer):
    receiver: Receiver

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that timed out has closed its socket; the late answer fails. Expected.
        pass


class Receiver:
    """A webhook endpoint on 127.0.0.1 that records every POST and answers as scripted."""

    def __init__(self) -> None:
        self.requests: list[Received] = []
        self._answers: list[int] = []
        self._lock = threading.Lock()
        self.gate = threading.Event()
        self.gate.set()
        self._server = _ReceiverServer(("127.0.0.1", 0), _Handler)
        self._server.receiver = self
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="webhook-receiver", daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_port}/hooks/l2c"

    def answer(self, *statuses: int) -> None:
        """Answer the next requests with ``statuses`` in order, then 200."""
        with self._lock:
            self._answers.extend(statuses)

    def record(self, request: Received) -> int:
        with self._lock:
            self.requests.append(request)
            return self._answers.pop(0) if self._answers else 200

    def start(self) -> Receiver:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.gate.set()
        self._server.shutdown()
        self._server.server_close()


def make_due(message: OutboxMessage) -> None:
    """Move the next attempt into the past: a backoff elapsed, or a relay's claim expired."""
    OutboxMessage.objects.filter(pk=message.pk).update(
        next_attempt_at=timezone.now() - timedelta(seconds=1)
    )


def processed(message: OutboxMessage, consumer: str | None = None) -> list[str]:
    """The consumers recorded as having processed ``message``."""
    rows = ProcessedMessage.objects.filter(message_id=message.pk)
    if consumer is not None:
        rows = rows.filter(consumer=consumer)
    return list(rows.order_by("consumer").values_list("consumer", flat=True))


def refreshed(message: OutboxMessage) -> OutboxMessage:
    message.refresh_from_db()
    return message


def closed_port() -> int:
    """A local port nothing listens on (taken from a server that was just closed)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    port = server.server_port
    server.server_close()
    return port
