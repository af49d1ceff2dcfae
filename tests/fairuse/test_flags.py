"""What a flag does, from real HTTP traffic against a real server, on SQLite and
PostgreSQL: the catalogue metrics read the recorded flags, the provider's own webhook
endpoints get one signed ``fair_use.flagged`` event per signal, org and window, a
``throttle`` rule sets a bucket override for the flagged environment alone that is lifted
after the window (and nothing else), and ``GET /v1/score?ids=`` counts as one poll."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from sqlalchemy import select

from tests.conftest import serve_in_thread
from tests.fairuse.test_signals_server import (
    DAY,
    FAIR_USE,
    Running,
    generate,
    running,
    submit,
    wait_finished,
)
from tests.jobs.test_webhooks import Receiver
from tests.storage.support import run_with
from tollhouse.client import Client
from tollhouse.fairuse import run_pass
from tollhouse.fairuse.run import ACTOR, PassResult
from tollhouse.fairuse.schema import fair_use_flags
from tollhouse.jobs.schema import webhook_deliveries
from tollhouse.jobs.webhook_store import WebhookStore
from tollhouse.keys.store import KeyStore
from tollhouse.limits.overrides import OverrideStore
from tollhouse.security.audit import audit_log
from tollhouse.webhooks import verify

PROVIDER = "provider"


def fair_use_pass(run: Running, now: float) -> PassResult:
    app = run.app

    async def go() -> PassResult | None:
        await app.meter.flush()
        return await run_pass(
            app.engine,
            app.settings.policy.fair_use,
            now=now,
            tap=app.fair_use_tap,
            webhook_org=app.fair_use.webhook_org,
        )

    result = run.on_server(go)
    assert result is not None
    return result


def generate_paced(run: Running, job_id: str) -> None:
    """A generation within the 5 per second of the built-in policy (waits a 429's
    Retry-After, as a client should)."""
    body = {"jobId": job_id, "title": "Backend Engineer", "description": "Python and SQL."}
    while True:
        resp = httpx.post(run.url + "/v1/criteria/generate", headers=run.headers(), json=body)
        if resp.status_code != 429:
            assert resp.status_code == 200, resp.text
            return
        time.sleep(float(resp.headers["Retry-After"]))


def metric(run: Running, name: str, start: float, end: float, key: str | None = None) -> Any:
    headers = run.headers()
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    params = {"time_start": str(start), "time_end": str(end)}
    resp = httpx.get(f"{run.url}/v1/analytics/{name}", headers=headers, params=params)
    assert resp.status_code == 200, resp.text
    return resp.json()


def add_key(run: Running, org: str, env: str = "test") -> str:
    async def go(engine: Any) -> str:
        _, secret = await KeyStore(engine).create(org, env, "root")
        return secret

    return run_with(run.app.settings.database_url, go, schema=False)


@pytest.fixture
def run(database_url: str, tmp_path: Path) -> Iterator[Running]:
    environ = {"TOLLHOUSE_FAIR_USE_WEBHOOK_ORG": PROVIDER}
    with running(database_url, tmp_path, environ=environ) as r:
        yield r


def test_catalogue_metrics_read_the_recorded_flags(run: Running) -> None:
    t0 = time.time() - 1
    for job in ("job_a", "job_b"):
        for _ in range(3):
            generate_paced(run, job)
    fair_use_pass(run, time.time() + 1)
    for name in ("fair_use_flags", "regeneration_loops"):  # three each: not above 3
        assert metric(run, name, t0, time.time() + 2) == {"type": "empty", "value": {}}

    generate_paced(run, "job_a")
    generate_paced(run, "job_b")
    result = fair_use_pass(run, time.time() + 2)
    assert [r.signal for _, _, r in result.flagged] == ["regeneration_loop"]
    end = time.time() + 3
    table = metric(run, "fair_use_flags", t0, end)
    assert table["type"] == "table"
    assert table["value"]["headings"] == ["Signal", "Action", "Flags", "Involved"]
    assert table["value"]["rows"] == [
        {"Signal": "regeneration_loop", "Action": "flag", "Flags": 1, "Involved": 2}
    ]
    loops = metric(run, "regeneration_loops", t0, end)
    assert loops == {"type": "simple", "value": {"value": 2, "prefix": None, "suffix": " jobs"}}
    # Another org, and the same org's other environment, see none of it.
    for key in (add_key(run, "globex"), add_key(run, "acme", "live")):
        assert metric(run, "regeneration_loops", t0, end, key)["type"] == "empty"
    # A range before the flag sees none of it.
    assert metric(run, "fair_use_flags", t0 - DAY, t0)["type"] == "empty"


def test_each_signal_s_metric_reads_its_own_flags(run: Running) -> None:
    """Four signals flagged in the same range: each signal's metric sums its own
    flags' subjects alone (all of them together would be 9)."""
    t0 = time.time() - 1
    keys = [run.key, add_key(run, "acme"), add_key(run, "acme")]

    def as_key(key: str) -> dict[str, str]:
        return {**run.headers(), "Authorization": f"Bearer {key}"}

    for job in ("job_a", "job_b", "job_c"):  # generated, never scored: 3 jobs
        generate_paced(run, job)
    # One criteria read a day, then 6 more at once: 6 429s, 5 of them retried early.
    reads = run.url + "/v1/jobs/job_r/criteria"
    codes = [httpx.get(reads, headers=run.headers()).status_code for _ in range(7)]
    assert codes[1:] == [429] * 6
    # 4 submissions a day: the first key's fifth and the second key's first are refused
    # (2 of 6, above 0.2): 2 keys. Their 429s are not retried: 5 early of 8 (above 0.5).
    ids = [submit(run, "job_s", f"app_{i}").json()["scoringJobId"] for i in range(4)]
    assert submit(run, "job_s", "app_4").status_code == 429
    second = httpx.post(
        run.url + "/v1/score",
        headers=as_key(keys[1]),
        json={
            "applicationId": "app_5",
            "jobId": "job_s",
            "candidate": {"name": "Ada", "resume": "Python and SQL for 6 years."},
        },
    )
    assert second.status_code == 429, second.text
    wait_finished(run, 4)
    for key in keys:  # 8 polls by each of 3 keys: 24 for 4 jobs finished, above 5
        for job in ids[:2] * 4:
            resp = httpx.get(f"{run.url}/v1/score/{job}", headers=as_key(key))
            assert resp.status_code == 200, resp.text

    now = time.time() + 1
    first = fair_use_pass(run, now)
    assert sorted(r.signal for _, _, r in first.flagged) == [
        "burst_submission",
        "ignored_retry_after",
        "polling_instead_of_webhooks",
    ]
    later = fair_use_pass(run, now + 8 * DAY)  # the generated jobs have reached T
    assert [r.signal for _, _, r in later.flagged] == ["criteria_without_scoring"]

    def simple(value: int, unit: str) -> dict[str, Any]:
        return {"type": "simple", "value": {"value": value, "prefix": None, "suffix": unit}}

    expected = {
        "unscored_criteria_jobs": simple(3, " jobs"),
        "polling_keys": simple(3, " keys"),
        "early_retry_keys": simple(1, " keys"),
        "burst_submission_keys": simple(2, " keys"),
    }
    end = now + 8 * DAY + 1
    for name, answer in expected.items():
        assert metric(run, name, t0, end) == answer, name
    assert metric(run, "regeneration_loops", t0, end)["type"] == "empty"  # once per job
    rows = metric(run, "fair_use_flags", t0, end)["value"]["rows"]
    assert sorted((r["Signal"], r["Flags"], r["Involved"]) for r in rows) == [
        ("burst_submission", 1, 2),
        ("criteria_without_scoring", 1, 3),
        ("ignored_retry_after", 1, 1),
        ("polling_instead_of_webhooks", 1, 3),
    ]
    # Before the later pass's flag: the first pass's three only.
    assert metric(run, "unscored_criteria_jobs", t0, now + 1)["type"] == "empty"
    assert metric(run, "polling_keys", t0, now + 1) == expected["polling_keys"]
    # Another org, and the same org's other environment, see none of it.
    for key in (add_key(run, "globex"), add_key(run, "acme", "live")):
        for name in expected:
            assert metric(run, name, t0, end, key) == {"type": "empty", "value": {}}, name


def test_flagged_event_goes_once_to_the_provider_s_endpoints(run: Running) -> None:
    receiver = Receiver()
    with serve_in_thread(receiver) as hooks:

        async def endpoints(engine: Any) -> tuple[str, str]:
            await KeyStore(engine).create(PROVIDER, "test", "root")
            store = WebhookStore(engine, allow_private_targets=True)
            _, provider = await store.add_endpoint(
                PROVIDER, hooks + "/provider", environment="SANDBOX"
            )
            _, own = await store.add_endpoint("acme", hooks + "/acme", environment="SANDBOX")
            return provider, own

        secret, _ = run_with(run.app.settings.database_url, endpoints, schema=False)
        for _ in range(3):
            generate(run, "job_loop")
        assert fair_use_pass(run, time.time() + 1).notified == 0  # 3 is not above 3

        generate(run, "job_loop")
        first = fair_use_pass(run, time.time() + 2)
        assert (first.notified, first.throttled) == (1, [])
        generate_paced(run, "job_loop")  # still flagged, same window: no second event
        again = fair_use_pass(run, time.time() + 3)
        assert [r.signal for _, _, r in again.flagged] == ["regeneration_loop"]
        assert again.notified == 0

        deadline = time.monotonic() + 30
        while receiver.count("/provider") < 1:
            assert time.monotonic() < deadline, "the event was not delivered"
            time.sleep(0.05)
        headers, body = receiver.requests("/provider")[0]
        event = verify(body, headers, secret)
        assert event["type"] == "fair_use.flagged"
        data = event["data"]
        assert (data["org"], data["environment"], data["signal"]) == (
            "acme",
            "SANDBOX",
            "regeneration_loop",
        )
        assert (data["status"], data["value"], data["threshold"]) == ("flagged", 4, 3)
        assert data["involved"] == [{"id": "job_loop", "count": 4}]
        assert data["window"]["start"] < data["window"]["end"]

    async def staged(engine: Any) -> list[tuple[str, str]]:
        async with engine.connect() as conn:
            rows = await conn.execute(
                select(webhook_deliveries.c.org_id, webhook_deliveries.c.event_type)
            )
            return sorted((o, e) for o, e in rows)

    # One event in all, to the provider's endpoint only (not to the flagged org's own).
    assert run_with(run.app.settings.database_url, staged, schema=False) == [
        (PROVIDER, "fair_use.flagged")
    ]
    assert run_with(run.app.settings.database_url, _overrides, schema=False) == []


async def _overrides(engine: Any) -> list[tuple[str, str, int]]:
    return [(o.org, o.bucket, o.limit) for o in await OverrideStore(engine).list()]


async def _overrides_by_environment(engine: Any) -> list[tuple[str | None, int]]:
    return [(o.environment, o.limit) for o in await OverrideStore(engine).list()]


THROTTLE = FAIR_USE.replace(
    """signal = "regeneration_loop"
threshold = 3
window = "24h"
""",
    """signal = "regeneration_loop"
threshold = 3
window = "24h"
action = "throttle"
bucket = "submissions_per_day"
limit = 1
""",
)


@pytest.fixture
def throttling(database_url: str, tmp_path: Path) -> Iterator[Running]:
    assert THROTTLE != FAIR_USE
    with running(database_url, tmp_path, THROTTLE) as r:
        yield r


def test_throttle_sets_an_override_until_the_window_ends(throttling: Running) -> None:
    run = throttling
    url = run.app.settings.database_url
    for _ in range(3):
        generate(run, "job_t")
    assert fair_use_pass(run, time.time() + 1).throttled == []  # not flagged: no override
    assert run_with(url, _overrides, schema=False) == []
    assert [submit(run, "job_t", f"app_{i}").status_code for i in range(2)] == [202, 202]

    generate(run, "job_t")
    now = time.time() + 2
    result = fair_use_pass(run, now)
    assert result.throttled == [("acme", "SANDBOX", "submissions_per_day")]
    assert run_with(url, _overrides, schema=False) == [("acme", "submissions_per_day", 1)]
    # The flagged traffic was the sandbox key's: the override is SANDBOX's alone.
    assert run_with(url, _overrides_by_environment, schema=False) == [("SANDBOX", 1)]
    run.on_server(run.app.overrides.refresh)
    # Two of four were used; the override's limit of one refuses the third.
    assert submit(run, "job_t", "app_3").status_code == 429
    # The same org's production keys keep the policy's limit.
    sandbox_key, run.key = run.key, add_key(run, "acme", "live")
    generate(run, "job_p")
    answers = [submit(run, "job_p", f"app_p{i}") for i in range(2)]
    assert [a.status_code for a in answers] == [202, 202]
    run.key = sandbox_key
    assert fair_use_pass(run, now + 1).throttled == []  # once per window

    async def until(engine: Any) -> int:
        async with engine.connect() as conn:
            f = fair_use_flags.c
            found = await conn.execute(
                select(f.throttle_until_us).where(f.throttle_until_us.is_not(None))
            )
            return int(found.scalar_one())

    ends = run_with(url, until, schema=False) / 1_000_000
    assert now < ends <= now + DAY
    assert fair_use_pass(run, ends - 1).lifted == []
    lifted = fair_use_pass(run, ends + 1)
    assert lifted.lifted == [("acme", "SANDBOX", "submissions_per_day")]
    assert run_with(url, _overrides, schema=False) == []
    run.on_server(run.app.overrides.refresh)
    assert submit(run, "job_t", "app_4").status_code == 202


@pytest.mark.parametrize("environment", [None, "SANDBOX"])
def test_throttle_leaves_an_operator_s_override_alone(
    throttling: Running, environment: str | None
) -> None:
    """The operator's override for the flagged environment, or for every environment."""
    run = throttling
    url = run.app.settings.database_url

    async def operator(engine: Any) -> None:
        await OverrideStore(engine).set(
            "acme", "submissions_per_day", 3, environment=environment, actor="ops"
        )

    run_with(url, operator, schema=False)
    for _ in range(4):
        generate(run, "job_o")
    now = time.time() + 1
    result = fair_use_pass(run, now)
    assert [r.signal for _, _, r in result.flagged] == ["regeneration_loop"]
    assert result.throttled == []
    assert fair_use_pass(run, now + 2 * DAY).lifted == []
    assert run_with(url, _overrides, schema=False) == [("acme", "submissions_per_day", 3)]


def test_throttle_beside_an_override_of_the_other_environment(throttling: Running) -> None:
    """An operator's PRODUCTION override does not stop a SANDBOX throttle, and the lift
    removes the throttle's row alone."""
    run = throttling
    url = run.app.settings.database_url

    async def operator(engine: Any) -> None:
        await OverrideStore(engine).set(
            "acme", "submissions_per_day", 3, environment="PRODUCTION", actor="ops"
        )

    run_with(url, operator, schema=False)
    for _ in range(4):
        generate(run, "job_e")
    now = time.time() + 1
    assert fair_use_pass(run, now).throttled == [("acme", "SANDBOX", "submissions_per_day")]
    both = [("PRODUCTION", 3), ("SANDBOX", 1)]
    assert run_with(url, _overrides_by_environment, schema=False) == both

    async def audited(engine: Any) -> list[tuple[str, str | None]]:
        async with engine.connect() as conn:
            a = audit_log.c
            rows = await conn.execute(
                select(a.action, a.details).where(a.actor == ACTOR).order_by(a.at)
            )
            return [(r.action, orjson.loads(r.details)["environment"]) for r in rows]

    assert run_with(url, audited, schema=False) == [("limit.set", "SANDBOX")]
    assert fair_use_pass(run, now + 2 * DAY).lifted == [("acme", "SANDBOX", "submissions_per_day")]
    assert run_with(url, _overrides_by_environment, schema=False) == [("PRODUCTION", 3)]
    assert run_with(url, audited, schema=False) == [
        ("limit.set", "SANDBOX"),
        ("limit.cleared", "SANDBOX"),
    ]


@pytest.fixture
def many(database_url: str, tmp_path: Path) -> Iterator[Running]:
    policy = FAIR_USE.replace("limit = 4\n", "limit = 1000\n", 1)
    with running(database_url, tmp_path, policy) as r:
        yield r


def test_a_poll_of_many_jobs_counts_once(many: Running) -> None:
    run = many
    generate(run, "job_m")
    ids = [submit(run, "job_m", f"app_{i}").json()["scoringJobId"] for i in range(2)]
    wait_finished(run, 2)
    poll = run.url + "/v1/score"
    for _ in range(10):  # 10 polls of 2 jobs: 5 per job, not above 5
        resp = httpx.get(poll, headers=run.headers(), params={"ids": ",".join(ids)})
        assert resp.status_code == 200, resp.text
    found = run.signals()["polling_instead_of_webhooks"]
    assert (found.value, found.status, found.detail["polls"]) == (5, "watch", 10)

    httpx.get(poll, headers=run.headers(), params={"ids": ",".join(ids)})
    found = run.signals()["polling_instead_of_webhooks"]
    assert (found.value, found.status) == (5.5, "flagged")


def test_the_sdk_s_bulk_polling_raises_no_flag(many: Running) -> None:
    run = many
    generate(run, "job_sdk")
    candidates = [
        {
            "jobId": "job_sdk",
            "applicationId": f"app_{i}",
            "candidate": {"name": "Ada", "resume": "Python and SQL for 6 years."},
        }
        for i in range(150)
    ]
    with Client(run.key, run.url, tenant_id="acme") as client:
        outcomes = list(client.score_many(candidates))
    assert len(outcomes) == 150 and {o.status for o in outcomes} == {"completed"}
    found = run.signals()["polling_instead_of_webhooks"]
    assert found.status == "ok", found
    assert 1 <= found.detail["polls"] < 150  # polled, 100 jobs a request
    assert orjson.dumps(found.to_json())  # serialisable as the route shows it
