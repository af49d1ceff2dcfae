"""Structured logs: the JSON formatter, and a real `tollhouse serve --log-format json`
whose log lines carry the request id and never an API key."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import httpx
import pytest

from tests.ops.support import cli, start_serve
from tollhouse.ops.logs import JsonFormatter, TextFormatter, log_config, redact, request_id_var


def _record(message: str, *args: object, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("tollhouse.test", logging.ERROR, __file__, 1, message, args, None)
    record.__dict__.update(extra)
    return record


def test_json_line_has_fields_request_id_and_no_secret() -> None:
    token = request_id_var.set("req_unit1")
    try:
        line = JsonFormatter().format(
            _record("key %s refused", "sk_live_AbC123xyz", delivery="del_1", secret="whsec_Zm9v")
        )
    finally:
        request_id_var.reset(token)
    data = json.loads(line)
    assert data["request_id"] == "req_unit1"
    assert data["level"] == "error"
    assert data["logger"] == "tollhouse.test"
    assert data["delivery"] == "del_1"
    assert data["message"] == "key sk_live_[redacted] refused"
    assert data["secret"] == "whsec_[redacted]"
    assert "AbC123xyz" not in line
    assert data["time"].endswith("Z")


def test_explicit_request_id_wins_and_outside_requests_there_is_none() -> None:
    assert "request_id" not in json.loads(JsonFormatter().format(_record("idle")))
    data = json.loads(JsonFormatter().format(_record("x", request_id="req_given")))
    assert data["request_id"] == "req_given"


def test_exception_is_logged_redacted() -> None:
    try:
        raise ValueError("bad key sk_test_secretvalue")
    except ValueError:
        record = logging.LogRecord("t", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    data = json.loads(JsonFormatter().format(record))
    assert "ValueError: bad key sk_test_[redacted]" in data["exc_info"]
    assert "secretvalue" not in data["exc_info"]


def test_text_line_carries_request_id() -> None:
    token = request_id_var.set("req_text1")
    try:
        line = TextFormatter().format(_record("hello", job="j1"))
    finally:
        request_id_var.reset(token)
    assert line.endswith("tollhouse.test: hello request_id=req_text1 job=j1")


def test_redact_leaves_other_text_alone() -> None:
    assert redact("plain sk text") == "plain sk text"
    assert redact("Bearer sk_test_abc-DEF_123") == "Bearer sk_test_[redacted]"


@pytest.mark.parametrize(("fmt", "level"), [("yaml", "info"), ("json", "loud")])
def test_log_config_refuses_unknown_values(fmt: str, level: str) -> None:
    with pytest.raises(ValueError, match="use one of"):
        log_config(fmt, level)  # type: ignore[arg-type]


@pytest.mark.integration
def test_serve_json_logs_carry_request_id_and_no_key(tmp_path: Path) -> None:
    config = tmp_path / "tollhouse.toml"
    config.write_text(
        f'[storage]\ndatabase_url = "sqlite:///{tmp_path}/t.db"\n'
        '[upstream]\napp = "tests.ops.failing_upstream:app"\n'
        '[[buckets]]\nname = "boom"\nlimit = 100\nwindow = "1m"\nroutes = ["GET /boom"]\n'
    )
    env = {"TOLLHOUSE_CONFIG": str(config)}
    secret = json.loads(cli(tmp_path, env, "keys", "create", "--org", "logs", "--json"))["key"]
    server = start_serve(tmp_path, env, "--log-format", "json", "--access-log")
    try:
        r = httpx.get(
            server.url + "/boom",
            headers={"Authorization": f"Bearer {secret}", "X-Request-Id": "req_test123"},
        )
        assert r.status_code == 500
        assert r.headers["x-request-id"] == "req_test123"
        assert r.json()["error"]["requestId"] == "req_test123"
        # A request id that is not an id is replaced by one of ours.
        odd = httpx.get(
            server.url + "/boom",
            headers={"Authorization": f"Bearer {secret}", "X-Request-Id": "no spaces <allowed>"},
        )
        assert odd.headers["x-request-id"].startswith("req_")
    finally:
        server.stop()
    stdout = server.stdout.read_text()
    lines = [json.loads(line) for line in stdout.splitlines() if line.strip()]
    assert lines, "no log lines on stdout"
    mine = [line for line in lines if line.get("request_id") == "req_test123"]
    failure = [line for line in mine if line["level"] == "error"]
    assert len(failure) == 1
    assert failure[0]["message"] == "inner app failed"
    assert "upstream exploded while serving Bearer sk_test_[redacted]" in failure[0]["exc_info"]
    access = [line for line in mine if line["logger"] == "uvicorn.access"]
    assert [(a["method"], a["path"], a["status"]) for a in access] == [("GET", "/boom", 500)]
    everything = stdout + server.stderr.read_text()
    assert secret not in everything
    assert secret.split("_", 2)[2] not in everything


def test_a_key_sent_as_request_id_is_masked() -> None:
    token = request_id_var.set("sk_live_sentasid")
    try:
        line = JsonFormatter().format(_record("x"))
    finally:
        request_id_var.reset(token)
    assert json.loads(line)["request_id"] == "sk_live_[redacted]"


@pytest.mark.parametrize(
    "text",
    [
        "GET /v1/things?api_key=sk%5Ftest%5FAbCdEfGh12345678 HTTP/1.1",  # percent-encoded
        "GET /v1/things?api_key=sk%5ftest%5fAbCdEfGh12345678",  # lower-case hex
        "key=%73%6B%5F%6C%69%76%65%5FAbCdEfGh12345678",  # every character encoded
        "next=%2Fcb%3Fk%3Dsk%255Flive%255FAbCdEfGh12345678",  # encoded twice
        "tokensk_live_AbCdEfGh12345678",  # inside a word: no word boundary needed
        "api_key_sk_test_AbCdEfGh12345678",
        '{"auth":"Bearer\\tsk_test_AbCdEfGh12345678"}',
        "whsec%5FZm9vYmFyAbCdEfGh12345678%2B%2F%3D",
    ],
)
def test_redact_catches_encoded_and_embedded_secrets(text: str) -> None:
    masked = redact(text)
    assert "AbCdEfGh12345678" not in masked
    assert "[redacted]" in masked


def test_data_loggers_stay_quiet_at_debug_unless_log_bodies() -> None:
    quiet = log_config("text", "debug")["loggers"]
    assert quiet["sqlalchemy"]["level"] == "WARNING"
    assert quiet["aiosqlite"]["level"] == quiet["websockets"]["level"] == "INFO"
    loud = log_config("text", "debug", log_bodies=True)["loggers"]
    assert loud["sqlalchemy"]["level"] == loud["aiosqlite"]["level"] == "DEBUG"
    # Never louder than the level asked for.
    assert log_config("json", "error")["loggers"]["aiosqlite"]["level"] == "ERROR"
