"""tollhouse: the platform layer for any HTTP API.

API keys and orgs, rate limits and in-flight caps with standard headers and a status
endpoint, in front of an upstream API or an in-process ASGI app.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tollhouse.errors import (
    ApiError,
    ConfigError,
    PolicyError,
    StorageError,
    TollhouseError,
)
from tollhouse.policy.load import load_policy
from tollhouse.policy.model import Policy
from tollhouse.settings import Settings, load_settings

__all__ = [
    "ApiError",
    "ConfigError",
    "Policy",
    "PolicyError",
    "Settings",
    "StorageError",
    "Tollhouse",
    "TollhouseError",
    "__version__",
    "load_policy",
    "load_settings",
]

__version__ = "0.1.0"

if TYPE_CHECKING:
    from tollhouse.http.app import Tollhouse


def __getattr__(name: str) -> Any:
    # The server (SQLAlchemy, Starlette, uvicorn…) loads only when asked for: the SDK and
    # webhook receivers import `tollhouse.client` / `tollhouse.webhooks` without it.
    if name == "Tollhouse":
        from tollhouse.http.app import Tollhouse

        return Tollhouse
    raise AttributeError(f"module 'tollhouse' has no attribute {name!r}")
