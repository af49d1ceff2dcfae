"""Page cursors: where the next page of a listing starts.

A cursor is ``<number>_<text>``, the text as unpadded base64url of its UTF-8. Keyset
pages (the queue, the provider API's orgs, keys and audit) give the last item's time in
microseconds since the epoch and its id; call counts' series pages give 0 and the last
series' key. Clients pass ``nextCursor`` back unread.

Every string of :data:`tollhouse.identifiers.CURSOR`'s pattern decodes to a place — a
cursor from another listing or one made up is a page from that place on, not an error —
so the OpenAPI document's pattern is exactly what the routes accept.
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from typing import Final

from tollhouse.errors import BadRequest
from tollhouse.identifiers import CURSOR

__all__ = ["decode", "decode_keyset", "encode", "encode_keyset"]

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_LAST: Final = datetime.max.replace(tzinfo=UTC)


def encode(number: int, text: str) -> str:
    """The cursor of ``(number, text)``."""
    encoded = base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")
    return f"{number}_{encoded}"


def decode(cursor: str) -> tuple[int, str]:
    """The ``(number, text)`` of a cursor.

    A text that is not UTF-8 gets U+FFFD in place of what is not, and loses NUL
    characters (no database text holds one): still a place in the listing.

    Raises:
        BadRequest: ``cursor`` breaks the cursor rule (naming the parameter).
    """
    problem = CURSOR.problem(cursor)
    if problem is not None:
        raise BadRequest(
            f'query parameter "cursor" {problem}; pass the nextCursor of a previous page'
        )
    number, _, encoded = cursor.partition("_")
    raw = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
    return int(number), raw.decode("utf-8", "replace").replace("\x00", "")


def encode_keyset(at: datetime, item_id: str) -> str:
    """The cursor of the page after the item of time ``at`` and id ``item_id``."""
    return encode((at.astimezone(UTC) - _EPOCH) // timedelta(microseconds=1), item_id)


def decode_keyset(cursor: str) -> tuple[datetime, str]:
    """The ``(time, id)`` a keyset cursor points after (a time past year 9999 is read
    as the last one).

    Raises:
        BadRequest: ``cursor`` breaks the cursor rule.
    """
    micros, item_id = decode(cursor)
    try:
        return _EPOCH + timedelta(microseconds=micros), item_id
    except OverflowError:
        return _LAST, item_id
