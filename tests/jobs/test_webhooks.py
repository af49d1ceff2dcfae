"""Webhooks: signatures checked with the reference `standardwebhooks` package, deliveries
to a real receiver (uvicorn in a thread) that fails, times out, redirects, asks to retry
later and answers 410; the CLI."""

from __future__ import annotations

import asyncio
import base64
import json
import random
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, update
from standardwebhooks import Webhook
from typer.testing import CliRunner

from tests.conftest import serve_in_thread
from tests.jobs.conftest import database, run
from tollhouse.cli.webhooks import app as webhooks_cli
from tollhouse.jobs import NewJob, QueueSettings, open_queue
from tollhouse.jobs.schema import webhook_endpoints
from tollhouse.jobs.webhook_sender import WebhookSender
from tollhouse.jobs.webhook_store import WebhookStore
from tollhouse.jobs.webhooks import SCHEDULE, Delivery, next_delay, signed_headers

FAST = (0.0, 0.05, 0.05, 0.05)
WAIT = 20.0


# --- pure ------------------------------------------------------------------------------


def test_signature_matches_the_reference() -> None:
    secret = "whsec_" + base64.b64encode(b"k" * 32).decode()
    body = b'{"type":"score.completed","data":{"x":1}}'
    ts = int(time.time())
    headers = signed_headers(secret, "msg_1", ts, body)
    ref = Webhook(secret).sign("msg_1", datetime.fromtimestamp(ts, UTC), body.decode())
    assert headers["webhook-signature"] == ref
    assert headers["webhook-id"] == "msg_1" and headers["webhook-timestamp"] == str(ts)
    assert Webhook(secret).verify(body, headers) == json.loads(body)


def test_schedule_and_jitter() -> None:
    rng = random.Random(3)
    for made, base in enumerate(SCHEDULE[1:], start=1):
        delay = next_delay(made, rng=rng)
        assert delay is not None and base * 0.9 <= delay <= base * 1.1
    assert next_delay(len(SCHEDULE), rng=rng) is None
    assert SCHEDULE == (0, 5, 300, 1800, 7200, 18000, 36000, 36000)
    # Retry-After wins when longer, capped at 10 h.
    assert next_delay(1, retry_after=120, rng=rng) == 120
    assert next_delay(1, retry_after=10**9, rng=rng) == 36000


# --- a real receiver -------------------------------------------------------------------


class Receiver:
    """Raw ASGI receiver; behaviour by path. Records every request."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls: dict[str, list[tuple[dict[str, str], bytes]]] = {}

    def count(self, path: str) -> int:
        with self.lock:
            return len(self.calls.get(path, []))

    def requests(self, path: str) -> list[tuple[dict[str, str], bytes]]:
        with self.lock:
            return list(self.calls.get(path, []))

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        path = scope["path"]
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        with self.lock:
            self.calls.setdefault(path, []).append((headers, b"".join(chunks)))
            n = len(self.calls[path])
        status, extra = 200, []
        if path == "/flaky" and n <= 2:
            status = 500
        elif path == "/slow":
            await asyncio.sleep(2)
        elif path == "/gone":
            status = 410
        elif path == "/later":
            status, extra = 503, [(b"retry-after", b"120")]
        elif path == "/redirect":
            status, extra = 302, [(b"location", b"/ok")]
        await send({"type": "http.response.start", "status": status, "headers": extra})
        await send({"type": "http.response.body", "body": b"ok"})


@pytest.fixture(scope="module")
def receiver() -> Iterator[tuple[Receiver, str]]:
    r = Receiver()
    with serve_in_thread(r) as url:  # type: ignore[arg-type]
        yield r, url


async def _finish_job(engine: Any, org: str, ok: bool = True) -> str:
    """Push one job through the queue by hand, so its webhook is staged."""
    queue = open_queue(engine, QueueSettings())
    [e] = await queue.enqueue(
        [NewJob(org=org, route="POST /v1/score", payload={"applicationId": "app_1"})]
    )
    [lease] = await queue.claim("w", 1)
    if ok:
        await queue.complete(lease, {"score": 87})
    else:
        await queue.fail(lease, {"code": "NO", "message": "no"}, retryable=False)
    return e.job.id


async def _until(
    check: Callable[[], Awaitable[list[Delivery]]], done: Callable[[list[Delivery]], bool]
) -> list[Delivery]:
    deadline = time.monotonic() + WAIT
    while True:
        found = await check()
        if done(found) or time.monotonic() > deadline:
            return found
        await asyncio.sleep(0.02)


def _settled(ds: list[Delivery]) -> bool:
    return bool(ds) and all(d.status != "pending" for d in ds)


def test_retries_until_delivered_with_a_stable_id(
    sqlite_url: str, receiver: tuple[Receiver, str]
) -> None:
    rec, base = receiver

    async def body() -> None:
        async with database(sqlite_url) as engine:
            store = WebhookStore(engine, schedule=FAST, allow_private_targets=True)
            _, secret = await store.add_endpoint("acme", base + "/flaky")
            job_id = await _finish_job(engine, "acme")
            sender = WebhookSender(store, timeout=5, poll_interval=0.02)
            await sender.start()
            try:
                [d] = await _until(
                    lambda: store.deliveries("acme", job_id, environment="PRODUCTION"), _settled
                )
            finally:
                await sender.stop()
            assert d.status == "delivered"
            assert [a.status_code for a in d.attempts] == [500, 500, 200]
            assert [a.error for a in d.attempts] == ["HTTP 500", "HTTP 500", None]
            seen = rec.requests("/flaky")
            assert len(seen) == 3
            assert {h["webhook-id"] for h, _ in seen} == {d.message_id}
            for headers, raw in seen:
                event = Webhook(secret).verify(raw, headers)
                assert event["type"] == "score.completed"
                assert event["data"]["scoringJobId"] == job_id
                assert event["data"]["result"] == {"score": 87}
                assert headers["content-type"] == "application/json"

    run(body())


def test_timeouts_are_recorded_then_gives_up(
    sqlite_url: str, receiver: tuple[Receiver, str]
) -> None:
    async def body() -> None:
        async with database(sqlite_url) as engine:
            store = WebhookStore(engine, schedule=(0.0, 0.05), allow_private_targets=True)
            await store.add_endpoint("acme", receiver[1] + "/slow")
            job_id = await _finish_job(engine, "acme", ok=False)
            sender = WebhookSender(store, timeout=0.3, poll_interval=0.02)
            await sender.start()
            try:
                [d] = await _until(
                    lambda: store.deliveries("acme", job_id, environment="PRODUCTION"), _settled
                )
            finally:
                await sender.stop()
            assert d.status == "failed" and d.event_type == "score.failed"
            assert [a.error for a in d.attempts] == ["timed out", "timed out"]
            assert all(a.status_code is None and a.duration_ms >= 250 for a in d.attempts)

    run(body())


def test_finishing_jobs_sees_endpoints_another_process_changed(db_url: str) -> None:
    """A finish reads whether its job's scope has an endpoint in its own transaction (no
    cache): endpoints added, disabled, enabled and removed through another engine (another
    process) count from the next finish, for completions and failures alike; a scope with
    none runs no endpoint lookup, though its org has one in the other environment and
    another org has one in this environment."""

    async def body() -> None:
        async with database(db_url) as worker_engine, database(db_url) as api_engine:
            lookups: list[str] = []

            def seen(_c: Any, _cur: Any, statement: str, *_args: Any) -> None:
                if statement.lstrip().startswith("SELECT") and "webhook_endpoints." in statement:
                    lookups.append(statement)

            event.listen(worker_engine.sync_engine, "before_cursor_execute", seen)
            api = WebhookStore(api_engine, allow_private_targets=True)
            await api.add_endpoint("acme", "http://127.0.0.1:9/sandbox", environment="SANDBOX")
            await api.add_endpoint("other", "http://127.0.0.1:9/other")

            async def staged(ok: bool = True) -> int:
                job_id = await _finish_job(worker_engine, "acme", ok)
                return len(await api.deliveries("acme", job_id, environment="PRODUCTION"))

            assert await staged() == 0
            assert await staged(ok=False) == 0
            assert lookups == []
            endpoint, _ = await api.add_endpoint("acme", "http://127.0.0.1:9/live")
            assert await staged() == 1
            assert await staged(ok=False) == 1
            assert len(lookups) == 2
            for disabled_at, expected in ((datetime.now(UTC), 0), (None, 1)):
                async with api_engine.begin() as conn:
                    await conn.execute(
                        update(webhook_endpoints)
                        .where(webhook_endpoints.c.id == endpoint.id)
                        .values(disabled_at=disabled_at)
                    )
                assert await staged() == expected
            await api.remove_endpoint(endpoint.id)
            assert await staged() == 0
            assert await staged(ok=False) == 0

    run(body())


def test_gone_disables_the_endpoint(sqlite_url: str, receiver: tuple[Receiver, str]) -> None:
    rec, base = receiver

    async def body() -> None:
        async with database(sqlite_url) as engine:
            store = WebhookStore(engine, schedule=FAST, allow_private_targets=True)
            gone, _ = await store.add_endpoint("acme", base + "/gone")
            await store.add_endpoint("acme", base + "/ok")
            before = rec.count("/gone")
            job_id = await _finish_job(engine, "acme")
            sender = WebhookSender(store, timeout=5, poll_interval=0.02)
            await sender.start()
            try:
                ds = await _until(
                    lambda: store.deliveries("acme", job_id, environment="PRODUCTION"), _settled
                )
            finally:
                await sender.stop()
            by_url = {d.url: d for d in ds}
            assert by_url[base + "/gone"].status == "failed"
            assert [a.status_code for a in by_url[base + "/gone"].attempts] == [410]
            assert by_url[base + "/ok"].status == "delivered"
            assert rec.count("/gone") == before + 1
            [disabled] = [e for e in await store.list_endpoints("acme") if e.id == gone.id]
            assert not disabled.enabled and "410" in (disabled.disabled_reason or "")
            # The next event is not even staged for it.
            second = await _finish_job(engine, "acme")
            assert [
                d.url for d in await store.deliveries("acme", second, environment="PRODUCTION")
            ] == [base + "/ok"]

    run(body())


def test_retry_after_and_redirects(sqlite_url: str, receiver: tuple[Receiver, str]) -> None:
    rec, base = receiver

    async def body() -> None:
        async with database(sqlite_url) as engine:
            store = WebhookStore(engine, schedule=FAST, allow_private_targets=True)
            await store.add_endpoint("acme", base + "/later")
            await store.add_endpoint("acme", base + "/redirect")
            ok_before = rec.count("/ok")
            job_id = await _finish_job(engine, "acme")
            sender = WebhookSender(store, timeout=5, poll_interval=0.02)
            await sender.start()
            try:
                ds = await _until(
                    lambda: store.deliveries("acme", job_id, environment="PRODUCTION"),
                    # Attempts and the delivery row are read one after the other: wait
                    # for both to show the attempt's outcome (not the claim's lease hold).
                    lambda found: (
                        len(found) == 2
                        and all(d.attempts for d in found)
                        and all(
                            d.next_attempt_at is None
                            or (d.next_attempt_at - d.attempts[-1].started_at).total_seconds() > 90
                            for d in found
                        )
                    ),
                )
            finally:
                await sender.stop()
            by_url = {d.url: d for d in ds}
            later = by_url[base + "/later"]
            assert later.status == "pending" and [a.status_code for a in later.attempts] == [503]
            assert later.next_attempt_at is not None
            # Measured from the attempt itself, not from now: a loaded machine may take
            # any time between the attempt and this line.
            attempt = later.attempts[0]
            wait = (later.next_attempt_at - attempt.started_at).total_seconds()
            assert 119 < wait <= 121 + attempt.duration_ms / 1000  # Retry-After: 120 wins
            redirect = by_url[base + "/redirect"]
            assert redirect.attempts[0].status_code == 302
            assert "redirects are not followed" in (redirect.attempts[0].error or "")
            assert rec.count("/ok") == ok_before

    run(body())


# --- the CLI ---------------------------------------------------------------------------


def test_cli_add_list_remove(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'cli.db'}"
    cli = CliRunner()
    added = cli.invoke(
        webhooks_cli,
        [
            "add",
            "--org",
            "acme",
            "--url",
            "https://example.test/hook",
            "--json",
            "--database-url",
            db,
        ],
    )
    assert added.exit_code == 0, added.output
    data = json.loads(added.stdout)
    assert data["id"].startswith("we_") and data["url"] == "https://example.test/hook"
    assert data["secret"].startswith("whsec_") and len(base64.b64decode(data["secret"][6:])) == 32
    listed = cli.invoke(webhooks_cli, ["list", "--org", "acme", "--json", "--database-url", db])
    assert listed.exit_code == 0, listed.output
    [row] = json.loads(listed.stdout)
    assert row["id"] == data["id"] and "secret" not in row and row["status"] == "enabled"
    table = cli.invoke(webhooks_cli, ["list", "--database-url", db])
    assert data["id"] in table.stdout and data["secret"] not in table.stdout
    removed = cli.invoke(webhooks_cli, ["remove", data["id"], "--database-url", db])
    assert removed.exit_code == 0, removed.output
    assert (
        json.loads(cli.invoke(webhooks_cli, ["list", "--json", "--database-url", db]).stdout) == []
    )
    again = cli.invoke(webhooks_cli, ["remove", data["id"], "--database-url", db])
    assert again.exit_code == 1
    bad = cli.invoke(
        webhooks_cli, ["add", "--org", "acme", "--url", "ftp://x", "--database-url", db]
    )
    assert bad.exit_code == 2


def test_cli_environment(tmp_path: Path) -> None:
    """``--environment`` picks whose jobs an endpoint receives; PRODUCTION by default, for
    ``add`` and ``list`` alike."""
    db = f"sqlite:///{tmp_path / 'cli.db'}"
    cli = CliRunner()

    def run_json(*args: str) -> Any:
        result = cli.invoke(webhooks_cli, [*args, "--json", "--database-url", db])
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)

    live = run_json("add", "--org", "acme", "--url", "https://example.test/live")
    test = run_json(
        "add", "--org", "acme", "--url", "https://example.test/test", "--environment", "sandbox"
    )
    also_test = run_json(
        "add", "--org", "acme", "--url", "https://example.test/t2", "--environment", "test"
    )
    assert live["environment"] == "PRODUCTION"
    assert test["environment"] == also_test["environment"] == "SANDBOX"
    assert [e["id"] for e in run_json("list")] == [live["id"]]
    assert [e["id"] for e in run_json("list", "--environment", "PRODUCTION")] == [live["id"]]
    listed = run_json("list", "--org", "acme", "--environment", "SANDBOX")
    assert [e["id"] for e in listed] == [test["id"], also_test["id"]]
    table = cli.invoke(webhooks_cli, ["list", "--environment", "SANDBOX", "--database-url", db])
    assert test["id"] in table.stdout and live["id"] not in table.stdout
    bad = cli.invoke(
        webhooks_cli,
        ["add", "--org", "acme", "--url", "https://example.test/x", "--environment", "staging"],
    )
    assert bad.exit_code == 2 and "--environment" in bad.output
