"""schemathesis over tollhouse's own OpenAPI document, against a real `tollhouse serve`.

The `schemathesis run` command line drives the server with every phase (``examples``:
the document's own examples; ``coverage``: each constraint's edges, valid and invalid;
``fuzzing``: generated requests, valid and invalid; ``stateful``: chains of calls along
the links schemathesis infers, e.g. create a webhook endpoint, then rotate its secret)
and every check of ``--checks all`` but the timed ``max_response_time`` (no 5xx;
status, content type, headers and body as the
document gives them; a request the document forbids is refused with a 4xx and one it
allows is not; a missing required header is refused; unsupported methods get 405 with
``Allow``; no answer without credentials; a deleted resource stays deleted). Runs are
derandomized (a fixed random state: the same cases each run). A failure shows
schemathesis' own report: what was sent (a `curl` line), what came back, which check
failed.

Three runs per server, each with its own caller, because some operations end the
caller's access on purpose: the org-key routes (root key of org ``fuzz``), then the
self-serve key routes (``/v1/keys``: the fuzzer may revoke the very key it calls with),
then the provider API (``/v1/admin/*``, the admin token: it may suspend orgs or set their
limits to 1). Each server is the run's alone, on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import services
from tests.conftest import Server, start_server, stop_server
from tests.fuzz.conftest import ADMIN_ENV, ADMIN_TOKEN, FUZZ_POLICY, Caller, seeded

pytestmark = pytest.mark.integration

#: Examples per operation in the fuzzing phase (the coverage phase is not sampled: it
#: sends each constraint's edge cases once). 10 keeps the directory within ~4 min on 2
#: cores; `TOLLHOUSE_FUZZ_EXAMPLES=200` runs a longer campaign.
MAX_EXAMPLES = int(os.environ.get("TOLLHOUSE_FUZZ_EXAMPLES", "10"))
PHASES = "examples,coverage,fuzzing,stateful"
SEED = "20260101"

#: What JSON Schema cannot state, so neither can the document: refusals that depend on the
#: server's clock, on what it already holds, or on two parameters at once. On exactly these
#: operations the positive_data_acceptance check also takes the given status for a request
#: the document allows (docs/openapi.md lists them); everything else is checked in full.
BEYOND_THE_SCHEMA = [
    ("POST", "/v1/score", 422, "an Idempotency-Key already used for another body"),
    ("POST", "/v1/score/batch", 422, "an Idempotency-Key already used for another body"),
    ("POST", "/v1/events", 422, "an event time more than a day ahead of the clock"),
    ("POST", "/v1/keys", 422, "an expiresAt that is not in the future"),
    ("POST", "/v1/admin/orgs", 422, "a firstKey.expiresAt that is not in the future"),
    ("POST", "/v1/admin/orgs/{orgId}/keys", 422, "an expiresAt that is not in the future"),
    # The PUT body says it (AdminLimitChange's `not`); query parameters are each their
    # own schema in OpenAPI, with no schema over the query as a whole to say it in.
    ("DELETE", "/v1/admin/orgs/{orgId}/limits/{bucket}", 400, "an environment with a keyId"),
    (
        "GET",
        "/v1/analytics/{metric}",
        400,
        "time_start not before time_end, or over 3,660 daily bars (the metrics catalogue "
        "shape's own 400s)",
    ),
]
#: Operations whose coverage phase is off, and why.
NO_COVERAGE = [
    (
        "POST",
        "/v1/score/batch",
        # schemathesis 4.32.5's coverage phase sends the near-boundary X-Tenant-Id case
        # with a negative body (`0`; its metadata: mode positive, body negative) and
        # expects it accepted. Fuzzing and stateful still run it.
        "a schemathesis false positive",
    ),
]
#: What negative_data_rejection takes by default (schemathesis 4).
REFUSED = '400, 401, 403, 404, 405, 406, 409, 415, 422, 428, 429, "5xx"'
#: What positive_data_acceptance takes by default (schemathesis 4).
ACCEPTED = '"2xx", "3xx", 401, 403, 404, 409, 429, "5xx"'

#: (name, operations as a path regex, whose credentials)
RUNS = [
    ("routes", r"--exclude-path-regex=^/v1/(keys|admin/)", "key"),
    ("keys", r"--include-path-regex=^/v1/keys", "key"),
    ("admin", r"--include-path-regex=^/v1/admin/", "admin"),
]
#: On PostgreSQL (stricter about text than SQLite) the org-key run keeps the operations
#: that store or look up caller-given text in tollhouse's own tables, with half the
#: examples: the directory stays within its time.
PG_ROUTES = r"--include-path-regex=^/(v1/events|v1/score|v1/webhooks|v1/queue|call-counts)"


#: Every check of schemathesis 4 (``--checks all``) except ``max_response_time``.
CHECK_NAMES = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
    "negative_data_rejection",
    "positive_data_acceptance",
    "missing_required_header",
    "unsupported_method",
    "allow_header_conformance",
    "use_after_free",
    "ensure_resource_availability",
    "ignored_auth",
    "object_level_authorization",
)


def schemathesis(
    server: Server, run: str, where: Path, *, postgres: bool = False
) -> subprocess.CompletedProcess[str]:
    """`schemathesis run` with every phase and check against ``server``, as its run
    ``run`` of :data:`RUNS` (credentials in a config file: its `auth.openapi` gives each
    security scheme of the document its token)."""
    _, operations, who = next(r for r in RUNS if r[0] == run)
    examples = max(1, MAX_EXAMPLES // 2) if postgres else MAX_EXAMPLES
    if postgres and run == "routes":
        operations = PG_ROUTES
    token = ADMIN_TOKEN if who == "admin" else _bearer(seeded(server, f"fuzz-{run}"))
    config = where / "schemathesis.toml"
    lines = [
        f'[auth.openapi.bearerAuth]\nbearer = "{token}"',
        f'[auth.openapi.adminToken]\nbearer = "{ADMIN_TOKEN}"',
        # A body over [limits] max_body_bytes is refused unread with 413, which every
        # body route of the document lists: a refusal like the 4xx schemathesis expects.
        "[checks.negative_data_rejection]",
        f"expected-statuses = [{REFUSED}, 413]",
    ]
    # One entry per path: schemathesis applies the first entry whose path matches, whatever
    # the method, so the operations of one path share theirs (each carve-out noted).
    carved: dict[str, list[str]] = {}
    statuses: dict[str, set[int]] = {}
    for method, path, status, why in BEYOND_THE_SCHEMA:
        carved.setdefault(path, []).append(f"# {method} {path}: {status}, {why}")
        statuses.setdefault(path, set()).add(status)
    for method, path, why in NO_COVERAGE:
        carved.setdefault(path, []).append(f"# {method} {path}: no coverage phase, {why}")
    for path, notes in carved.items():
        lines += [*notes, "[[operations]]", f'include-path = "{path}"']
        if path in statuses:
            extra = ", ".join(str(s) for s in sorted(statuses[path]))
            lines.append(
                f"checks.positive_data_acceptance.expected-statuses = [{ACCEPTED}, {extra}]"
            )
        if any(p == path for _, p, _ in NO_COVERAGE):
            lines.append("phases.coverage.enabled = false")
    config.write_text("\n".join(lines) + "\n")
    cli = Path(sys.executable).with_name("schemathesis")
    args = [
        str(cli),
        "--no-color",
        "--config-file",
        str(config),
        "run",
        f"{server.url}/v1/platform/openapi.json",
        f"--phases={PHASES}",
        # Every check schemathesis has but the response-time one (which `all` turns on
        # with a 10 s limit): a timed check fails on a loaded machine — a webhook test to
        # a made-up host waits for its DNS lookup — not on a defect.
        f"--checks={','.join(CHECK_NAMES)}",
        operations,
        f"--max-examples={examples}",
        f"--seed={SEED}",
        "--generation-database=none",
        # One worker: the runs stay the same from run to run, and Hypothesis' source
        # parsing is not thread-safe on Python 3.11.
        "--workers=1",
        "--request-timeout=20",
        "--warnings=off",
    ]
    return subprocess.run(args, cwd=where, capture_output=True, text=True, timeout=600)


def _bearer(caller: Caller) -> str:
    return caller.headers["Authorization"].removeprefix("Bearer ")


def _report(done: subprocess.CompletedProcess[str]) -> str:
    # The failures and the summary; the progress lines before them say nothing more.
    out = done.stdout + done.stderr
    start = min(
        (i for i in (out.find("=== ERRORS"), out.find("=== FAILURES")) if i >= 0), default=0
    )
    return out[max(0, out.rfind("\n", 0, start)) :]


def _check(server: Server, run: str, where: Path, *, postgres: bool = False) -> None:
    done = schemathesis(server, run, where, postgres=postgres)
    assert done.returncode == 0, f"schemathesis found failures:\n{_report(done)}"
    # A run that tested nothing cannot fail: make sure it did test.
    assert "Tested:" in done.stdout, done.stdout


@pytest.fixture(scope="module")
def sqlite_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start_server(tmp_path_factory.mktemp("st-sqlite"), FUZZ_POLICY, env=ADMIN_ENV)
    yield server
    stop_server(server)


@pytest.fixture(scope="module")
def pg_server(
    tmp_path_factory: pytest.TempPathFactory, postgres_service: services.PostgresServer
) -> Iterator[Server]:
    url = postgres_service.create_database("schemathesis")
    server = start_server(
        tmp_path_factory.mktemp("st-pg"),
        FUZZ_POLICY,
        env={"TOLLHOUSE_DATABASE_URL": url, **ADMIN_ENV},
    )
    yield server
    stop_server(server)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("run", [r[0] for r in RUNS])
def test_schema_and_server_agree(sqlite_server: Server, run: str, tmp_path: Path) -> None:
    _check(sqlite_server, run, tmp_path)


@pytest.mark.postgres
@pytest.mark.timeout(300)
@pytest.mark.parametrize("run", [r[0] for r in RUNS])
def test_schema_and_server_agree_on_postgresql(pg_server: Server, run: str, tmp_path: Path) -> None:
    _check(pg_server, run, tmp_path, postgres=True)
