"""The bulk-scoring state file: resume bookkeeping, torn writes, one run at a time."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from tollhouse.client import JournalError
from tollhouse.client._journal import Journal


def lines(path: Path) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def test_a_new_file_gets_a_header_and_records(tmp_path: Path) -> None:
    path = tmp_path / "run.state"
    j = Journal(path)
    j.accepted([("job/a", "sj_a"), ("job/b", "sj_b")])
    j.finish("job/a", "completed")
    j.reject("job/c", "h1")
    j.close()
    header, *records = lines(path)
    assert header["v"] == 1 and header["run"] == j.run_id
    assert [r["s"] for r in records] == ["accepted", "accepted", "completed", "rejected"]
    again = Journal(path)
    assert again.run_id == j.run_id
    assert again.pending == {"job/b": "sj_b"}
    assert again.finished == {"job/a"}
    assert again.rejected == {"job/c": "h1"}
    again.close()


def test_a_torn_last_line_is_dropped(tmp_path: Path) -> None:
    path = tmp_path / "run.state"
    j = Journal(path)
    j.accepted([("job/a", "sj_a")])
    j.close()
    with path.open("ab") as f:
        f.write(b'{"k": "job/b", "id": "sj_')  # the process died mid-write
    j2 = Journal(path)
    assert j2.pending == {"job/a": "sj_a"}
    j2.accepted([("job/c", "sj_c")])
    j2.close()
    j3 = Journal(path)  # still readable: the torn bytes were cut, not buried
    assert j3.pending == {"job/a": "sj_a", "job/c": "sj_c"}
    j3.close()


def test_a_damaged_or_foreign_file_is_refused(tmp_path: Path) -> None:
    foreign = tmp_path / "candidates.jsonl"
    foreign.write_text('{"applicationId": "a"}\n')
    with pytest.raises(JournalError, match="not a tollhouse"):
        Journal(foreign)
    assert foreign.read_text() == '{"applicationId": "a"}\n'  # untouched
    damaged = tmp_path / "damaged.state"
    damaged.write_text('{"v": 1, "run": "r"}\nnot json\n{"k": "x", "s": "completed"}\n')
    with pytest.raises(JournalError, match=":2: not a JSON line"):
        Journal(damaged)


def test_one_run_at_a_time(tmp_path: Path) -> None:
    path = tmp_path / "run.state"
    first = Journal(path)
    try:
        with pytest.raises(JournalError, match="in use"):
            Journal(path)
    finally:
        first.close()
    Journal(path).close()


def test_in_memory_journal(tmp_path: Path) -> None:
    j = Journal(None)
    j.accepted([("k", "sj")])
    j.finish("k", "failed")
    assert j.finished == {"k"} and not j.pending
    j.close()
