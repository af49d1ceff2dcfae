"""The CLI as a user runs it: a real process, a real SQLite file in a temp folder."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx

from tests.conftest import free_port, run_cli, start_server, stop_server


def test_keys_create_json_contract(tmp_path: Path) -> None:
    out = run_cli(
        "keys",
        "create",
        "--org",
        "acme",
        "--role",
        "manager",
        "--name",
        "ci",
        "--json",
        cwd=tmp_path,
    )
    data = json.loads(out.stdout)
    assert {"id", "key", "org", "environment", "role", "name"} <= set(data)
    assert data["key"].startswith("sk_test_")
    assert data["id"].startswith("key_")
    assert (data["org"], data["environment"], data["role"], data["name"]) == (
        "acme",
        "test",
        "manager",
        "ci",
    )
    live = json.loads(
        run_cli("keys", "create", "--org", "acme", "--env", "live", "--json", cwd=tmp_path).stdout
    )
    assert live["key"].startswith("sk_live_") and live["environment"] == "live"
    assert live["role"] == "member"


def test_keys_list_and_revoke(tmp_path: Path) -> None:
    a = json.loads(run_cli("keys", "create", "--org", "a", "--json", cwd=tmp_path).stdout)
    b = json.loads(run_cli("keys", "create", "--org", "b", "--json", cwd=tmp_path).stdout)
    listed = json.loads(run_cli("keys", "list", "--json", cwd=tmp_path).stdout)
    assert {k["id"] for k in listed} == {a["id"], b["id"]}
    assert all("key" not in k for k in listed)  # the secret is never shown again
    only_a = json.loads(run_cli("keys", "list", "--org", "a", "--json", cwd=tmp_path).stdout)
    assert [k["id"] for k in only_a] == [a["id"]]
    table = run_cli("keys", "list", cwd=tmp_path).stdout
    assert a["id"] in table and a["key"] not in table
    revoked = json.loads(run_cli("keys", "revoke", a["id"], "--json", cwd=tmp_path).stdout)
    assert revoked["revoked_at"]
    missing = run_cli("keys", "revoke", "key_nope", cwd=tmp_path, check=False)
    assert missing.returncode == 1 and "no key with id" in missing.stderr


def test_tables_printed_to_a_pipe_are_never_cut(tmp_path: Path) -> None:
    # Rich assumes 80 columns without a terminal and would end long cells with "…".
    org = "an-organisation-whose-id-is-long-enough-to-overflow-the-table"
    name = "the key the nightly export job uses to read usage"
    made = json.loads(
        run_cli("keys", "create", "--org", org, "--name", name, "--json", cwd=tmp_path).stdout
    )
    table = run_cli("keys", "list", cwd=tmp_path).stdout
    assert made["id"] in table and org in table and name in table
    assert table.count("…") == 1 and made["prefix"] + "…" in table  # the prefix's own


def test_keys_create_bad_input(tmp_path: Path) -> None:
    for args, words in [
        (("--org", "acme", "--env", "prod"), "--env"),
        (("--org", "acme", "--role", "admin"), "--role"),
        (("--org", "bad org!"), "--org"),
    ]:
        proc = run_cli("keys", "create", *args, cwd=tmp_path, check=False)
        assert proc.returncode == 2
        assert words in proc.stderr


def test_cli_and_server_share_settings(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path}/elsewhere.db"
    env = {"TOLLHOUSE_DATABASE_URL": db}
    run_cli("keys", "create", "--org", "x", cwd=tmp_path, env=env)
    listed = json.loads(run_cli("keys", "list", "--json", cwd=tmp_path, env=env).stdout)
    assert len(listed) == 1
    assert (tmp_path / "elsewhere.db").exists()
    assert not (tmp_path / ".tollhouse").exists()
    # The flag beats the environment.
    flag = run_cli(
        "keys",
        "list",
        "--json",
        "--database-url",
        f"sqlite:///{tmp_path}/f.db",
        cwd=tmp_path,
        env=env,
    )
    assert json.loads(flag.stdout) == []


def test_bad_policy_fails_at_start_naming_file_and_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(
        '[[buckets]]\nname = "x"\nlimit = 5\nwindow = "fortnight"\nroutes = ["GET /x"]\n'
    )
    proc = run_cli("serve", "--config", str(bad), "--port", "1", cwd=tmp_path, check=False)
    assert proc.returncode == 2
    assert "bad.toml: buckets[0].window" in proc.stderr.replace("\n", "")
    assert "Traceback" not in proc.stderr


def test_workers_without_redis_refused(tmp_path: Path) -> None:
    proc = run_cli("serve", "--workers", "2", cwd=tmp_path, check=False)
    assert proc.returncode == 2
    assert "needs Redis" in proc.stderr.replace("\n", " ")


def test_serve_prints_where_to_look_and_a_key_to_try(tmp_path: Path) -> None:
    server = start_server(tmp_path)
    try:
        key = (tmp_path / ".tollhouse" / "demo-key").read_text().strip()
        assert key.startswith("sk_test_")
    finally:
        stop_server(server)
    printed = server.output()
    assert server.url in printed
    assert key in printed
    assert "/v1/rate-limit/status" in printed
    # Printed to a pipe (no terminal width), every line stays whole for copying.
    assert f"dashboard: {server.url}/dashboard (sign in with a root or manager key)" in printed
    # The next start reuses the same demo key.
    again = start_server(tmp_path)
    stop_server(again)
    assert key in again.output()


def test_services_run_on_uvloop_and_commands_on_asyncio() -> None:
    from tollhouse.cli.common import run

    async def loop_module() -> str:
        return type(asyncio.get_running_loop()).__module__

    assert run(loop_module, service=True).startswith("uvloop")
    assert run(loop_module).startswith("asyncio")


def test_serve_refuses_a_keep_alive_out_of_range(tmp_path: Path) -> None:
    for value in ("0", "-1", "3601"):
        proc = run_cli("serve", "--keep-alive", value, cwd=tmp_path, check=False)
        assert proc.returncode == 2
        assert "--keep-alive must be more than 0 and at most 3600 seconds" in proc.stderr


def test_serve_ops_port_moves_the_probes(tmp_path: Path) -> None:
    """`serve --ops-port`: /healthz, /readyz and /metrics answer there, without a key;
    on the main port they are ordinary paths of the upstream (a key is needed)."""
    ops_port = free_port()
    ops = f"http://127.0.0.1:{ops_port}"
    server = start_server(tmp_path, None, "--ops-port", str(ops_port), health=ops + "/healthz")
    try:
        for path in ("/healthz", "/readyz", "/metrics"):
            answer = httpx.get(ops + path, timeout=10)
            assert answer.status_code == 200, (path, answer.text)
            assert answer.headers["x-request-id"].startswith("req_")
            main = httpx.get(server.url + path, timeout=10)
            assert main.status_code == 401, (path, main.text)  # the upstream's path now
        assert httpx.get(ops + "/v1/rate-limit/status", timeout=10).status_code == 404
    finally:
        stop_server(server)
    refused = run_cli("serve", "--ops-port", "8000", "--port", "8000", cwd=tmp_path, check=False)
    assert refused.returncode == 2 and "--ops-port" in refused.stderr
