"""The one reader of JSON request bodies, for every route tollhouse and its bundled
example answer: parsed by orjson, then refused when nested deeper than
:data:`MAX_DEPTH` levels of arrays and objects.

The limit is far above any body tollhouse's routes take and below what the rest of the
code can handle: orjson writes at most 254 levels back out (a job's payload is stored
as JSON), and a recursive walk would meet Python's recursion limit near 1 000. Without
it such a document was a 500 (docs/security.md, request limits).
"""

from __future__ import annotations

from typing import Any, Final

import orjson

from tollhouse.errors import BadRequest

__all__ = ["MAX_DEPTH", "depth_exceeds", "json_integer", "read_json", "read_object"]

#: Deepest nesting of arrays and objects read (the top-level value is level 1).
MAX_DEPTH: Final = 64


def depth_exceeds(value: Any, limit: int = MAX_DEPTH) -> bool:
    """True when a parsed JSON value nests arrays and objects more than ``limit`` deep.

    Iterative (no recursion), and free for small documents: a value with at most
    ``limit`` containers in all cannot be deeper.
    """
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, level = stack.pop()
        children = item.values() if isinstance(item, dict) else item
        if level > limit:
            return True
        for child in children:
            if isinstance(child, dict | list):
                stack.append((child, level + 1))
    return False


def read_json(raw: bytes) -> Any:
    """A request body parsed as JSON.

    Raises:
        BadRequest: the body is not JSON, or nests deeper than :data:`MAX_DEPTH` (400).
    """
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        if "depth limit" in str(exc):  # orjson stops at 1 024 levels
            raise _too_deep() from None
        raise BadRequest(f"request body is not valid JSON: {exc}") from None
    # Counting brackets is C-fast; a body with few of them needs no walk.
    if (
        isinstance(value, dict | list)
        and raw.count(b"[") + raw.count(b"{") > MAX_DEPTH
        and depth_exceeds(value)
    ):
        raise _too_deep()
    return value


def read_object(raw: bytes) -> dict[str, Any]:
    """A request body that must be a JSON object (see :func:`read_json`).

    Raises:
        BadRequest: the body is empty, not JSON, too deep, or JSON but not an object.
    """
    if not raw.strip():
        raise BadRequest("request body is empty; send a JSON object")
    value = read_json(raw)
    if not isinstance(value, dict):
        raise BadRequest(f"request body must be a JSON object, not {json_type(value)}")
    return value


def json_integer(value: object) -> int | None:
    """``value`` as an integer when JSON Schema's ``integer`` admits it — a number
    without a fraction, ``1800.0`` as well as ``1800`` — else None (booleans too, which
    Python counts as ints)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def json_type(value: object) -> str:
    """The JSON name of a parsed value's type, for messages (``an array``)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _too_deep() -> BadRequest:
    return BadRequest(
        f"request body is nested too deep: at most {MAX_DEPTH} levels of arrays and "
        "objects are read"
    )
