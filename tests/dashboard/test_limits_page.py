"""The dashboard's Limits page in Debian's Chromium (Playwright) against a real
`tollhouse serve`: an org's root key sees its effective limits with the override marked,
read-only; the provider, signed in with an admin token, picks the org, sets an override
in the page that the gateway then applies to the org's key, and clears it again — for
every environment, and for one environment alone (sandbox apart from production)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import httpx
import pytest
from playwright.sync_api import Page
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.conftest import Server
from tests.dashboard.test_dashboard import (  # noqa: F401 - fixtures used by name
    ARTIFACTS,
    Tab,
    browser,
    quick_key,
    server,
    sign_in,
    tab,
    wait_for,
)
from tollhouse.keys.admin_tokens import AdminTokenStore
from tollhouse.keys.store import KeyStore
from tollhouse.limits.overrides import OverrideStore
from tollhouse.policy.load import load_policy
from tollhouse.storage.engine import make_engine

pytestmark = pytest.mark.integration

T = TypeVar("T")
#: The scoring bucket: the first of the built-in policy.
BUCKET = load_policy(None).buckets[0].name
#: The built-in policy's in-flight pool (overridden as a bucket is).
POOL = load_policy(None).pools[0]
#: The Limits table once no change or load is under way.
READY = '[data-limits-table][data-state="ready"]'


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


def _key_of(srv: Server, org: str, env: str) -> str:
    """A member key of ``org`` in ``env`` (``test``: SANDBOX, ``live``: PRODUCTION)."""

    async def make(engine: AsyncEngine) -> str:
        _, secret = await KeyStore(engine).create(org, env, "member")
        return secret

    return _in_database(srv, make)


def _sign_in_as_provider(page: Page, srv: Server, org: str) -> str:
    """Sign in with a new admin token and show ``org``'s limits; the token."""
    _, token = _in_database(srv, lambda e: AdminTokenStore(e).create("dashboard test"))
    sign_in(page, srv.url, token)
    page.wait_for_selector('[data-view="limits"]:not([hidden])')
    page.wait_for_selector(f'[data-org-choices] option[value="{org}"]', state="attached")
    page.fill('[data-org-form] input[name="org"]', org)
    page.click('[data-org-form] [type="submit"]')
    page.wait_for_selector(f'[data-effective="{BUCKET}"]')
    return token


def _env_cell(page: Page, env: str) -> tuple[str | None, str | None]:
    """The page's (limit, source pill) of the bucket for a key of ``env``."""
    where = f"{BUCKET}:{env}"
    return (
        page.text_content(f'[data-env-limit="{where}"]'),
        page.text_content(f'[data-env-source="{where}"]'),
    )


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
    _in_database(
        server,
        lambda e: OverrideStore(e).set(org, POOL.name, 7, environment="SANDBOX", actor="test"),
    )
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
    # The pool: the sandbox override this key's environment gets, marked.
    assert page.text_content(f'[data-effective="{POOL.name}"]') == "7"
    assert page.text_content(f'[data-overridden="{POOL.name}"]') == "override"
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
    for env in ("SANDBOX", "PRODUCTION"):
        assert _env_cell(page, env) == (str(policy_limit), "policy")
    assert page.locator("[data-env-override], [data-clear-env-override]").count() == 0

    # A bad value: the server's message, nothing changed.
    page.fill(f'[data-override-input="{BUCKET}"]', "0")
    page.click(f'[data-set-override="{BUCKET}"]')
    page.wait_for_selector("[data-limits-error]:not([hidden])")
    # The page reloads the org's limits after the refusal: typing waits for that.
    page.wait_for_selector(READY)
    # In the server's words alone (no status, no wording meant for a refused read).
    refused = httpx.put(
        f"{server.url}/v1/admin/orgs/{org}/limits/{BUCKET}",
        headers={"Authorization": f"Bearer {token}"},
        json={"limit": 0},
    )
    assert refused.status_code == 422
    said = refused.json()["error"]["message"]
    assert "limit" in said and page.text_content("[data-limits-error]") == said
    assert page.text_content(f'[data-overridden="{BUCKET}"]') == "policy"

    page.fill(f'[data-override-input="{BUCKET}"]', "4321")
    page.click(f'[data-set-override="{BUCKET}"]')
    page.wait_for_selector(f'[data-overridden="{BUCKET}"]:has-text("override")')
    assert page.text_content(f'[data-effective="{BUCKET}"]') == "4321"
    # The override for all environments: what a key of either gets.
    for env in ("SANDBOX", "PRODUCTION"):
        assert _env_cell(page, env) == ("4321", "org-wide")
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


def test_the_provider_sets_and_clears_an_environment_override_in_the_page(
    server: Server,  # noqa: F811
    tab: Tab,  # noqa: F811
) -> None:
    page = tab.page
    org = f"env-provider-{time.monotonic_ns()}"
    sandbox = _key_of(server, org, "test")
    production = _key_of(server, org, "live")
    policy_limit = _bucket_limit(server.url, sandbox)
    assert _bucket_limit(server.url, production) == policy_limit
    token = _sign_in_as_provider(page, server, org)

    def admin_view() -> dict[str, Any]:
        answer = httpx.get(
            f"{server.url}/v1/admin/orgs/{org}/limits",
            headers={"Authorization": f"Bearer {token}"},
            timeout=10,
        )
        assert answer.status_code == 200, answer.text
        bucket: dict[str, Any] = next(b for b in answer.json()["buckets"] if b["name"] == BUCKET)
        return bucket

    # An override for the sandbox alone, set in the page.
    assert page.input_value(f'[data-override-environment="{BUCKET}"]') == ""
    page.select_option(f'[data-override-environment="{BUCKET}"]', "SANDBOX")
    page.fill(f'[data-override-input="{BUCKET}"]', "2345")
    page.click(f'[data-set-override="{BUCKET}"]')
    page.wait_for_selector(f'[data-env-override="{BUCKET}:SANDBOX"]')
    assert page.text_content(f'[data-env-override="{BUCKET}:SANDBOX"]') == "SANDBOX: 2345"
    assert _env_cell(page, "SANDBOX") == ("2345", "env override")
    assert _env_cell(page, "PRODUCTION") == (str(policy_limit), "policy")
    # The override for all environments is untouched.
    assert page.text_content(f'[data-overridden="{BUCKET}"]') == "policy"
    assert page.text_content(f'[data-effective="{BUCKET}"]') == str(policy_limit)
    assert page.locator(f'[data-clear-override="{BUCKET}"]').count() == 0
    assert page.locator("[data-limits-error]").is_hidden()
    # The control keeps its environment for the next change.
    assert page.input_value(f'[data-override-environment="{BUCKET}"]') == "SANDBOX"

    bucket = admin_view()
    assert [(o["environment"], o["limit"]) for o in bucket["environmentOverrides"]] == [
        ("SANDBOX", 2345)
    ]
    assert bucket["byEnvironment"] == {
        "SANDBOX": {"limit": 2345, "overridden": True},
        "PRODUCTION": {"limit": policy_limit, "overridden": False},
    }
    assert bucket["overridden"] is False
    wait_for(lambda: _bucket_limit(server.url, sandbox) == 2345, "the sandbox override")
    assert _bucket_limit(server.url, production) == policy_limit

    # An override for all environments: production takes it, the sandbox keeps its own.
    page.select_option(f'[data-override-environment="{BUCKET}"]', "")
    page.fill(f'[data-override-input="{BUCKET}"]', "3456")
    page.click(f'[data-set-override="{BUCKET}"]')
    page.wait_for_selector(f'[data-overridden="{BUCKET}"]:has-text("override")')
    assert _env_cell(page, "SANDBOX") == ("2345", "env override")
    assert _env_cell(page, "PRODUCTION") == ("3456", "org-wide")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "limits-environments.png"), full_page=True)
    wait_for(lambda: _bucket_limit(server.url, production) == 3456, "the org-wide override")
    assert _bucket_limit(server.url, sandbox) == 2345

    # Clearing the sandbox's own override: it falls back to the org-wide one.
    page.click(f'[data-clear-env-override="{BUCKET}:SANDBOX"]')
    page.wait_for_selector(f'[data-env-override="{BUCKET}:SANDBOX"]', state="detached")
    assert _env_cell(page, "SANDBOX") == ("3456", "org-wide")
    assert admin_view()["environmentOverrides"] == []
    wait_for(lambda: _bucket_limit(server.url, sandbox) == 3456, "the sandbox on the org-wide")

    # And clearing that one: both on the policy's limit again.
    page.click(f'[data-clear-override="{BUCKET}"]')
    page.wait_for_selector(f'[data-overridden="{BUCKET}"]:has-text("policy")')
    for env in ("SANDBOX", "PRODUCTION"):
        assert _env_cell(page, env) == (str(policy_limit), "policy")
    wait_for(lambda: _bucket_limit(server.url, sandbox) == policy_limit, "the sandbox's policy")
    wait_for(lambda: _bucket_limit(server.url, production) == policy_limit, "production's policy")
    assert admin_view()["byEnvironment"] == {
        "SANDBOX": {"limit": policy_limit, "overridden": False},
        "PRODUCTION": {"limit": policy_limit, "overridden": False},
    }
    assert not tab.errors, tab.errors


def _pool_limit(url: str, key: str) -> int:
    """The org key's limit of the pool, as the gateway applies it."""
    for _ in range(50):
        answer = httpx.get(url + "/v1/rate-limit/status", headers={"X-API-Key": key}, timeout=10)
        if answer.status_code != 429:  # the status bucket's own small limit: ask again
            limit: int = answer.json()[POOL.name]["limit"]
            return limit
        time.sleep(0.3)
    raise AssertionError("the status bucket never admitted the call")


def test_the_provider_overrides_a_pool_in_the_page(
    server: Server,  # noqa: F811
    tab: Tab,  # noqa: F811
) -> None:
    page = tab.page
    org = f"pool-provider-{time.monotonic_ns()}"
    sandbox = _key_of(server, org, "test")
    production = _key_of(server, org, "live")
    assert _pool_limit(server.url, sandbox) == POOL.limit
    _sign_in_as_provider(page, server, org)
    pool = POOL.name

    page.wait_for_selector(f'[data-pool="{pool}"]')
    assert page.text_content(f'[data-overridden="{pool}"]') == "policy"
    page.select_option(f'[data-override-environment="{pool}"]', "SANDBOX")
    page.fill(f'[data-override-input="{pool}"]', "9")
    page.click(f'[data-set-override="{pool}"]')
    page.wait_for_selector(f'[data-env-override="{pool}:SANDBOX"]')
    assert page.text_content(f'[data-env-limit="{pool}:SANDBOX"]') == "9"
    assert page.text_content(f'[data-env-limit="{pool}:PRODUCTION"]') == str(POOL.limit)
    assert page.text_content(f'[data-overridden="{pool}"]') == "policy"  # not org-wide
    wait_for(lambda: _pool_limit(server.url, sandbox) == 9, "the sandbox pool override")
    assert _pool_limit(server.url, production) == POOL.limit

    page.click(f'[data-clear-env-override="{pool}:SANDBOX"]')
    page.wait_for_selector(f'[data-env-override="{pool}:SANDBOX"]', state="detached")
    assert page.text_content(f'[data-env-limit="{pool}:SANDBOX"]') == str(POOL.limit)
    wait_for(lambda: _pool_limit(server.url, sandbox) == POOL.limit, "the pool's policy limit")
    assert page.locator("[data-limits-error]").is_hidden()
    assert not tab.errors, tab.errors
