"""The dispatcher and handlers: refills, graceful stop, lost leases, retries, upstream mapping."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import orjson
import pytest

from tests.conftest import free_port, serve_in_thread
from tests.jobs.conftest import FakeClock, database, run
from tollhouse.errors import ConfigError
from tollhouse.jobs import Dispatcher, Job, NewJob, QueueSettings, open_queue
from tollhouse.jobs.handlers import FunctionHandler, UpstreamHandler, import_function
from tollhouse.jobs.model import JobFailed, JobRetry
from tollhouse.jobs.queue import JobQueue
from tollhouse.jobs.worker import HANDLER_ERROR

WAIT = 10.0


async def until(check: Callable[[], Any], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not await check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


async def _state(queue: JobQueue, job_id: str) -> str:
    job = await queue.get("acme", job_id, environment="PRODUCTION")
    assert job is not None
    return job.state


def test_graceful_stop_finishes_or_releases(sqlite_url: str) -> None:
    release = asyncio.Event()

    async def handler(job: Job) -> dict[str, Any]:
        if job.payload["slow"]:
            await asyncio.Event().wait()  # never finishes on its own
        await release.wait()
        return {"done": True}

    async def body() -> None:
        async with database(sqlite_url) as engine:
            queue = open_queue(engine, QueueSettings())
            quick, slow = await queue.enqueue(
                [
                    NewJob(org="acme", route="POST /v1/score", payload={"slow": False}),
                    NewJob(org="acme", route="POST /v1/score", payload={"slow": True}),
                ]
            )
            d = Dispatcher(queue, handler, slots=5, poll_interval=0.02)
            await d.start()
            await until(lambda: _true(d.active == 2), "both running")
            stopping = asyncio.ensure_future(d.stop(grace=1.0))
            await asyncio.sleep(0.05)
            release.set()  # the quick one finishes inside the grace period
            await stopping
            assert await _state(queue, quick.job.id) == "completed"
            back = await queue.get("acme", slow.job.id, environment="PRODUCTION")
            assert back is not None and back.state == "queued" and back.attempts == 0
            [c] = await queue.counters()
            assert (c.running, c.queued) == (0, 1)

    run(body())


async def _true(value: bool) -> bool:
    return value


def test_lost_lease_cancels_the_handler(sqlite_url: str) -> None:
    clock = FakeClock()
    cancelled = asyncio.Event()

    async def handler(job: Job) -> dict[str, Any]:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return {}

    async def body() -> None:
        async with database(sqlite_url) as engine:
            queue = open_queue(engine, QueueSettings(lease_seconds=10), clock=clock)
            [e] = await queue.enqueue([NewJob(org="acme", route="POST /v1/score", payload={})])
            d = Dispatcher(
                queue, handler, poll_interval=0.02, heartbeat_interval=0.02, reap_interval=3600
            )
            await d.start()
            await until(lambda: _true(d.active == 1), "running")
            clock.advance(11)  # the heartbeats stall (fake time), the lease runs out
            assert await queue.reap() == 1
            await asyncio.wait_for(cancelled.wait(), WAIT)
            await until(lambda: _true(d.active == 0), "slot freed")
            await d.stop()
            assert await _state(queue, e.job.id) == "queued"

    run(body())


def test_failures_retry_then_die(sqlite_url: str, caplog: pytest.LogCaptureFixture) -> None:
    calls: list[int] = []

    async def handler(job: Job) -> dict[str, Any]:
        calls.append(job.attempts)
        if job.payload["kind"] == "bad":
            raise JobFailed("bad input", "BAD_INPUT", field="x")
        raise RuntimeError("boom: /srv/app/secret.py line 3")

    async def body() -> None:
        async with database(sqlite_url) as engine:
            settings = QueueSettings(
                max_attempts=3, retry_base_seconds=0.01, retry_max_seconds=0.02
            )
            queue = open_queue(engine, settings)
            boom, bad = await queue.enqueue(
                [
                    NewJob(org="acme", route="POST /v1/score", payload={"kind": "boom"}),
                    NewJob(org="acme", route="POST /v1/score", payload={"kind": "bad"}),
                ]
            )
            d = Dispatcher(queue, handler, poll_interval=0.01)
            await d.start()
            try:
                await until(lambda: _both_done(queue, boom.job.id, bad.job.id), "both terminal")
            finally:
                await d.stop()
            dead = await queue.get("acme", boom.job.id, environment="PRODUCTION")
            assert dead is not None and dead.state == "dead" and dead.attempts == 3
            # Finding 2: a job's error never carries a Python exception's text; the log
            # does, with the job's id.
            assert dead.error == HANDLER_ERROR
            assert "boom" not in str(dead.error) and "RuntimeError" not in str(dead.error)
            logged = [r for r in caplog.records if r.getMessage() == "job handler failed"]
            assert logged and all(getattr(r, "job", None) == boom.job.id for r in logged)
            assert logged[0].exc_info is not None and "boom" in str(logged[0].exc_info[1])
            failed = await queue.get("acme", bad.job.id, environment="PRODUCTION")
            assert failed is not None and failed.state == "failed" and failed.attempts == 1
            assert failed.error == {"code": "BAD_INPUT", "message": "bad input", "field": "x"}

    run(body())


async def _both_done(queue: JobQueue, *ids: str) -> bool:
    for job_id in ids:
        job = await queue.get("acme", job_id, environment="PRODUCTION")
        if job is None or not job.terminal:
            return False
    return True


def test_finishing_jobs_refill_every_slot_they_free(db_url: str) -> None:
    """The transaction that writes outcomes claims as many jobs as it frees slots, at
    once: the claim loop only polls (once an hour here) and nothing wakes it, so a slot
    left to it would stay empty. The org's cap equals the slots, so the claim fits only
    because the finished jobs left the org's running count in that same transaction."""
    slots = 4
    started: list[str] = []
    gates: dict[str, asyncio.Event] = {}
    held = True  # handlers wait for their gate
    inside = 0
    peak = 0

    async def handler(job: Job) -> dict[str, Any]:
        nonlocal inside, peak
        started.append(job.id)
        inside += 1
        peak = max(peak, inside)
        try:
            if held:
                await gates.setdefault(job.id, asyncio.Event()).wait()
        finally:
            inside -= 1
        return {"ok": True}

    def open_gates(ids: list[str]) -> None:
        for job_id in ids:
            gates.setdefault(job_id, asyncio.Event()).set()

    async def body() -> None:
        nonlocal held
        async with database(db_url) as engine:
            queue = open_queue(engine, QueueSettings(default_cap=slots))
            queued = await queue.enqueue(
                [NewJob(org="acme", route="POST /v1/score", payload={}) for _ in range(3 * slots)]
            )
            ids = [e.job.id for e in queued]
            d = Dispatcher(queue, handler, slots=slots, poll_interval=3600, listen=False)
            await d.start()
            try:
                await until(lambda: _true(len(started) == slots), "the first claim")
                # One job ends: its transaction claims the next one.
                open_gates(started[:1])
                await until(lambda: _true(len(started) == slots + 1), "its slot refilled")
                # The rest of the first round ends together: every slot is refilled.
                open_gates(started[1:slots])
                await until(lambda: _true(len(started) == 2 * slots), "the round's slots refilled")
                [counters] = await queue.counters()
                assert inside == counters.running == slots
                # The rest runs through, never past the cap.
                held = False
                open_gates(started)
                await until(lambda: _both_done(queue, *ids), "every job completed")
            finally:
                held = False
                open_gates(ids)
                await d.stop()
            assert started == ids  # each once, oldest first
            assert peak == slots
            [counters] = await queue.counters()
            assert (counters.running, counters.queued) == (0, 0)

    run(body())


def test_function_handlers() -> None:
    fn = import_function("tests.jobs.handlers:echo")
    job = Job(
        id="sj_1",
        seq=1,
        org="acme",
        route="POST /v1/score",
        payload={"a": 1},
        state="running",
        attempts=1,
        max_attempts=5,
        created_at=FakeClock().now,
        run_after=FakeClock().now,
    )
    assert run(FunctionHandler(fn)(job)) == {"echo": {"a": 1}}
    for spec in ("tests.jobs.handlers:not_async", "tests.jobs.nope:x", "no_colon"):
        with pytest.raises(ConfigError):
            import_function(spec)


def _job(**kw: Any) -> Job:
    now = FakeClock().now
    base: dict[str, Any] = {
        "id": "sj_1",
        "seq": 1,
        "org": "acme",
        "route": "POST /v1/score",
        "payload": {"applicationId": "a"},
        "state": "running",
        "attempts": 1,
        "max_attempts": 5,
        "created_at": now,
        "run_after": now,
        "tenant": "t-1",
        "environment": "SANDBOX",
        "request_id": "req_1",
    }
    base.update(kw)
    return Job(**base)


class _ScriptedUpstream:
    """A real upstream (served by uvicorn) answering by the job body's ``kind``."""

    ANSWERS: dict[str, tuple[int, bytes, bytes]] = {
        "ok": (200, b"application/json", b'{"score": 9}'),
        "busy": (503, b"application/json", b'{"error": {"code": "BUSY", "message": "later"}}'),
        "bad": (
            422,
            b"application/json",
            b'{"error": {"code": "VALIDATION_FAILED", "message": "x"}}',
        ),
        "html": (200, b"text/html", b"<html>"),
        # Deeper than a job's result can be stored (orjson writes 254 levels at most).
        "deep": (200, b"application/json", b'{"a":' * 300 + b"1" + b"}" * 300),
    }

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, dict[str, str]]] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode(): v.decode("utf-8") for k, v in scope["headers"]}
        self.seen.append((scope["method"], scope["path"], headers))
        status, kind, content = self.ANSWERS[orjson.loads(body)["kind"]]
        await send(
            {"type": "http.response.start", "status": status, "headers": [(b"content-type", kind)]}
        )
        await send({"type": "http.response.body", "body": content})


@pytest.mark.parametrize("over", ["http", "asgi"])
def test_upstream_handler_maps_statuses(over: str) -> None:
    upstream = _ScriptedUpstream()

    async def body(url: str | None) -> None:
        h = (
            UpstreamHandler(base_url=url + "/api", max_connections=4)
            if url
            else UpstreamHandler(app=upstream)
        )
        # A tenant as the gateway stores it: the header's bytes read as latin-1.
        tenant = "tënant".encode().decode("latin-1")
        assert await h(_job(payload={"kind": "ok"}, tenant=tenant)) == {"score": 9}
        method, path, headers = upstream.seen[0]
        assert (method, path) == ("POST", "/api/v1/score" if url else "/v1/score")
        assert headers["x-tollhouse-org"] == "acme"
        assert headers["x-tollhouse-environment"] == "SANDBOX"
        assert headers["x-tenant-id"] == "tënant"  # the caller's UTF-8 bytes, unchanged
        assert headers["idempotency-key"] == "sj_1"
        assert headers["x-request-id"] == "req_1"
        with pytest.raises(JobRetry) as retry:
            await h(_job(payload={"kind": "busy"}))
        assert retry.value.error() == {"code": "BUSY", "message": "later", "status": 503}
        with pytest.raises(JobFailed) as failed:
            await h(_job(payload={"kind": "bad"}))
        assert failed.value.error()["code"] == "VALIDATION_FAILED"
        with pytest.raises(JobFailed):
            await h(_job(payload={"kind": "html"}))
        with pytest.raises(JobFailed) as deep:
            await h(_job(payload={"kind": "deep"}))
        assert deep.value.error()["code"] == "UPSTREAM_BAD_RESPONSE"
        await h.aclose()

    if over == "http":
        with serve_in_thread(upstream) as url:
            run(body(url))
    else:
        run(body(None))


def test_upstream_handler_retries_when_the_upstream_is_down() -> None:
    async def body() -> None:
        h = UpstreamHandler(base_url=f"http://127.0.0.1:{free_port()}")
        with pytest.raises(JobRetry) as down:
            await h(_job(payload={"kind": "ok"}))
        assert down.value.code == "UPSTREAM_UNAVAILABLE"
        await h.aclose()

    run(body())
