"""Fixtures of the fair-use tests (see tests/storage/support.py)."""

from __future__ import annotations

from tests.storage.support import database_url

__all__ = ["database_url"]
