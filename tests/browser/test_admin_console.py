"""The admin console in a real browser: Playwright driving Debian's chromium.

An operator filters the saga list down to the dead letters, opens one, reads its timeline,
retries it with a reason (the compensation that had run out of retries goes through this
time) and sees the result and the audit row; a staff user without the permission gets no
button and a forced POST is refused. Screenshots of the dashboard and the saga page go to
``$L2C_TEST_OUTPUT`` (the test command sets it), or to the test's temporary folder.

Needs ``/usr/bin/chromium`` (``apt-get install chromium``) and the ``playwright`` package;
never ``playwright install``, which downloads a browser of its own.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission

from sagas.engine import saga_run
from sagas.models import Intervention, SagaInstance
from tests.sagas.helpers import make_counters, run, start

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
PASSWORD = "console-pass-123"
S = SagaInstance.Status

sync_api = pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed (pip install playwright==1.65.2)"
)
pytestmark = [
    pytest.mark.slow,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(
        not (Path(CHROMIUM).exists() or shutil.which("chromium")),
        reason=f"{CHROMIUM} is missing (apt-get install -y --no-install-recommends chromium)",
    ),
]


@pytest.fixture
def output_dir(tmp_path) -> Path:
    folder = Path(os.environ.get("L2C_TEST_OUTPUT") or tmp_path) / "admin-console"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture
def worker(monkeypatch):
    """Run a saga handed over by an intervention at once, in the server's thread, as a
    worker would a moment later."""
    monkeypatch.setattr(
        "sagas.services.enqueue_run", lambda saga_id, priority=1: saga_run(saga_id)
    )
    # Assertions touch the ORM while Playwright's event loop is current in this thread.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")


def make_user(username: str, *codenames: str):
    user = get_user_model().objects.create_user(username, password=PASSWORD, is_staff=True)
    user.user_permissions.set(
        Permission.objects.filter(
            content_type__app_label="sagas", codename__in={"view_sagainstance", *codenames}
        )
    )
    return user


def some_history() -> SagaInstance:
    """A few finished sagas for the dashboard and one dead letter, returned."""
    make_counters("s1", "s2", "s3", "s4", "s5", "d1", "d2", "d3")
    for _ in range(4):
        run(start("test.five_steps"))
    run(start("test.five_steps", fail="s4"))
    run(start("test.delayed", transient={"d3": 1}))  # waits for a retry
    saga = run(start("test.five_steps", fail="s3", compensation_fails=["s1"]))
    assert saga.status == S.FAILED and saga.dead_lettered_at is not None
    return saga


def launch(playwright):
    return playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)


def log_in(page, base: str, username: str) -> None:
    page.goto(f"{base}/admin/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")
    page.wait_for_selector("#saga-console-module")


def test_an_operator_retries_a_dead_letter_and_sees_the_audit_row(live_server, worker, output_dir):
    saga = some_history()
    # The fault is fixed: the compensation of s1 can reach its service again.
    SagaInstance.objects.filter(pk=saga.pk).update(context={"fail": "s3"})
    make_user("ops", "resolve_dead_letter")
    base = live_server.url

    with sync_api.sync_playwright() as playwright:
        browser = launch(playwright)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        log_in(page, base, "ops")

        page.goto(f"{base}/admin/sagas/sagainstance/")
        page.click("#changelist-filter a[href*='dead_letter=yes']")
        page.wait_for_url("**dead_letter=yes**")
        rows = page.locator("#result_list tbody tr")
        assert rows.count() == 1
        rows.first.locator("th a").click()

        page.wait_for_selector("#saga-timeline svg")
        assert page.locator("#saga-timeline .saga-bar-compensation_failed").count() == 3
        assert page.locator("#saga-timeline .saga-bar-failed").count() == 1
        assert page.locator("a.saga-action-compensate").count() == 0  # FAILED: not offered
        page.screenshot(path=str(output_dir / "saga_page_dead_letter.png"), full_page=True)
        page.click("a.saga-action-dead_letter_retry")

        page.wait_for_selector("textarea[name=reason]")
        page.click("input[name=confirm]")  # no reason
        page.wait_for_selector(".errorlist")  # the page comes back with the form error
        page.screenshot(path=str(output_dir / "confirm_intervention.png"), full_page=True)
        page.fill("textarea[name=reason]", "inventory service is back, compensate again")
        page.click("input[name=confirm]")

        page.wait_for_selector("ul.messagelist li.success")
        message = page.locator("ul.messagelist li.success").inner_text()
        assert "FAILED -> COMPENSATING" in message
        assert page.locator(".field-status_badge .saga-status").inner_text() == "COMPENSATED"
        audit = page.locator("#saga-interventions tbody tr").first.inner_text()
        assert "ops" in audit and "inventory service is back" in audit
        assert page.locator("#saga-timeline .saga-bar-compensated").count() >= 2
        page.screenshot(path=str(output_dir / "saga_page.png"), full_page=True)
        page.locator("#saga-timeline").screenshot(path=str(output_dir / "timeline.png"))

        page.goto(f"{base}/admin/sagas/sagainstance/dashboard/?range=1h")
        page.wait_for_selector("#saga-throughput svg")
        assert page.locator("#figure-total .figure").inner_text() == "7"
        page.screenshot(path=str(output_dir / "dashboard.png"), full_page=True)

        page.goto(f"{base}/admin/sagas/sagainstance/definitions/orders.place_order/1/")
        page.wait_for_selector("#saga-diagram svg")
        page.screenshot(path=str(output_dir / "definition.png"), full_page=True)
        browser.close()

    saga.refresh_from_db()
    assert saga.status == S.COMPENSATED
    [intervention] = Intervention.objects.filter(saga=saga)
    assert (intervention.actor_name, intervention.action, intervention.effective) == (
        "ops",
        "resume",
        True,
    )
    assert (output_dir / "dashboard.png").stat().st_size > 10_000


def test_a_staff_user_without_the_permission_cannot_intervene(live_server, worker):
    saga = some_history()
    make_user("viewer")
    base = live_server.url

    with sync_api.sync_playwright() as playwright:
        browser = launch(playwright)
        context = browser.new_context()
        page = context.new_page()
        log_in(page, base, "viewer")

        page.goto(f"{base}/admin/sagas/sagainstance/{saga.pk}/change/")
        page.wait_for_selector("#saga-timeline svg")
        assert page.locator("a.saga-action").count() == 0
        assert page.locator("select[name=action] option[value=dead_letter_retry]").count() == 0

        token = next(c["value"] for c in context.cookies() if c["name"] == "csrftoken")
        forced = context.request.post(
            f"{base}/admin/sagas/sagainstance/{saga.pk}/intervene/dead_letter_retry/",
            form={"csrfmiddlewaretoken": token, "reason": "let me"},
        )
        forced_action = context.request.post(
            f"{base}/admin/sagas/sagainstance/",
            form={
                "csrfmiddlewaretoken": token,
                "action": "dead_letter_retry",
                "_selected_action": str(saga.pk),
                "post": "yes",
                "reason": "let me",
            },
        )
        assert forced.status == 403
        assert forced_action.status == 403
        browser.close()

    assert SagaInstance.objects.get(pk=saga.pk).status == S.FAILED
    assert not Intervention.objects.exists()
