"""``python -m tollhouse`` runs the CLI."""

from __future__ import annotations

from tollhouse.cli import main

main()
