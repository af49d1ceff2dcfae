"""`GET /metrics`: counters read at scrape time, no org or key labels, optional token;
job durations, webhook attempts and queue depth from a real server."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.conftest import serve_in_thread
from tests.ops.support import samples, value, wait_for
from tollhouse import Tollhouse
from tollhouse.jobs import create_job_schema
from tollhouse.jobs.webhook_store import WebhookStore
from tollhouse.keys.store import KeyStore
from tollhouse.ops.metrics import DurationHistogram
from tollhouse.schema import create_schema
from tollhouse.settings import load_settings
from tollhouse.storage.engine import make_engine

POLICY = """
[storage]
database_url = "sqlite:///{db}"

[[buckets]]
name = "small"
limit = 2
window = "3650d"
routes = ["GET /v1/thing/{{id}}"]

[[endpoint_groups]]
key = "THINGS"
description = "things"
routes = ["GET /v1/thing/*"]
"""


async def _thing(request: Request) -> JSONResponse:
    return JSONResponse({"id": request.path_params["id"]})


INNER = Starlette(routes=[Route("/v1/thing/{id}", _thing)])


def _key(db: Path, org: str) -> str:
    async def make() -> str:
        engine = make_engine(f"sqlite:///{db}")
        await create_schema(engine)
        _, secret = await KeyStore(engine).create(org, "test", "root")
        await engine.dispose()
        return secret

    return asyncio.run(make())


@pytest.fixture
def policy(tmp_path: Path) -> Path:
    config = tmp_path / "tollhouse.toml"
    config.write_text(POLICY.format(db=tmp_path / "t.db"))
    return config


def test_counts_requests_and_decisions_without_org_labels(tmp_path: Path, policy: Path) -> None:
    secret = _key(tmp_path / "t.db", "org-secretive-customer")
    app = Tollhouse(INNER, config=policy)
    auth = {"Authorization": f"Bearer {secret}"}
    with serve_in_thread(app) as url:
        before = httpx.get(url + "/metrics")
        assert before.status_code == 200
        assert before.headers["content-type"].startswith("text/plain")
        codes = [httpx.get(url + "/v1/thing/1", headers=auth).status_code for _ in range(3)]
        codes.append(httpx.get(url + "/v1/thing/1").status_code)  # no key
        assert codes == [200, 200, 429, 401]
        text = httpx.get(url + "/metrics").text
    found = samples(text)
    assert (
        value(found, "tollhouse_requests_total", endpoint_group="THINGS", status_class="2xx") == 2
    )
    assert (
        value(found, "tollhouse_requests_total", endpoint_group="THINGS", status_class="4xx") == 2
    )
    assert value(found, "tollhouse_limit_decisions_total", bucket="small", outcome="allowed") == 2
    assert value(found, "tollhouse_limit_decisions_total", bucket="small", outcome="denied") == 1
    assert value(found, "tollhouse_limits_degraded") == 0
    assert value(found, "tollhouse_meter_recorded_calls_total") == 3
    # /metrics itself passes no bucket and is not counted as a request.
    assert sum(v for (name, _), v in found.items() if name == "tollhouse_requests_total") == 4
    # No org, key or tenant anywhere: neither as a label name nor as a value.
    labels = {k for (_, pairs) in found for k, _ in pairs}
    assert labels <= {"endpoint_group", "status_class", "bucket", "outcome", "state", "le", "kind"}
    assert "secretive" not in text
    assert secret not in text


def test_forward_auth_calls_without_an_access_log_count_as_status_unknown(
    tmp_path: Path,
) -> None:
    config = tmp_path / "tollhouse.toml"
    trusted = '[proxy]\ntrusted_proxies = ["127.0.0.1/32"]\n'
    config.write_text(trusted + POLICY.format(db=tmp_path / "t.db"))
    secret = _key(tmp_path / "t.db", "acme")
    with serve_in_thread(Tollhouse(INNER, config=config)) as url:
        # Asked as a proxy would: admitted, and without an access log its status stays
        # unknown; a refusal counts under its own status.
        headers = {"X-Original-URI": "/v1/thing/1", "X-Original-Method": "GET"}
        asked = [
            httpx.get(url + "/v1/platform/authorize", headers={**headers, **auth}).status_code
            for auth in ({"Authorization": f"Bearer {secret}"}, {})
        ]
        assert asked == [200, 401]
        found = samples(httpx.get(url + "/metrics").text)
    requests = {
        dict(pairs)["status_class"]: n
        for (name, pairs), n in found.items()
        if name == "tollhouse_requests_total" and dict(pairs)["endpoint_group"] == "THINGS"
    }
    assert requests == {"unknown": 1, "4xx": 1}


def test_metrics_token_is_required_when_set(tmp_path: Path, policy: Path) -> None:
    settings = load_settings(policy, environ={"TOLLHOUSE_METRICS_TOKEN": "scrape-me"})
    with serve_in_thread(Tollhouse(INNER, settings=settings)) as url:
        refused = httpx.get(url + "/metrics")
        wrong = httpx.get(url + "/metrics", headers={"Authorization": "Bearer nope"})
        ok = httpx.get(url + "/metrics", headers={"Authorization": "Bearer scrape-me"})
        posted = httpx.post(url + "/metrics", headers={"Authorization": "Bearer scrape-me"})
        ready = httpx.get(url + "/readyz")  # readiness never needs the token
    assert refused.status_code == wrong.status_code == 401
    assert refused.json()["error"]["code"] == "UNAUTHORIZED"
    assert "TOLLHOUSE_METRICS_TOKEN" in refused.json()["error"]["message"]
    assert ok.status_code == 200
    assert "tollhouse_requests_total" in ok.text
    assert posted.status_code == 405
    assert ready.status_code == 200


def _receiver(received: list[dict[str, Any]]) -> Starlette:
    async def hook(request: Request) -> Response:
        received.append(json.loads(await request.body()))
        return Response(status_code=204)

    return Starlette(routes=[Route("/hook", hook, methods=["POST"])])


def test_jobs_webhooks_and_queue_depth(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    environ = {"TOLLHOUSE_DATABASE_URL": f"sqlite:///{db}", "TOLLHOUSE_ALLOW_PRIVATE_TARGETS": "1"}
    secret = _key(db, "acme")
    headers = {"Authorization": f"Bearer {secret}", "X-Tenant-Id": "t1"}
    received: list[dict[str, Any]] = []
    body = {"applicationId": "app_1", "jobId": "job_1", "candidate": {"name": "A", "resume": "x"}}
    with serve_in_thread(_receiver(received)) as hooks:

        async def add_hook() -> None:
            engine = make_engine(f"sqlite:///{db}")
            await create_job_schema(engine)
            await WebhookStore(engine, allow_private_targets=True).add_endpoint(
                "acme",
                hooks + "/hook",
                environment="SANDBOX",  # the key's: sk_test_
            )
            await engine.dispose()

        asyncio.run(add_hook())
        app = Tollhouse(settings=load_settings(environ=environ))
        with serve_in_thread(app) as url:
            r = httpx.post(url + "/v1/score", headers=headers, json=body)
            assert r.status_code == 202

            def attempted() -> dict[Any, float] | None:
                found = samples(httpx.get(url + "/metrics").text)
                sent = value(found, "tollhouse_webhook_attempts_total", outcome="delivered")
                return found if sent >= 1 and received else None

            found = wait_for(attempted, "a delivered webhook in /metrics")
    finished = [
        labels
        for (name, labels), v in found.items()
        if name == "tollhouse_job_duration_seconds_count" and v >= 1
    ]
    assert len(finished) == 1  # one attempt, under its outcome
    assert value(found, "tollhouse_webhook_attempts_total", outcome="delivered") == len(received)

    # Without embedded workers the jobs stay queued: the depth says so.
    idle = Tollhouse(settings=load_settings(environ={**environ, "TOLLHOUSE_EMBEDDED_WORKERS": "0"}))
    with serve_in_thread(idle) as url:
        for i in range(3):
            body["applicationId"] = f"app_q{i}"
            assert httpx.post(url + "/v1/score", headers=headers, json=body).status_code == 202
        found = samples(httpx.get(url + "/metrics").text)
    assert value(found, "tollhouse_queue_jobs", state="queued") == 3
    assert value(found, "tollhouse_queue_jobs", state="running") == 0


def test_duration_histogram_is_cumulative() -> None:
    hist = DurationHistogram((0.1, 1.0))
    for seconds in (0.05, 0.1, 0.5, 3.0):
        hist.observe("completed", seconds)
    hist.observe("failed", 2.0)
    family = hist.family("t_seconds", "test", "outcome")
    got = {(s.name, s.labels.get("le"), s.labels["outcome"]): s.value for s in family.samples}
    assert got[("t_seconds_bucket", "0.1", "completed")] == 2  # le is inclusive
    assert got[("t_seconds_bucket", "1.0", "completed")] == 3
    assert got[("t_seconds_bucket", "+Inf", "completed")] == 4
    assert got[("t_seconds_count", None, "completed")] == 4
    assert got[("t_seconds_sum", None, "completed")] == pytest.approx(3.65)
    assert got[("t_seconds_bucket", "1.0", "failed")] == 0
    assert got[("t_seconds_bucket", "+Inf", "failed")] == 1
