"""The bounded memo behind the hot path's per-request lookups."""

from __future__ import annotations

from tollhouse.memo import remember


def test_remembered_values_are_returned_and_found() -> None:
    memo: dict[str, int] = {}

    assert remember(memo, 4, "a", 1) == 1
    remember(memo, 4, "b", 2)

    assert memo.get("a") == 1
    assert memo.get("b") == 2
    assert memo.get("c") is None
    assert len(memo) == 2


def test_a_full_memo_is_emptied_by_the_next_insert() -> None:
    memo: dict[int, int] = {}
    for i in range(3):
        remember(memo, 3, i, i * 10)
    assert memo == {0: 0, 1: 10, 2: 20}  # full, nothing evicted yet

    remember(memo, 3, 3, 30)

    assert memo == {3: 30}


def test_a_flood_never_holds_more_than_the_bound() -> None:
    memo: dict[int, int] = {}
    largest = 0
    for i in range(10_000):
        remember(memo, 100, i, i)
        largest = max(largest, len(memo))

    assert largest == 100
    assert memo.get(9_999) == 9_999  # the latest insert is always kept


def test_a_memo_over_its_bound_is_brought_back_under_it() -> None:
    """A memo filled past the bound some other way (a bound lowered between calls) is
    emptied by the next insert, not grown further."""
    memo = {i: i for i in range(10)}

    remember(memo, 4, 10, 10)

    assert memo == {10: 10}
