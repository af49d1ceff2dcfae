"""``Tollhouse``: the whole product as one ASGI app (gateway, platform routes, upstream)."""

from __future__ import annotations

import asyncio
import gc
import importlib
import time
from pathlib import Path
from typing import Any, cast

from sqlalchemy.ext.asyncio import AsyncEngine

from tollhouse.dashboard import PREFIX as DASHBOARD_PREFIX
from tollhouse.dashboard import DashboardApp, is_dashboard_path
from tollhouse.errors import ConfigError
from tollhouse.fairuse import FairUsePass, FairUseTap, GenerationCapture
from tollhouse.fairuse.tap import generation_routes
from tollhouse.http.dispatch import PlatformDispatch
from tollhouse.http.forwarded import TrustedProxies
from tollhouse.http.gateway import ASGIApp, Gateway, Receive, Scope, Send
from tollhouse.http.jobs_app import create_jobs_app
from tollhouse.http.lifespan import InnerLifespan
from tollhouse.http.platform import create_platform_app
from tollhouse.jobs import Worker, build_handler, create_job_schema, open_queue, settings_for
from tollhouse.jobs.webhooks import WebhookStore
from tollhouse.keys.cache import KeyCache
from tollhouse.keys.store import KeyStore
from tollhouse.limits import LimitStore, open_store
from tollhouse.limits.overrides import OverrideCache, OverrideStore
from tollhouse.metering import UsageMeter
from tollhouse.ops.endpoints import OPS_PATHS, OpsEndpoints
from tollhouse.ops.metrics import OpsMetrics
from tollhouse.policy.model import Policy
from tollhouse.settings import Settings, load_settings
from tollhouse.storage.engine import make_engine
from tollhouse.storage.schema import create_schema


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
        # app answers the analytics and events routes (call counts, catalogue metrics).
        self.meter = UsageMeter(self.engine)
        platform = cast(
            ASGIApp,
            create_platform_app(
                engine=self.engine,
                policy=policy,
                meter=self.meter,
                example_upstream=app is None and not (policy.upstream.url or policy.upstream.app),
            ),
        )
        self.inner: ASGIApp = cast(
            ASGIApp,
            create_jobs_app(
                queue=self.queue,
                policy=policy,
                webhooks=self.webhooks,
                fallback=PlatformDispatch(platform, self.upstream),
            ),
        )
        # Fair use: the tap counts generations per jobId and early retries after 429s,
        # flushed with the meter; the pass judges them every few minutes.
        self.fair_use_tap = FairUseTap()
        generations = [r for r in policy.fair_use if r.signal == "regeneration_loop"]
        if generations:
            routes = generation_routes(generations[0].routes)
            self.inner = GenerationCapture(self.inner, self.fair_use_tap, routes, time.time)
        self.meter.aggregator.observers.append(self.fair_use_tap.observe)
        self.meter.flusher.companions.append(self.fair_use_tap.flush)
        self.fair_use = FairUsePass(self.engine, policy.fair_use, tap=self.fair_use_tap)
        self.worker: Worker | None = None
        if policy.async_routes and self.settings.embedded_workers:
            self.worker = Worker(
                self.queue,
                # Jobs for an HTTP upstream go straight to it on their own pool, not
                # through the reverse proxy.
                build_handler(policy, None if self._proxied else self.upstream),
                webhooks=self.webhooks,
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
        self.gateway = Gateway(
            self.inner, policy=policy, limits=self.limits, keys=self.keys, meter=self.meter
        )
        self.overrides = OverrideCache(
            OverrideStore(self.engine), on_change=self.gateway.forget_checks
        )
        self.gateway.overrides = self.overrides
        self.gateway.on_refused = self.fair_use_tap.refused
        # GET /metrics and GET /readyz, answered before the gateway (tollhouse.ops).
        self.metrics = OpsMetrics(
            self.gateway, queue=self.queue if policy.async_routes else None, meter=self.meter
        )
        if self.worker is not None:
            self.worker.dispatcher.on_event = self.metrics.job_finished
            if self.worker.sender is not None:
                self.worker.sender.on_attempt = self.metrics.webhook_attempt
        self.ops = OpsEndpoints(
            self.metrics, self.engine, self.limits, self.settings.metrics_token or None
        )
        self.trusted = (
            TrustedProxies(policy.proxy.trusted_proxies) if policy.proxy.trusted_proxies else None
        )
        self._inner_lifespan = InnerLifespan(self.inner)
        self.dashboard = DashboardApp()
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
            await create_schema(self.engine)
            await create_job_schema(self.engine)
            self.keys.start()
            await self.overrides.start()
            await self.meter.start()
            await self._inner_lifespan.startup()
            if self.worker is not None:
                await self.worker.start()
            await self.fair_use.start()
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
            # Last: everything metered up to here is flushed.
            await self.meter.stop()
            self._started = False
        await self.limits.aclose()
        await self.engine.dispose()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await self._lifespan(receive, send)
            return
        if self.trusted is not None and kind != "lifespan":
            # Behind a trusted load balancer: the client address limits, metering and
            # logs use comes from its X-Forwarded-For.
            self.trusted.resolve(scope)
        if kind == "http":
            path: str = scope["path"]
            # The dashboard's static files need no key (every data call the page makes
            # carries one); one prefix check keeps product traffic on its path.
            if path.startswith(DASHBOARD_PREFIX) and is_dashboard_path(path):
                await self.dashboard(scope, receive, send)
                return
            if not self._started:
                await self.startup()
            if path in OPS_PATHS:
                await self.ops(scope, receive, send)
                return
        elif not self._started:
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


def app_from_env() -> Tollhouse:
    """The app for one of several server processes (``tollhouse serve --workers N``):
    its settings come from the ``TOLLHOUSE_*`` variables the parent process set with
    :func:`tollhouse.settings.to_environ`, read back by :func:`load_settings`."""
    return Tollhouse(settings=load_settings())
