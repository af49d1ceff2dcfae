"""Isolation matrix: org A makes data of every kind (calls, events, jobs, webhook
deliveries, webhooks, keys, overrides) in one environment; then two callers call every read
endpoint with their own key and A's identifiers: org B (same environment), and org A
itself with a key of the *other* environment (a sandbox key looking at production, and
the reverse). Nothing of A's comes back, and A's job and application ids are 404 (not 403:
not even their existence leaks).

The matrix runs on SQLite (the embedded default) and on PostgreSQL, with A's data made
in SANDBOX (``sk_test_``) and in PRODUCTION (``sk_live_``).

The endpoints are listed from the app's own routes, so a new read route fails
:func:`test_every_read_route_is_covered` until it is added here.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from starlette.routing import Route
from typer.testing import CliRunner

from tests.conftest import Server, serve_in_thread
from tollhouse.cli.main import app as cli_app
from tollhouse.fairuse import GenerationCapture
from tollhouse.http import gateway
from tollhouse.http.app import Tollhouse
from tollhouse.policy.load import load_policy
from tollhouse.settings import load_settings

pytestmark = pytest.mark.integration


def _get_routes() -> set[str]:
    """Every GET path template the server answers (gateway, ops, jobs, platform, upstream)."""
    app = Tollhouse(settings=load_settings(environ={}))
    paths = {v for k, v in vars(gateway).items() if k.endswith("_PATH") and isinstance(v, str)}
    try:
        from tollhouse.ops import endpoints

        paths |= set(endpoints.OPS_PATHS)
    except ImportError:  # pragma: no cover - the ops endpoints are optional
        pass
    for endpoint in app.routes.endpoints:
        if "GET" in endpoint.methods and endpoint.group != "dashboard":
            paths.add(endpoint.path.rstrip("/") or "/")
    upstream: Any = app.upstream
    if isinstance(upstream, GenerationCapture):  # the fair-use tap around the upstream
        upstream = upstream.app
    for route in upstream.routes:
        if isinstance(route, Route) and "GET" in (route.methods or ()):
            paths.add(route.path.rstrip("/") or "/")
    return paths


#: --env of `keys create` per environment, and the other environment.
KEY_ENV = {"SANDBOX": "test", "PRODUCTION": "live"}
OTHER = {"SANDBOX": "PRODUCTION", "PRODUCTION": "SANDBOX"}
VIEWERS = ("other org", "other environment")


@dataclass
class OrgA:
    """Everything org A made, and the strings that must never reach another org or A's
    other environment."""

    org: str
    environment: str
    key: str
    key_ids: list[str]
    job_id: str
    application_id: str
    posting_id: str
    tenant: str
    user: str
    event_id: str
    hook_path: str

    viewers: dict[str, str] | None = None
    """Viewer → its key: ``other org`` (B, same environment) and ``other environment``
    (A's own org, a key of the other environment)."""

    def markers(self, viewer: str) -> list[str]:
        # The org's name is the other-environment viewer's own: it may see it.
        return [
            *([self.org] if viewer == "other org" else []),
            *self.key_ids,
            self.job_id,
            self.application_id,
            self.posting_id,
            self.tenant,
            self.user,
            self.event_id,
            self.hook_path,
        ]


class Receiver:
    """A webhook receiver (ASGI) answering 204 and recording the paths it got."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        self.lock = threading.Lock()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        with self.lock:
            self.paths.append(scope["path"])
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})


@pytest.fixture(scope="module")
def receiver() -> Iterator[tuple[Receiver, str]]:
    r = Receiver()
    with serve_in_thread(r) as url:  # type: ignore[arg-type]
        yield r, url


LIMIT_A = 7919


def _cli(server: Server, *args: str) -> str:
    """The CLI in-process (no interpreter start per call) on the server's database, with
    private webhook targets allowed like the server (the receiver is on loopback)."""
    db = (server.env or {}).get("TOLLHOUSE_DATABASE_URL") or (
        f"sqlite:///{server.cwd}/.tollhouse/tollhouse.db"
    )
    result = CliRunner().invoke(cli_app, [*args, "--database-url", db], env=server.env)
    assert result.exit_code == 0, result.output
    return result.stdout


def _until(fn: Callable[[], bool], what: str, within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if fn():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _key(server: Server, org: str, environment: str, *extra: str) -> dict[str, str]:
    args = ("--org", org, "--env", KEY_ENV[environment], *extra, "--json")
    found: dict[str, str] = json.loads(_cli(server, "keys", "create", *args))
    return found


@pytest.fixture(scope="module", params=["SANDBOX", "PRODUCTION"])
def world(request: pytest.FixtureRequest, server: Server, receiver: tuple[Receiver, str]) -> OrgA:
    environment = str(request.param)
    tag = secrets.token_hex(4)
    org_a, org_b = f"iso-a-{tag}", f"iso-b-{tag}"
    root = _key(server, org_a, environment, "--role", "root")
    extra = _key(server, org_a, environment, "--name", f"name-{tag}")
    b = _key(server, org_b, environment, "--role", "root")
    a_other = _key(server, org_a, OTHER[environment], "--role", "root")
    rec, url = receiver
    hook_path = f"/hook-a-{tag}"
    _cli(
        server,
        "webhooks",
        "add",
        "--org",
        org_a,
        "--url",
        url + hook_path,
        "--environment",
        environment,
    )
    # An endpoint of A's other environment, too: A's events must not reach it.
    _cli(
        server,
        "webhooks",
        "add",
        "--org",
        org_a,
        "--url",
        # (A path not containing A's: the other environment's key may list this one.)
        url + f"/other-env-{tag}",
        "--environment",
        OTHER[environment],
    )
    bucket = load_policy(None).buckets[0].name
    _cli(server, "limits", "set", "--org", org_a, "--bucket", bucket, "--limit", str(LIMIT_A))
    a = OrgA(
        org=org_a,
        environment=environment,
        key=root["key"],
        key_ids=[root["id"], extra["id"]],
        job_id="",
        application_id=f"app-a-{tag}",
        posting_id=f"job-a-{tag}",
        tenant=f"tenant-a-{tag}",
        user=f"user-a-{tag}",
        event_id=f"evt-a-{tag}",
        hook_path=hook_path,
        viewers={"other org": b["key"], "other environment": a_other["key"]},
    )
    with httpx.Client(
        base_url=server.url,
        headers={"Authorization": f"Bearer {a.key}", "X-Tenant-Id": a.tenant},
        timeout=15,
    ) as c:
        posting = {"jobId": a.posting_id, "title": "Engineer", "description": "Python, SQL."}
        assert c.post("/v1/criteria/generate", json=posting).status_code == 200
        submitted = c.post(
            "/v1/score",
            json={
                "applicationId": a.application_id,
                "jobId": a.posting_id,
                "candidate": {"name": "Ada", "resume": "Python and SQL for years."},
            },
        )
        assert submitted.status_code == 202, submitted.text
        a.job_id = submitted.json()["scoringJobId"]
        now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        event = {
            "id": a.event_id,
            "type": "flow_run",
            "time": now,
            "data": {
                "run_id": f"run-{tag}",
                "status": "succeeded",
                "source": "manual",
                "user": a.user,
                "workflow": f"wf-{tag}",
                "duration_ms": 12,
            },
        }
        assert c.post("/v1/events", json=[event]).status_code in (200, 201, 202)
        # A sees its own data before B looks (so B's empty answers mean something).
        _until(
            lambda: c.get(f"/v1/score/{a.job_id}").json().get("status") == "completed",
            "A's job",
        )
        _until(lambda: rec.paths.count(hook_path) >= 1, "A's webhook delivery")
        _until(
            lambda: a.user in c.get("/v1/analytics/flow_per_user", params=_range()).text,
            "A's event in analytics",
        )
        # The job's one delivery is to A's endpoint of the job's environment: none was
        # staged for the other environment's endpoint (both would be, in one transaction).
        listed = c.get("/v1/webhooks/deliveries", params={"jobId": a.job_id}).json()["data"]
        assert [d["url"] for d in listed] == [url + hook_path]
    assert f"/other-env-{tag}" not in rec.paths
    return a


def _range() -> dict[str, str]:
    now = datetime.now(UTC).replace(microsecond=0)
    return {
        "time_start": (now - timedelta(days=1)).isoformat().replace("+00:00", "Z"),
        "time_end": (now + timedelta(days=1)).isoformat().replace("+00:00", "Z"),
    }


# For each GET route: the request (path, query) built from A's identifiers, the statuses B
# may get, and whether A's own request shows A's data (so the check on B can fail).
Case = tuple[Callable[[OrgA], tuple[str, dict[str, str]]], frozenset[int], bool]
NOT_FOUND = frozenset({404})
OK = frozenset({200})
ADMIN_ONLY = frozenset({403})

CASES: dict[str, Case] = {
    "/healthz": (lambda a: ("/healthz", {}), OK, False),
    "/readyz": (lambda a: ("/readyz", {}), frozenset({200, 503}), False),
    "/metrics": (lambda a: ("/metrics", {}), frozenset({200, 401}), False),
    "/v1/rate-limit/status": (lambda a: ("/v1/rate-limit/status", {}), OK, False),
    # Forward-auth's decision endpoint answers trusted proxies only (none here): 403.
    "/v1/platform/authorize": (lambda a: ("/v1/platform/authorize", {}), frozenset({403}), False),
    "/v1/platform/authorize/{original:path}": (
        lambda a: (f"/v1/platform/authorize/v1/score/{a.job_id}", {}),
        frozenset({403}),
        False,
    ),
    "/v1/score/{scoringJobId}": (lambda a: (f"/v1/score/{a.job_id}", {}), NOT_FOUND, True),
    # Many jobs' status: another org's (or environment's) ids are only listed in notFound.
    "/v1/score": (lambda a: ("/v1/score", {"ids": a.job_id}), OK, True),
    "/v1/score/application/{applicationId}": (
        lambda a: (f"/v1/score/application/{a.application_id}", {}),
        NOT_FOUND,
        True,
    ),
    "/v1/webhooks/deliveries": (
        lambda a: ("/v1/webhooks/deliveries", {"jobId": a.job_id}),
        OK,
        True,
    ),
    "/v1/analytics/scoring-volume": (
        lambda a: ("/v1/analytics/scoring-volume", {"timeRange": "7d"}),
        OK,
        False,
    ),
    # Fair use: B's signals are B's own (no key id or jobId of A among them).
    "/v1/analytics/fair-use": (
        lambda a: ("/v1/analytics/fair-use", {"timeRange": "24h"}),
        OK,
        False,
    ),
    "/v1/queue": (lambda a: ("/v1/queue", {}), OK, False),
    "/v1/keys": (lambda a: ("/v1/keys", {}), OK, True),
    # The org's limits: B never sees A's override (checked below).
    "/v1/limits": (lambda a: ("/v1/limits", {}), OK, False),
    "/v1/webhooks/endpoints": (lambda a: ("/v1/webhooks/endpoints", {}), OK, True),
    "/call-counts/historical": (
        lambda a: ("/call-counts/historical/", {"label": "ENDPOINTS"}),
        frozenset({200, 400, 422}),
        False,
    ),
    "/call-counts/historical/{label}": (
        lambda a: ("/call-counts/historical/ENDPOINTS/", {}),
        frozenset({200, 400, 404, 422}),
        False,
    ),
    "/call-counts/historical/SCENARIOS/{reco_type}/{name}": (
        lambda a: (f"/call-counts/historical/SCENARIOS/{a.tenant}/{a.user}/", {}),
        frozenset({200, 400, 404, 422}),
        False,
    ),
    "/v1/analytics/{metric}": (lambda a: ("/v1/analytics/flow_per_user", _range()), OK, True),
    "/v1/platform/openapi.json": (lambda a: ("/v1/platform/openapi.json", {}), OK, False),
    "/v1/criteria/{jobId}": (lambda a: (f"/v1/criteria/{a.posting_id}", {}), NOT_FOUND, True),
    "/v1/jobs/{jobId}/criteria": (
        lambda a: (f"/v1/jobs/{a.posting_id}/criteria", {}),
        NOT_FOUND,
        True,
    ),
    # The provider API: no org key reaches it, A's own included (403 ADMIN_ONLY).
    "/v1/admin/orgs": (lambda a: ("/v1/admin/orgs", {}), ADMIN_ONLY, False),
    "/v1/admin/orgs/{orgId}": (lambda a: (f"/v1/admin/orgs/{a.org}", {}), ADMIN_ONLY, False),
    "/v1/admin/orgs/{orgId}/keys": (
        lambda a: (f"/v1/admin/orgs/{a.org}/keys", {}),
        ADMIN_ONLY,
        False,
    ),
    "/v1/admin/orgs/{orgId}/limits": (
        lambda a: (f"/v1/admin/orgs/{a.org}/limits", {}),
        ADMIN_ONLY,
        False,
    ),
    "/v1/admin/orgs/{orgId}/fair-use": (
        lambda a: (
            f"/v1/admin/orgs/{a.org}/fair-use",
            {"environment": a.environment, "timeRange": "24h"},
        ),
        ADMIN_ONLY,
        False,
    ),
    "/v1/admin/audit": (lambda a: ("/v1/admin/audit", {"org": a.org}), ADMIN_ONLY, False),
    "/v1/admin/orgs/{orgId}/webhooks/endpoints": (
        lambda a: (f"/v1/admin/orgs/{a.org}/webhooks/endpoints", {"environment": a.environment}),
        ADMIN_ONLY,
        False,
    ),
    "/v1/admin/orgs/{orgId}/webhooks/deliveries": (
        lambda a: (
            f"/v1/admin/orgs/{a.org}/webhooks/deliveries",
            {"environment": a.environment, "jobId": a.job_id},
        ),
        ADMIN_ONLY,
        False,
    ),
}


def test_every_read_route_is_covered() -> None:
    routes = _get_routes()
    missing = routes - set(CASES)
    assert not missing, f"read routes without an isolation case: {sorted(missing)}"
    gone = set(CASES) - routes
    assert not gone, f"isolation cases for routes that no longer exist: {sorted(gone)}"


@pytest.mark.parametrize("viewer", VIEWERS)
@pytest.mark.parametrize("route", sorted(CASES))
def test_nothing_of_a_reaches_another_org_or_environment(
    route: str, viewer: str, world: OrgA, server: Server
) -> None:
    a = world
    assert a.viewers is not None
    b_key = a.viewers[viewer]
    build, allowed, a_sees_it = CASES[route]
    path, params = build(a)
    with httpx.Client(base_url=server.url, timeout=15) as c:
        # The tenant header too: a tenant name is not a way into another org.
        b = c.get(
            path,
            params=params,
            headers={"Authorization": f"Bearer {b_key}", "X-Tenant-Id": a.tenant},
        )
        if b.status_code == 429:  # the status endpoint's own small bucket: ask again
            time.sleep(1.1)
            b = c.get(
                path,
                params=params,
                headers={"Authorization": f"Bearer {b_key}", "X-Tenant-Id": a.tenant},
            )
        assert b.status_code in allowed, (route, b.status_code, b.text[:300])
        # An error may echo what B itself sent (the id in the path): that reveals nothing.
        sent = path + json.dumps(params)
        leaked = [m for m in a.markers(viewer) if m in b.text and m not in sent]
        assert not leaked, (route, viewer, leaked)
        if route == "/v1/rate-limit/status" and viewer == "other org":
            # (Limit overrides are set per org by the operator, for both environments.)
            assert str(LIMIT_A) not in json.dumps(
                [v.get("limit") for v in b.json()["buckets"].values()]
            )
        if route == "/v1/limits" and viewer == "other org":
            assert str(LIMIT_A) not in b.text
            own = c.get(path, headers={"Authorization": f"Bearer {a.key}"})
            assert str(LIMIT_A) in own.text  # (A's own page shows it: the check can fail)
        if route == "/v1/analytics/scoring-volume":
            # Counts carry no marker: B's are zero while A's show its completed job.
            assert sum(d["total"] for d in b.json()["data"]) == 0
            own = c.get(path, params=params, headers={"Authorization": f"Bearer {a.key}"})
            assert sum(d["total"] for d in own.json()["data"]) >= 1
        if a_sees_it:
            own = c.get(
                path,
                params=params,
                headers={"Authorization": f"Bearer {a.key}", "X-Tenant-Id": a.tenant},
            )
            assert own.status_code == 200, (route, own.status_code, own.text[:300])
            assert any(m in own.text for m in a.markers(viewer)), route


def _admin_requests(a: OrgA) -> list[tuple[str, str, dict[str, Any] | None]]:
    """Every method of every provider API route, filled with A's ids (from the app's own
    route table, so a new admin route is covered here without a change)."""
    app = Tollhouse(settings=load_settings(environ={}))
    values = {
        "orgId": a.org,
        "keyId": a.key_ids[0],
        "bucket": load_policy(None).buckets[0].name,
        # (Ids of the right shape: the token check comes before any lookup.)
        "endpointId": "we_" + "0" * 20,
        "deliveryId": "dlv_" + "0" * 24,
    }
    bodies: dict[str, dict[str, Any]] = {
        "POST /v1/admin/orgs": {"id": a.org + "-copy"},
        "PATCH /v1/admin/orgs/{orgId}": {"suspended": True},
        "POST /v1/admin/orgs/{orgId}/keys": {"environment": a.environment, "role": "root"},
        "PUT /v1/admin/orgs/{orgId}/limits/{bucket}": {"limit": 1},
        "POST /v1/admin/keys/{keyId}/rotate": {"overlapSeconds": 0},
        "POST /v1/admin/orgs/{orgId}/webhooks/endpoints": {"url": "https://example.com/h"},
        "PATCH /v1/admin/orgs/{orgId}/webhooks/endpoints/{endpointId}": {"enabled": False},
    }
    found = []
    for endpoint in app.routes.endpoints:
        if endpoint.group != "admin":
            continue
        path = endpoint.path
        for name, value in values.items():
            path = path.replace("{" + name + "}", value)
        for method in endpoint.methods:
            if "/webhooks/" in path:  # scoped by environment too
                path += f"?environment={a.environment}"
            found.append((method, path, bodies.get(f"{method} {endpoint.path}")))
    return found


def test_no_org_key_reaches_the_provider_api(world: OrgA, server: Server) -> None:
    """An org's own root key, and another org's, are refused on every provider API route
    and method (403 ADMIN_ONLY), and nothing of A changes: its key still works."""
    a = world
    assert a.viewers is not None
    requests = _admin_requests(a)
    assert len(requests) >= 12
    with httpx.Client(base_url=server.url, timeout=15) as c:
        for key in (a.key, *a.viewers.values()):
            for method, path, body in requests:
                answer = c.request(
                    method, path, json=body, headers={"Authorization": f"Bearer {key}"}
                )
                assert answer.status_code == 403, (method, path, answer.text[:300])
                assert answer.json()["error"]["code"] == "ADMIN_ONLY"
                leaked = [m for m in a.markers("other org") if m in answer.text]
                assert not leaked, (method, path, leaked)
        own = c.get(
            f"/v1/score/{a.job_id}",
            headers={"Authorization": f"Bearer {a.key}", "X-Tenant-Id": a.tenant},
        )
        assert own.status_code == 200, own.text  # not suspended, not revoked
