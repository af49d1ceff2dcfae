"""The provider's Fair use page in Debian's Chromium (Playwright) against a real
`tollhouse serve`: signed in with an admin token, the provider picks an org, an
environment and a range and sees that org's fair-use signals — a regeneration loop made
with real calls flagged in the org's sandbox, nothing in its production; an org's own key
sees its signals on the Usage board instead (no Fair use page)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import httpx
import pytest

from tests.conftest import Server
from tests.dashboard.test_dashboard import (  # noqa: F401 - fixtures used by name
    Tab,
    browser,
    quick_key,
    server,
    sign_in,
    tab,
)
from tests.dashboard.test_limits_page import _in_database
from tollhouse.keys.admin_tokens import AdminTokenStore

if TYPE_CHECKING:
    from playwright.sync_api import Page

pytestmark = pytest.mark.integration


def _regenerate(url: str, key: str, job_id: str, times: int) -> None:
    """Criteria generated ``times`` times for one jobId, over HTTP."""
    headers = {"X-API-Key": key, "X-Tenant-Id": "acme"}
    body = {"jobId": job_id, "title": "Backend Engineer", "description": "Python, 5 years."}
    done = 0
    while done < times:
        answer = httpx.post(url + "/v1/criteria/generate", headers=headers, json=body, timeout=30)
        if answer.status_code == 429:  # the per-second AI bucket: wait it out
            time.sleep(float(answer.headers.get("retry-after", "1")))
            continue
        assert answer.status_code == 200, answer.text
        done += 1


def _signals(page: Page) -> dict[str, str]:
    rows = page.locator("[data-fairuse-table] [data-signal]")
    found: dict[str, str] = rows.evaluate_all(
        "rows => Object.fromEntries(rows.map(r => [r.dataset.signal, r.dataset.status]))"
    )
    return found


def _show(page: Page, org: str, environment: str, time_range: str = "24h") -> None:
    page.fill('[data-fairuse-form] input[name="org"]', org)
    page.select_option('[data-fairuse-form] select[name="environment"]', environment)
    page.select_option('[data-fairuse-form] select[name="timeRange"]', time_range)
    page.click('[data-fairuse-form] [type="submit"]')
    page.wait_for_selector(
        f"[data-fairuse-heading]:has-text('{org} ({environment}, {time_range})')"
    )


def test_the_provider_sees_an_org_s_fair_use(server: Server, tab: Tab) -> None:  # noqa: F811
    page = tab.page
    org = f"fair-{time.monotonic_ns()}"
    root = quick_key(server, org, "root")["key"]
    _regenerate(server.url, root, "job_loop", 4)  # above the threshold (3): flagged
    _, token = _in_database(server, lambda e: AdminTokenStore(e).create("fair-use test"))

    sign_in(page, server.url, token)
    page.wait_for_selector('[data-view="limits"]:not([hidden])')
    assert page.locator('[data-tab="fair-use"]').is_visible()
    assert page.locator('[data-tab="usage"]').is_hidden()
    page.click('[data-tab="fair-use"]')
    page.wait_for_selector('[data-view="fair-use"]:not([hidden])')
    assert page.locator('[data-view="limits"]').is_hidden()
    # The Limits page's org suggestions serve this page too.
    page.wait_for_selector(f'[data-org-choices] option[value="{org}"]', state="attached")
    assert "choose an org" in (page.text_content("[data-fairuse-heading]") or "")

    _show(page, org, "SANDBOX")
    page.wait_for_selector('[data-fairuse-table] [data-signal="regeneration_loop"]')
    assert _signals(page) == {
        "regeneration_loop": "flagged",
        "criteria_without_scoring": "ok",
        "polling_instead_of_webhooks": "ok",
        "ignored_retry_after": "ok",
        "burst_submission": "ok",
    }
    loop = page.locator('[data-fairuse-table] [data-signal="regeneration_loop"]').inner_text()
    assert "4 / 3" in loop and "job_loop" in loop
    assert page.text_content("[data-fairuse-headline]") == "1 flagged · 0 to watch"
    # The same answer the org's own key reads.
    own = httpx.get(
        server.url + "/v1/analytics/fair-use",
        headers={"X-API-Key": root},
        params={"timeRange": "24h"},
        timeout=30,
    ).json()
    assert {s["signal"]: s["status"] for s in own["signals"]} == _signals(page)

    # The org's production: none of the sandbox's calls.
    _show(page, org, "PRODUCTION", "7d")
    page.wait_for_selector(
        '[data-fairuse-table] [data-signal="regeneration_loop"][data-status="ok"]'
    )
    assert set(_signals(page).values()) == {"ok"}
    assert page.text_content("[data-fairuse-headline]") == "all ok"

    # An unknown org: the server's 404, in the page.
    page.fill('[data-fairuse-form] input[name="org"]', "no-such-org")
    page.click('[data-fairuse-form] [type="submit"]')
    page.wait_for_selector("[data-fairuse-error]:has-text('no-such-org')")
    assert page.locator("[data-fairuse-table] [data-signal]").count() == 0
    # (The browser logs the 404 answer itself; nothing else.)
    assert not [e for e in tab.errors if "Failed to load resource" not in e], tab.errors


def test_an_org_key_has_no_fair_use_page(server: Server, tab: Tab) -> None:  # noqa: F811
    page = tab.page
    root = quick_key(server, f"own-{time.monotonic_ns()}", "root")["key"]
    sign_in(page, server.url, root)
    page.wait_for_selector('[data-chart="fair-use"] [data-signal]')
    assert page.locator('[data-tab="fair-use"]').is_hidden()
    assert page.locator('[data-tab="limits"]').is_visible()
    assert page.locator('[data-view="fair-use"]').is_hidden()
