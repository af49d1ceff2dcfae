"""The dashboard's Keys and Webhooks pages in Debian's Chromium (Playwright) against a real
`tollhouse serve`: a key created in the page works against the API and is refused once
revoked in the page; its environment and expiry reach the API and the table, and a
rotation in the page shows the new secret once and keeps the expiry; a refused change
reads in the server's words; an endpoint added in the page gets a signed test, shows the
delivery's attempt and response, replays it, and is disabled and rotated from the page."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import Server, serve_in_thread
from tests.dashboard.test_dashboard import (  # noqa: F401 - fixtures used by name
    Tab,
    browser,
    quick_key,
    server,
    sign_in,
    wait_for,
)
from tollhouse.webhooks import verify

pytestmark = pytest.mark.integration


class Receiver:
    """Records every delivery's headers and body; answers 200 ``thanks``."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.got: list[tuple[dict[str, str], bytes]] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        with self.lock:
            self.got.append(({k.decode(): v.decode() for k, v in scope["headers"]}, body))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"thanks"})


@pytest.fixture(scope="module")
def receiver() -> Iterator[tuple[Receiver, str]]:
    r = Receiver()
    with serve_in_thread(r) as url:  # type: ignore[arg-type]
        yield r, url + "/portal-hook"


@pytest.fixture
def page_tab(browser: Any) -> Iterator[Tab]:  # noqa: F811
    # Clipboard permissions, so the copy button's result can be read back.
    context = browser.new_context(
        viewport={"width": 1280, "height": 1000},
        permissions=["clipboard-read", "clipboard-write"],
    )
    page = context.new_page()
    page.set_default_timeout(20_000)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(f"page error: {exc}"))
    yield Tab(page, errors, [])
    context.close()


def _status(url: str, key: str) -> int:
    return httpx.get(
        url + "/v1/rate-limit/status", headers={"X-API-Key": key}, timeout=10
    ).status_code


def test_create_use_and_revoke_a_key_in_the_page(server: Server, page_tab: Tab) -> None:  # noqa: F811
    page = page_tab.page
    root = quick_key(server, f"portal-{time.monotonic_ns()}", "root")
    sign_in(page, server.url, root["key"])
    page.click('[data-tab="keys"]')
    page.wait_for_selector(f'[data-key-name="{root["id"]}"]')

    page.fill('[data-key-form] input[name="name"]', "made in the page")
    page.select_option('[data-key-form] select[name="role"]', "member")
    page.click('[data-key-form] [type="submit"]')
    page.wait_for_selector("[data-new-secret]:not([hidden])")
    secret = page.text_content("[data-secret]") or ""
    assert secret.startswith("sk_test_") and len(secret) == 40
    page.click("[data-copy]")
    page.wait_for_selector("[data-copied]:has-text('Copied.')")
    assert page.evaluate("navigator.clipboard.readText()") == secret

    key_id = page.get_attribute('[data-key-name]:has-text("made in the page")', "data-key-name")
    assert key_id and key_id.startswith("key_")
    # The secret is never listed: only the page's one-time box holds it.
    assert page.locator("[data-keys-table]").inner_text().count(secret) == 0

    assert _status(server.url, secret) == 200
    page.click('[data-tab="usage"]')
    page.click('[data-tab="keys"]')  # reloads: the call above shows as last used
    wait_for(
        lambda: page.text_content(f'[data-last-used="{key_id}"]') not in (None, "–"),
        "the key's last use shown",
    )

    page.click(f'[data-revoke="{key_id}"]')
    page.click(f'[data-confirm-revoke="{key_id}"]')
    page.wait_for_selector(f'[data-key-status="{key_id}"]:has-text("revoked")')
    refused = wait_for(
        lambda: _status(server.url, secret) == 401, "the revoked key to be refused", 10
    )
    assert refused
    assert not page_tab.errors, page_tab.errors


def test_webhooks_page(server: Server, page_tab: Tab, receiver: tuple[Receiver, str]) -> None:  # noqa: F811
    rec, url = receiver
    page = page_tab.page
    root = quick_key(server, f"portal-hooks-{time.monotonic_ns()}", "root")
    sign_in(page, server.url, root["key"])
    page.click('[data-tab="webhooks"]')
    page.wait_for_selector("[data-endpoints-table] :text('No endpoints yet')")

    page.fill('[data-endpoint-form] input[name="url"]', url)
    page.click('[data-endpoint-form] [type="submit"]')
    page.wait_for_selector("[data-new-whsec]:not([hidden])")
    whsec = page.text_content("[data-whsec]") or ""
    assert whsec.startswith("whsec_")
    endpoint_id = page.get_attribute("[data-test]", "data-test")
    assert endpoint_id and endpoint_id.startswith("we_")

    page.click(f'[data-test="{endpoint_id}"]')
    page.wait_for_selector("[data-delivery-status]:has-text('delivered')")
    headers, body = rec.got[-1]
    assert verify(body, headers, whsec)["type"] == "ping"
    delivery_id = page.get_attribute("[data-delivery-status]", "data-delivery-status")
    assert page.text_content(f'[data-excerpt="{delivery_id}"]') == "thanks"

    page.click(f'[data-replay="{delivery_id}"]')
    wait_for(lambda: page.locator("[data-delivery-status]").count() == 2, "the replay listed")
    assert rec.got[-1][0]["webhook-id"] == headers["webhook-id"]

    page.click(f'[data-rotate-secret="{endpoint_id}"]')
    wait_for(lambda: page.text_content("[data-whsec]") != whsec, "the new secret shown")
    page.click(f'[data-toggle="{endpoint_id}"]')
    page.wait_for_selector(f'[data-endpoint-state="{endpoint_id}"]:has-text("disabled")')
    page.click(f'[data-test="{endpoint_id}"]')
    page.wait_for_selector("[data-webhooks-error]:has-text('disabled')")
    page.click(f'[data-remove="{endpoint_id}"]')
    page.click(f'[data-confirm-remove="{endpoint_id}"]')
    page.wait_for_selector("[data-endpoints-table] :text('No endpoints yet')")
    assert not page_tab.errors, page_tab.errors


def _answer(url: str, key: str) -> int:
    """``GET /v1/rate-limit/status`` with ``key`` (its bucket is 2 a second: a 429 is
    waited out, so only the key's own standing decides)."""
    for _ in range(50):
        status = _status(url, key)
        if status != 429:
            return status
        time.sleep(0.3)
    raise AssertionError("the status bucket never admitted the call")


def test_a_refused_change_reads_in_the_servers_words(server: Server, page_tab: Tab) -> None:  # noqa: F811
    """A change the API refuses (an escalation's 403, the URL check's 400) is shown as the
    server's message alone — not wrapped as a panel the key may not read."""
    page = page_tab.page
    root = quick_key(server, f"portal-words-{time.monotonic_ns()}", "root")
    auth = {"X-API-Key": root["key"]}
    escalation = {"role": "member", "environment": "PRODUCTION"}
    said = httpx.post(server.url + "/v1/keys", json=escalation, headers=auth, timeout=10)
    assert said.status_code == 403, said.text
    refused = said.json()["error"]["message"]
    assert "A SANDBOX key cannot create a PRODUCTION key" in refused
    bad_url = httpx.post(
        server.url + "/v1/webhooks/endpoints",
        json={"url": "ftp://example.com"},
        headers=auth,
        timeout=10,
    )
    assert bad_url.status_code == 400, bad_url.text

    sign_in(page, server.url, root["key"])
    page.click('[data-tab="keys"]')
    page.wait_for_selector(f'[data-key-name="{root["id"]}"]')
    page.fill('[data-key-form] input[name="name"]', "too high")
    page.select_option('[data-key-form] select[name="environment"]', "PRODUCTION")
    page.click('[data-key-form] [type="submit"]')
    page.wait_for_selector("[data-keys-error]:not([hidden])")
    assert page.text_content("[data-keys-error]") == refused
    assert page.locator("[data-key-name]").count() == 1  # nothing made

    page.click('[data-tab="webhooks"]')
    page.wait_for_selector("[data-endpoints-table] :text('No endpoints yet')")
    page.fill('[data-endpoint-form] input[name="url"]', "ftp://example.com")
    page.click('[data-endpoint-form] [type="submit"]')
    page.wait_for_selector("[data-webhooks-error]:not([hidden])")
    assert page.text_content("[data-webhooks-error]") == bad_url.json()["error"]["message"]
    assert not page_tab.errors, page_tab.errors


def test_environment_expiry_and_rotation_in_the_page(server: Server, page_tab: Tab) -> None:  # noqa: F811
    """The Keys form's environment and expiry reach the API and the table; Rotate shows
    the new secret once, both secrets work in the overlap, and the new key keeps the
    expiry."""
    page = page_tab.page
    root = quick_key(server, f"portal-rotate-{time.monotonic_ns()}", "root")
    auth = {"X-API-Key": root["key"]}
    sign_in(page, server.url, root["key"])
    page.click('[data-tab="keys"]')
    page.wait_for_selector(f'[data-key-name="{root["id"]}"]')

    page.fill('[data-key-form] input[name="name"]', "timed")
    page.select_option('[data-key-form] select[name="environment"]', "SANDBOX")
    page.fill('[data-key-form] input[name="expires"]', "2099-06-01T12:00")
    page.click('[data-key-form] [type="submit"]')
    page.wait_for_selector("[data-new-secret]:not([hidden])")
    first = page.text_content("[data-secret]") or ""
    assert first.startswith("sk_test_")
    page.wait_for_selector('[data-key-name]:has-text("timed")')
    old_id = page.get_attribute('[data-key-name]:has-text("timed")', "data-key-name")
    assert old_id and old_id.startswith("key_")
    # The local time typed in the page, as the API stores it.
    expires_at = page.evaluate('new Date("2099-06-01T12:00").toISOString()')
    listed = httpx.get(server.url + "/v1/keys", headers=auth, timeout=10).json()["data"]
    [made] = [k for k in listed if k["id"] == old_id]
    assert (made["environment"], made["expiresAt"]) == ("SANDBOX", expires_at)
    assert page.text_content(f'[data-key-environment="{old_id}"]') == "SANDBOX"
    expiry = page.text_content(f'[data-key-expires="{old_id}"]') or ""
    assert "2099" in expiry

    page.click(f'[data-rotate="{old_id}"]')
    wait_for(lambda: page.text_content("[data-secret]") != first, "the new secret shown")
    second = page.text_content("[data-secret]") or ""
    assert second.startswith("sk_test_") and len(second) == 40
    assert old_id in (page.text_content("[data-secret-note]") or "")
    listed = httpx.get(server.url + "/v1/keys", headers=auth, timeout=10).json()["data"]
    [new] = [k for k in listed if k["name"] == "timed" and k["id"] != old_id]
    page.wait_for_selector(f'[data-key-name="{new["id"]}"]')
    # Shown once: the table never holds a secret.
    table_text = page.locator("[data-keys-table]").inner_text()
    assert first not in table_text and second not in table_text
    # Both work during the overlap (a day by default).
    assert _answer(server.url, second) == 200
    assert _answer(server.url, first) == 200
    # The rotation kept the expiry: the new key ends when the old one would have.
    assert new["expiresAt"] == expires_at
    assert page.text_content(f'[data-key-expires="{new["id"]}"]') == expiry
    assert page.text_content(f'[data-key-status="{old_id}"]') == "active"
    assert page.text_content(f'[data-key-expires="{old_id}"]') != expiry  # the overlap's end
    assert not page_tab.errors, page_tab.errors
