"""What the self-serve API changes in the webhook store, on SQLite and PostgreSQL with an
injected clock: a rotated secret signs beside the new one until its overlap ends (checked
with the ``standardwebhooks`` package), event-type filters choose what is staged, and the
SSRF guard refuses a private target over HTTP."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import standardwebhooks

from tests.conftest import serve_in_thread, sqlite_key
from tests.jobs.conftest import FakeClock, run
from tollhouse.http.app import Tollhouse
from tollhouse.jobs.outbox import stage_events
from tollhouse.jobs.webhook_store import WebhookStore
from tollhouse.jobs.webhooks import EndpointChanges, signed_headers
from tollhouse.schema import create_schema
from tollhouse.settings import load_settings
from tollhouse.storage.engine import make_engine
from tollhouse.storage.transactions import write_transaction


def _verifies(secret: str, headers: dict[str, str], body: bytes) -> bool:
    try:
        standardwebhooks.Webhook(secret).verify(body, headers)
    except standardwebhooks.WebhookVerificationError:
        return False
    return True


def test_the_old_secret_signs_only_during_the_overlap(db_url: str) -> None:
    async def body() -> None:
        engine = make_engine(db_url)
        try:
            await create_schema(engine)
            # Two hours ago: the rotation's one-hour overlap has ended by the real now,
            # which standardwebhooks checks the timestamps against.
            clock = FakeClock(datetime.now(UTC) - timedelta(hours=2))
            store = WebhookStore(engine, clock=clock, allow_private_targets=True)
            endpoint, old = await store.add_endpoint(
                "acme", "http://127.0.0.1:9/h", environment="SANDBOX"
            )
            scope = {"org": "acme", "environment": "SANDBOX", "actor": "key_test"}
            rotated = await store.rotate_secret(endpoint.id, timedelta(hours=1), **scope)
            assert rotated is not None
            updated, new = rotated
            assert updated.previous_secret_expires_at == clock.now + timedelta(hours=1)

            def signed(task_secret: str, previous: str | None, payload: bytes) -> dict[str, str]:
                return signed_headers(task_secret, "msg_1", int(time.time()), payload, previous)

            clock.advance(60)
            during = await store.ping(endpoint.id, **scope)
            assert during is not None and during.previous_secret == old
            headers = signed(during.secret, during.previous_secret, during.body)
            assert _verifies(new, headers, during.body) and _verifies(old, headers, during.body)

            # Queued events are signed with both too (the sender's claim).
            async with write_transaction(engine, "test") as conn:
                await stage_events(
                    conn, [("acme", "SANDBOX", None, "score.completed", {})], clock()
                )
            [claimed] = [t for t in await store.claim(10) if t.id != during.id]
            assert claimed.previous_secret == old

            clock.now = datetime.now(UTC)
            after = await store.ping(endpoint.id, **scope)
            assert after is not None and after.previous_secret is None
            headers = signed(after.secret, after.previous_secret, after.body)
            assert _verifies(new, headers, after.body)
            assert not _verifies(old, headers, after.body)
        finally:
            await engine.dispose()

    run(body())


def test_event_type_filters_choose_what_is_staged(db_url: str) -> None:
    async def body() -> None:
        engine = make_engine(db_url)
        try:
            await create_schema(engine)
            clock = FakeClock()
            store = WebhookStore(engine, clock=clock, allow_private_targets=True)
            failed_only, _ = await store.add_endpoint(
                "acme", "http://127.0.0.1:9/a", environment="SANDBOX", event_types=("score.failed",)
            )
            every, _ = await store.add_endpoint(
                "acme", "http://127.0.0.1:9/b", environment="SANDBOX"
            )
            events = [
                ("acme", "SANDBOX", "job_1", "score.completed", {}),
                ("acme", "SANDBOX", "job_2", "score.failed", {}),
            ]
            async with write_transaction(engine, "test") as conn:
                assert await stage_events(conn, events, clock()) == 3
            staged = await store.deliveries("acme", environment="SANDBOX")
            got = sorted((d.endpoint_id, d.event_type) for d in staged)
            assert got == sorted(
                [
                    (failed_only.id, "score.failed"),
                    (every.id, "score.completed"),
                    (every.id, "score.failed"),
                ]
            )
            # Clearing the filter sends every type again.
            changed = await store.update_endpoint(
                failed_only.id,
                EndpointChanges(event_types=None),
                org="acme",
                environment="SANDBOX",
                actor="key_test",
            )
            assert changed is not None and changed.event_types is None
            async with write_transaction(engine, "test") as conn:
                assert await stage_events(conn, events[:1], clock()) == 2
        finally:
            await engine.dispose()

    run(body())


def test_a_private_target_is_refused_with_the_guards_message(tmp_path: Path) -> None:
    db = tmp_path / "guard.db"
    key = sqlite_key(db)
    app = Tollhouse(settings=load_settings(environ={"TOLLHOUSE_DATABASE_URL": f"sqlite:///{db}"}))
    with serve_in_thread(app) as url:
        answer = httpx.post(
            url + "/v1/webhooks/endpoints",
            json={"url": "http://127.0.0.1:9/hook"},
            headers={"X-API-Key": key},
            timeout=10,
        )
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["code"] == "BAD_REQUEST" and "127.0.0.1" in error["message"]


@pytest.mark.parametrize("value", [[], ["a b"], ["x" * 65], "score.completed", [1]])
def test_event_type_filters_are_checked(value: object) -> None:
    from tollhouse.jobs.webhooks import check_event_types

    with pytest.raises(ValueError, match="eventTypes"):
        check_event_types(value)
    assert check_event_types(["score.failed", "score.failed"]) == ("score.failed",)
