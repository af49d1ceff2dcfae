"""Typed reads from JSON bodies: every mismatch names its path and raises
:class:`~tollhouse.client.UnexpectedResponse`, so a changed server fails loudly and
precisely instead of handing out half-filled models."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from tollhouse.client._errors import UnexpectedResponse


class Fields:
    """One JSON object of a response body, read field by field.

    Args:
        data: the object (anything else raises at once).
        path: where it sits in the body (``""`` for the top), for messages.
        body: the whole body, attached to the exception.
    """

    __slots__ = ("body", "data", "path")

    def __init__(self, data: Any, path: str = "", body: Any = None) -> None:
        self.body = data if body is None else body
        self.path = path
        if not isinstance(data, Mapping):
            raise self._error("", f"expected an object, got {_kind(data)}")
        self.data: Mapping[str, Any] = data

    def _error(self, key: str, problem: str) -> UnexpectedResponse:
        where = f"{self.path}.{key}" if self.path and key else (key or self.path or "body")
        return UnexpectedResponse(f"{where}: {problem}", body=self.body)

    def _get(self, key: str) -> Any:
        if key not in self.data:
            raise self._error(key, "missing")
        return self.data[key]

    def has(self, key: str) -> bool:
        """Whether ``key`` is present and not null."""
        return self.data.get(key) is not None

    def text(self, key: str) -> str:
        """A required string."""
        value = self._get(key)
        if not isinstance(value, str):
            raise self._error(key, f"expected a string, got {_kind(value)}")
        return value

    def opt_text(self, key: str) -> str | None:
        """A string, or None when absent or null."""
        return self.text(key) if self.has(key) else None

    def integer(self, key: str) -> int:
        """A required integer (a float with no fraction is accepted)."""
        value = self._get(key)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self._error(key, f"expected an integer, got {_kind(value)}")
        if isinstance(value, float):
            if not value.is_integer():
                raise self._error(key, f"expected an integer, got {value}")
            return int(value)
        return value

    def opt_integer(self, key: str) -> int | None:
        """An integer, or None when absent or null."""
        return self.integer(key) if self.has(key) else None

    def number(self, key: str) -> float:
        """A required number."""
        value = self._get(key)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self._error(key, f"expected a number, got {_kind(value)}")
        return float(value)

    def opt_number(self, key: str) -> float | None:
        """A number, or None when absent or null."""
        return self.number(key) if self.has(key) else None

    def flag(self, key: str, default: bool | None = None) -> bool:
        """A boolean; ``default`` when absent (required when no default)."""
        if default is not None and key not in self.data:
            return default
        value = self._get(key)
        if not isinstance(value, bool):
            raise self._error(key, f"expected true or false, got {_kind(value)}")
        return value

    def obj(self, key: str) -> Fields:
        """A required nested object."""
        return Fields(self._get(key), self._sub(key), self.body)

    def opt_obj(self, key: str) -> Fields | None:
        """A nested object, or None when absent or null."""
        return self.obj(key) if self.has(key) else None

    def mapping(self, key: str) -> dict[str, Any]:
        """A nested object as a plain dict (free-form data such as a job's result)."""
        return dict(self.obj(key).data)

    def items(self, key: str) -> list[Any]:
        """A required array."""
        value = self._get(key)
        if not isinstance(value, list):
            raise self._error(key, f"expected an array, got {_kind(value)}")
        return value

    def objects(self, key: str) -> list[Fields]:
        """A required array of objects."""
        return [
            Fields(item, f"{self._sub(key)}[{i}]", self.body)
            for i, item in enumerate(self.items(key))
        ]

    def texts(self, key: str) -> tuple[str, ...]:
        """A required array of strings."""
        out = self.items(key)
        for i, item in enumerate(out):
            if not isinstance(item, str):
                raise self._error(f"{key}[{i}]", f"expected a string, got {_kind(item)}")
        return tuple(out)

    def numbers(self, key: str) -> tuple[float, ...]:
        """A required array of numbers."""
        out = []
        for i, item in enumerate(self.items(key)):
            if isinstance(item, bool) or not isinstance(item, int | float):
                raise self._error(f"{key}[{i}]", f"expected a number, got {_kind(item)}")
            out.append(float(item))
        return tuple(out)

    def when(self, key: str) -> datetime:
        """A required ISO 8601 time, as an aware UTC datetime."""
        raw = self.text(key)
        try:
            moment = datetime.fromisoformat(raw)
        except ValueError:
            raise self._error(key, f"expected an ISO 8601 time, got {raw!r}") from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return moment.astimezone(UTC)

    def opt_when(self, key: str) -> datetime | None:
        """An ISO 8601 time, or None when absent or null."""
        return self.when(key) if self.has(key) else None

    def _sub(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key


def _kind(value: Any) -> str:
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
    if isinstance(value, Mapping):
        return "an object"
    return type(value).__name__
