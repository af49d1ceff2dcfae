"""The reverse proxy against a real upstream nobody here wrote: httpbin, in its own process.

Each test sends the same kind of call a provider's users would, through a full
`Tollhouse` (gateway, limits, metering, proxy) served by uvicorn, and checks what reaches
the caller and what reaches httpbin — timeouts and the status each gives, one ``Date``,
one set of rate-limit headers, redirects that stay behind the gateway, forwarded headers,
``preserve_host`` and ``forward_authorization``.
"""

from __future__ import annotations

import asyncio
import importlib.util
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import free_port, serve_in_thread, sqlite_key
from tests.services import missing
from tollhouse import Tollhouse

pytestmark = pytest.mark.integration

POLICY = """
[upstream]
url = "{upstream}"
timeout = "{timeout}"
connect_timeout = "{connect_timeout}"
{extra}

[storage]
database_url = "sqlite:///{db}"

[[buckets]]
name = "everything"
limit = 1000000
window = "3650d"
routes = ["* /*"]

[[endpoint_groups]]
key = "ALL"
description = "every call"
routes = ["* /*"]
"""


@pytest.fixture(scope="module")
def httpbin() -> Iterator[str]:
    """httpbin (Flask, threaded) on a loopback port, as a separate process."""
    if importlib.util.find_spec("httpbin") is None:
        missing("httpbin", "pip install --no-deps httpbin")
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "httpbin.core", "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                if httpx.get(url + "/get", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None:
                raise RuntimeError(f"httpbin exited with {proc.returncode}")
            asyncio.run(asyncio.sleep(0.05))
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


class Front:
    """A served Tollhouse in front of an upstream, with a key for it."""

    def __init__(self, url: str, key: str, app: Tollhouse) -> None:
        self.url = url
        self.key = key
        self.app = app

    def client(self, **options: Any) -> httpx.Client:
        return httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {self.key}"}, **options
        )

    def statuses(self) -> dict[int, int]:
        """Answered calls per status, as the gateway counted them for metering."""
        out: dict[int, int] = {}
        for (_, status), n in self.app.counters.responses.items():
            out[status] = out.get(status, 0) + n
        return out


@contextmanager
def front(
    tmp: Path,
    upstream: str,
    *,
    timeout: str = "5s",
    connect_timeout: str = "5s",
    **extra: Any,
) -> Iterator[Front]:
    lines = []
    for name, value in extra.items():
        if isinstance(value, bool):
            lines.append(f"{name} = {str(value).lower()}")
        else:
            lines.append(f'{name} = "{value}"')
    config = tmp / "tollhouse.toml"
    db = tmp / "t.db"
    config.write_text(
        POLICY.format(
            upstream=upstream,
            timeout=timeout,
            connect_timeout=connect_timeout,
            extra="\n".join(lines),
            db=db,
        )
    )

    key = sqlite_key(db)
    app = Tollhouse(config=config)
    with serve_in_thread(app) as url:
        yield Front(url, key, app)


# -- headers ---------------------------------------------------------------------------------


def test_one_date_and_one_set_of_rate_limit_headers(tmp_path: Path, httpbin: str) -> None:
    with front(tmp_path, httpbin) as f, f.client() as c:
        params = {
            "X-RateLimit-Limit": "5",
            "X-RateLimit-Remaining": "0",
            "RateLimit": '"upstream";r=0;t=9',
            "X-Request-Id": "upstream-chosen",
            "Retry-After": "7",
        }
        response = c.get("/response-headers", params=params)

    assert response.status_code == 200
    raw = [(k.lower(), v) for k, v in response.headers.multi_items()]
    assert [k for k, _ in raw].count("date") == 1
    # tollhouse's buckets cover this route: its set wins, the upstream's is dropped.
    assert [v for k, v in raw if k == "x-ratelimit-limit"] == ["1000000"]
    assert [v for k, v in raw if k == "x-ratelimit-remaining"] == ["999999"]
    limits = [v for k, v in raw if k == "ratelimit"]
    assert len(limits) == 1 and limits[0].startswith('"everything";r=999999;t=')
    ids = [v for k, v in raw if k == "x-request-id"]
    assert len(ids) == 1 and ids[0].startswith("req_")
    # Retry-After is the upstream's own advice (tollhouse adds none to an admitted call).
    assert [v for k, v in raw if k == "retry-after"] == ["7"]


def test_request_headers_upstream_sees(tmp_path: Path, httpbin: str) -> None:
    with front(tmp_path, httpbin) as f, f.client() as c:
        sent = {
            "X-Forwarded-For": "203.0.113.9",
            "X-Real-IP": "203.0.113.9",
            "Forwarded": "for=203.0.113.9",
            "X-Forwarded-Host": "evil.example",
            "X-Tollhouse-Org": "forged",
        }
        # show_env: httpbin hides forwarding headers otherwise.
        seen = c.get("/headers", params={"show_env": 1}, headers=sent).json()["headers"]

    upstream_host = httpbin.removeprefix("http://")
    assert seen["Host"] == upstream_host
    assert seen["X-Forwarded-For"] == "127.0.0.1"
    assert seen["X-Real-Ip"] == "127.0.0.1"
    assert seen["X-Forwarded-Host"] == f.url.removeprefix("http://")
    assert seen["Forwarded"].startswith("for=127.0.0.1;proto=http;")
    assert seen["X-Tollhouse-Org"] == "acme"
    assert "Authorization" not in seen
    assert seen["X-Request-Id"].startswith("req_")


def test_preserve_host(tmp_path: Path, httpbin: str) -> None:
    with front(tmp_path, httpbin, preserve_host=True) as f, f.client() as c:
        seen = c.get("/headers", headers={"Host": "api.example.com"}).json()["headers"]
    assert seen["Host"] == "api.example.com"


def test_forward_authorization(tmp_path: Path, httpbin: str) -> None:
    with (
        front(tmp_path, httpbin, forward_authorization=True) as f,
        httpx.Client(base_url=f.url) as c,
    ):
        # The tollhouse key in X-API-Key; Authorization is the caller's own, for httpbin.
        headers = {"X-API-Key": f.key, "Authorization": "Basic dXNlcjpwYXNz"}
        ok = c.get("/basic-auth/user/pass", headers=headers)
        assert ok.status_code == 200, ok.text
        assert ok.json() == {"authenticated": True, "user": "user"}
        seen = c.get("/headers", headers=headers).json()["headers"]
        assert seen["Authorization"] == "Basic dXNlcjpwYXNz"
        assert "X-Api-Key" not in seen
        # A key in Authorization is tollhouse's and never leaves the gateway.
        bearer = c.get("/headers", headers={"Authorization": f"Bearer {f.key}"})
        assert "Authorization" not in bearer.json()["headers"]
    with front(tmp_path, httpbin) as f, httpx.Client(base_url=f.url) as c:
        headers = {"X-API-Key": f.key, "Authorization": "Basic dXNlcjpwYXNz"}
        refused = c.get("/basic-auth/user/pass", headers=headers)
        assert refused.status_code == 401  # the option is off: httpbin never saw it


# -- redirects -------------------------------------------------------------------------------


def test_absolute_redirects_to_the_upstream_are_rewritten(tmp_path: Path, httpbin: str) -> None:
    with front(tmp_path, httpbin) as f, f.client() as c:
        to_upstream = c.get("/redirect-to", params={"url": httpbin + "/get?x=1"})
        absolute = c.get("/absolute-redirect/1")
        elsewhere = c.get("/redirect-to", params={"url": "https://example.org/a"})
        relative = c.get("/relative-redirect/1")
        followed = c.get("/absolute-redirect/2", follow_redirects=True)

    assert to_upstream.status_code == 302
    assert to_upstream.headers["location"] == f.url + "/get?x=1"
    assert absolute.headers["location"] == f.url + "/get"
    assert elsewhere.headers["location"] == "https://example.org/a"  # not ours to change
    assert relative.headers["location"] == "/get"
    # A client that follows them stays behind the gateway (its key works only there).
    assert followed.status_code == 200
    assert followed.url.host == "127.0.0.1" and str(followed.url).startswith(f.url)


# -- streams and timeouts ----------------------------------------------------------------------


def test_streams_that_keep_sending_outlive_the_read_timeout(tmp_path: Path, httpbin: str) -> None:
    # 6 bytes over 3 s: every gap (0.5 s) is shorter than the 1.5 s read timeout, the whole
    # exchange is longer than it.
    with front(tmp_path, httpbin, timeout="1.5s") as f, f.client(timeout=30) as c:
        response = c.get("/drip", params={"numbytes": 6, "duration": 3, "delay": 0})
    assert response.status_code == 200
    assert response.content == b"******"


def test_total_timeout_cuts_a_stream_that_runs_too_long(tmp_path: Path, httpbin: str) -> None:
    with (
        front(tmp_path, httpbin, timeout="5s", total_timeout="1s") as f,
        f.client(timeout=30) as c,
        c.stream("GET", "/drip", params={"numbytes": 6, "duration": 4, "delay": 0}) as r,
    ):
        assert r.status_code == 200
        with pytest.raises(httpx.RemoteProtocolError):
            r.read()
    assert f.statuses().get(502) == 1  # metered as the failure it was, not as a 200


def test_total_timeout_before_the_answer_is_a_504(tmp_path: Path, httpbin: str) -> None:
    with front(tmp_path, httpbin, total_timeout="1s") as f, f.client(timeout=30) as c:
        response = c.get("/delay/5")
    body = assert_upstream_error(response, 504, "UPSTREAM_TIMEOUT", httpbin)
    assert "total timeout" in body["message"]


def test_a_stall_past_the_read_timeout_mid_body_cuts_the_connection(
    tmp_path: Path, httpbin: str
) -> None:
    # 3 bytes over 6 s: a 2 s gap after the first byte, past the 1 s read timeout.
    with (
        front(tmp_path, httpbin, timeout="1s") as f,
        f.client(timeout=30) as c,
        c.stream("GET", "/drip", params={"numbytes": 3, "duration": 6, "delay": 0}) as r,
    ):
        assert r.status_code == 200
        with pytest.raises(httpx.RemoteProtocolError):
            r.read()
    assert f.statuses() == {502: 1}


def test_read_timeout_before_the_answer_is_a_504(tmp_path: Path, httpbin: str) -> None:
    with front(tmp_path, httpbin, timeout="1s") as f, f.client(timeout=30) as c:
        response = c.get("/delay/4")
    body = assert_upstream_error(response, 504, "UPSTREAM_TIMEOUT", httpbin)
    assert "did not answer within 1 s" in body["message"]
    assert f.statuses() == {504: 1}


def test_connect_timeout_is_a_502(tmp_path: Path) -> None:
    # A listening socket whose accept queue is full: the kernel drops further SYNs, so a
    # connect to it hangs until the connect timeout.
    with socket.socket() as full:
        full.bind(("127.0.0.1", 0))
        full.listen(0)
        port = full.getsockname()[1]
        fillers = []
        for _ in range(4):
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", port))
            fillers.append(s)
        try:
            with (
                front(tmp_path, f"http://127.0.0.1:{port}", connect_timeout="0.5s") as f,
                f.client(timeout=30) as c,
            ):
                response = c.get("/anything")
        finally:
            for s in fillers:
                s.close()
    body = assert_upstream_error(response, 502, "UPSTREAM_UNAVAILABLE", f"127.0.0.1:{port}")
    assert "did not accept a connection within 0.5 s" in body["message"]


def test_refused_connection_is_a_502(tmp_path: Path) -> None:
    port = free_port()  # nobody listens there
    with front(tmp_path, f"http://127.0.0.1:{port}") as f, f.client() as c:
        response = c.post("/post", json={"a": 1})
    assert_upstream_error(response, 502, "UPSTREAM_UNAVAILABLE", f"127.0.0.1:{port}")
    assert f.statuses() == {502: 1}


def test_upstream_status_codes_and_bodies_pass_through(tmp_path: Path, httpbin: str) -> None:
    with front(tmp_path, httpbin) as f, f.client() as c:
        for status in (200, 201, 204, 400, 404, 418, 500, 503):
            response = c.get(f"/status/{status}")
            assert response.status_code == status
        posted = c.post("/post", content=b"x" * 300_000, headers={"content-type": "text/plain"})
        assert posted.status_code == 200
        assert posted.json()["data"] == "x" * 300_000
        chunked = c.post("/post", content=iter([b"a" * 1000, b"b" * 1000]))
        assert chunked.json()["data"] == "a" * 1000 + "b" * 1000
        head = c.head("/bytes/100")
        assert head.status_code == 200 and head.content == b""
        gz = c.get("/gzip")
        assert gz.json()["gzipped"] is True
    counted = f.statuses()
    assert sum(counted.values()) == 12  # every call metered exactly once


def assert_upstream_error(
    response: httpx.Response, status: int, code: str, address: str
) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert error["code"] == code
    assert error["requestId"] == response.headers["x-request-id"]
    # What happened, never where the upstream is.
    assert address.removeprefix("http://") not in response.text
    assert address.rsplit(":", 1)[-1] not in response.text
    return error


# -- jobs whose handler calls an HTTP upstream ------------------------------------------------


def test_jobs_call_httpbin_over_http(tmp_path: Path, httpbin: str) -> None:
    """An async route handled by the upstream: the job's body reaches httpbin over HTTP
    (tollhouse's own client, not the proxy), with the job's identity headers, and httpbin's
    answer becomes the job's result."""
    config = tmp_path / "tollhouse.toml"
    db = tmp_path / "t.db"
    config.write_text(
        f'[upstream]\nurl = "{httpbin}"\n[storage]\ndatabase_url = "sqlite:///{db}"\n'
        '[[async_routes]]\nroute = "POST /anything"\nconcurrency = 4\nhandler = "upstream"\n'
    )

    key = sqlite_key(db, env="live")
    body = {"applicationId": "app_1", "jobId": "job_1", "candidate": {"name": "Ada", "resume": "x"}}
    with (
        serve_in_thread(Tollhouse(config=config)) as url,
        httpx.Client(base_url=url, headers={"X-API-Key": key, "X-Tenant-Id": "tenant-1"}) as c,
    ):
        # A tenant outside its rule (visible ASCII) is refused before any job exists.
        utf8 = c.post("/anything", json=body, headers={"X-Tenant-Id": "tënant".encode()})
        assert utf8.status_code == 400 and "X-Tenant-Id" in utf8.json()["error"]["message"]
        accepted = c.post("/anything", json=body)
        assert accepted.status_code == 202, accepted.text
        job_id = accepted.json()["scoringJobId"]
        for _ in range(400):
            job = c.get(f"/anything/{job_id}").json()
            if job["status"] in ("completed", "failed"):
                break
            asyncio.run(asyncio.sleep(0.05))
    assert job["status"] == "completed", job
    echoed = job["result"]
    assert echoed["json"] == body
    assert echoed["method"] == "POST"
    headers = echoed["headers"]
    assert headers["X-Tollhouse-Org"] == "acme"
    assert headers["X-Tollhouse-Environment"] == "PRODUCTION"
    assert headers["Idempotency-Key"] == job_id
    assert headers["X-Tenant-Id"] == "tenant-1"
