"""The bundled example upstream: a small Nova-like candidate-scoring API.

``create_app()`` builds it (``create_app_from_env()`` with its memory bounds from
``TOLLHOUSE_EXAMPLE_MAX_JOBS`` / ``TOLLHOUSE_EXAMPLE_MAX_RESULTS``, as ``tollhouse serve``
does); :mod:`tollhouse.example.app` documents its endpoints, the headers
it reads from the gateway, and the ``x-example-delay-ms`` test hook.
"""

from __future__ import annotations

from tollhouse.example.app import create_app, create_app_from_env

__all__ = ["create_app", "create_app_from_env"]
