"""The bundled example upstream: a small Nova-like candidate-scoring API.

``create_app()`` builds it; :mod:`tollhouse.example.app` documents its endpoints, the headers
it reads from the gateway, and the ``x-example-delay-ms`` test hook.
"""

from __future__ import annotations

from tollhouse.example.app import create_app

__all__ = ["create_app"]
