"""Logging for operators: one JSON object per line (or plain text), each carrying the
request id of the request it was written for.

The gateway sets :data:`request_id_var` once per request (uvicorn runs every request in
its own task, so the value never leaks into another request). Both formatters read it,
so a log line written anywhere below the gateway — the proxy, the platform app, the jobs
app, uvicorn's access log — names its request without being passed the id.

Secrets never reach the output: anything shaped like an API key (``sk_test_…``,
``sk_live_…``) or a webhook secret (``whsec_…``) is masked in messages, tracebacks and
extra fields — also percent-encoded (``sk%5Ftest%5F…``) and inside other text. SQL
parameters, fetched rows and request bodies are not logged at any level unless
``--log-bodies`` says so (:data:`DATA_LOGGERS`).
"""

from __future__ import annotations

import logging
import re
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, Literal

import orjson

LogFormat = Literal["json", "text"]
LOG_FORMATS: tuple[LogFormat, ...] = ("json", "text")
LOG_LEVELS = ("critical", "error", "warning", "info", "debug")

#: The id of the request being answered in this task (``""`` outside requests).
request_id_var: ContextVar[str] = ContextVar("tollhouse_request_id", default="")


def _spelled(literal: str) -> str:
    """A pattern for ``literal`` with any of its characters percent-encoded, once
    (``_`` → ``%5F``) or twice (``%255F``), in either case of hex digit."""
    out = []
    for ch in literal:
        code = f"{ord(ch):02X}"
        high, low = code[0], code[1]
        low_set = low + low.lower() if low.isalpha() else low
        out.append(f"(?:{re.escape(ch)}|%(?:25)?{high}[{low_set}])")
    return "".join(out)


#: A key (``sk_test_…``, ``sk_live_…``) or webhook secret (``whsec_…``), also when
#: percent-encoded (``sk%5Ftest%5F…`` in a query string, a logged URL) and wherever it
#: stands — inside a word, a URL, a JSON string: no word boundary is asked for.
_SECRET = re.compile(
    "(" + "|".join(_spelled(p) for p in ("sk_test_", "sk_live_", "whsec_")) + ")"
    r"(?:[A-Za-z0-9+/=_\-]|%(?:25)?[0-9A-Fa-f]{2})+"
)
# Attributes every LogRecord has: anything else was passed as ``extra``.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message",
    "asctime",
    "taskName",
    "request_id",
    "color_message",  # uvicorn's ANSI-coloured copy of the message
}


def redact(text: str) -> str:
    """``text`` with API keys and webhook secrets masked, plain, percent-encoded or
    embedded in other text (the prefix stays, the secret goes)."""
    if "sk" not in text and "whsec" not in text and "%" not in text:
        return text
    return _SECRET.sub(r"\1[redacted]", text)


def _request_id(record: logging.LogRecord) -> str:
    given = getattr(record, "request_id", None)
    # Redacted too: a caller may send anything id-shaped as its X-Request-Id.
    return redact(given if isinstance(given, str) and given else request_id_var.get())


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ``time``, ``level``, ``logger``, ``message``,
    ``request_id`` (inside a request), the record's ``extra`` fields, ``exc_info``.

    uvicorn's access log lines also get ``client``, ``method``, ``path``,
    ``http_version`` and ``status`` as fields.
    """

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        request_id = _request_id(record)
        if request_id:
            out["request_id"] = request_id
        args = record.args
        if record.name == "uvicorn.access" and isinstance(args, tuple) and len(args) == 5:
            client, method, path, version, status = args
            out.update(
                client=client,
                method=method,
                path=redact(str(path)),
                http_version=version,
                status=status,
            )
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = redact(value) if isinstance(value, str) else value
        if record.exc_info:
            out["exc_info"] = redact(self.formatException(record.exc_info))
        elif record.exc_text:
            out["exc_info"] = redact(record.exc_text)
        return orjson.dumps(out, default=str).decode()


class TextFormatter(logging.Formatter):
    """``time level logger: message key=value…``, with ``request_id=`` inside a request."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = [
            f"{key}={value}"
            for key, value in record.__dict__.items()
            if key not in _STANDARD and not key.startswith("_")
        ]
        request_id = _request_id(record)
        if request_id:
            fields.insert(0, f"request_id={request_id}")
        if fields:
            head, sep, tail = line.partition("\n")
            line = f"{head} {' '.join(fields)}{sep}{tail}"
        return redact(line)


#: Loggers of libraries that write data, and the level they are held at unless
#: ``--log-bodies``: SQLAlchemy logs statements at INFO and fetched rows at DEBUG (it holds
#: its loggers at WARNING itself; kept so even at ``--log-level debug``), aiosqlite every
#: call with its parameters at DEBUG, websockets every frame's content at DEBUG.
#: Parameters, rows and frames hold key hashes, webhook secrets and request bodies.
DATA_LOGGERS: dict[str, int] = {
    "sqlalchemy": logging.WARNING,
    "aiosqlite": logging.INFO,
    "websockets": logging.INFO,
}


def _at_least(name: str, floor: int) -> str:
    """The more severe of level ``name`` and ``floor``, as a level name."""
    return name if logging.getLevelName(name) >= floor else logging.getLevelName(floor)


def log_config(
    log_format: LogFormat = "text", level: str = "info", *, log_bodies: bool = False
) -> dict[str, Any]:
    """A :func:`logging.config.dictConfig` for the server (also handed to uvicorn, which
    applies it in every worker process): tollhouse's loggers, uvicorn's and the access
    log through one formatter — JSON on stdout, or text on stderr.

    Args:
        log_format: ``json`` or ``text``.
        level: ``critical``, ``error``, ``warning``, ``info`` or ``debug``.
        log_bodies: let :data:`DATA_LOGGERS` log at ``level`` (SQL statements with their
            parameters, rows, WebSocket frames); off by default, at every level.

    Raises:
        ValueError: an unknown format or level.
    """
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format {log_format!r}: use one of {', '.join(LOG_FORMATS)}")
    if level.lower() not in LOG_LEVELS:
        raise ValueError(f"log level {level!r}: use one of {', '.join(LOG_LEVELS)}")
    name = level.upper()
    formatter = (
        "tollhouse.ops.logs.JsonFormatter"
        if log_format == "json"
        else ("tollhouse.ops.logs.TextFormatter")
    )
    stream = "ext://sys.stdout" if log_format == "json" else "ext://sys.stderr"
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"tollhouse": {"()": formatter}},
        "handlers": {
            "tollhouse": {
                "class": "logging.StreamHandler",
                "formatter": "tollhouse",
                "stream": stream,
            }
        },
        "loggers": {
            "uvicorn": {"handlers": ["tollhouse"], "level": name, "propagate": False},
            "uvicorn.error": {"level": name},
            "uvicorn.access": {"handlers": ["tollhouse"], "level": name, "propagate": False},
            # One line per webhook and proxied upstream call would drown the rest.
            "httpx": {"level": "WARNING"},
            "httpcore": {"level": "WARNING"},
            **{
                logger: {"level": name if log_bodies else _at_least(name, floor)}
                for logger, floor in DATA_LOGGERS.items()
            },
        },
        "root": {"handlers": ["tollhouse"], "level": name},
    }
