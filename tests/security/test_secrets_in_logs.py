"""No secret in logs or error bodies: a real `tollhouse serve` logging at DEBUG (text and
JSON) is used with API keys and a webhook secret in good and bad requests; neither the
keys nor the webhook secret appear in its output or in any response body."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import (
    ALLOW_PRIVATE_TARGETS,
    Server,
    cli_env,
    free_port,
    serve_in_thread,
)
from tollhouse.jobs.schema import create_job_schema
from tollhouse.jobs.webhook_store import WebhookStore
from tollhouse.keys.hashing import hash_secret
from tollhouse.keys.store import KeyStore
from tollhouse.schema import create_schema
from tollhouse.storage.engine import make_engine

pytestmark = pytest.mark.integration


class Receiver:
    """A webhook receiver answering 204, counting requests."""

    def __init__(self) -> None:
        self.calls = 0
        self.lock = threading.Lock()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        with self.lock:
            self.calls += 1
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})


@pytest.fixture
def receiver() -> Iterator[tuple[Receiver, str]]:
    r = Receiver()
    with serve_in_thread(r) as url:  # type: ignore[arg-type]
        yield r, url


async def _prepare(cwd: Path, hook_url: str) -> tuple[str, str, str]:
    """Keys (one revoked) and a webhook endpoint in the database the server will use."""
    engine = make_engine(f"sqlite:///{cwd}/.tollhouse/tollhouse.db")
    try:
        await create_schema(engine)
        await create_job_schema(engine)
        keys = KeyStore(engine)
        _, good = await keys.create("secrets-org", "test", "root")
        gone, revoked = await keys.create("secrets-org", "test", "member")
        await keys.revoke(gone.id)
        hooks = WebhookStore(engine, allow_private_targets=True)
        _, hook_secret = await hooks.add_endpoint("secrets-org", hook_url, environment="SANDBOX")
        return good, revoked, hook_secret
    finally:
        await engine.dispose()


@contextmanager
def debug_server(cwd: Path, log_format: str, *extra: str) -> Iterator[tuple[Server, Path]]:
    """`tollhouse serve` logging at DEBUG into a file (a pipe left unread would fill up
    and stall the server)."""
    port = free_port()
    log = cwd / "serve.log"
    args = [sys.executable, "-m", "tollhouse", "serve", "--port", str(port)]
    args += ["--log-level", "debug", "--access-log", "--log-format", log_format, *extra]
    with log.open("w") as out:
        proc = subprocess.Popen(
            args, cwd=cwd, env=cli_env(ALLOW_PRIVATE_TARGETS), stdout=out, stderr=out, text=True
        )
        server = Server(f"http://127.0.0.1:{port}", cwd, proc, None, ALLOW_PRIVATE_TARGETS)
        try:
            deadline = time.monotonic() + 60
            while True:
                assert proc.poll() is None, log.read_text()
                assert time.monotonic() < deadline, "tollhouse serve did not start"
                try:
                    if httpx.get(server.url + "/healthz", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.1)
            yield server, log
        finally:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_no_secret_in_logs_or_bodies(
    tmp_path: Path, receiver: tuple[Receiver, str], log_format: str
) -> None:
    rec, hook_url = receiver
    bodies: list[str] = []
    good, revoked, hook_secret = asyncio.run(_prepare(tmp_path, hook_url + "/in"))
    unknown = "sk_test_" + "Q" * 32  # well-formed, never issued
    secrets = [good, revoked, hook_secret, unknown]
    with debug_server(tmp_path, log_format) as (server, log):
        with httpx.Client(base_url=server.url, timeout=15) as c:
            tenant = {"X-Tenant-Id": "acme"}

            def call(method: str, path: str, headers: dict[str, str], **kw: Any) -> int:
                r = c.request(method, path, headers={**tenant, **headers}, **kw)
                bodies.append(r.text + json.dumps(dict(r.headers)))
                return r.status_code

            auth = {"Authorization": f"Bearer {good}"}
            assert call("GET", "/v1/rate-limit/status", auth) == 200
            assert call("GET", "/v1/rate-limit/status", {"X-API-Key": good}) in (200, 429)
            posting = {"jobId": "j1", "title": "Engineer", "description": "Python and SQL."}
            assert call("POST", "/v1/criteria/generate", auth, json=posting) == 200
            score = {
                "applicationId": "a1",
                "jobId": "j1",
                "candidate": {"name": "Ada", "resume": "Python"},
            }
            assert call("POST", "/v1/score", auth, json=score) == 202
            assert call("POST", "/v1/score", auth, content=b"{not json") in (400, 422)
            assert call("POST", "/v1/events", auth, content=b"[{") in (400, 422)
            for bad in (
                {"Authorization": f"Bearer {revoked}"},
                {"X-API-Key": revoked},
                {"Authorization": f"Bearer {unknown}"},
                {"Authorization": f"Bearer {hook_secret}"},
                {"X-API-Key": hook_secret},
                {"Authorization": f"Bearer {good[:-1]}"},  # malformed: too short
                {"Authorization": f"Bearer {good}x"},  # malformed: too long
                {"Authorization": f"Basic {good}"},
                {"Authorization": good},
                {"Authorization": f"Bearer {good} {hook_secret}"},
            ):
                assert call("GET", "/v1/rate-limit/status", bad) == 401, bad
                assert call("POST", "/v1/score", bad, json=score) == 401, bad
        deadline = time.monotonic() + 20
        while rec.calls < 1 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert rec.calls >= 1  # the webhook secret was used to sign a delivery
    output = log.read_text()
    assert "DEBUG" in output.upper()  # logging really ran at debug
    assert "/v1/rate-limit/status" in output  # the access log too
    for secret in secrets:
        assert secret not in output, "a secret reached the server's output"
        assert secret[8:] not in output
        for body in bodies:
            assert secret not in body, "a secret reached a response"


@pytest.mark.parametrize("log_bodies", [False, True])
def test_no_sql_parameters_or_bodies_at_debug_unless_log_bodies(
    tmp_path: Path, receiver: tuple[Receiver, str], log_bodies: bool
) -> None:
    """At DEBUG, neither a key's hash (the key lookup's parameter), a résumé (a job's
    payload) nor an event's data (request bodies stored through SQL) reach the output;
    with ``--log-bodies`` they do (the switch is what keeps them out)."""
    _, hook_url = receiver
    good, _, _ = asyncio.run(_prepare(tmp_path, hook_url + "/in"))
    resume = "Built Python APIs; marker résumé-QX81-only-here"
    event_marker = "event-data-marker-ZW42"
    extra = ("--log-bodies",) if log_bodies else ()
    with debug_server(tmp_path, "text", *extra) as (server, log):
        auth = {"Authorization": f"Bearer {good}", "X-Tenant-Id": "acme"}
        with httpx.Client(base_url=server.url, headers=auth, timeout=15) as c:
            score = {
                "applicationId": "a1",
                "jobId": "j1",
                "candidate": {"name": "A", "resume": resume},
            }
            assert c.post("/v1/score", json=score).status_code == 202
            event = {
                "id": "e1",
                "type": "custom",
                "time": "2026-01-01T00:00:00Z",
                "data": {"note": event_marker},
            }
            assert c.post("/v1/events", json=[event]).status_code == 200
    output = log.read_text()
    assert "DEBUG" in output.upper()
    hashed = hash_secret(good)
    found = {m: m in output for m in (hashed, resume, event_marker)}
    if log_bodies:
        assert all(found.values()), found
    else:
        assert not any(found.values()), found
    assert good not in output  # the key itself never, even with --log-bodies


def _encoded(secret: str) -> list[str]:
    """``secret`` as it reaches an access log from a query string: percent-encoded once
    (either hex case), every character encoded, encoded twice, and inside other text."""
    prefix, rest = secret[:8], secret[8:]
    once = prefix.replace("_", "%5F") + rest
    every = "".join(f"%{b:02X}" for b in prefix.encode()) + rest
    return [
        f"api_key={once}",
        f"api_key={once.replace('%5F', '%5f')}",
        f"key={every}",
        f"next=%2Fcb%3Fk%3D{once.replace('%', '%25')}",
        f"token=tokensk{secret[2:]}",
    ]


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_keys_in_query_strings_are_masked_in_the_access_log(
    tmp_path: Path, receiver: tuple[Receiver, str], log_format: str
) -> None:
    """A key pasted into a URL reaches the access log percent-encoded (``sk%5Ftest%5F…``)
    or run into other text: masked there too, in both log formats."""
    _, hook_url = receiver
    good, _, _ = asyncio.run(_prepare(tmp_path, hook_url + "/in"))
    queries = _encoded(good)
    with debug_server(tmp_path, log_format) as (server, log), httpx.Client(timeout=15) as c:
        for query in queries:
            # The status route takes no query parameters: with the key in the header too
            # and alone, the answer is a 400 naming the parameter (before any key is
            # read), and the access log still records the request's query string.
            url = f"{server.url}/v1/rate-limit/status?{query}"
            r = c.get(url, headers={"X-API-Key": good})
            assert r.status_code == 400 and "unknown query parameter" in r.text, r.text
            assert c.get(url).status_code == 400
    output = log.read_text()
    assert output.count("/v1/rate-limit/status?") >= 2 * len(queries)  # access log lines
    assert good[8:] not in output, "a key's secret part reached the server's output"
    assert output.count("[redacted]") >= 2 * len(queries)
