"""``Tollhouse``: the whole product as one ASGI app (gateway, platform routes, upstream)."""

from __future__ import annotations

import asyncio
import gc
import importlib
from pathlib import Path
from typing import Any, cast

from tollhouse.errors import ConfigError
from tollhouse.http.gateway import ASGIApp, Gateway, Receive, Scope, Send
from tollhouse.http.lifespan import InnerLifespan
from tollhouse.keys.cache import KeyCache
from tollhouse.keys.store import KeyStore
from tollhouse.limits import LimitStore, open_store
from tollhouse.limits.overrides import OverrideCache, OverrideStore
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


def build_upstream(policy: Policy) -> ASGIApp:
    """The inner app the policy names: a reverse proxy, an imported app, or the example."""
    up = policy.upstream
    if up.url:
        from tollhouse.http.proxy import ReverseProxy

        return ReverseProxy(up.url, timeout=up.timeout, connect_timeout=up.connect_timeout)
    if up.app:
        return import_app(up.app)
    from tollhouse.example import create_app

    return cast(ASGIApp, create_app())


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
        self.inner: ASGIApp = app if app is not None else build_upstream(policy)
        self.engine = make_engine(self.settings.database_url)
        self.key_store = KeyStore(self.engine)
        self.keys = KeyCache(self.key_store)
        self.limits: LimitStore = open_store(self.settings.redis_url)
        self.gateway = Gateway(self.inner, policy=policy, limits=self.limits, keys=self.keys)
        self.overrides = OverrideCache(
            OverrideStore(self.engine), on_change=self.gateway.forget_checks
        )
        self.gateway.overrides = self.overrides
        self._inner_lifespan = InnerLifespan(self.inner)
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
            self.keys.start()
            await self.overrides.start()
            await self._inner_lifespan.startup()
            self._started = True
            # Everything loaded so far lives as long as the process: move it out of the
            # cyclic collector's sight so collections stay proportional to per-request
            # garbage, not to the size of the loaded libraries.
            gc.freeze()

    async def shutdown(self) -> None:
        """Stop everything started by :meth:`startup` and release connections."""
        if self._started:
            await self._inner_lifespan.shutdown()
            await self.keys.stop()
            await self.overrides.stop()
            self._started = False
        await self.limits.aclose()
        await self.engine.dispose()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await self._lifespan(receive, send)
            return
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
