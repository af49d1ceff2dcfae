"""The repository explains itself: no text points at documents a reader cannot open.

The API shapes tollhouse reproduces are named and described in docs/api-shapes.md; code,
docs, tests and benchmarks refer to them by those names ("the scoring API shape", "the
call-counts shape", …), never by the numbers or sections of documents outside the
repository.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
THIS = Path(__file__).resolve().relative_to(ROOT).as_posix()

#: What is checked: these folders and files, as git lists them (tracked, or new and not
#: ignored).
CHECKED = ("src", "docs", "tests", "benchmarks", "clients", "README.md")

#: References to documents outside the repository.
FORBIDDEN = re.compile(r"seeds?[ _-]00|DESIGN\s*§|DESIGN\.md|\.\./shared", re.IGNORECASE)

#: Paths left out of the check (none: the whole repository speaks of itself).
SKIPPED: tuple[str, ...] = ()


def _files() -> list[str]:
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z", "--", *CHECKED],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    return sorted({name for name in listed.split("\0") if name})


def _skipped(name: str) -> bool:
    return name == THIS or any(
        name.startswith(s) if s.endswith("/") else name == s for s in SKIPPED
    )


def test_no_references_to_documents_outside_the_repository() -> None:
    files = _files()
    assert any(name.startswith("src/") for name in files), "git listed no files under src/"
    found = []
    for name in files:
        if _skipped(name):
            continue
        path = ROOT / name
        if not path.is_file():
            continue  # deleted in the work tree
        data = path.read_bytes()
        if b"\0" in data:
            continue  # binary
        text = data.decode("utf-8", errors="replace")
        for number, line in enumerate(text.splitlines(), start=1):
            if FORBIDDEN.search(line):
                found.append(f"{name}:{number}: {line.strip()}")
    assert not found, (
        "These lines cite documents outside the repository; name the API shape instead "
        "(docs/api-shapes.md):\n" + "\n".join(found)
    )


def test_the_pattern_catches_what_it_should() -> None:
    for text in (
        "seed 001",
        "Seeds 002 and 004",
        "seed-002 `buckets`",
        "test_seed_003",
        "DESIGN §3.5",
        "see DESIGN.md",
        "../shared/notes",
    ):
        assert FORBIDDEN.search(text), text
    for text in ("a seeded RNG", "seed=3", "seed_calls(meter)", "the scoring API shape"):
        assert not FORBIDDEN.search(text), text
