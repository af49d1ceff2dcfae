"""Shared fixtures: real `tollhouse` processes on loopback, the CLI, key helpers."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn
from starlette.types import ASGIApp

from tests import services

REPO = Path(__file__).resolve().parent.parent
TESTS = REPO / "tests"
DEFAULT_POLICY = REPO / "src" / "tollhouse" / "policy" / "default.toml"
#: Environment that lets webhooks reach loopback receivers (refused by default: SSRF).
ALLOW_PRIVATE_TARGETS = {"TOLLHOUSE_ALLOW_PRIVATE_TARGETS": "1"}


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cli_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOLLHOUSE_")}
    # The repo root, so a policy may name a test module as `upstream.app = "tests.x:app"`.
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra or {})
    return env


def run_cli(
    *args: str, cwd: Path, env: dict[str, str] | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run `python -m tollhouse ARGS` in ``cwd``; raise with its output when it fails."""
    proc = subprocess.run(
        [sys.executable, "-m", "tollhouse", *args],
        cwd=cwd,
        env=cli_env(env),
        capture_output=True,
        text=True,
        timeout=60,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"tollhouse {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


@contextmanager
def serve_in_thread(app: ASGIApp, *, ws: str = "none") -> Iterator[str]:
    """Run ``app`` under uvicorn in a daemon thread; yield its base URL.

    ``ws`` picks uvicorn's WebSocket implementation (``"websockets-sansio"``,
    ``"wsproto"``, …); by default WebSocket upgrades are not served.
    """
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=0,
        log_level="warning",
        lifespan="on",
        ws=ws,
        # The gateway is the edge here: scope["client"] must stay the peer's address, not
        # be rewritten from X-Forwarded-For (uvicorn trusts 127.0.0.1 by default).
        proxy_headers=False,
        timeout_graceful_shutdown=5,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(1000):
        if server.started or not thread.is_alive():
            break
        time.sleep(0.01)
    assert server.started, "uvicorn did not start"
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def sqlite_key(db: Path, org: str = "acme", env: str = "test", role: str = "root") -> str:
    """Create the schema in the SQLite file ``db`` and a key there; return its secret
    (for tests that serve a ``Tollhouse`` in-process on that database)."""
    import asyncio

    from tollhouse.keys.store import KeyStore
    from tollhouse.schema import create_schema
    from tollhouse.storage.engine import make_engine

    async def make() -> str:
        engine = make_engine(f"sqlite:///{db}")
        await create_schema(engine)
        _, secret = await KeyStore(engine).create(org, env, role)
        await engine.dispose()
        return secret

    return asyncio.run(make())


@dataclass
class Server:
    """A running `tollhouse serve` process."""

    url: str
    cwd: Path
    proc: subprocess.Popen[str]
    config: Path | None
    env: dict[str, str] | None = None
    """Extra environment of the server, given to its CLI calls too."""
    log: Path | None = None
    """The file the process's stdout and stderr go to."""

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        extra = ("--config", str(self.config)) if self.config else ()
        head, *rest = args
        if head in ("keys", "limits", "webhooks", "usage"):
            sub, *tail = rest
            return run_cli(head, sub, *tail, *extra, cwd=self.cwd, env=self.env, check=check)
        return run_cli(*args, *extra, cwd=self.cwd, env=self.env, check=check)

    def key(self, org: str, role: str = "root", env: str = "test") -> dict[str, str]:
        out = self.cli("keys", "create", "--org", org, "--role", role, "--env", env, "--json")
        data: dict[str, str] = json.loads(out.stdout)
        return data

    captured: str = ""

    def output(self) -> str:
        """Everything the process printed (after :func:`stop_server`)."""
        return self.captured


def start_server(
    cwd: Path,
    config: Path | None = None,
    *extra: str,
    env: dict[str, str] | None = None,
    health: str | None = None,
) -> Server:
    """Start `tollhouse serve` (with ``env`` added to its environment) and wait until
    /healthz answers (at ``health`` when given, e.g. on an ``--ops-port``)."""
    port = free_port()
    args = [sys.executable, "-m", "tollhouse", "serve", "--port", str(port), *extra]
    if config is not None:
        args += ["--config", str(config)]
    # Output goes to a file, not a pipe: a pipe nobody reads until shutdown fills up when
    # the server logs much (tracebacks during an outage) and then blocks the server.
    log = cwd / f"serve-{port}.log"
    with log.open("w") as sink:
        proc = subprocess.Popen(
            args, cwd=cwd, env=cli_env(env), stdout=sink, stderr=subprocess.STDOUT, text=True
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"tollhouse serve exited:\n{log.read_text()}")
        try:
            if httpx.get(health or url + "/healthz", timeout=1).status_code == 200:
                if health is not None:
                    # The probes have their own listener, which may be up first: the
                    # main port must accept connections too.
                    with socket.create_connection(("127.0.0.1", port), timeout=1):
                        pass
                return Server(url, cwd, proc, config, env, log=log)
        except (httpx.TransportError, OSError):
            time.sleep(0.05)
    proc.kill()
    raise AssertionError("tollhouse serve did not become healthy within 30 s")


def stop_server(server: Server) -> None:
    server.proc.terminate()
    try:
        server.proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        server.proc.kill()
        server.proc.wait()
    server.captured = server.log.read_text() if server.log is not None else ""


@pytest.fixture(scope="session")
def default_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """`tollhouse serve` on the embedded default: built-in policy, example upstream."""
    # Tests deliver webhooks to receivers on loopback: allow private targets explicitly.
    server = start_server(tmp_path_factory.mktemp("default"), env=ALLOW_PRIVATE_TARGETS)
    yield server
    stop_server(server)


@pytest.fixture(scope="session")
def tight_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """`tollhouse serve` with tests/data/tight.toml: small limits, long windows, roles."""
    server = start_server(tmp_path_factory.mktemp("tight"), TESTS / "data" / "tight.toml")
    yield server
    stop_server(server)


# ---- real backing services (session-scoped; see tests/services.py) -------------------------


@pytest.fixture(scope="session")
def redis_service() -> Iterator[services.RedisServer]:
    """A real redis-server on loopback for the whole session (flush per test yourself)."""
    with services.redis_server() as server:
        yield server


@pytest.fixture(scope="session")
def redis_cluster_service() -> Iterator[services.RedisClusterNodes]:
    """A real six-node Redis Cluster on loopback (three masters, three replicas) for the
    whole session; tests that kill nodes start their own (``services.redis_cluster``)."""
    with services.redis_cluster() as cluster:
        yield cluster


@pytest.fixture(scope="session")
def redis_tls_service() -> Iterator[services.RedisServer]:
    """A real redis-server speaking TLS only, for the whole session: its URL is
    ``rediss://…?ssl_ca_certs=`` with the throwaway CA that signed its certificate."""
    with services.redis_server(tls=True) as server:
        yield server


@pytest.fixture(scope="session")
def redis_tls_cluster_service() -> Iterator[services.RedisClusterNodes]:
    """A real six-node Redis Cluster speaking TLS only (clients, cluster bus, replication)
    for the whole session: its URL is ``rediss+cluster://…?ssl_ca_certs=``."""
    with services.redis_cluster(tls=True) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def postgres_service() -> Iterator[services.PostgresServer]:
    """A throwaway PostgreSQL cluster on loopback for the whole session."""
    with services.postgres_server() as server:
        yield server
