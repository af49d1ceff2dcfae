"""``Client`` and ``AsyncClient`` offer the same calls with the same parameters.

Each public name of the sync client (and of each of its namespaces: ``criteria``,
``analytics``, ``call_counts``, ``events``, ``keys``, ``limits``, ``webhooks`` and the latter's
``endpoints`` and ``deliveries``) has its async twin: a coroutine function with
the same parameters, or — where the sync one returns an iterator — a function with the
same parameters returning an async iterator. Only ``close`` is spelt ``aclose``.
"""

from __future__ import annotations

import asyncio
import inspect
import re
import typing
from typing import Any

import pytest

from tollhouse.client import AsyncClient, Client

#: Sync spelling → async spelling of the public names that differ.
RENAMED = {"close": "aclose"}
#: Parameters whose type differs by design: ``(sync annotation, async annotation)``.
ASYNC_PARAMETERS = {
    "http_client": ("httpx.Client | None", "httpx.AsyncClient | None"),
    "sleep": ("Callable[[float], None] | None", "Callable[[float], Awaitable[None]] | None"),
}


def public(cls: type) -> set[str]:
    return {name for name in dir(cls) if not name.startswith("_")}


def namespaces(cls: type) -> dict[str, type]:
    """Property name → the class it returns, for the namespace properties of a client."""
    found = {}
    for name in public(cls):
        attribute = inspect.getattr_static(cls, name)
        if isinstance(attribute, property) and attribute.fget is not None:
            returned = typing.get_type_hints(attribute.fget).get("return")
            if isinstance(returned, type) and returned.__module__.startswith("tollhouse.client"):
                found[name] = returned
    return found


def pairs() -> list[tuple[type, type]]:
    """(sync class, async class): the clients, then each namespace (nested ones too)."""
    sync, async_ = namespaces(Client), namespaces(AsyncClient)
    assert (
        set(sync)
        == set(async_)
        == {
            "criteria",
            "analytics",
            "call_counts",
            "events",
            "keys",
            "webhooks",
            "limits",
        }
    )
    found = [(Client, AsyncClient)]
    todo = [(sync[name], async_[name]) for name in sorted(sync)]
    while todo:
        pair = todo.pop(0)
        found.append(pair)
        inner, inner_async = namespaces(pair[0]), namespaces(pair[1])
        assert set(inner) == set(inner_async), pair
        todo += [(inner[name], inner_async[name]) for name in sorted(inner)]
    names = {cls.__name__ for cls, _ in found}
    assert {"WebhookEndpointsApi", "WebhookDeliveriesApi"} <= names
    return found


def renames() -> dict[str, str]:
    """Class names in annotations: each sync class → its async twin."""
    return {sync.__name__: twin.__name__ for sync, twin in pairs()}


def as_async(annotation: str) -> str:
    """The sync annotation as the async twin spells it."""
    generator = re.fullmatch(r"Generator\[(.*), None, None\]", annotation)
    if generator:
        return f"AsyncGenerator[{generator.group(1)}, None]"
    names = {**renames(), "Iterator": "AsyncIterator"}
    return re.sub(r"\b\w+\b", lambda word: names.get(word.group(), word.group()), annotation)


def returns_iterator(annotation: Any) -> bool:
    return isinstance(annotation, str) and annotation.startswith(("Iterator[", "Generator["))


@pytest.mark.parametrize(("sync", "twin"), pairs(), ids=lambda cls: cls.__name__)
def test_the_same_public_names(sync: type, twin: type) -> None:
    assert {RENAMED.get(name, name) for name in public(sync)} == public(twin)


@pytest.mark.parametrize(("sync", "twin"), pairs(), ids=lambda cls: cls.__name__)
def test_the_same_signatures(sync: type, twin: type) -> None:
    for name in [*sorted(public(sync)), "__init__"]:
        own = inspect.getattr_static(sync, name)
        other = inspect.getattr_static(twin, RENAMED.get(name, name))
        where = f"{twin.__name__}.{RENAMED.get(name, name)}"
        if isinstance(own, property):
            assert isinstance(other, property), where
            assert own.fget is not None and other.fget is not None
            returned = own.fget.__annotations__["return"]
            assert other.fget.__annotations__["return"] == as_async(returned), where
            continue
        if other is own:  # shared with the sync client (ClientBase): identical by definition
            continue
        assert inspect.isfunction(own) and inspect.isfunction(other), where
        expected = inspect.signature(own)
        actual = inspect.signature(other)
        assert list(actual.parameters) == list(expected.parameters), where
        for parameter in expected.parameters.values():
            found = actual.parameters[parameter.name]
            label = f"{where}({parameter.name})"
            assert (found.kind, found.default) == (parameter.kind, parameter.default), label
            if parameter.annotation is inspect.Parameter.empty:  # self
                assert found.annotation is inspect.Parameter.empty, label
            elif name == "__init__" and parameter.name in ASYNC_PARAMETERS:
                pair = (parameter.annotation, found.annotation)
                assert pair == ASYNC_PARAMETERS[parameter.name], label
            else:
                assert found.annotation == as_async(parameter.annotation), label
        assert actual.return_annotation == as_async(expected.return_annotation), where
        if name == "__init__":
            continue
        if returns_iterator(expected.return_annotation):
            # Iterators become async iterators: called without await, used with `async for`.
            assert not inspect.iscoroutinefunction(other), where
        else:
            assert inspect.iscoroutinefunction(other), f"{where} is not a coroutine function"
            assert not inspect.iscoroutinefunction(own), name


def test_the_same_instance_attributes_and_namespaces() -> None:
    sync = Client(api_key="sk_test_parity", tenant_id="acme")
    twin = AsyncClient(api_key="sk_test_parity", tenant_id="acme")
    try:
        assert public_vars(sync) == public_vars(twin)
        for name, cls in namespaces(AsyncClient).items():
            assert type(getattr(twin, name)) is cls
            assert public_vars(getattr(sync, name)) == public_vars(getattr(twin, name))
    finally:
        sync.close()
        asyncio.run(twin.aclose())


def public_vars(instance: object) -> set[str]:
    return {name for name in vars(instance) if not name.startswith("_")}
