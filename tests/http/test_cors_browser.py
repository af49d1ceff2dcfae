"""CORS in a real browser: a page on another origin (a second server on another loopback
port) calls a limited route through tollhouse with ``fetch`` and an ``X-API-Key`` header,
which makes Chromium send a preflight first; the page runs into the limit and reads the
429's ``Retry-After`` and ``RateLimit`` headers and its JSON body. A page on an origin the
policy does not list gets nothing through."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import Route

from tests import services
from tests.conftest import serve_in_thread
from tests.http.test_cors import inner, make_keys, write_policy
from tollhouse import Tollhouse

pytestmark = pytest.mark.integration

CHROMIUM = Path("/usr/bin/chromium")
# As in tests/dashboard: Chromium stalls on a closed network without these flags.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WAIT_MS = 20_000
LIMIT = 3

try:
    from playwright.sync_api import sync_playwright
except ImportError:  # pragma: no cover - the dev extra installs it
    sync_playwright = None  # type: ignore[assignment]

#: The browser app: calls the API (URL and key from the fragment, which never leaves the
#: browser) until it is limited, and shows what its script could read of each answer.
PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>CORS client</title></head>
<body data-state="running"><pre id="seen"></pre>
<script>
(async () => {
  const params = new URLSearchParams(location.hash.slice(1));
  const seen = [];
  try {
    for (let i = 0; i < 10; i++) {
      const resp = await fetch(params.get("api") + "/v1/items/browser", {
        headers: {"X-API-Key": params.get("key")},
      });
      const header = (name) => resp.headers.get(name);
      seen.push({
        status: resp.status,
        remaining: header("X-RateLimit-Remaining"),
        limit: header("X-RateLimit-Limit"),
        retryAfter: header("Retry-After"),
        rateLimit: header("RateLimit"),
        rateLimitPolicy: header("RateLimit-Policy"),
        requestId: header("X-Request-Id"),
        body: await resp.json(),
      });
      if (resp.status === 429) break;
    }
  } catch (err) {
    seen.push({error: String(err)});
  }
  document.getElementById("seen").textContent = JSON.stringify(seen);
  document.body.dataset.state = "done";
})();
</script></body></html>
"""


async def page(request: Request) -> HTMLResponse:
    return HTMLResponse(PAGE)


def run_page(browser: Any, page_url: str, api: str, key: str) -> list[dict[str, Any]]:
    """Open the page on ``page_url`` and return what its script saw."""
    context = browser.new_context()
    try:
        tab = context.new_page()
        tab.set_default_timeout(WAIT_MS)
        tab.goto(f"{page_url}/#api={api}&key={key}")
        tab.wait_for_selector('body[data-state="done"]')
        seen: list[dict[str, Any]] = json.loads(tab.inner_text("#seen"))
        return seen
    finally:
        context.close()


def test_browser_app_on_another_origin_reads_the_429(tmp_path: Path) -> None:
    if sync_playwright is None:
        services.missing("playwright", "pip install -e '.[dev]'")
    if not CHROMIUM.exists():
        services.missing("chromium", "apt-get install -y chromium")
    pages = Starlette(routes=[Route("/", page)])
    with serve_in_thread(pages) as allowed_page, serve_in_thread(pages) as other_page:
        config = write_policy(tmp_path, cors=f'[cors]\nallow_origins = ["{allowed_page}"]')
        config.write_text(config.read_text().replace("limit = 2", f"limit = {LIMIT}"))
        key, other_key = make_keys(tmp_path, ("browser", "root"), ("browser-other", "root"))
        app = Tollhouse(inner(), config=config)
        with serve_in_thread(app) as api:
            assert allowed_page != api  # same host, another port: another origin
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
                try:
                    seen = run_page(browser, allowed_page, api, key)
                    refused = run_page(browser, other_page, api, other_key)
                finally:
                    browser.close()
            preflights = dict(app.counters.responses)
            status = httpx.get(api + "/v1/rate-limit/status", headers={"X-API-Key": other_key})

    # The allowed page: LIMIT calls went through, the next one was limited, and the
    # script could read the rate-limit headers and the body of each.
    assert [s["status"] for s in seen] == [200] * LIMIT + [429], seen
    for i, ok in enumerate(seen[:LIMIT]):
        assert ok["body"] == {"id": "browser"}
        assert ok["limit"] == str(LIMIT)
        assert ok["remaining"] == str(LIMIT - 1 - i)
        assert ok["rateLimitPolicy"] == f'"items";q={LIMIT};w=315360000'
        assert ok["requestId"].startswith("req_")
    limited = seen[LIMIT]
    assert int(limited["retryAfter"]) > 0
    assert limited["rateLimit"].startswith('"items";r=0;t=')
    assert limited["remaining"] == "0"
    error = limited["body"]["error"]
    assert error["code"] == "RATE_LIMITED"
    assert error["status"] == 429
    assert error["requestId"] == limited["requestId"]
    # Chromium sent a preflight (a custom header), which tollhouse answered itself: the
    # bucket only counted the page's real calls, or the page would have been limited
    # sooner.
    assert preflights.get((None, 204), 0) >= 1

    # The other page: its preflight was refused, so the browser never sent the call.
    assert len(refused) == 1 and "error" in refused[0], refused
    assert "Failed to fetch" in refused[0]["error"]
    assert preflights.get((None, 403), 0) >= 1
    assert status.json()["buckets"]["items"]["remaining"] == LIMIT
