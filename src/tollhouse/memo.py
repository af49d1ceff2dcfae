"""Bounded memos: values the hot path would otherwise rebuild per request, remembered up
to a fixed number of entries.

The gateway remembers what it derives from what callers send — a secret's digest, a
route's match, a caller's checks, the proxy's forwarded header lines — and callers choose
what they send: a flood of distinct keys, paths or ``Host`` values must not grow memory
without bound. A memo is a plain ``dict`` that is read with ``memo.get(key)`` and written
only through :func:`remember`, which empties a full memo before inserting: it never holds
more than its bound.

Why empty it all rather than evict the least recently used entry: every value here is
recomputable and the entries that matter (the few callers sending most requests) are back
after one rebuild each, while LRU would cost bookkeeping on every hit (an
``OrderedDict.move_to_end``, or a pop and re-insert) to make a flood, the rare case,
cheaper. Evicting the oldest insert instead is no cheaper either: CPython walks past the
deleted slots at the front of a dict to find the next oldest one.

Why a function over a plain ``dict`` and not a mapping class: CPython 3.11 specialises
``dict.get`` only for an exact ``dict`` (on a subclass a lookup took about 10 ns more,
measured), and a class holding the dict adds an attribute load to every hit (about 2.5 ns,
measured); a per-request lookup pays neither this way. No lock: a memo belongs to one
event loop.
"""

from __future__ import annotations

from typing import TypeVar

__all__ = ["remember"]

K = TypeVar("K")
V = TypeVar("V")


def remember(memo: dict[K, V], bound: int, key: K, value: V) -> V:
    """Put ``value`` in ``memo`` under ``key``, emptying ``memo`` first when it holds
    ``bound`` entries or more, so that it never holds more than ``bound``.

    Args:
        memo: the memo (looked up with ``memo.get(key)``).
        bound: most entries ``memo`` may hold (at least 1).
        key: what ``value`` was derived from.
        value: the value to remember.

    Returns:
        ``value``.
    """
    if len(memo) >= bound:
        memo.clear()
    memo[key] = value
    return value
