"""The bundled example upstream: a small candidate-scoring API in the scoring API shape
(docs/api-shapes.md).

``create_app(database)`` builds it on a database (an engine or a URL);
``create_app_from_env()`` also reads its bounds and processing time from the environment
(``TOLLHOUSE_EXAMPLE_MAX_JOBS``, ``TOLLHOUSE_EXAMPLE_MAX_RESULTS``,
``TOLLHOUSE_EXAMPLE_PROCESSING_SECONDS``), as ``tollhouse serve`` and ``tollhouse example
serve`` do. Its state lives in tollhouse's database (:mod:`tollhouse.example.store`), so
any number of processes share it. :mod:`tollhouse.example.app` documents its endpoints,
the headers it reads from the gateway, and the ``x-example-delay-ms`` test hook.
"""

from __future__ import annotations

from tollhouse.example.app import create_app, create_app_from_env

__all__ = ["create_app", "create_app_from_env"]
