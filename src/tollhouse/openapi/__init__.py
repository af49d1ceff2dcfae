"""tollhouse's OpenAPI 3.1 document (served at ``/v1/platform/openapi.json``)."""

from __future__ import annotations

from tollhouse.openapi.document import OPENAPI_PATH, build_document, query_parameters

__all__ = ["OPENAPI_PATH", "build_document", "query_parameters"]
