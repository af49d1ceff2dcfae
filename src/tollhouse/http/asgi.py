"""ASGI types shared by every raw ASGI app of tollhouse (gateway, route table, proxy).

Plain aliases of the ASGI 3 callables: a scope and a message are mutable string-keyed
mappings, an app takes ``(scope, receive, send)``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

__all__ = ["ASGIApp", "Header", "Message", "Receive", "Scope", "Send"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
#: One response header, as ASGI carries it: lower-case name, value.
Header = tuple[bytes, bytes]
