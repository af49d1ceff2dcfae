"""What runs a job: the upstream (over HTTP or in-process ASGI) or a Python function.

A handler is ``async (job) -> dict``: the dict is the job's ``result``. Raise
:class:`~tollhouse.jobs.model.JobFailed` to fail for good, anything else (or
:class:`~tollhouse.jobs.model.JobRetry`) to have the attempt retried with backoff.

* ``handler = "upstream"``: the job's body is POSTed to the upstream's route (e.g.
  ``POST /v1/score``) with the headers the gateway would forward (``x-tollhouse-org``,
  ``x-tollhouse-environment``, ``x-tenant-id``, ``x-request-id``, byte for byte) plus
  ``idempotency-key: <job id>`` so an upstream can recognise a retried attempt. 2xx →
  result; 408/429/5xx, timeouts and network errors → retry; any other 4xx → failed with
  the upstream's error.
* ``handler = "package.module:function"``: an async function taking the payload dict and
  returning the result dict.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import logging
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Any, Protocol, cast
from urllib.parse import unquote

import orjson

from tollhouse.errors import ConfigError
from tollhouse.jobs.model import Job, JobFailed, JobRetry
from tollhouse.json_reader import MAX_DEPTH, depth_exceeds
from tollhouse.policy.model import Policy
from tollhouse.upstream import (
    UpstreamConnectTimeout,
    UpstreamError,
    UpstreamPool,
    UpstreamPoolTimeout,
    UpstreamReadTimeout,
    parse_origin,
)

logger = logging.getLogger(__name__)

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

    Over HTTP it uses tollhouse's upstream client (:mod:`tollhouse.upstream`) with a pool
    of ``max_connections`` keep-alive connections: give it at least as many as jobs may
    run at once, or jobs wait for a connection while counted as running. In-process it
    calls the ASGI app directly, with no HTTP in between.

    Args:
        app: an in-process ASGI app, or
        base_url: an HTTP upstream (``http://host:port`` with an optional path prefix).
        timeout: read timeout of one attempt: seconds the upstream may stay silent.
        connect_timeout: seconds to open a connection to an HTTP upstream.
        max_connections: most connections open to an HTTP upstream at once.
        keepalive_expiry: seconds an idle connection is kept for reuse.

    Raises:
        ConfigError: neither ``app`` nor ``base_url``, or ``base_url`` is not an http(s) URL.
    """

    def __init__(
        self,
        *,
        app: ASGIApp | None = None,
        base_url: str | None = None,
        timeout: float = 30.0,
        connect_timeout: float = 5.0,
        max_connections: int = 100,
        keepalive_expiry: float = 4.0,
    ) -> None:
        self.app = app
        self.pool: UpstreamPool | None = None
        self.prefix = b""
        self.authority = b"upstream"
        if app is None:
            if base_url is None:
                raise ConfigError("an upstream handler needs an app or a base URL")
            origin = parse_origin(base_url)
            self.prefix = origin.prefix
            self.authority = origin.authority
            self.pool = UpstreamPool(
                origin,
                max_connections=max_connections,
                connect_timeout=connect_timeout,
                read_timeout=timeout,
                # A job waits for a connection as long as it would for an answer.
                pool_timeout=timeout,
                keepalive_expiry=keepalive_expiry,
            )
        self.timeout = timeout

    async def __call__(self, job: Job) -> dict[str, Any]:
        method, path = split_route(job.route)
        headers = [
            (b"host", self.authority),
            (b"content-type", b"application/json"),
            (b"x-tollhouse-org", _header(job.org)),
            (b"idempotency-key", _header(job.id)),
        ]
        if job.environment:
            headers.append((b"x-tollhouse-environment", _header(job.environment)))
        if job.tenant:
            headers.append((b"x-tenant-id", _header(job.tenant)))
        if job.request_id:
            headers.append((b"x-request-id", _header(job.request_id)))
        body = orjson.dumps(job.payload)
        target = self.prefix + path.encode("utf-8")
        if self.pool is not None:
            status, content = await self._over_http(method.encode("ascii"), target, headers, body)
        else:
            assert self.app is not None
            status, content = await call_asgi(self.app, method, target, headers, body)
        return _outcome(status, content)

    async def _over_http(
        self, method: bytes, target: bytes, headers: list[tuple[bytes, bytes]], body: bytes
    ) -> tuple[int, bytes]:
        assert self.pool is not None
        try:
            response = await self.pool.request(method, target, headers, body)
            return response.status, await response.read()
        except (UpstreamReadTimeout, UpstreamPoolTimeout, UpstreamConnectTimeout):
            raise JobRetry("the upstream did not answer in time", "UPSTREAM_TIMEOUT") from None
        except UpstreamError as exc:
            raise JobRetry(
                f"the upstream could not be reached ({type(exc).__name__})",
                "UPSTREAM_UNAVAILABLE",
            ) from None

    async def aclose(self) -> None:
        """Close the upstream connections."""
        if self.pool is not None:
            await self.pool.aclose()


def _header(text: str) -> bytes:
    """A header value as it came in: the gateway reads header bytes as latin-1, so
    latin-1 gives the caller's very bytes back. Tenants are visible ASCII
    (:data:`tollhouse.identifiers.TENANT`), but jobs stored before that rule may hold a
    UTF-8 tenant read as latin-1: it leaves as the bytes it came in as, never encoded
    twice; text from elsewhere that latin-1 cannot hold is sent as UTF-8."""
    try:
        return text.encode("latin-1")
    except UnicodeEncodeError:
        return text.encode("utf-8")


def _outcome(status: int, content: bytes) -> dict[str, Any]:
    """The job's result for a 2xx JSON object, else the retry or failure it calls for."""
    try:
        body: Any = orjson.loads(content) if content else None
    except orjson.JSONDecodeError:
        body = None
    if 200 <= status < 300:
        if isinstance(body, dict) and depth_exceeds(body):
            # Stored as the job's result, it could not be written back out (orjson stops
            # at 254 levels): the same limit as on requests (tollhouse.json_reader).
            raise JobFailed(
                f"the upstream answered {status} with JSON nested more than {MAX_DEPTH} "
                "levels deep",
                "UPSTREAM_BAD_RESPONSE",
            )
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


async def call_asgi(
    app: ASGIApp, method: str, target: bytes, headers: list[tuple[bytes, bytes]], body: bytes
) -> tuple[int, bytes]:
    """Call an in-process ASGI app with one request; return its status and whole body.

    The app sees an ordinary HTTP/1.1 request from ``127.0.0.1``; an app that fails before
    answering is a 500 (retried, like an upstream's).
    """
    path, _, query = target.partition(b"?")
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": unquote(path.decode("latin-1")),
        "raw_path": path,
        "query_string": query,
        "root_path": "",
        "headers": [*headers, (b"content-length", str(len(body)).encode())],
        "client": ("127.0.0.1", 0),
        "server": ("upstream", 80),
        "state": {},
    }
    sent = False
    done = asyncio.Event()
    status = 0
    parts: list[bytes] = []

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await done.wait()
        return {"type": "http.disconnect"}

    async def send(message: MutableMapping[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body":
            parts.append(message.get("body", b""))
            if not message.get("more_body", False):
                done.set()

    try:
        await app(scope, receive, send)
    except Exception as exc:
        logger.warning("in-process upstream failed", extra={"error": type(exc).__name__})
        if not status:
            return 500, b""
    finally:
        done.set()
    return status or 500, b"".join(parts)


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


def build_handler(
    policy: Policy, upstream_app: ASGIApp | None = None, *, min_connections: int | None = None
) -> RoutedHandler:
    """The handler for every async route of ``policy``.

    ``upstream`` routes call ``upstream_app`` in-process when given (e.g. the bundled
    example), else ``policy.upstream.url`` over HTTP with a pool of at least
    ``min_connections`` connections (default: the largest ``concurrency`` of the async
    routes, so every job that may run gets a connection at once).

    Raises:
        ConfigError: a route needs the upstream and there is neither an app nor a URL, or
            a function handler cannot be imported.
    """
    up = policy.upstream
    if min_connections is None:
        min_connections = max((r.concurrency for r in policy.async_routes), default=1)
    upstream: UpstreamHandler | None = None
    handlers: dict[str, JobHandler] = {}
    for route in policy.async_routes:
        if route.handler == "upstream":
            if upstream is None:
                if upstream_app is not None:
                    upstream = UpstreamHandler(app=upstream_app, timeout=up.timeout)
                elif up.url:
                    upstream = UpstreamHandler(
                        base_url=up.url,
                        timeout=up.timeout,
                        connect_timeout=up.connect_timeout,
                        max_connections=max(up.max_connections, min_connections),
                        keepalive_expiry=up.keepalive_expiry,
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
