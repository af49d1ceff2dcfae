"""What runs a job: the upstream (over HTTP or in-process ASGI) or a Python function.

A handler is ``async (job) -> dict``: the dict is the job's ``result``. Raise
:class:`~tollhouse.jobs.model.JobFailed` to fail for good, anything else (or
:class:`~tollhouse.jobs.model.JobRetry`) to have the attempt retried with backoff.

* ``handler = "upstream"``: the job's body is POSTed to the upstream's route (e.g.
  ``POST /v1/score``) with the headers the gateway would forward (``x-tollhouse-org``,
  ``x-tenant-id``, ``x-request-id``) plus ``idempotency-key: <job id>`` so an upstream
  can recognise a retried attempt. 2xx → result; 408/429/5xx and network errors → retry;
  any other 4xx → failed with the upstream's error.
* ``handler = "package.module:function"``: an async function taking the payload dict and
  returning the result dict.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol, cast

import httpx
import orjson

from tollhouse.errors import ConfigError
from tollhouse.jobs.model import Job, JobFailed, JobRetry
from tollhouse.policy.model import Policy

#: Statuses worth another attempt: the upstream may answer differently later.
RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})

ASGIApp = Callable[[Any, Any, Any], Awaitable[None]]
PayloadFunction = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


class JobHandler(Protocol):
    """Runs one attempt of a job and returns its result."""

    async def __call__(self, job: Job) -> dict[str, Any]: ...


def split_route(route: str) -> tuple[str, str]:
    """``"POST /v1/score"`` → ``("POST", "/v1/score")`` (the first method if several)."""
    method, _, path = route.strip().partition(" ")
    return method.split("/")[0].upper() or "POST", path.strip() or "/"


class UpstreamHandler:
    """POSTs a job's body to the upstream's async route.

    Args:
        app: an in-process ASGI app (called through ``httpx.ASGITransport``), or
        base_url: an HTTP upstream.
        timeout: seconds for one attempt.
        client: a ready client (tests); ``app``/``base_url`` are then ignored.
    """

    def __init__(
        self,
        *,
        app: ASGIApp | None = None,
        base_url: str | None = None,
        timeout: float = 30.0,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        if client is None:
            if app is not None:
                client = httpx.AsyncClient(
                    transport=httpx.ASGITransport(app=app),
                    base_url="http://upstream",
                    timeout=timeout,
                )
            elif base_url is not None:
                client = httpx.AsyncClient(
                    base_url=base_url.rstrip("/"), timeout=timeout, follow_redirects=False
                )
            else:
                raise ConfigError("an upstream handler needs an app or a base URL")
        self.client = client

    async def __call__(self, job: Job) -> dict[str, Any]:
        method, path = split_route(job.route)
        headers = {
            "content-type": "application/json",
            "x-tollhouse-org": job.org,
            "idempotency-key": job.id,
        }
        if job.environment:
            headers["x-tollhouse-environment"] = job.environment
        if job.tenant:
            headers["x-tenant-id"] = job.tenant
        if job.request_id:
            headers["x-request-id"] = job.request_id
        try:
            response = await self.client.request(
                method, path, content=orjson.dumps(job.payload), headers=headers
            )
        except httpx.TimeoutException:
            raise JobRetry("the upstream did not answer in time", "UPSTREAM_TIMEOUT") from None
        except httpx.HTTPError as exc:
            raise JobRetry(
                f"the upstream could not be reached: {exc}", "UPSTREAM_UNAVAILABLE"
            ) from None
        status = response.status_code
        try:
            body: Any = orjson.loads(response.content) if response.content else None
        except orjson.JSONDecodeError:
            body = None
        if 200 <= status < 300:
            if isinstance(body, dict):
                return body
            raise JobFailed(
                f"the upstream answered {status} without a JSON object", "UPSTREAM_BAD_RESPONSE"
            )
        upstream_error = body.get("error") if isinstance(body, dict) else None
        message = (
            str(upstream_error.get("message"))
            if isinstance(upstream_error, dict) and upstream_error.get("message")
            else f"the upstream answered {status}"
        )
        code = (
            str(upstream_error.get("code"))
            if isinstance(upstream_error, dict) and upstream_error.get("code")
            else "UPSTREAM_ERROR"
        )
        if status in RETRY_STATUSES:
            raise JobRetry(message, code, status=status)
        raise JobFailed(message, code, status=status)

    async def aclose(self) -> None:
        """Close the HTTP client."""
        await self.client.aclose()


class FunctionHandler:
    """Calls ``async function(payload) -> dict`` (named ``package.module:function``)."""

    def __init__(self, function: PayloadFunction) -> None:
        self.function = function

    async def __call__(self, job: Job) -> dict[str, Any]:
        result = await self.function(dict(job.payload))
        if not isinstance(result, dict):
            raise JobFailed(
                f"the handler returned {type(result).__name__}, not a dict", "HANDLER_BAD_RESULT"
            )
        return result

    async def aclose(self) -> None:
        """Nothing to close."""


def import_function(spec: str) -> PayloadFunction:
    """Import ``package.module:function`` and check it is an async function.

    Raises:
        ConfigError: it cannot be imported or is not a coroutine function.
    """
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ConfigError(f'job handler {spec!r} must be "upstream" or "package.module:function"')
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"job handler {spec!r} cannot be imported: {exc}") from None
    if not inspect.iscoroutinefunction(obj):
        raise ConfigError(f"job handler {spec!r} must be an async function (payload) -> dict")
    return cast(PayloadFunction, obj)


class RoutedHandler:
    """One handler per async route; a job goes to its route's handler."""

    def __init__(self, handlers: Mapping[str, JobHandler]) -> None:
        self.handlers = dict(handlers)

    async def __call__(self, job: Job) -> dict[str, Any]:
        handler = self.handlers.get(job.route)
        if handler is None:
            raise JobFailed(
                f"no handler for {job.route}: it is no longer an async route of the policy",
                "NO_HANDLER",
            )
        return await handler(job)

    async def aclose(self) -> None:
        """Close every handler's resources (once each)."""
        seen: set[int] = set()
        for h in self.handlers.values():
            if id(h) in seen:
                continue
            seen.add(id(h))
            close = getattr(h, "aclose", None)
            if close is not None:
                await close()


def build_handler(policy: Policy, upstream_app: ASGIApp | None = None) -> RoutedHandler:
    """The handler for every async route of ``policy``.

    ``upstream`` routes call ``upstream_app`` in-process when given (the gateway's own
    inner app, e.g. the bundled example), else ``policy.upstream.url``.

    Raises:
        ConfigError: a route needs the upstream and there is neither an app nor a URL, or
            a function handler cannot be imported.
    """
    upstream: UpstreamHandler | None = None
    handlers: dict[str, JobHandler] = {}
    for route in policy.async_routes:
        if route.handler == "upstream":
            if upstream is None:
                if upstream_app is not None:
                    upstream = UpstreamHandler(app=upstream_app, timeout=policy.upstream.timeout)
                elif policy.upstream.url:
                    upstream = UpstreamHandler(
                        base_url=policy.upstream.url, timeout=policy.upstream.timeout
                    )
                else:
                    raise ConfigError(
                        f"async route {route.route!r} uses the upstream, but there is no "
                        "upstream URL or in-process app to call"
                    )
            handlers[route.route] = upstream
        else:
            handlers[route.route] = FunctionHandler(import_function(route.handler))
    return RoutedHandler(handlers)
