"""benchmarks/soak.py is not run by the suite; its arguments are checked here."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

SOAK = Path(__file__).resolve().parents[2] / "benchmarks" / "soak.py"


def _soak() -> ModuleType:
    spec = importlib.util.spec_from_file_location("soak", SOAK)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["soak"] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_defaults_and_quick_run() -> None:
    soak = _soak()
    assert soak.parse_args([]).minutes == 10
    quick = soak.parse_args(["--minutes", "1", "--without", "score", "--without", "poll"])
    assert quick.minutes == 1
    assert quick.without == ["score", "poll"]


@pytest.mark.parametrize(
    "argv",
    [
        ["--minutes", "0"],
        ["--rate", "-1"],
        ["--orgs", "0"],
        ["--without", "nope"],
        [
            arg
            for kind in ("criteria", "score", "poll", "status", "volume", "counts")
            for arg in ("--without", kind)
        ],
    ],
)
def test_bad_arguments_are_refused(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        _soak().parse_args(argv)
    assert exc.value.code == 2
