"""Fixtures of the example tests: ``database_url``, a fresh database on SQLite and on
PostgreSQL (marked ``postgres``), as the storage tests use (tests/storage/support.py)."""

from __future__ import annotations

from tests.storage.support import database_url

__all__ = ["database_url"]
