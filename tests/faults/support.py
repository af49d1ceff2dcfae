"""Harness of the fault tests: a `tollhouse serve` deployment on throwaway stores, and a
load of concurrent clients that counts every response it gets."""

from __future__ import annotations

import asyncio
import itertools
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import Server, cli_env, free_port
from tollhouse.keys.store import KeyStore
from tollhouse.schema import create_schema
from tollhouse.storage.engine import make_engine

#: The policy: the fault tests' upstream, one generous bucket (so limits are decided, in
#: Redis when there is one, but never refuse), one async route and endpoint groups to count.
POLICY = """\
[upstream]
app = "tests.faults.upstream:app"
timeout = "30s"

[[buckets]]
name = "product"
display_name = "Product"
limit = 1000000
window = "1s"
routes = ["GET /v1/things/{thingId}", "GET /slow", "POST /v1/tasks"]

[[async_routes]]
route = "POST /v1/tasks"
concurrency = {concurrency}
handler = "tests.faults.upstream:task"

[[endpoint_groups]]
key = "THINGS"
description = "fast product calls"
routes = ["GET /v1/things/*"]

[[endpoint_groups]]
key = "SLOW"
description = "slow product calls"
routes = ["GET /slow"]

[[endpoint_groups]]
key = "TASKS"
description = "job submissions"
routes = ["POST /v1/tasks"]

[[endpoint_groups]]
key = "STATUS"
description = "rate-limit status"
routes = ["GET /v1/rate-limit/status"]
"""

#: Job states that do not change any more.
TERMINAL = ("completed", "failed")


@dataclass
class Deployment:
    """One tollhouse deployment: a policy, a database, maybe Redis; servers come and go."""

    cwd: Path
    database_url: str
    redis_url: str | None = None
    concurrency: int = 4
    config: Path = field(init=False)
    serves: int = 0

    def __post_init__(self) -> None:
        self.config = self.cwd / "faults.toml"
        self.config.write_text(POLICY.replace("{concurrency}", str(self.concurrency)))

    def _store_args(self) -> tuple[str, ...]:
        return ("--config", str(self.config), "--database-url", self.database_url)

    def serve(self, env: dict[str, str] | None = None) -> Server:
        """Start `tollhouse serve`, its output to a file (a pipe nobody reads would fill
        up with the outage's log lines and block the server); wait until it is healthy."""
        redis = ("--redis-url", self.redis_url) if self.redis_url else ()
        port = free_port()
        args = ["serve", "--port", str(port), *self._store_args(), *redis]
        self.serves += 1
        log = self.cwd / f"serve-{self.serves}.log"
        with open(log, "w") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "tollhouse", *args],
                cwd=self.cwd,
                env=cli_env(env),
                stdout=out,
                stderr=subprocess.STDOUT,
                text=True,
            )
        server = Server(f"http://127.0.0.1:{port}", self.cwd, proc, self.config)
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"tollhouse serve exited:\n{log.read_text()}")
            try:
                if httpx.get(server.url + "/healthz", timeout=1).status_code == 200:
                    return server
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                proc.kill()
                proc.wait()
                raise AssertionError("tollhouse serve did not become healthy within 30 s")
            time.sleep(0.05)

    def key(self, org: str) -> dict[str, str]:
        """A root key of ``org`` (made in-process: a CLI start costs seconds on a busy
        machine, and the CLI is tested elsewhere)."""
        return asyncio.run(self._key(org))

    async def _key(self, org: str) -> dict[str, str]:
        engine = make_engine(self.database_url)
        try:
            await create_schema(engine)
            record, secret = await KeyStore(engine).create(org, role="root")
        finally:
            await engine.dispose()
        return {"id": record.id, "key": secret}


def auth(key: dict[str, str]) -> dict[str, str]:
    return {"Authorization": f"Bearer {key['key']}"}


class Load:
    """Concurrent clients in threads, each on its own connection pool, counting responses.

    Kinds: ``things`` (fast product calls), ``slow`` (product calls held ~1 s upstream),
    ``status`` (the rate-limit status), ``tasks`` (job submissions; 202s' ids are kept).
    A transport error (server gone) is counted apart: that request was never admitted.
    """

    def __init__(self, url: str, key: dict[str, str], log: Path, task_sleep: float = 0.1) -> None:
        self.url = url
        self.headers = auth(key)
        self.log = log
        self.task_sleep = task_sleep
        self.lock = threading.Lock()
        self.statuses: dict[str, Counter[int]] = {}
        self.transport: Counter[str] = Counter()
        self.accepted: dict[str, int] = {}
        self.bad: list[tuple[str, int, str, dict[str, str]]] = []
        self.stop_event = threading.Event()
        self.threads: list[threading.Thread] = []
        self._n = itertools.count()

    def start(self, **kinds: int) -> None:
        """Start ``kinds[kind]`` threads per kind, e.g. ``start(things=2, tasks=1)``."""
        for kind, count in kinds.items():
            self.statuses.setdefault(kind, Counter())
            for _ in range(count):
                t = threading.Thread(target=self._run, args=(kind,), daemon=True)
                t.start()
                self.threads.append(t)

    def stop(self) -> None:
        self.stop_event.set()
        for t in self.threads:
            t.join(30)
        assert not any(t.is_alive() for t in self.threads), "a load thread hangs"

    def total(self, kind: str | None = None) -> int:
        with self.lock:
            kinds = [kind] if kind else list(self.statuses)
            return sum(sum(self.statuses[k].values()) for k in kinds)

    def wait_more(self, n: int, kind: str | None = None, timeout: float = 30) -> None:
        """Until ``n`` more responses (of ``kind``) have arrived (a guard, not a timing)."""
        target = self.total(kind) + n
        deadline = time.monotonic() + timeout
        while self.total(kind) < target:
            assert time.monotonic() < deadline, f"the load stalled at {self.total(kind)}"
            time.sleep(0.02)

    def server_errors(self, kind: str | None = None) -> int:
        with self.lock:
            kinds = [kind] if kind else list(self.statuses)
            return sum(c for k in kinds for s, c in self.statuses[k].items() if s >= 500)

    def _request(self, client: httpx.Client, kind: str, n: int) -> httpx.Response:
        if kind == "things":
            return client.get(f"/v1/things/t{n}")
        if kind == "slow":
            return client.get("/slow", params={"log": str(self.log) + ".slow", "n": n})
        if kind == "status":
            return client.get("/v1/rate-limit/status")
        body = {"log": str(self.log), "n": n, "sleep": self.task_sleep}
        return client.post("/v1/tasks", json=body)

    def _run(self, kind: str) -> None:
        with httpx.Client(base_url=self.url, headers=self.headers, timeout=30) as client:
            while not self.stop_event.is_set():
                n = next(self._n)
                try:
                    r = self._request(client, kind, n)
                except httpx.TransportError:
                    with self.lock:
                        self.transport[kind] += 1
                    time.sleep(0.05)
                    continue
                with self.lock:
                    self.statuses[kind][r.status_code] += 1
                    if kind == "tasks" and r.status_code == 202:
                        self.accepted[r.json()["scoringJobId"]] = n
                    elif r.status_code not in (200, 202):
                        self.bad.append((kind, r.status_code, r.text, dict(r.headers)))
                # A few hundred requests per test, not as many as the machine allows.
                time.sleep(0.005)

    def figures(self) -> dict[str, Any]:
        """Requests answered, 5xx and transport errors per kind (for the report)."""
        with self.lock:
            return {
                k: {
                    "answered": sum(c.values()),
                    "5xx": sum(v for s, v in c.items() if s >= 500),
                    "statuses": dict(c),
                    "transport_errors": self.transport[k],
                }
                for k, c in self.statuses.items()
            }


def wait_until(check: Callable[[], bool], what: str, timeout: float = 30) -> None:
    """Poll ``check`` until it holds; fail naming ``what`` after ``timeout`` (a hang guard)."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{what} never happened"
        time.sleep(0.05)


def jobs_by_id(url: str, key: dict[str, str], ids: list[str]) -> dict[str, dict[str, Any]]:
    """``GET /v1/tasks/{id}`` for every id (all must be found)."""
    out: dict[str, dict[str, Any]] = {}
    with httpx.Client(base_url=url, headers=auth(key), timeout=10) as client:
        for job_id in ids:
            r = client.get(f"/v1/tasks/{job_id}")
            assert r.status_code == 200, (job_id, r.status_code, r.text)
            out[job_id] = r.json()
    return out


def wait_jobs_terminal(
    url: str, key: dict[str, str], ids: list[str], timeout: float = 45
) -> dict[str, dict[str, Any]]:
    """Poll until every job is terminal; returns them (fails naming the open ones)."""
    deadline = time.monotonic() + timeout
    done: dict[str, dict[str, Any]] = {}
    with httpx.Client(base_url=url, headers=auth(key), timeout=10) as client:
        while True:
            for job_id in [i for i in ids if i not in done]:
                r = client.get(f"/v1/tasks/{job_id}")
                assert r.status_code in (200, 503), (job_id, r.status_code, r.text)
                if r.status_code == 200 and r.json()["status"] in TERMINAL:
                    done[job_id] = r.json()
            if len(done) == len(ids):
                return done
            open_jobs = sorted(set(ids) - set(done))
            assert time.monotonic() < deadline, f"{len(open_jobs)} jobs never ended: {open_jobs}"
            time.sleep(0.2)


def call_counts(url: str, key: dict[str, str], since: float) -> dict[str, int]:
    """Calls per endpoint group, as ``/call-counts/historical/ENDPOINTS/`` reports them
    (reading flushes what this server holds; retried while the database is away)."""
    params = {"start_timestamp": since - 120, "end_timestamp": time.time() + 120, "amt": 100}
    deadline = time.monotonic() + 30
    while True:
        try:
            r = httpx.get(
                url + "/call-counts/historical/ENDPOINTS/", params=params, headers=auth(key)
            )
        except httpx.TransportError:
            r = None
        if r is not None and r.status_code == 200:
            return {s["key"]: sum(s["counts"]) for s in r.json()["series"]}
        assert r is None or r.status_code == 503, (r.status_code, r.text)
        assert time.monotonic() < deadline, "call counts never readable"
        time.sleep(0.1)


def handler_log(path: Path) -> list[tuple[str, int, int]]:
    """``(kind, pid, n)`` per line the job handler wrote."""
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        kind, pid, n, _ = line.split()
        rows.append((kind, int(pid), int(n)))
    return rows
