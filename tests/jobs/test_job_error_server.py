"""A job whose handler raises never shows the exception's text, with real processes: a
`tollhouse serve` (on SQLite and on PostgreSQL) whose `POST /v1/score` runs a handler
that raises an exception naming internals and echoing the caller's data. After its
retries the job is `failed` with the documented `HANDLER_ERROR`, in `GET /v1/score/{id}`
and in the signed `score.failed` webhook a real receiver gets; the text is in the
server's log only."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest
from standardwebhooks import Webhook

from tests.conftest import ALLOW_PRIVATE_TARGETS, serve_in_thread, start_server, stop_server
from tests.faults.support import wait_until
from tests.ops.test_instances import Receiver
from tollhouse.jobs.worker import HANDLER_ERROR
from tollhouse.keys.store import KeyStore
from tollhouse.schema import create_schema
from tollhouse.storage.engine import make_engine

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

POLICY = """\
[[async_routes]]
route = "POST /v1/score"
concurrency = 10
handler = "tests.jobs.handlers:explode"
"""

BODY = {
    "applicationId": "app_secret_7",
    "jobId": "job_1",
    "candidate": {"name": "A", "resume": "Python services on PostgreSQL since 2016."},
}
#: What the handler's exception says; none of it may reach the API or the webhook.
LEAKS = ("boom", "/srv/internal", "scorer.py", "RuntimeError", "Traceback")


async def _key(database_url: str) -> str:
    engine = make_engine(database_url)
    try:
        await create_schema(engine)
        _, secret = await KeyStore(engine).create("acme", "test", "root")
    finally:
        await engine.dispose()
    return secret


def test_a_raising_handler_fails_the_job_with_the_documented_code_only(
    tmp_path: Path, db_url: str
) -> None:
    config = tmp_path / "policy.toml"
    config.write_text(POLICY)
    headers = {"Authorization": f"Bearer {asyncio.run(_key(db_url))}"}
    receiver = Receiver()
    with serve_in_thread(receiver) as hook_url:  # type: ignore[arg-type]
        server = start_server(
            tmp_path,
            config,
            env={"TOLLHOUSE_DATABASE_URL": db_url, **ALLOW_PRIVATE_TARGETS},
        )
        try:
            with httpx.Client(base_url=server.url, headers=headers, timeout=10) as client:
                added = client.post("/v1/webhooks/endpoints", json={"url": hook_url + "/hook"})
                assert added.status_code == 201, added.text
                secret = added.json()["secret"]
                submitted = client.post("/v1/score", json=BODY)
                assert submitted.status_code == 202, submitted.text
                job_id = submitted.json()["scoringJobId"]
                seen: list[dict[str, Any]] = []

                def failed() -> bool:
                    r = client.get(f"/v1/score/{job_id}")
                    assert r.status_code == 200, r.text
                    seen.append(r.json())
                    return bool(r.json()["status"] == "failed")

                # Five attempts with backoff (1 s base, doubling): up to about 15 s.
                wait_until(failed, "the job failing", timeout=60)
                wait_until(lambda: bool(receiver.received()), "the score.failed webhook")
        finally:
            stop_server(server)
    job = seen[-1]
    assert job["error"] == HANDLER_ERROR, job
    assert job["attempts"] == 5, job
    # While it waited to retry, its lastError was the same code.
    retrying = [s["lastError"] for s in seen if s.get("lastError")]
    assert retrying and all(e == HANDLER_ERROR for e in retrying), retrying
    [(hook_headers, payload)] = receiver.received() or []
    event = Webhook(secret).verify(payload, hook_headers)
    assert event["type"] == "score.failed"
    assert event["data"]["scoringJobId"] == job_id
    assert event["data"]["error"] == HANDLER_ERROR
    shown = str(seen) + payload.decode()
    assert not [leak for leak in LEAKS if leak in shown], shown
    # The exception's text is the operator's, in the log with the job's id.
    log = server.output()
    assert "boom in /srv/internal/scorer.py for app_secret_7" in log and job_id in log
