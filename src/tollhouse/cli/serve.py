"""``tollhouse serve`` — gateway, platform API and the upstream, on uvicorn."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import logging.config
import os
from typing import Annotated, Any, cast

import typer
import uvicorn

from tollhouse.cli.common import ConfigOpt, DatabaseOpt, console, fail, run, settings_from
from tollhouse.errors import TollhouseError
from tollhouse.http.app import Tollhouse
from tollhouse.keys.demo import ensure_demo_key
from tollhouse.keys.store import KeyStore
from tollhouse.ops.logs import LogFormat, log_config
from tollhouse.schema import create_schema
from tollhouse.security.server import LimitedHttpToolsProtocol
from tollhouse.settings import (
    ACCESS_LOG_LISTEN,
    KEEP_ALIVE,
    LOG_BODIES,
    LOG_FORMAT,
    LOG_LEVEL,
    REDIS_URL,
    Settings,
    to_environ,
)
from tollhouse.storage.engine import make_engine, sqlite_path
from tollhouse.urls import shown_url


def serve(
    config: ConfigOpt = None,
    host: Annotated[str, typer.Option("--host", help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", "-p", help="Port to listen on.")] = 8000,
    workers: Annotated[int, typer.Option("--workers", help="Server processes.")] = 1,
    ops_port: Annotated[
        int | None,
        typer.Option(
            "--ops-port",
            help="Serve /metrics, /readyz and /healthz on this port (same --host) instead "
            "of --port, where those paths then go to the upstream.",
        ),
    ] = None,
    database_url: DatabaseOpt = None,
    redis_url: Annotated[
        str | None, typer.Option("--redis-url", help=f"Shared limits. Env: {REDIS_URL.env}.")
    ] = None,
    access_log: Annotated[bool, typer.Option("--access-log", help="Log every request.")] = False,
    access_log_listen: Annotated[
        str | None,
        typer.Option(
            "--access-log-listen",
            help="Forward-auth: receive the proxy's JSON access-log lines (syslog) on "
            f"udp://HOST:PORT (docs/forward-auth.md). Env: {ACCESS_LOG_LISTEN.env}.",
        ),
    ] = None,
    keep_alive: Annotated[
        float,
        typer.Option(
            "--keep-alive",
            envvar=KEEP_ALIVE.env,
            help="Seconds an idle keep-alive connection stays open. Behind a load balancer, "
            "set it above the balancer's idle timeout (e.g. 75 behind a 60 s one).",
        ),
    ] = KEEP_ALIVE.default,
    log_format: Annotated[
        str,
        typer.Option(
            "--log-format",
            envvar=LOG_FORMAT.env,
            help="text (stderr) or json (one object per line on stdout, with request_id).",
        ),
    ] = LOG_FORMAT.default,
    log_level: Annotated[
        str,
        typer.Option(
            "--log-level",
            envvar=LOG_LEVEL.env,
            help="critical, error, warning, info or debug.",
        ),
    ] = LOG_LEVEL.default,
    log_bodies: Annotated[
        bool,
        typer.Option(
            "--log-bodies",
            help="Also log SQL parameters, fetched rows and WebSocket frames (key hashes, "
            f"request bodies): never without it, at any level. Env: {LOG_BODIES.env}.",
        ),
    ] = False,
) -> None:
    """Run the gateway in front of the configured upstream (or the bundled example)."""
    settings = settings_from(
        config,
        database_url,
        redis_url=redis_url,
        log_bodies=log_bodies,
        access_log_listen=access_log_listen,
    )
    if workers < 1:
        fail("--workers must be at least 1", 2)
    if not 0 < keep_alive <= 3600:
        fail("--keep-alive must be more than 0 and at most 3600 seconds", 2)
    if workers > 1 and not settings.redis_url:
        fail(
            f"--workers {workers} needs Redis so the processes share one set of limits: "
            f"set --redis-url, {REDIS_URL.env} or [storage] redis_url "
            "(or run with --workers 1 to keep limits in process memory)",
            2,
        )
    if workers > 1 and settings.access_log_listen:
        fail(
            "--access-log-listen joins each line to the call one process decided: run it "
            "with --workers 1",
            2,
        )
    if ops_port is not None:
        if not 0 < ops_port < 65536 or ops_port == port:
            fail("--ops-port must be a TCP port other than --port", 2)
        if workers > 1:
            fail(
                "--ops-port serves one process's metrics: run it with --workers 1 "
                "(or scrape each process on --port)",
                2,
            )
    try:
        app = Tollhouse(settings=settings, ops_listener=ops_port is not None)
    except TollhouseError as exc:
        fail(str(exc), 2)
    try:
        logging_config = log_config(
            cast(LogFormat, log_format), log_level, log_bodies=settings.log_bodies
        )
    except ValueError as exc:
        fail(f"{exc} (--log-format / --log-level)", 2)
    logging.config.dictConfig(logging_config)
    demo = run(lambda: _prepare(settings))
    if log_format == "json":
        # stdout carries JSON lines only: the banner becomes one (without the demo key).
        logging.getLogger("tollhouse.cli.serve").info(
            "tollhouse listening",
            extra={"url": f"http://{host}:{port}", "workers": workers},
        )
    else:
        _banner(settings, host, port, demo, workers, ops_port)
    options = {
        "host": host,
        "port": port,
        "log_level": log_level.lower(),
        "log_config": logging_config,
        "access_log": access_log,
        "proxy_headers": False,
        "server_header": False,
        "lifespan": "on",
        # Request-head limits (docs/security.md): a head over [limits] max_header_bytes
        # gets 431, one not complete within 10 s gets 408 (slow clients); idle
        # keep-alive connections close after --keep-alive seconds (5 by default).
        "http": LimitedHttpToolsProtocol,
        "h11_max_incomplete_event_size": settings.policy.limits.max_header_bytes,
        "timeout_keep_alive": keep_alive,
    }
    if workers == 1 and ops_port is not None:
        _serve_with_ops(app, options, ops_port)
        return
    if workers == 1:
        uvicorn.run(app, **options)  # type: ignore[arg-type]
        return
    os.environ.update(worker_environ(settings, workers))
    uvicorn.run(
        "tollhouse.http.app:app_from_env",
        factory=True,
        workers=workers,
        **options,  # type: ignore[arg-type]
    )


def _serve_with_ops(app: Tollhouse, options: dict[str, Any], ops_port: int) -> None:
    """Serve ``app`` and, on ``ops_port``, its operations endpoints (one event loop,
    two listeners; stopping the main one stops both)."""
    main = uvicorn.Server(uvicorn.Config(app, **options))
    ops_options = {**options, "port": ops_port, "lifespan": "off", "access_log": False}
    ops = uvicorn.Server(uvicorn.Config(app.ops_app, **ops_options))

    async def both() -> None:
        ops_task = asyncio.create_task(ops.serve())
        try:
            await main.serve()
        finally:
            ops.should_exit = True
            await ops_task

    asyncio.run(both())


def worker_environ(settings: Settings, workers: int) -> dict[str, str]:
    """The variables from which each of ``workers`` server processes builds its app
    (``app_from_env``): the same settings, except that together they count as
    ``workers`` times as many instances while Redis is away."""
    shared = dataclasses.replace(settings, instances=workers * settings.instances)
    return to_environ(shared)


async def _prepare(settings: Settings) -> str | None:
    """Create tables; on the embedded default, make sure there is a demo key to print."""
    engine = make_engine(settings.database_url, log_parameters=settings.log_bodies)
    try:
        await create_schema(engine)
        folder = sqlite_path(settings.database_url)
        if settings.is_embedded_default and folder is not None:
            return await ensure_demo_key(KeyStore(engine), folder.parent)
        return None
    finally:
        await engine.dispose()


def _banner(
    settings: Settings,
    host: str,
    port: int,
    demo: str | None,
    workers: int,
    ops_port: int | None = None,
) -> None:
    # Never wrapped at the terminal's width: URLs, paths and keys stay whole for copying.
    say = functools.partial(console.print, highlight=False, soft_wrap=True)
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    base = f"http://{shown}:{port}"
    policy = settings.config_path or "built-in (docs/policy.md)"
    up = settings.policy.upstream
    upstream = up.url or up.app or "bundled example scoring API"
    say(f"[bold]tollhouse[/] listening on [bold cyan]{base}[/]")
    say(f"  policy:   {policy}")
    say(f"  upstream: {upstream}")
    say(f"  database: {shown_url(settings.database_url)}")
    limits = shown_url(settings.redis_url) if settings.redis_url else "in process memory"
    say(f"  limits:   {limits}")
    if workers > 1:
        say(f"  workers:  {workers} processes sharing Redis")
    health = f"http://{shown}:{ops_port}" if ops_port is not None else base
    say(f"  health:   {health}/healthz")
    if ops_port is not None:
        say(f"  ops:      {health} (/metrics, /readyz, /healthz)")
    say(f"  dashboard: {base}/dashboard (sign in with a root or manager key)")
    key = demo or "$TOLLHOUSE_API_KEY"
    if demo:
        say(f"  demo key: [bold green]{demo}[/] (org demo, role root)")
    else:
        say("  keys:     tollhouse keys create --org ORG --role root")
    say("Try:")
    say(f'  curl -s {base}/v1/rate-limit/status -H "Authorization: Bearer {key}"')
    if settings.policy.upstream.is_example:
        say(
            f'  curl -s {base}/v1/criteria/generate -H "Authorization: Bearer {key}" '
            '-H "X-Tenant-Id: acme" -H "Content-Type: application/json" '
            '-d \'{"jobId":"job_1","title":"Backend Engineer","description":'
            '"Python, PostgreSQL and Redis; 5 years building APIs."}\''
        )
