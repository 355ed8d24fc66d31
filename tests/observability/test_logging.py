"""JSON logs of saga transitions and API requests, and the correlation id middleware."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator
from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.test import Client

from l2c.logging import JsonFormatter, PlainFormatter, correlation_id_var
from sagas.engine import saga_start
from tests.sagas.helpers import make_counters, run

REQUIRED = {
    "ts",
    "level",
    "logger",
    "message",
    "event",
    "saga_id",
    "correlation_id",
    "definition",
    "step",
    "status",
    "attempt",
    "duration_ms",
}


@pytest.fixture
def json_lines() -> Iterator[io.StringIO]:
    """What the "sagas" loggers write at INFO through the JSON formatter."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    sagas = logging.getLogger("sagas")
    level = sagas.level
    sagas.addHandler(handler)
    sagas.setLevel(logging.INFO)
    try:
        yield stream
    finally:
        sagas.removeHandler(handler)
        sagas.setLevel(level)


def transitions(stream: io.StringIO, saga_id: object) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    return [line for line in lines if line.get("saga_id") == str(saga_id)]


@pytest.mark.django_db
def test_a_compensated_saga_logs_one_json_line_per_transition(json_lines):
    make_counters("s1", "s2", "s3", "s4", "s5")
    saga = saga_start(
        "test.five_steps",
        data={"fail": "s3", "transient": {"s1": 1}},
        correlation_id="order-42.retry_1",
        enqueue=False,
    )
    run(saga)

    lines = transitions(json_lines, saga.pk)
    assert [(line["event"], line["step"], line["status"]) for line in lines] == [
        ("saga_started", "", "started"),
        ("step_failed", "s1", "failed"),
        ("step_completed", "s1", "completed"),
        ("step_completed", "s2", "completed"),
        ("step_failed", "s3", "failed"),
        ("compensation_started", "", "compensating"),
        ("step_compensated", "s2", "compensated"),
        ("step_compensated", "s1", "compensated"),
        ("compensation_empty", "s3", "empty"),
        ("saga_compensated", "", "compensated"),
    ]
    for line in lines:
        assert set(line) >= REQUIRED, line
        assert line["correlation_id"] == "order-42.retry_1"
        assert line["definition"] == "test.five_steps"
        assert line["logger"] == "sagas.engine"
    by_event = {(line["event"], line["step"]): line for line in lines}
    assert by_event[("step_failed", "s1")]["retry"] is True
    assert by_event[("step_failed", "s1")]["attempt"] == 1
    assert by_event[("step_completed", "s1")]["attempt"] == 2
    assert by_event[("step_failed", "s3")]["retry"] is False
    assert by_event[("step_failed", "s3")]["error_code"] == "test_business_error"
    assert isinstance(by_event[("step_completed", "s2")]["duration_ms"], int)
    assert isinstance(by_event[("saga_compensated", "")]["duration_ms"], int)


@pytest.mark.django_db
def test_a_dead_lettered_saga_logs_its_failed_compensation_and_the_failure(json_lines):
    make_counters("s1", "s2", "s3", "s4", "s5")
    saga = saga_start(
        "test.five_steps", data={"fail": "s2", "compensation_fails": ["s1"]}, enqueue=False
    )
    run(saga)

    lines = transitions(json_lines, saga.pk)
    failures = [line for line in lines if line["event"] == "compensation_failed"]
    assert [(line["attempt"], line["status"], line["level"]) for line in failures] == [
        (1, "compensating", "WARNING"),
        (2, "compensating", "WARNING"),
        (3, "failed", "WARNING"),
    ]
    assert lines[-1]["event"] == "saga_failed"
    assert lines[-1]["status"] == "failed"
    assert lines[-1]["level"] == "ERROR"
    assert lines[-1]["error_code"] == "compensation_exhausted"


@pytest.mark.django_db
def test_nothing_is_logged_or_built_below_the_level(json_lines):
    logging.getLogger("sagas").setLevel(logging.WARNING)
    make_counters("s1", "s2", "s3", "s4", "s5")
    saga = saga_start("test.five_steps", data={}, enqueue=False)
    run(saga)
    assert transitions(json_lines, saga.pk) == []


def test_json_formatter_fields_and_plain_formatter_extras():
    record = logging.LogRecord("l2c.x", logging.INFO, __file__, 1, "hello %s", ("you",), None)
    record.saga_id = "abc"
    record.level = "shadowed"
    token = correlation_id_var.set("req-1")
    try:
        entry = json.loads(JsonFormatter().format(record))
        plain = PlainFormatter().format(record)
    finally:
        correlation_id_var.reset(token)
    assert entry["message"] == "hello you"
    assert entry["level"] == "INFO"
    assert entry["extra_level"] == "shadowed"
    assert entry["logger"] == "l2c.x"
    assert entry["saga_id"] == "abc"
    assert entry["correlation_id"] == "req-1"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", entry["ts"])
    assert plain.endswith("hello you saga_id=abc level=shadowed correlation_id=req-1")


def test_settings_choose_the_format_from_log_format():
    # The test settings run with DEBUG off, hence JSON unless LOG_FORMAT says otherwise.
    assert settings.LOG_FORMAT in {"json", "plain"}
    assert settings.LOGGING["handlers"]["console"]["formatter"] == settings.LOG_FORMAT
    handler = next(h for h in logging.getLogger().handlers if isinstance(h, logging.StreamHandler))
    expected = JsonFormatter if settings.LOG_FORMAT == "json" else PlainFormatter
    assert isinstance(handler.formatter, expected)


# --- Correlation ids ----------------------------------------------------------------------


def test_a_given_correlation_id_is_echoed():
    response = Client().get(
        "/api/health/", {"probe": "live"}, headers={"X-Correlation-ID": "order-42.retry_1"}
    )
    assert response["X-Correlation-ID"] == "order-42.retry_1"
    assert correlation_id_var.get() is None  # reset after the request


@pytest.mark.parametrize("given", [None, "", "has space", "semi;colon", "x" * 101, "ünï"])
def test_a_missing_or_unsafe_correlation_id_is_replaced_by_a_new_one(given):
    headers = {} if given is None else {"X-Correlation-ID": given}
    response = Client().get("/api/health/", {"probe": "live"}, headers=headers)
    assert re.fullmatch(r"[0-9a-f]{32}", response["X-Correlation-ID"])


def test_the_longest_accepted_correlation_id_is_100_characters():
    given = "a" * 100
    response = Client().get("/api/health/", {"probe": "live"}, headers={"X-Correlation-ID": given})
    assert response["X-Correlation-ID"] == given


@pytest.mark.django_db
def test_each_api_request_logs_one_line_with_its_correlation_id(caplog):
    user = get_user_model().objects.create_user("logged", password="pw")
    client = Client()
    client.force_login(user)
    caplog.set_level(logging.INFO, logger="l2c.request")

    response = client.get("/api/products/", headers={"X-Correlation-ID": "req-7"})
    client.get("/api/health/", {"probe": "live"})  # probes stay out of the access log

    records = [r for r in caplog.records if r.name == "l2c.request"]
    assert len(records) == 1
    record = records[0]
    assert record.method == "GET"
    assert record.path == "/api/products/"
    assert record.status == response.status_code
    assert record.correlation_id == "req-7"
    assert record.user_id == user.pk
    assert record.duration_ms >= 0
    entry = json.loads(JsonFormatter().format(record))
    assert {"method", "path", "status", "duration_ms", "correlation_id", "user_id"} <= set(entry)


@pytest.mark.django_db
def test_an_anonymous_api_request_logs_no_user(caplog):
    caplog.set_level(logging.INFO, logger="l2c.request")
    Client().get("/api/products/")
    (record,) = [r for r in caplog.records if r.name == "l2c.request"]
    assert record.user_id is None
    assert re.fullmatch(r"[0-9a-f]{32}", record.correlation_id)
