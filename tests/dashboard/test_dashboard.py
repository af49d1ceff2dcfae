"""The dashboard in a real browser: Debian's Chromium driven by Playwright against a real
`tollhouse serve`, with data made by real calls (product calls, scored jobs, a webhook
delivered to a local receiver). One server and one browser for the module."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from tests import services
from tests.conftest import DEFAULT_POLICY, Server, serve_in_thread, start_server, stop_server
from tollhouse.keys.store import KeyStore
from tollhouse.storage.engine import make_engine

pytestmark = pytest.mark.integration

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
# Chromium stalls on a closed network without the background-networking flags.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TENANT = {"X-Tenant-Id": "acme"}
TITLE = "Backend Engineer"
DESCRIPTION = "Python, PostgreSQL and Redis; 5 years building APIs."
RESUME = "Built Python APIs on PostgreSQL and Redis for 6 years."
TIME_SERIES = ("calls-by-group", "status-classes", "latency", "scoring-volume")
ROWS = ("top-accounts", "top-endpoints")
PANELS = (*TIME_SERIES, *ROWS, "fair-use", "rate-limits", "queue")
WAIT_MS = 20_000

try:
    from playwright.sync_api import Browser, ConsoleMessage, Page, sync_playwright
except ImportError:  # pragma: no cover - the dev extra installs it
    sync_playwright = None  # type: ignore[assignment]


def wait_for(check: Callable[[], Any], what: str, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


class Receiver:
    """A raw ASGI webhook receiver that answers 200 and counts deliveries."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.count = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                done = message["type"] == "lifespan.shutdown"
                await send({"type": message["type"] + ".complete"})
                if done:
                    return
        while (await receive()).get("more_body"):
            pass
        with self.lock:
            self.count += 1
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


def quick_key(server: Server, org: str, role: str) -> dict[str, str]:
    """A key made straight in the server's database (the CLI path is covered by the
    ``busy`` fixture; a process per key would double this module's runtime)."""

    async def make() -> dict[str, str]:
        engine = make_engine(f"sqlite:///{server.cwd}/.tollhouse/tollhouse.db")
        try:
            record, secret = await KeyStore(engine).create(org, "test", role)
        finally:
            await engine.dispose()
        return {"id": record.id, "key": secret}

    # Playwright's sync API runs an event loop on this thread: make the key on another.
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(lambda: asyncio.run(make())).result()


@dataclass
class Busy:
    """An org with traffic: its root key, the jobs it scored, the receiver's URL."""

    key: str
    key_id: str
    jobs: list[str]
    failed_job: str


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """`tollhouse serve` with the built-in policy, except that the scoring bucket's window
    is a day (a call made by a test stays counted while the page polls: no window edge)
    and webhooks may target loopback."""
    folder = tmp_path_factory.mktemp("dashboard")
    policy = DEFAULT_POLICY.read_text()
    marker = 'limit = 1000\nwindow = "60s"'
    assert marker in policy
    config = folder / "tollhouse.toml"
    policy = policy.replace(marker, 'limit = 1000\nwindow = "1d"')
    # The webhook receiver listens on loopback (local development only).
    assert "[security]" not in policy
    config.write_text(policy + "\n[security]\nallow_private_targets = true\n")
    srv = start_server(folder, config)
    yield srv
    stop_server(srv)


@pytest.fixture(scope="module")
def receiver_url() -> Iterator[str]:
    with serve_in_thread(Receiver()) as url:  # type: ignore[arg-type]
        yield url + "/hook"


@pytest.fixture(scope="module")
def busy(server: Server, receiver_url: str) -> Busy:
    made_key = server.key("dash-busy", role="root")
    key = made_key["key"]
    # The key is a sandbox key (sk_test_): its jobs' events go to sandbox endpoints.
    server.cli(
        "webhooks",
        "add",
        "--org",
        "dash-busy",
        "--url",
        receiver_url,
        "--json",
        "--environment",
        "SANDBOX",
    )
    auth = {"X-API-Key": key, **TENANT}
    with httpx.Client(base_url=server.url, headers=auth, timeout=30) as c:
        made = c.post(
            "/v1/criteria/generate",
            json={"jobId": "job_d", "title": TITLE, "description": DESCRIPTION},
        )
        assert made.status_code == 200, made.text
        jobs = []
        for i in range(3):
            accepted = c.post(
                "/v1/score",
                json={
                    "applicationId": f"app_{i}",
                    "jobId": "job_d",
                    "candidate": {"name": "Ada", "resume": RESUME},
                },
            )
            assert accepted.status_code == 202, accepted.text
            jobs.append(accepted.json()["scoringJobId"])
        # A job whose criteria do not exist fails: the volume shows both outcomes.
        failing = c.post(
            "/v1/score",
            json={
                "applicationId": "app_x",
                "jobId": "job_none",
                "candidate": {"name": "Bo", "resume": "x"},
            },
        )
        assert failing.status_code == 202, failing.text
        assert c.get("/v1/criteria/job_missing").status_code == 404  # a 4xx for the status panel
        assert c.get("/v1/criteria/job_d").status_code == 200

        def settled() -> bool:
            states = [
                c.get(f"/v1/score/{j}").json()["status"]
                for j in (*jobs, failing.json()["scoringJobId"])
            ]
            delivered = c.get("/v1/webhooks/deliveries", params={"jobId": jobs[0]}).json()["data"]
            return (
                states[:3] == ["completed"] * 3
                and states[3] == "failed"
                and bool(delivered)
                and (delivered[0]["status"] == "delivered")
            )

        wait_for(settled, "the jobs to finish and the webhook to be delivered")
    return Busy(key, made_key["id"], jobs, failing.json()["scoringJobId"])


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if sync_playwright is None:
        services.missing("playwright", "pip install -e '.[dev]'")
    if not CHROMIUM.exists():
        services.missing("chromium", "apt-get install -y chromium")
    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@dataclass
class Tab:
    page: Page
    errors: list[str]
    requests: list[str]


@pytest.fixture
def tab(browser: Browser) -> Iterator[Tab]:
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    errors: list[str] = []
    requests: list[str] = []

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            errors.append(message.text)

    page.on("console", on_console)
    page.on("pageerror", lambda exc: errors.append(f"page error: {exc}"))
    page.on("request", lambda request: requests.append(request.url))
    yield Tab(page, errors, requests)
    context.close()


def sign_in(page: Page, url: str, key: str) -> None:
    page.goto(url + "/dashboard")
    page.fill('input[name="api_key"]', key)
    page.click('form [type="submit"]')


def wait_panels(page: Page, states: dict[str, str]) -> None:
    for name, state in states.items():
        page.wait_for_selector(f'[data-chart="{name}"][data-state="{state}"]')


# ---- static serving ------------------------------------------------------------------------


def test_page_and_assets_need_no_key_but_data_does(server: Server) -> None:
    redirect = httpx.get(server.url + "/dashboard")
    assert redirect.status_code == 308
    assert redirect.headers["location"] == "/dashboard/"
    page = httpx.get(server.url + "/dashboard/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert 'name="api_key"' in page.text
    assert "https://" not in page.text  # no CDN: everything is served from here
    for asset, kind in [
        ("app.js", "text/javascript"),
        ("vendor/uPlot.iife.min.js", "text/javascript"),
        ("vendor/uPlot.min.css", "text/css"),
        ("dashboard.css", "text/css"),
    ]:
        answer = httpx.get(f"{server.url}/dashboard/{asset}")
        assert answer.status_code == 200, asset
        assert answer.headers["content-type"].startswith(kind)
    assert httpx.get(server.url + "/dashboard/nope.js").status_code == 404
    # A dot segment never reaches the files: the gateway refuses the path (400) first.
    escape = httpx.get(server.url + "/dashboard/%2e%2e/pyproject.toml")
    assert escape.status_code == 400 and escape.json()["error"]["code"] == "BAD_REQUEST"
    assert httpx.post(server.url + "/dashboard/", data={"api_key": "x"}).status_code == 405
    # Only /dashboard and below is public: neighbours still need a key.
    assert httpx.get(server.url + "/dashboards").status_code == 401
    assert httpx.get(server.url + "/v1/rate-limit/status").status_code == 401


def test_in_process_tollhouse_serves_the_dashboard(tmp_path: Path) -> None:
    from tollhouse import Tollhouse

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"inner"})

    config = tmp_path / "tollhouse.toml"
    config.write_text(f'[storage]\ndatabase_url = "sqlite:///{tmp_path}/t.db"\n')
    with serve_in_thread(Tollhouse(inner, config=config)) as url:
        page = httpx.get(url + "/dashboard/")
        assert page.status_code == 200
        assert 'data-chart="rate-limits"' in page.text
        assert httpx.get(url + "/dashboard/vendor/uPlot.iife.min.js").status_code == 200
        assert httpx.get(url + "/anything").status_code == 401


# ---- the browser -----------------------------------------------------------------------------


def test_sign_in_explains_a_bad_key_and_a_role_without_access(server: Server, tab: Tab) -> None:
    page = tab.page
    sign_in(page, server.url, "sk_test_not_a_real_key_000000000000")
    page.wait_for_selector("[data-signin-error]:not([hidden])")
    assert "not accepted" in page.inner_text("[data-signin-error]")
    assert page.is_hidden("[data-board]")
    member = quick_key(server, "dash-busy", "member")["key"]
    page.fill('input[name="api_key"]', member)
    page.click('form [type="submit"]')
    page.wait_for_function(
        "() => document.querySelector('[data-signin-error]')"
        ".textContent.includes('root or manager')"
    )
    assert page.is_hidden("[data-board]")
    assert page.evaluate("sessionStorage.length") == 0
    assert all("sk_" not in url for url in tab.requests)


def test_every_panel_renders_with_data(server: Server, busy: Busy, tab: Tab) -> None:
    page = tab.page
    sign_in(page, server.url, busy.key)
    wait_panels(page, dict.fromkeys(PANELS, "ready"))
    for name in TIME_SERIES:
        assert page.locator(f'[data-chart="{name}"] canvas').count() >= 1, name
    for name in ROWS:
        assert page.locator(f'[data-chart="{name}"] .row').count() >= 1, name
    # The key is in session storage, never in a URL.
    assert page.evaluate("sessionStorage.getItem('tollhouse.dashboard.apiKey')") == busy.key
    assert busy.key not in page.url
    assert all(busy.key not in url for url in tab.requests)
    assert "org dash-busy" in page.inner_text("[data-who]")
    # What the panels show is this org's real traffic.
    endpoints = page.locator('[data-chart="top-endpoints"] .row').evaluate_all(
        "rows => rows.map(r => r.dataset.key)"
    )
    assert {"SCORING", "CRITERIA_AI", "CRITERIA"} <= set(endpoints)
    top = page.locator('[data-chart="top-accounts"] .row').first
    assert top.get_attribute("data-key") == busy.key_id  # the key that made the traffic
    assert "3 completed · 1 failed" in page.inner_text('[data-headline="scoring"]')
    assert "4xx" in page.inner_text('[data-headline="error-rate"]')
    # Fair use: the org has a webhook endpoint and polled its jobs, so polling is flagged
    # (any poll, with webhooks); the other signals are ok.
    signals = page.locator('[data-chart="fair-use"] [data-signal]').evaluate_all(
        "rows => Object.fromEntries(rows.map(r => [r.dataset.signal, r.dataset.status]))"
    )
    assert signals == {
        "regeneration_loop": "ok",
        "criteria_without_scoring": "ok",
        "polling_instead_of_webhooks": "flagged",
        "ignored_retry_after": "ok",
        "burst_submission": "ok",
    }
    assert "1 flagged" in page.inner_text('[data-headline="fair-use"]')
    scoring = page.locator('[data-chart="rate-limits"] [data-bucket="scoring"]')
    assert int(scoring.get_attribute("data-limit") or 0) == 1000
    assert (
        page.locator('[data-chart="rate-limits"] [data-pool="criteria_ai_inflight"]').count() == 1
    )
    assert page.get_attribute("[data-degraded]", "data-degraded") == "false"
    queue = page.locator('[data-chart="queue"]')
    assert queue.locator('[data-stat="queued"]').count() == 1
    for job in busy.jobs:
        assert job in queue.inner_text()
    webhook = page.locator(f'[data-webhook="{busy.jobs[0]}"]')
    assert "delivered · 1 attempt · 200" in webhook.inner_text()
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "dashboard.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    assert tab.errors == []
    # Sign out forgets the key.
    page.click("[data-signout]")
    page.wait_for_selector("[data-signin]:not([hidden])")
    assert page.evaluate("sessionStorage.length") == 0


def _range_requests(requests: list[str], path: str) -> list[dict[str, list[str]]]:
    return [parse_qs(urlsplit(u).query) for u in requests if urlsplit(u).path == path]


def test_the_range_picker_drives_every_panel(server: Server, busy: Busy, tab: Tab) -> None:
    page = tab.page
    sign_in(page, server.url, busy.key)
    wait_panels(page, {"scoring-volume": "ready", "calls-by-group": "ready"})
    assert page.get_attribute("[data-range-label]", "data-range") == "24h"
    points_24h = page.get_attribute('[data-chart="scoring-volume"]', "data-points")
    before = len(tab.requests)
    page.click('[data-range="7d"]')
    page.wait_for_function(
        "(old) => document.querySelector('[data-chart=\"scoring-volume\"]').dataset.points !== old",
        arg=points_24h,
    )
    assert page.get_attribute('[data-range="7d"]', "aria-pressed") == "true"
    assert page.get_attribute("[data-range-label]", "data-range") == "7d"
    assert page.url.endswith("#range=7d")
    made = tab.requests[before:]
    [volume] = _range_requests(made, "/v1/analytics/scoring-volume")
    assert volume["timeRange"] == ["7d"]
    [fair_use] = _range_requests(made, "/v1/analytics/fair-use")
    assert fair_use["timeRange"] == ["7d"]
    for path in ("/call-counts/historical/ENDPOINTS/", "/call-counts/historical/ACCOUNTS/"):
        [query] = _range_requests(made, path)
        span = float(query["end_timestamp"][0]) - float(query["start_timestamp"][0])
        assert span == 7 * 86400, path
    for metric in ("api_calls_by_status_class", "api_latency_percentiles"):
        [query] = _range_requests(made, f"/v1/analytics/{metric}")
        assert query["time_start"][0] < query["time_end"][0]
    # 7 days of daily buckets (the partial first day included), not 24 hours of hourly ones.
    assert page.get_attribute('[data-chart="scoring-volume"]', "data-points") in ("7", "8")
    # Reloading keeps the range and the session.
    page.reload()
    page.wait_for_selector('[data-range="7d"][aria-pressed="true"]')
    wait_panels(page, {"scoring-volume": "ready"})
    assert tab.errors == []


def test_live_status_updates_after_calls(server: Server, busy: Busy, tab: Tab) -> None:
    page = tab.page
    sign_in(page, server.url, busy.key)
    wait_panels(page, {"rate-limits": "ready"})
    gauge = '[data-chart="rate-limits"] [data-bucket="scoring"]'
    before = int(page.get_attribute(gauge, "data-remaining") or -1)
    polls = int(page.get_attribute("[data-updated]", "data-updated") or 0)
    auth = {"X-API-Key": busy.key, **TENANT}
    for job in busy.jobs:
        assert httpx.get(f"{server.url}/v1/score/{job}", headers=auth).status_code == 200
    page.wait_for_function(
        "([sel, most]) => Number(document.querySelector(sel).dataset.remaining) <= most",
        arg=[gauge, before - 3],
    )
    assert int(page.get_attribute("[data-updated]", "data-updated") or 0) > polls
    assert tab.errors == []


def test_a_new_org_sees_empty_states_that_say_what_to_do(
    server: Server, busy: Busy, tab: Tab
) -> None:
    fresh = quick_key(server, "dash-fresh", "manager")
    key = fresh["key"]
    page = tab.page
    sign_in(page, server.url, key)
    wait_panels(page, {"scoring-volume": "empty", "queue": "empty", "rate-limits": "ready"})
    for name in ("scoring-volume", "queue"):
        text = page.inner_text(f'[data-chart="{name}"]')
        assert "No scoring jobs" in text
        assert f"curl -s {server.url}/v1/score" in text
    assert page.locator('[data-chart="queue"] table').count() == 0
    # Another org's traffic never shows: only this org's own dashboard calls are counted.
    # (Its own sign-in call may or may not be counted yet when the panel asks.)
    page.wait_for_selector(
        '[data-chart="top-accounts"]:is([data-state="ready"], [data-state="empty"])'
    )
    accounts = page.locator('[data-chart="top-accounts"] .row').evaluate_all(
        "rows => rows.map(r => r.dataset.key)"
    )
    assert set(accounts) <= {fresh["id"]}
    for job in busy.jobs:
        assert job not in page.inner_text("body")
    assert tab.errors == []


def test_phone_viewport_has_no_horizontal_overflow(
    server: Server, busy: Busy, browser: Browser
) -> None:
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True)
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    try:
        sign_in(page, server.url, busy.key)
        wait_panels(page, dict.fromkeys(PANELS, "ready"))
        width, inner = page.evaluate("[document.documentElement.scrollWidth, innerWidth]")
        assert width <= inner
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "dashboard-phone.png"), full_page=True)
    finally:
        context.close()


def test_a_busy_pool_shows_live_and_frees_again(server: Server, busy: Busy, tab: Tab) -> None:
    page = tab.page
    sign_in(page, server.url, busy.key)
    pool = '[data-chart="rate-limits"] [data-pool="criteria_ai_inflight"]'
    page.wait_for_selector(f'{pool}[data-active="0"]')
    headers = {"X-API-Key": busy.key, **TENANT, "x-example-delay-ms": "5000"}
    body = {"jobId": "job_slow", "title": TITLE, "description": DESCRIPTION}
    codes: list[int] = []

    def slow_call() -> None:
        answer = httpx.post(
            server.url + "/v1/criteria/generate", json=body, headers=headers, timeout=30
        )
        codes.append(answer.status_code)

    calls = [threading.Thread(target=slow_call) for _ in range(2)]
    for call in calls:
        call.start()
    try:
        page.wait_for_selector(f'{pool}[data-active="2"]')
    finally:
        for call in calls:
            call.join(30)
    assert codes == [200, 200]
    page.wait_for_selector(f'{pool}[data-active="0"]')


@pytest.fixture(scope="module")
def sparse_status(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """`tollhouse serve` whose status bucket allows one call per 10 s. A test that holds
    that one call leaves the page's next poll (every 3 s) a 429 for certain; with the
    built-in 2 per second, whether the page's poll or the test's call takes a freed unit
    is a race (the poll period is a whole number of refills, so a lost race repeats)."""
    folder = tmp_path_factory.mktemp("sparse-status")
    policy = DEFAULT_POLICY.read_text()
    marker = 'name = "rate_limit_status"\ndisplay_name = "Rate Limit Status"\nlimit = 2'
    assert marker in policy
    head, tail = policy.split(marker)
    window = 'window = "1s"'
    assert tail.split("\n")[1] == window  # the status bucket's own window line
    tail = tail.replace(window, 'window = "10s"', 1)
    config = folder / "tollhouse.toml"
    config.write_text(head + marker[: -len("2")] + "1" + tail)
    srv = start_server(folder, config)
    yield srv
    stop_server(srv)


def test_a_rate_limited_status_poll_backs_off_and_says_so(sparse_status: Server, tab: Tab) -> None:
    server = sparse_status
    key = quick_key(server, "dash-sparse", "root")["key"]
    page = tab.page
    sign_in(page, server.url, key)
    page.wait_for_selector('[data-chart="rate-limits"][data-state="ready"]')
    banner = page.locator("[data-banner]")
    limited = 0
    # Hold the window's one status call (whoever took it, the next try is a 429) until
    # the page's own poll meets a 429 and says so.
    with httpx.Client(base_url=server.url, headers={"X-API-Key": key}) as c:

        def page_limited() -> bool:
            nonlocal limited
            limited += c.get("/v1/rate-limit/status").status_code == 429
            return banner.is_visible()

        wait_for(page_limited, "the page's status poll to meet a 429", timeout=60)
    assert limited > 0
    assert "Rate limited, retrying" in banner.inner_text()
    assert page.locator('[data-chart="rate-limits"]').get_attribute("data-state") == "ready"
    # Left alone, the next poll gets through (within the 10 s window) and the banner goes.
    page.wait_for_selector("[data-banner]", state="hidden", timeout=40_000)
