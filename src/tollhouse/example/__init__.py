"""The bundled example upstream: a small candidate-scoring API in the scoring API shape
(docs/api-shapes.md).

``create_app(database)`` builds it on a database (an engine or a URL);
``create_app_from_env()`` also reads its bounds and processing time from the environment
(``TOLLHOUSE_EXAMPLE_MAX_JOBS``, ``TOLLHOUSE_EXAMPLE_MAX_RESULTS``,
``TOLLHOUSE_EXAMPLE_PROCESSING_SECONDS``), as ``tollhouse serve`` and ``tollhouse example
serve`` do. Its state lives in tollhouse's database (:mod:`tollhouse.example.store`), so
any number of processes share it. :mod:`tollhouse.example.app` documents its endpoints,
the headers it reads from the gateway, and the ``x-example-delay-ms`` test hook.

The app is loaded when first asked for (``from tollhouse.example import create_app``),
not with the package: the example's tables (:mod:`tollhouse.example.schema`) are one step
of :mod:`tollhouse.schema`, which its store in turn uses to migrate, so loading the app
with the package would make the schema and the app import each other.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["create_app", "create_app_from_env"]

if TYPE_CHECKING:
    from tollhouse.example.app import create_app, create_app_from_env


def __getattr__(name: str) -> Any:
    # PEP 562: runs on first access, once this package is initialised.
    if name in __all__:
        from tollhouse.example import app

        return getattr(app, name)
    raise AttributeError(f"module 'tollhouse.example' has no attribute {name!r}")
