"""The dashboard's Limits page in Debian's Chromium (Playwright) against a real
`tollhouse serve`: an org's root key sees its effective limits with the override marked,
read-only; the provider, signed in with an admin token, picks the org, sets an override
in the page that the gateway then applies to the org's key, and clears it again."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.conftest import Server
from tests.dashboard.test_dashboard import (  # noqa: F401 - fixtures used by name
    Tab,
    browser,
    quick_key,
    server,
    sign_in,
    tab,
    wait_for,
)
from tollhouse.keys.admin_tokens import AdminTokenStore
from tollhouse.limits.overrides import OverrideStore
from tollhouse.policy.load import load_policy
from tollhouse.storage.engine import make_engine

pytestmark = pytest.mark.integration

T = TypeVar("T")
#: The scoring bucket: the first of the built-in policy.
BUCKET = load_policy(None).buckets[0].name


def _in_database(srv: Server, fn: Callable[[AsyncEngine], Awaitable[T]]) -> T:
    """Run ``fn`` on the server's database (on another thread: Playwright's sync API runs
    an event loop on this one)."""

    async def go() -> T:
        engine = make_engine(f"sqlite:///{srv.cwd}/.tollhouse/tollhouse.db")
        try:
            return await fn(engine)
        finally:
            await engine.dispose()

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(lambda: asyncio.run(go())).result()


def _bucket_limit(url: str, key: str) -> int:
    """The org key's limit of the bucket, as the gateway applies it."""
    for _ in range(50):
        answer = httpx.get(url + "/v1/rate-limit/status", headers={"X-API-Key": key}, timeout=10)
        if answer.status_code != 429:  # the status bucket's own small limit: ask again
            limit: int = answer.json()["buckets"][BUCKET]["limit"]
            return limit
        time.sleep(0.3)
    raise AssertionError("the status bucket never admitted the call")


def test_an_org_sees_its_limits_read_only(server: Server, tab: Tab) -> None:  # noqa: F811
    page = tab.page
    org = f"limits-{time.monotonic_ns()}"
    root = quick_key(server, org, "root")
    _in_database(server, lambda e: OverrideStore(e).set(org, BUCKET, 4099, actor="test"))
    sign_in(page, server.url, root["key"])
    page.click('[data-tab="limits"]')
    page.wait_for_selector(f'[data-overridden="{BUCKET}"]:has-text("override")')
    assert page.text_content(f'[data-effective="{BUCKET}"]') == "4099"
    others = [b.name for b in load_policy(None).buckets if b.name != BUCKET]
    for name in others:
        assert page.text_content(f'[data-overridden="{name}"]') == "policy"
    assert f"Limits of {org} (SANDBOX)" in (page.text_content("[data-limits-heading]") or "")
    # Read-only: no controls, no org picker, and the note says who sets overrides.
    assert page.locator("[data-set-override], [data-clear-override]").count() == 0
    assert page.locator("[data-org-form]").is_hidden()
    assert "API provider" in (page.text_content("[data-limits-note]") or "")
    assert page.locator("[data-pools-table] table").count() == 1
    assert not tab.errors, tab.errors


def test_the_provider_sets_and_clears_an_override_in_the_page(
    server: Server,  # noqa: F811
    tab: Tab,  # noqa: F811
) -> None:
    page = tab.page
    org = f"provider-{time.monotonic_ns()}"
    key = quick_key(server, org, "member")["key"]
    policy_limit = _bucket_limit(server.url, key)
    _, token = _in_database(server, lambda e: AdminTokenStore(e).create("dashboard test"))

    sign_in(page, server.url, token)
    page.wait_for_selector('[data-view="limits"]:not([hidden])')
    # An admin token is no org's: only the Limits page is offered.
    assert page.locator('[data-tab="usage"]').is_hidden()
    assert page.locator('[data-tab="keys"]').is_hidden()
    assert page.locator("[data-board]").is_hidden()
    page.wait_for_selector(f'[data-org-choices] option[value="{org}"]', state="attached")
    page.fill('[data-org-form] input[name="org"]', org)
    page.click('[data-org-form] [type="submit"]')
    page.wait_for_selector(f'[data-overridden="{BUCKET}"]:has-text("policy")')
    assert page.text_content(f'[data-effective="{BUCKET}"]') == str(policy_limit)

    # A bad value: the server's message, nothing changed.
    page.fill(f'[data-override-input="{BUCKET}"]', "0")
    page.click(f'[data-set-override="{BUCKET}"]')
    page.wait_for_selector("[data-limits-error]:not([hidden])")
    assert "limit" in (page.text_content("[data-limits-error]") or "")
    assert page.text_content(f'[data-overridden="{BUCKET}"]') == "policy"

    page.fill(f'[data-override-input="{BUCKET}"]', "4321")
    page.click(f'[data-set-override="{BUCKET}"]')
    page.wait_for_selector(f'[data-overridden="{BUCKET}"]:has-text("override")')
    assert page.text_content(f'[data-effective="{BUCKET}"]') == "4321"
    assert page.locator("[data-limits-error]").is_hidden()
    wait_for(lambda: _bucket_limit(server.url, key) == 4321, "the override on the gateway")

    page.click(f'[data-clear-override="{BUCKET}"]')
    page.wait_for_selector(f'[data-overridden="{BUCKET}"]:has-text("policy")')
    wait_for(lambda: _bucket_limit(server.url, key) == policy_limit, "the policy's limit again")
    # An unknown org: the server's 404, in the page.
    page.fill('[data-org-form] input[name="org"]', "no-such-org")
    page.click('[data-org-form] [type="submit"]')
    page.wait_for_selector("[data-limits-error]:has-text('no-such-org')")
    # (The browser logs the 422 and the 404 answers themselves; nothing else.)
    assert not [e for e in tab.errors if "Failed to load resource" not in e], tab.errors
