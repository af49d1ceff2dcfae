"""`tollhouse status` and `tollhouse score` over the SDK, against the real server."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
import typer
from typer.testing import CliRunner

from tests.client.conftest import KeyMaker
from tests.conftest import Server
from tollhouse.cli import score, status
from tollhouse.client import Client

pytestmark = pytest.mark.integration

app = typer.Typer()
app.command("status")(status.status)
app.command("score")(score.score)


@pytest.fixture(scope="module")
def keys(make_keys: KeyMaker) -> dict[tuple[str, str], dict[str, str]]:
    return make_keys([("cli-status", "member"), ("cli-score", "root")])


def test_status_table_and_json(
    keys: dict[tuple[str, str], dict[str, str]], default_server: Server
) -> None:
    key = keys[("cli-status", "member")]
    runner = CliRunner()
    shown = runner.invoke(app, ["status", "--api-key", key["key"], "--url", default_server.url])
    assert shown.exit_code == 0, shown.output
    for text in (key["org"], "SANDBOX", "rate_limit_status", "criteria_ai_inflight", "remaining"):
        assert text in shown.stdout
    env = {"TOLLHOUSE_API_KEY": key["key"], "TOLLHOUSE_URL": default_server.url}
    as_json = runner.invoke(app, ["status", "--json"], env=env)
    assert as_json.exit_code == 0, as_json.output
    body = orjson.loads(as_json.stdout)
    assert body["partnerId"] == key["org"] and body["degraded"] is False
    assert body["buckets"]["rate_limit_status"]["limit"] == 2 and "categories" in body


def test_status_errors(
    default_server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # no demo key here to fall back on
    runner = CliRunner()
    bad = runner.invoke(app, ["status", "--api-key", "sk_test_wrong", "--url", default_server.url])
    assert bad.exit_code == 1 and "UNAUTHORIZED" in bad.stderr
    missing = runner.invoke(app, ["status"], env={"TOLLHOUSE_API_KEY": ""})
    assert missing.exit_code == 2 and "--api-key" in missing.stderr


def test_status_falls_back_on_the_local_demo_key(
    keys: dict[tuple[str, str], dict[str, str]],
    default_server: Server,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    key = keys[("cli-status", "member")]
    (tmp_path / ".tollhouse").mkdir()
    (tmp_path / ".tollhouse" / "demo-key").write_text(key["key"] + "\n")
    monkeypatch.chdir(tmp_path)
    shown = CliRunner().invoke(
        app, ["status", "--url", default_server.url, "--json"], env={"TOLLHOUSE_API_KEY": None}
    )
    assert shown.exit_code == 0, shown.output
    assert orjson.loads(shown.stdout)["partnerId"] == key["org"]
    assert "demo key" in shown.stderr


def test_score_file_with_resume(
    keys: dict[tuple[str, str], dict[str, str]], default_server: Server, tmp_path: Path
) -> None:
    key = keys[("cli-score", "root")]
    with Client(key["key"], default_server.url, tenant_id="acme") as client:
        client.criteria.generate("job_cli", "Data Engineer", "Python, Spark and SQL; 3 years.")
    file = tmp_path / "candidates.jsonl"
    rows = [
        {
            "applicationId": f"a{i}",
            "candidate": {"name": f"C{i}", "resume": "Spark and SQL, 4 years."},
        }
        for i in range(6)
    ]
    rows.append({"applicationId": "bad", "candidate": {"name": "No resume"}})
    file.write_text("".join(orjson.dumps(r).decode() + "\n" for r in rows) + "\n")
    state, out = tmp_path / "run.state", tmp_path / "out.jsonl"
    args = [
        "score", "--file", str(file), "--resume", str(state), "--job-id", "job_cli",
        "--tenant", "acme", "--chunk-size", "3", "-o", str(out),
        "--api-key", key["key"], "--url", default_server.url,
    ]  # fmt: skip
    runner = CliRunner()
    first = runner.invoke(app, args)
    assert first.exit_code == 1, first.output  # one candidate was rejected
    results = [orjson.loads(line) for line in out.read_text().splitlines()]
    by_status = sorted((r["status"], r["applicationId"]) for r in results)
    assert by_status == [("completed", f"a{i}") for i in range(6)] + [("rejected", "bad")]
    assert all(r["score"] is not None for r in results if r["status"] == "completed")
    assert "6 completed" in first.stderr and "1 rejected" in first.stderr

    again = runner.invoke(app, args)
    assert again.exit_code == 0, again.output
    assert "7 skipped" in again.stderr and "0 submitted now" in again.stderr
    assert len(out.read_text().splitlines()) == 7  # nothing new to report


def test_score_refuses_a_bad_file_before_sending(tmp_path: Path, default_server: Server) -> None:
    file = tmp_path / "bad.jsonl"
    file.write_text('{"applicationId": "a"}\nnot json\n')
    runner = CliRunner()
    result = runner.invoke(
        app, ["score", "--file", str(file), "--api-key", "sk_test_x", "--url", default_server.url]
    )
    assert result.exit_code == 2 and "bad.jsonl:2" in result.stderr
