"""Several base URLs: round robin, failover and cool-down.

The choice of instance and the step after each attempt are pure (``_instances.py`` and
``ClientCore``): tested here with answers and connection errors built in memory and a
clock the test moves. Then both clients against TWO real ``tollhouse serve`` processes
sharing one database (SQLite and PostgreSQL), one of which is stopped mid-test.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.client.support import open_client
from tests.conftest import Server, start_server, stop_server
from tests.storage.support import database_url
from tollhouse.client import AdminClient, Client, ClientError, RetryEvent, RetryPolicy
from tollhouse.client._base import Call, ClientCore, Operation
from tollhouse.client._instances import COOL_DOWN, Instances, choose, parse_base_urls

__all__ = ["database_url"]

A, B, C = "http://a.test", "http://b.test", "http://c.test"
TOKEN = "adm_" + "f" * 40


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def core(*urls: str, clock: Clock, max_retries: int = 5) -> ClientCore:
    return ClientCore(
        api_key="sk_test_x",
        instances=Instances(urls),
        tenant_id=None,
        retry=RetryPolicy(max_retries=max_retries),
        throttle=None,
        rng=random.Random(0),
        clock=clock,
    )


def get() -> Operation[None]:
    return Operation("GET", "/v1/x", "GET /v1/x", lambda r: None)


def post(idempotency_key: str | None = None) -> Operation[None]:
    return Operation(
        "POST", "/v1/x", "POST /v1/x", lambda r: None, idempotent=False,
        idempotency_key=idempotency_key,
    )  # fmt: skip


def target(c: ClientCore, call: Call[Any]) -> str:
    url: str = c.next_attempt(call)["url"]
    return url.removesuffix("/v1/x")


def answer(status: int, **headers: str) -> httpx.Response:
    return httpx.Response(status, headers=headers)


REFUSED = httpx.ConnectError("[Errno 111] Connection refused")
RESET = httpx.ReadError("connection reset by peer")


# --- pure: the choice of instance --------------------------------------------------------


def test_choose_rotates_and_passes_over_cooling_instances() -> None:
    assert choose(0, [0, 0, 0], 10) == 0
    assert choose(2, [0, 0, 0], 10) == 2
    assert choose(0, [15, 0, 0], 10) == 1  # a is cooling down until 15
    assert choose(2, [0, 0, 15], 10) == 0  # wraps round
    assert choose(0, [15, 0, 0], 15) == 0  # its cool-down is over
    # Every one cooling down: the one that comes back first.
    assert choose(0, [14, 12, 13], 10) == 1


def test_parse_base_urls() -> None:
    assert parse_base_urls("http://a.test/") == ("http://a.test",)
    assert parse_base_urls(" http://a.test , https://b.test:8443/ ,") == (
        "http://a.test",
        "https://b.test:8443",
    )
    assert parse_base_urls([A, B + "/"]) == (A, B)
    for bad in ("", ",", "a.test", "ftp://a.test", [A, "nope"]):
        with pytest.raises(ValueError, match="base_url"):
            parse_base_urls(bad)


def test_instances_round_robin_and_cool_down() -> None:
    instances = Instances([A, B, C])
    assert [instances.urls[instances.pick(0)] for _ in range(4)] == [A, B, C, A]
    instances.failed(1, now=100)  # b
    assert [instances.urls[instances.pick(101)] for _ in range(3)] == [C, A, C]
    assert instances.cooling(101) == [B]
    assert instances.urls[instances.pick(100 + COOL_DOWN)] == A  # b is back in the rotation
    assert instances.urls[instances.pick(100 + COOL_DOWN)] == B
    instances.failed(0, now=200)
    instances.answered(0)  # it answered after all
    assert instances.cooling(201) == []


def test_client_takes_several_urls_from_the_argument_and_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with Client(api_key="sk_test_x", base_url=[A, B]) as c:
        assert c.base_urls == (A, B) and c.base_url == A
    monkeypatch.setenv("TOLLHOUSE_URL", f"{A}, {B}/")
    with Client(api_key="sk_test_x") as c:
        assert c.base_urls == (A, B)
        assert c.with_tenant("t")._core.instances is c._core.instances  # one rotation
    with pytest.raises(ValueError, match="not an http"):
        Client(api_key="sk_test_x", base_url=[A, "b.test"])
    monkeypatch.delenv("TOLLHOUSE_API_KEY", raising=False)
    with pytest.raises(ClientError, match="No API key"):  # still checked first
        Client(base_url=[A, B])


# --- pure: the step after an attempt -----------------------------------------------------


def test_a_refused_connection_moves_to_the_next_instance_without_spending_a_retry() -> None:
    clock = Clock()
    c = core(A, B, clock=clock)
    call = c.start(post())  # not idempotent: nothing was sent, so it is safe anyway
    assert target(c, call) == A
    assert c.after_failure(call, REFUSED) == 0.0
    assert (call.retries, call.hops) == (0, 1)
    assert target(c, call) == B
    assert c.after_answer(call, answer(201)) is None
    # a stays passed over for the cool-down, then is tried again.
    calls = [c.start(get()) for _ in range(3)]
    assert [target(c, k) for k in calls] == [B, B, B]
    clock.now += COOL_DOWN
    assert target(c, c.start(get())) == A


def test_every_instance_refusing_falls_back_to_the_backoff() -> None:
    clock = Clock()
    c = core(A, B, clock=clock, max_retries=2)
    call = c.start(get())
    assert target(c, call) == A and c.after_failure(call, REFUSED) == 0.0
    assert target(c, call) == B
    delay = c.after_failure(call, REFUSED)  # one hop per other instance, then retries
    assert delay is not None and delay > 0 and call.retries == 1
    clock.now += delay
    assert target(c, call) == A  # comes back first
    assert (d := c.after_failure(call, REFUSED)) is not None and d > 0 and call.retries == 2
    target(c, call)
    assert c.after_failure(call, REFUSED) is None  # retries used up
    assert "after 4 attempts" in str(c.transport_error(call, REFUSED))


@pytest.mark.parametrize("status", [502, 503, 504])
def test_a_failing_instance_status_moves_an_idempotent_call_on_at_once(status: int) -> None:
    clock = Clock()
    events: list[RetryEvent] = []
    c = core(A, B, clock=clock)
    c.on_retry = events.append
    for op in (get(), post(idempotency_key="k1")):
        call = c.start(op)
        first = target(c, call)
        assert c.after_answer(call, answer(status)) == 0.0 and call.retries == 1
        assert target(c, call) != first
        assert c.after_answer(call, answer(200)) is None
        clock.now += COOL_DOWN
    assert [(e.status, e.delay, e.base_url) for e in events] == [(status, 0.0, A), (status, 0.0, A)]
    assert "failing over" in events[0].reason


def test_what_is_not_safe_to_send_again_is_not_sent_again() -> None:
    c = core(A, B, clock=Clock())
    call = c.start(post())  # no idempotency key
    assert target(c, call) == A
    assert c.after_answer(call, answer(502)) is None  # the upstream may have done it
    assert c.instances.cooling(c.clock()) == [A]  # but a is passed over all the same
    call = c.start(post())
    assert target(c, call) == B
    assert c.after_failure(call, RESET) is None  # may have been processed
    # A 503 is refused before the API ran, so it is sent again even so; both instances are
    # cooling down now, so after the backoff.
    call = c.start(post())
    target(c, call)
    delay = c.after_answer(call, answer(503))
    assert delay is not None and delay > 0


def test_a_429_is_not_an_instance_failure() -> None:
    c = core(A, B, clock=Clock())
    call = c.start(get())
    assert target(c, call) == A
    assert c.after_answer(call, answer(429, **{"retry-after": "2"})) == pytest.approx(2, abs=0.5)
    assert c.instances.cooling(c.clock()) == []  # limits are shared: b would say the same


def test_one_url_keeps_the_backoff() -> None:
    c = core(A, clock=Clock())
    call = c.start(get())
    assert target(c, call) == A
    delay = c.after_answer(call, answer(503))
    assert delay is not None and delay > 0
    delay = c.after_failure(call, REFUSED)
    assert delay is not None and delay > 0 and call.hops == 0


# --- against two real servers on one database --------------------------------------------


def serve_pair(tmp: Path, url: str) -> tuple[Server, Server]:
    env = {"TOLLHOUSE_DATABASE_URL": url, "TOLLHOUSE_ADMIN_TOKEN": TOKEN}
    (tmp / "a").mkdir()
    (tmp / "b").mkdir()
    # One after the other: the first creates the schema.
    first = start_server(tmp / "a", env=env)
    try:
        return first, start_server(tmp / "b", env=env)
    except BaseException:
        stop_server(first)
        raise


@pytest.fixture
def pair(tmp_path: Path, database_url: str) -> Iterator[tuple[Server, Server]]:
    a, b = serve_pair(tmp_path, database_url)
    try:
        yield a, b
    finally:
        stop_server(a)
        stop_server(b)


@pytest.mark.integration
@pytest.mark.parametrize("kind", ["sync", "async"])
def test_two_instances_one_stopped_mid_test(kind: str, pair: tuple[Server, Server]) -> None:
    a, b = pair
    hosts: list[str] = []

    def seen(request: httpx.Request) -> None:
        hosts.append(f"http://{request.url.netloc.decode()}")

    with AdminClient(admin_token=TOKEN, base_url=[a.url, b.url]) as admin:
        org = admin.orgs.create("acme", first_key={"environment": "SANDBOX", "role": "root"})
        admin.orgs.get("acme")  # the second instance reads what the first wrote
    assert org.first_key is not None and org.first_key.key is not None
    offset = [0.0]  # the test moves the client's clock on by adding to it

    def clock() -> float:
        return time.time() + offset[0]

    retries: list[RetryEvent] = []
    with open_client(
        kind,
        api_key=org.first_key.key,
        base_url=[a.url, b.url],
        tenant_id="acme",
        on_request=seen,
        on_retry=retries.append,
        clock=clock,
    ) as client:
        core = client.raw._core if kind == "async" else client._core
        # A cool-down no slow machine outlasts: the test ends it by moving the clock.
        core.instances.cool_down = 3600.0
        for _ in range(4):
            assert client.rate_limit_status().buckets
        assert hosts == [a.url, b.url, a.url, b.url]  # round robin
        client.criteria.generate("job_1", "Backend Engineer", "Python and SQL, 5 years.")
        accepted = client.score("app_1", "job_1", {"name": "Ada", "resume": "Python, 6 years."})

        stop_server(a)
        hosts.clear()
        # Idempotent reads, a POST with an idempotency key, and one that is not idempotent
        # (refused connections were never sent): all answered by b.
        assert client.get_score(accepted.scoring_job_id).scoring_job_id == accepted.scoring_job_id
        again = client.score("app_2", "job_1", {"name": "Grace", "resume": "SQL, 8 years."})
        added = client.criteria.add("job_1", "Kubernetes", weight=0.5)
        for _ in range(3):
            assert client.rate_limit_status().buckets
        assert added.name == "Kubernetes" and again.scoring_job_id
        # a refused once, then was passed over during its cool-down.
        assert hosts.count(a.url) == 1 and hosts.count(b.url) == 6, hosts
        assert [e.base_url for e in retries] == [a.url] and "failing over" in retries[0].reason

        # After the cool-down a is tried again (still down): one more hop, no error.
        offset[0] += 3600.0
        hosts.clear()
        for _ in range(2):
            assert client.rate_limit_status().buckets
        # (The throttle, which reads the same clock, may let one request meet a 429 here.)
        assert hosts[:2] == [a.url, b.url] and set(hosts[2:]) == {b.url}, hosts
        job = client.get_score(again.scoring_job_id)
        assert job.scoring_job_id == again.scoring_job_id
