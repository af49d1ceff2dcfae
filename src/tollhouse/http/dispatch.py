"""Which app answers an admitted request: the platform API or the upstream.

The gateway admits; this decides. Platform paths (product events, call counts, the
analytics catalogue, the platform OpenAPI document) go to the FastAPI platform app;
everything else to the upstream. Jobs sit in front of both (see ``Tollhouse``): async
routes, scoring volume and webhook deliveries are the jobs app's.
"""

from __future__ import annotations

from tollhouse.http.gateway import ASGIApp, Receive, Scope, Send

#: Path prefixes the platform app serves (its routes are in ``http/platform.py``).
PLATFORM_PREFIXES = ("/v1/events", "/call-counts/", "/v1/analytics/", "/v1/platform/")
PLATFORM_PATHS = frozenset({"/call-counts", "/v1/events"})


class PlatformDispatch:
    """Raw ASGI: platform paths to ``platform``, the rest (and lifespan) to ``upstream``."""

    def __init__(self, platform: ASGIApp, upstream: ASGIApp) -> None:
        self.platform = platform
        self.upstream = upstream

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path: str = scope["path"]
            if path.startswith(PLATFORM_PREFIXES) or path in PLATFORM_PATHS:
                await self.platform(scope, receive, send)
                return
        await self.upstream(scope, receive, send)
