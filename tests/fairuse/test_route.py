"""``GET /v1/analytics/fair-use`` over real HTTP, on SQLite and PostgreSQL: the caller's
org and environment only, ``timeRange`` checked as scoring volume checks it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fairuse.test_signals_server import ENV, Running, generate, running
from tests.storage.support import run_with
from tollhouse.keys.store import KeyStore

PATH = "/v1/analytics/fair-use"


@pytest.fixture
def run(database_url: str, tmp_path: Path) -> Iterator[Running]:
    with running(database_url, tmp_path) as r:
        yield r


def fair_use(run: Running, key: str | None = None, **params: str) -> httpx.Response:
    headers = run.headers()
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    return httpx.get(run.url + PATH, headers=headers, params=params, timeout=30)


def by_signal(resp: httpx.Response) -> dict[str, dict[str, Any]]:
    assert resp.status_code == 200, resp.text
    return {s["signal"]: s for s in resp.json()["signals"]}


def test_regeneration_loop_flips_above_threshold_over_http(run: Running) -> None:
    for _ in range(3):
        generate(run, "job_loop")
    body = fair_use(run, timeRange="24h")
    assert body.json()["environment"] == ENV
    assert body.json()["timeRange"] == "24h"
    found = by_signal(body)["regeneration_loop"]
    assert (found["value"], found["threshold"], found["status"]) == (3, 3, "watch")

    generate(run, "job_loop")
    found = by_signal(fair_use(run, timeRange="24h"))["regeneration_loop"]
    assert (found["value"], found["status"]) == (4, "flagged")
    assert found["involved"] == [{"id": "job_loop", "count": 4}]
    assert found["firstSeen"] is not None and found["firstSeen"] <= found["lastSeen"]
    assert set(by_signal(fair_use(run, timeRange="1h"))) == {
        "regeneration_loop",
        "criteria_without_scoring",
        "polling_instead_of_webhooks",
        "ignored_retry_after",
        "burst_submission",
    }


def test_other_org_and_environment_see_nothing(run: Running) -> None:
    for _ in range(4):
        generate(run, "job_loop")

    async def keys(engine: Any) -> tuple[str, str]:
        store = KeyStore(engine)
        _, other_org = await store.create("globex", "test", "root")
        _, production = await store.create("acme", "live", "root")
        return other_org, production

    other_org, production = run_with(run.app.settings.database_url, keys, schema=False)
    assert by_signal(fair_use(run, timeRange="24h"))["regeneration_loop"]["status"] == "flagged"
    for key in (other_org, production):
        found = by_signal(fair_use(run, key, timeRange="24h"))["regeneration_loop"]
        assert (found["value"], found["status"], found["involved"]) == (0, "ok", [])


@pytest.mark.parametrize("params", [{}, {"timeRange": "2d"}, {"timeRange": ""}])
def test_time_range_checked_like_scoring_volume(run: Running, params: dict[str, str]) -> None:
    mine = fair_use(run, **params)
    theirs = httpx.get(
        run.url + "/v1/analytics/scoring-volume", headers=run.headers(), params=params
    )
    assert mine.status_code == theirs.status_code == 422
    strip = {"requestId", "request_id"}
    assert {k: v for k, v in mine.json()["error"].items() if k not in strip} == {
        k: v for k, v in theirs.json()["error"].items() if k not in strip
    }
    assert "timeRange" in mine.json()["error"]["message"]


TOKEN = "adm_" + "f" * 40


@pytest.fixture
def provider(database_url: str, tmp_path: Path) -> Iterator[Running]:
    with running(database_url, tmp_path, environ={"TOLLHOUSE_ADMIN_TOKEN": TOKEN}) as r:
        yield r


def admin_fair_use(run: Running, org: str = "acme", **params: str) -> httpx.Response:
    return httpx.get(
        f"{run.url}/v1/admin/orgs/{org}/fair-use",
        headers={"Authorization": f"Bearer {TOKEN}"},
        params=params,
        timeout=30,
    )


def test_the_provider_reads_an_org_s_signals_as_its_keys_do(provider: Running) -> None:
    for _ in range(4):
        generate(provider, "job_loop")
    own = fair_use(provider, timeRange="24h").json()
    theirs = admin_fair_use(provider, environment=ENV, timeRange="24h")
    assert theirs.status_code == 200, theirs.text
    body = theirs.json()
    assert body["org"] == "acme" and body["environment"] == ENV
    assert body["timeRange"] == "24h" and set(body["period"]) == {"start", "end"}
    assert body["signals"] == own["signals"]  # the same function answers both
    assert by_signal(theirs)["regeneration_loop"]["status"] == "flagged"
    # The other environment of the same org: nothing of the sandbox's.
    other = by_signal(admin_fair_use(provider, environment="PRODUCTION", timeRange="24h"))
    assert (other["regeneration_loop"]["value"], other["regeneration_loop"]["status"]) == (0, "ok")


@pytest.mark.parametrize(
    ("org", "params", "status", "code"),
    [
        ("acme", {"timeRange": "24h"}, 400, "BAD_REQUEST"),
        ("acme", {"environment": "sandbox", "timeRange": "24h"}, 400, "BAD_REQUEST"),
        ("acme", {"environment": ENV}, 422, "VALIDATION_FAILED"),
        ("acme", {"environment": ENV, "timeRange": "2d"}, 422, "VALIDATION_FAILED"),
        ("globex", {"environment": ENV, "timeRange": "24h"}, 404, "NOT_FOUND"),
        ("no such org", {"environment": ENV, "timeRange": "24h"}, 404, "NOT_FOUND"),
    ],
)
def test_the_provider_route_checks_its_input(
    provider: Running, org: str, params: dict[str, str], status: int, code: str
) -> None:
    answer = admin_fair_use(provider, org, **params)
    assert answer.status_code == status, answer.text
    assert answer.json()["error"]["code"] == code


def test_the_provider_route_needs_an_admin_token(provider: Running) -> None:
    path = f"{provider.url}/v1/admin/orgs/acme/fair-use"
    params = {"environment": ENV, "timeRange": "24h"}
    nobody = httpx.get(path, params=params, timeout=30)
    assert nobody.status_code == 401
    assert nobody.json()["error"]["code"] == "ADMIN_TOKEN_REQUIRED"
    org_key = httpx.get(path, params=params, headers=provider.headers(), timeout=30)
    assert org_key.status_code == 403
    assert org_key.json()["error"]["code"] == "ADMIN_ONLY"
