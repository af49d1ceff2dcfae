"""Operations: Prometheus metrics, readiness, and structured logs with the request id."""

from __future__ import annotations

from tollhouse.ops.logs import JsonFormatter, TextFormatter, log_config, request_id_var

__all__ = ["JsonFormatter", "TextFormatter", "log_config", "request_id_var"]
