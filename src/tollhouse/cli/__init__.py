"""The ``tollhouse`` command: a thin layer that parses, loads settings and calls the library."""

from __future__ import annotations

from tollhouse.cli.main import app, main

__all__ = ["app", "main"]
