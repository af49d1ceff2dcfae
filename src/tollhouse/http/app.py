"""``Tollhouse``: the whole product as one ASGI app (gateway, route table, upstream).

Everything tollhouse answers itself is one route table, held by the gateway
(:mod:`tollhouse.http.routes`): health and rate-limit status (the gateway's), the
platform routes, the jobs routes, ``/metrics`` and ``/readyz``, the dashboard. Every other
path goes to the upstream. ``tollhouse routes`` prints the table.
"""

from __future__ import annotations

import asyncio
import gc
import importlib
import time
from pathlib import Path
from typing import Any, cast

from sqlalchemy.ext.asyncio import AsyncEngine

from tollhouse.dashboard import PREFIX as DASHBOARD_PREFIX
from tollhouse.dashboard import DashboardApp
from tollhouse.errors import ConfigError
from tollhouse.fairuse import FairUsePass, FairUseTap, GenerationCapture
from tollhouse.fairuse.retention import prune_fair_use
from tollhouse.fairuse.tap import generation_routes
from tollhouse.http.access_log import AwaitingLog, listen
from tollhouse.http.admin import AdminRoutes
from tollhouse.http.asgi import ASGIApp, Receive, Scope, Send
from tollhouse.http.checks import CheckCache
from tollhouse.http.counters import GatewayCounters
from tollhouse.http.forwarded import TrustedProxies
from tollhouse.http.gateway import HEALTH, Gateway
from tollhouse.http.jobs_app import JobsRoutes
from tollhouse.http.lifespan import InnerLifespan
from tollhouse.http.platform import PlatformRoutes
from tollhouse.http.portal import PortalRoutes
from tollhouse.http.routes import Endpoint, RouteTable, TableApp
from tollhouse.jobs import Worker, build_handler, open_queue, settings_for
from tollhouse.jobs.model import utc_now
from tollhouse.jobs.webhook_store import WebhookStore
from tollhouse.keys.cache import KeyCache
from tollhouse.keys.last_used import KeyUse
from tollhouse.keys.store import KeyStore
from tollhouse.limits import LimitStore, open_store
from tollhouse.limits.overrides import OverrideCache, OverrideStore
from tollhouse.metering import UsageMeter
from tollhouse.metering.retention import Retention
from tollhouse.openapi import build_document, query_parameters
from tollhouse.ops.endpoints import METRICS_PATH, READY_PATH, OpsEndpoints
from tollhouse.ops.metrics import OpsMetrics
from tollhouse.policy.model import Policy
from tollhouse.schema import create_schema
from tollhouse.settings import Settings, load_settings
from tollhouse.storage.engine import make_engine


def import_app(spec: str) -> ASGIApp:
    """Import ``package.module:attr`` (an ASGI app, or a factory called with no arguments)."""
    module_name, _, attr = spec.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"upstream.app {spec!r} cannot be imported: {exc}") from None
    if not callable(obj):
        raise ConfigError(f"upstream.app {spec!r} is not an ASGI app")
    return cast(ASGIApp, obj)


def build_upstream(policy: Policy, engine: AsyncEngine | None = None) -> ASGIApp:
    """The inner app the policy names: a reverse proxy, an imported app, or the example.

    The example keeps its state in ``engine`` (the caller's database, shared by every
    process on it); None makes it open ``TOLLHOUSE_DATABASE_URL`` itself.
    """
    up = policy.upstream
    if up.url:
        from tollhouse.http.proxy import ReverseProxy

        return ReverseProxy(
            up.url,
            timeout=up.timeout,
            connect_timeout=up.connect_timeout,
            total_timeout=up.total_timeout,
            pool_timeout=up.pool_timeout,
            max_connections=up.max_connections,
            keepalive_expiry=up.keepalive_expiry,
            preserve_host=up.preserve_host,
            forward_authorization=up.forward_authorization,
        )
    if up.app:
        return import_app(up.app)
    from tollhouse.example import create_app_from_env

    return cast(ASGIApp, create_app_from_env(database=engine))


class Tollhouse:
    """An ASGI app: tollhouse's gateway and platform routes in front of ``app``.

    Args:
        app: the ASGI app to protect in-process; None uses the policy's ``[upstream]``
            (a reverse proxy to ``url``, an imported ``app``, or the bundled example).
        config: a policy file (TOML); None uses ``TOLLHOUSE_CONFIG`` or the built-in policy.
        settings: fully resolved settings (overrides ``config``).
        ops_listener: ``/metrics``, ``/readyz`` and ``/healthz`` are served by
            :attr:`ops_app` on a listener of their own (``tollhouse serve --ops-port``);
            on this app those paths go to the upstream.

    Example::

        from tollhouse import Tollhouse
        app = Tollhouse(inner_asgi_app, config="tollhouse.toml")
    """

    def __init__(
        self,
        app: ASGIApp | None = None,
        *,
        config: str | Path | None = None,
        settings: Settings | None = None,
        ops_listener: bool = False,
    ) -> None:
        self.settings = settings or load_settings(config)
        policy = self.settings.policy
        self.engine = make_engine(
            self.settings.database_url, log_parameters=self.settings.log_bodies
        )
        self.upstream: ASGIApp = app if app is not None else build_upstream(policy, self.engine)
        self._proxied = app is None and bool(policy.upstream.url)
        # Jobs (the scoring API shape, docs/api-shapes.md): the policy's async routes answer
        # 202 and run on the queue; the jobs app also serves scoring volume and passes the
        # rest upstream.
        self.queue = open_queue(
            self.engine, settings_for(policy, lease_seconds=self.settings.job_lease_seconds)
        )
        self.webhooks = WebhookStore(
            self.engine, allow_private_targets=self.settings.allow_private_targets
        )
        # Usage: every admitted call is metered in memory and flushed in batches; the platform
        # routes answer the analytics and events routes (call counts, catalogue metrics).
        # Retention: the flusher prunes the meter's tables (and, below, the fair-use
        # ones) hourly by the default ages, unless TOLLHOUSE_USAGE_RETENTION is off.
        retention = Retention() if self.settings.usage_retention else None
        self.meter = UsageMeter(
            self.engine, keep_raw_log=self.settings.raw_call_log, retention=retention
        )
        # Fair use: the tap counts generations per jobId and early retries after 429s,
        # flushed with the meter; the pass judges them every few minutes.
        self.fair_use_tap = FairUseTap()
        generations = [r for r in policy.fair_use if r.signal == "regeneration_loop"]
        if generations:
            routes = generation_routes(generations[0].routes)
            self.upstream = GenerationCapture(self.upstream, self.fair_use_tap, routes, time.time)
        self.meter.aggregator.observers.append(self.fair_use_tap.observe)
        self.meter.flusher.companions.append(self.fair_use_tap.flush)
        rules = policy.fair_use
        self.meter.flusher.pruners.append(
            lambda engine, kept, now: prune_fair_use(engine, kept, now, rules)
        )
        # Keys' lastUsedAt, written with the usage flush (never per request).
        self.key_use = KeyUse()
        self.meter.aggregator.observers.append(self.key_use.observe)
        self.meter.flusher.companions.append(self.key_use.flush)
        self.fair_use = FairUsePass(
            self.engine,
            policy.fair_use,
            tap=self.fair_use_tap,
            interval=self.settings.fair_use_interval,
            webhook_org=self.settings.fair_use_webhook_org,
        )
        self.key_store = KeyStore(self.engine)
        self.keys = KeyCache(self.key_store)
        self.limits: LimitStore = open_store(
            self.settings.redis_url,
            instances=self.settings.instances,
            timeout=self.settings.redis_timeout,
            failures_to_open=self.settings.redis_breaker_failures,
            probe_interval=self.settings.redis_probe_interval,
            reserve=self.settings.limits_reserve,
            on_store_failure=policy.limits.on_store_failure,
        )
        # /metrics reads the gateway's counters; the worker's hooks report to it.
        self.counters = GatewayCounters()
        self.metrics = OpsMetrics(
            self.counters,
            limits=self.limits,
            queue=self.queue if policy.async_routes else None,
            meter=self.meter,
        )
        self.worker: Worker | None = None
        if policy.async_routes and self.settings.embedded_workers:
            self.worker = Worker(
                self.queue,
                # Jobs for an HTTP upstream go straight to it on their own pool, not
                # through the reverse proxy.
                build_handler(policy, None if self._proxied else self.upstream),
                webhooks=self.webhooks,
                on_event=self.metrics.job_finished,
                on_webhook_attempt=self.metrics.webhook_attempt,
            )
        # A changed override empties the cache of built limit checks.
        checks = CheckCache()
        self.overrides = OverrideCache(OverrideStore(self.engine), on_change=checks.clear)
        self.ops = OpsEndpoints(
            self.metrics, self.engine, self.limits, self.settings.metrics_token or None
        )
        self.dashboard = DashboardApp()
        platform = PlatformRoutes(
            engine=self.engine,
            policy=policy,
            meter=self.meter,
            example_upstream=app is None and not (policy.upstream.url or policy.upstream.app),
            ops=not ops_listener,
        )
        jobs = JobsRoutes(queue=self.queue, policy=policy, webhooks=self.webhooks, clock=utc_now)
        admin = AdminRoutes(
            engine=self.engine,
            policy=policy,
            admin_token=self.settings.admin_token,
            webhooks=self.webhooks,
            meter=self.meter,
        )
        # The self-serve API: an org's own keys and webhook endpoints.
        portal = PortalRoutes(
            keys=self.key_store,
            key_cache=self.keys,
            webhooks=self.webhooks,
            meter=self.meter,
            policy=policy,
            overrides=self.overrides.store,
        )
        ops = self._ops_endpoints()
        self.gateway = Gateway(
            self.upstream,
            policy=policy,
            limits=self.limits,
            keys=self.keys,
            meter=self.meter,
            overrides=self.overrides,
            counters=self.counters,
            checks=checks,
            endpoints=[
                *jobs.endpoints(),
                *platform.endpoints(),
                *admin.endpoints(),
                *portal.endpoints(),
                *ops,
                *self._dashboard_endpoints(),
            ],
            disable=("ops",) if ops_listener else (),
            on_refused=self.fair_use_tap.refused,
        )
        self.gateway.query_names = query_parameters(
            build_document(policy, example_upstream=platform.example_upstream, ops=not ops_listener)
        )
        #: The operations endpoints on their own (``tollhouse serve --ops-port``).
        self.ops_app = TableApp(RouteTable([HEALTH, *ops]))
        self.trusted = (
            TrustedProxies(policy.proxy.trusted_proxies) if policy.proxy.trusted_proxies else None
        )
        # Forward-auth: decided calls wait for the proxy's access-log line.
        self._access_log: asyncio.DatagramTransport | None = None
        self._access_expiry: asyncio.Task[None] | None = None
        if self.settings.access_log_listen:
            self.gateway.awaiting_log = AwaitingLog(
                self.meter,
                self.limits,
                time.time,
                policy.forward_auth.log_wait,
                answered=self.gateway.counters.answered,
            )
        self._inner_lifespan = InnerLifespan(self.upstream)
        self._started = False
        self._start_lock: asyncio.Lock | None = None

    async def startup(self) -> None:
        """Create tables, start the key cache's revocation poll and the inner app."""
        if self._started:
            return
        if self._start_lock is None:
            self._start_lock = asyncio.Lock()
        async with self._start_lock:
            if self._started:
                return
            await create_schema(self.engine)  # every table, the jobs' included
            self.keys.start()
            await self.overrides.start()
            await self.meter.start()
            await self._inner_lifespan.startup()
            if self.worker is not None:
                await self.worker.start()
            await self.fair_use.start()
            awaiting = self.gateway.awaiting_log
            if awaiting is not None:
                self._access_log, _ = await listen(
                    self.settings.access_log_listen, awaiting, self.trusted
                )
                self._access_expiry = asyncio.create_task(_expire_every_second(awaiting))
            self._started = True
            # Everything loaded so far lives as long as the process: move it out of the
            # cyclic collector's sight so collections stay proportional to per-request
            # garbage, not to the size of the loaded libraries.
            gc.freeze()

    async def shutdown(self) -> None:
        """Stop everything started by :meth:`startup` and release connections."""
        if self._started:
            if self.worker is not None:
                # Running jobs get a grace period; the rest go back on the queue.
                await self.worker.stop(grace=10.0)
            await self._inner_lifespan.shutdown()
            await self.fair_use.stop()
            await self.keys.stop()
            await self.overrides.stop()
            if self._access_log is not None:
                self._access_log.close()
                self._access_log = None
            if self._access_expiry is not None:
                self._access_expiry.cancel()
                self._access_expiry = None
            if self.gateway.awaiting_log is not None:
                self.gateway.awaiting_log.close()  # metered as unknown, then flushed
            # Last: everything metered up to here is flushed.
            await self.meter.stop()
            self._started = False
        await self.limits.aclose()
        await self.engine.dispose()

    def _ops_endpoints(self) -> list[Endpoint]:
        ops = self.ops
        return [
            Endpoint(METRICS_PATH, ("GET",), ops, "ops", "ops", keyless=True),
            Endpoint(READY_PATH, ("GET",), ops, "ops", "ops", keyless=True),
        ]

    def _dashboard_endpoints(self) -> list[Endpoint]:
        # Static files need no key (every data call the page makes carries one).
        board = _mounted(self.dashboard, self.settings.policy.platform.prefix)
        return [
            Endpoint(DASHBOARD_PREFIX, ("GET",), board, "dashboard", "dashboard", keyless=True),
            Endpoint(
                DASHBOARD_PREFIX + "/{file:path}",
                ("GET",),
                board,
                "dashboard",
                "dashboard",
                keyless=True,
            ),
        ]

    @property
    def routes(self) -> RouteTable:
        """Every path tollhouse answers itself (the rest go to the upstream)."""
        return self.gateway.table

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await self._lifespan(receive, send)
            return
        if self.trusted is not None:
            # Behind a trusted load balancer: the client address limits, metering and
            # logs use comes from its X-Forwarded-For.
            self.trusted.resolve(scope)
        if not self._started:
            await self.startup()
        await self.gateway(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return


async def _expire_every_second(awaiting: AwaitingLog) -> None:
    """Meter the decided calls whose access-log line did not come in time."""
    while True:
        await asyncio.sleep(1.0)
        awaiting.expire(time.time())


def _mounted(app: ASGIApp, prefix: str) -> ASGIApp:
    """``app`` under ``prefix``: it sees its path without it (and the prefix in
    ``root_path``, for the URLs it writes)."""
    if not prefix:
        return app

    async def mounted(scope: Scope, receive: Receive, send: Send) -> None:
        scope["root_path"] = scope.get("root_path", "") + prefix
        scope["path"] = scope["path"][len(prefix) :]
        await app(scope, receive, send)

    return mounted


def app_from_env() -> Tollhouse:
    """The app for one of several server processes (``tollhouse serve --workers N``):
    its settings come from the ``TOLLHOUSE_*`` variables the parent process set with
    :func:`tollhouse.settings.to_environ`, read back by :func:`load_settings`."""
    return Tollhouse(settings=load_settings())
