"""Run one test body against the sync and the async client alike.

``Synced`` wraps an :class:`AsyncClient` (or one of its namespaces) so that every call
runs to completion on a private event loop and async iterators become plain ones; the
test then reads the same for both kinds.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx

from tollhouse.client import AsyncClient, Client


class Synced:
    """A blocking view of an async client or namespace."""

    def __init__(self, target: Any, loop: asyncio.AbstractEventLoop) -> None:
        self._target = target
        self._loop = loop

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._target, name)
        if hasattr(value, "_c"):  # a namespace: client.criteria, client.analytics, …
            return Synced(value, self._loop)
        if not callable(value):
            return value

        def call(*args: Any, **kwargs: Any) -> Any:
            result = value(*args, **kwargs)
            if inspect.iscoroutine(result):
                return self._loop.run_until_complete(result)
            if hasattr(result, "__anext__"):
                return _drain(result, self._loop)
            if isinstance(result, AsyncClient):
                return Synced(result, self._loop)
            return result

        return call

    def run(self, coro: Any) -> Any:
        """Run any coroutine on this client's loop (e.g. an ``asyncio.gather``)."""
        return self._loop.run_until_complete(coro)

    @property
    def raw(self) -> Any:
        """The wrapped async object."""
        return self._target


def _drain(agen: Any, loop: asyncio.AbstractEventLoop) -> Iterator[Any]:
    try:
        while True:
            try:
                yield loop.run_until_complete(agen.__anext__())
            except StopAsyncIteration:
                return
    finally:
        # Stopping early must close the async generator on its loop (cancels its tasks).
        loop.run_until_complete(agen.aclose())


@contextmanager
def open_client(
    kind: str,
    *args: Any,
    on_response: Callable[[httpx.Response], None] | None = None,
    on_request: Callable[[httpx.Request], None] | None = None,
    **kwargs: Any,
) -> Iterator[Any]:
    """A sync client, or a :class:`Synced` async one, with optional hooks.

    ``on_response``/``on_request`` see every response/request sent (retries included),
    through httpx event hooks.
    """
    hooks_sync: dict[str, list[Callable[..., Any]]] = {"request": [], "response": []}
    if on_request is not None:
        hooks_sync["request"].append(on_request)
    if on_response is not None:
        hooks_sync["response"].append(on_response)
    if kind == "sync":
        http = httpx.Client(event_hooks=hooks_sync)
        with http, Client(*args, http_client=http, **kwargs) as client:
            yield client
        return
    loop = asyncio.new_event_loop()

    def wrap(fn: Callable[[Any], None]) -> Callable[[Any], Any]:
        async def hook(x: Any) -> None:
            fn(x)

        return hook

    hooks_async = {k: [wrap(f) for f in v] for k, v in hooks_sync.items()}
    sleep = kwargs.pop("sleep", None)
    if sleep is not None and not inspect.iscoroutinefunction(sleep):
        fake = sleep

        async def sleep_async(seconds: float) -> None:
            fake(seconds)

        sleep = sleep_async
    if sleep is not None:
        kwargs["sleep"] = sleep
    http_async = httpx.AsyncClient(event_hooks=hooks_async)
    client = AsyncClient(*args, http_client=http_async, **kwargs)
    try:
        yield Synced(client, loop)
    finally:
        loop.run_until_complete(client.aclose())
        loop.run_until_complete(http_async.aclose())
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
